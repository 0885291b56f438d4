"""Rendered apt preferences, CUDA profile and nouveau blacklist (rules.render)."""

from __future__ import annotations

import subprocess

import pytest

from rules.packages import PIN_PRIORITY
from rules.render import render_apt_preferences, render_cuda_profile, render_nouveau_blacklist


def test_preferences_pin_every_package_to_its_exact_version() -> None:
    text = render_apt_preferences("nvidia-driver", "r535-cuda121", {
        "nvidia-utils-535": "535.183.06-1", "cuda-drivers-535": "535.183.06-1"}, PIN_PRIORITY)
    stanzas = [s for s in text.split("\n\n") if "Package:" in s]
    assert len(stanzas) == 2
    # apt reads one stanza per package: Package, Pin, Pin-Priority (comments are allowed only
    # before the first stanza's fields, so the header comment sits on top).
    assert stanzas[0].strip().splitlines()[-3:] == [
        "Package: cuda-drivers-535", "Pin: version 535.183.06-1",
        f"Pin-Priority: {PIN_PRIORITY}"]
    assert stanzas[1].strip().splitlines() == [
        "Package: nvidia-utils-535", "Pin: version 535.183.06-1",
        f"Pin-Priority: {PIN_PRIORITY}"]
    assert PIN_PRIORITY > 1000  # above 1000 a pin also downgrades
    assert "r535-cuda121" in text.splitlines()[0]


def test_preferences_render_the_same_bytes_for_the_same_pins() -> None:
    a = render_apt_preferences("x", "s", {"pkg-b": "1-1", "pkg-a": "2-1"}, PIN_PRIORITY)
    b = render_apt_preferences("x", "s", {"pkg-a": "2-1", "pkg-b": "1-1"}, PIN_PRIORITY)
    assert a == b


@pytest.mark.parametrize("packages", [{}, {"Bad Name": "1"}, {"ok": "1 2"}, {"ok": ""}])
def test_preferences_refuse_what_apt_would_misread(packages: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        render_apt_preferences("x", "s", packages, PIN_PRIORITY)


def test_apt_obeys_the_rendered_preferences(tmp_path) -> None:
    """apt-cache itself reads the file: apt pinned to its installed version stays the
    candidate (where the mirror has a newer apt, this is the pin holding it back)."""
    import shutil
    if shutil.which("apt-cache") is None or shutil.which("dpkg-query") is None:
        pytest.skip("needs a Debian-family controller (apt-cache, dpkg-query)")
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "apt"],
                               capture_output=True, text=True, check=True).stdout
    prefs = tmp_path / "preferences.d"
    prefs.mkdir()
    (prefs / "gpufleet.pref").write_text(render_apt_preferences(
        "x", "s", {"apt": installed, "gpufleet-no-such-package": "1.0-1"}, PIN_PRIORITY))
    proc = subprocess.run(
        ["apt-cache", "-o", f"Dir::Etc::PreferencesParts={prefs}", "policy", "apt"],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"Candidate: {installed}" in proc.stdout
    assert f"*** {installed} {PIN_PRIORITY}" in proc.stdout


def test_cuda_profile_sets_path_and_lib64_once(tmp_path) -> None:
    text = render_cuda_profile("12.1")
    script = tmp_path / "cuda.sh"
    script.write_text(text)
    out = subprocess.run(
        ["sh", "-c", f". {script}; . {script}; echo \"$PATH\"; echo \"$LD_LIBRARY_PATH\"; "
                     "echo \"$CUDA_HOME\""],
        capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin"}).stdout.splitlines()
    assert out[0] == "/usr/local/cuda-12.1/bin:/usr/bin:/bin"
    assert out[1] == "/usr/local/cuda-12.1/lib64"
    assert out[2] == "/usr/local/cuda-12.1"


def test_cuda_profile_refuses_a_non_release() -> None:
    with pytest.raises(ValueError):
        render_cuda_profile("12.1; rm -rf /")


def test_nouveau_blacklist_blacklists_and_disables_modesetting() -> None:
    lines = [line for line in render_nouveau_blacklist().splitlines()
             if line and not line.startswith("#")]
    assert lines == ["blacklist nouveau", "options nouveau modeset=0"]
