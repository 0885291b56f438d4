"""The one state read (facts.host_state): run for real on this controller, and its parsers on
the exact shapes the tools print.

The controller is a Debian machine like the hosts: the script's output here is real dpkg,
apt-mark, stat, sha256sum and base64 output, checked against what Python reads itself.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pyinfra.api import OperationValueError

from facts import host_state as host_state_module
from facts.apt import parse_keyring_fingerprints
from facts.host_state import (
    SERVICES_SCRIPT,
    WATCHED_DIRS,
    WATCHED_SERVICES,
    HostStateResult,
    ServiceState,
    host_state_script,
    is_watched,
    parse_host_state,
    parse_images,
    parse_services,
)


def test_the_script_is_valid_posix_sh() -> None:
    subprocess.run(["sh", "-n", "-c", host_state_script()], check=True)


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs a Debian-family machine")
def test_the_script_run_here_reads_packages_and_watched_files_exactly() -> None:
    out = subprocess.run(["sh", "-c", host_state_script()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    state = parse_host_state(out.splitlines())
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "dpkg"], capture_output=True,
                             text=True, check=True).stdout
    assert state.installed["dpkg"] == version
    assert state.now is not None and abs(state.now - int(__import__("time").time())) < 120
    # Regular files only: the state reads files, not the links systemd keeps beside them.
    on_disk = [p for d in WATCHED_DIRS if os.path.isdir(d)
               for p in (str(f) for f in Path(d).iterdir())
               if os.path.isfile(p) and not os.path.islink(p)]
    assert on_disk, "this machine has no watched file to compare (no /etc/apt at all?)"
    for path in on_disk:
        data = Path(path).read_bytes()
        read = state.file(path)
        assert read is not None, path
        assert read.sha256 == hashlib.sha256(data).hexdigest(), path
        assert int(read.mode, 8) == os.stat(path).st_mode & 0o7777, path
        assert read.size == len(data) and read.mtime == int(os.stat(path).st_mtime), path
        secret = host_state_module.is_secret(path, read.mode)
        assert read.content == (None if secret else data.decode("utf-8", "replace")), path


def test_absent_parts_are_unknown_never_made_up() -> None:
    state = parse_host_state([])
    assert state == HostStateResult(kernel_module=state.kernel_module, system=state.system,
                                    docker=state.docker)
    assert state.kernel_module.status == "unknown" and state.docker.status == "unknown"


def test_files_header_and_payload() -> None:
    # The layout the script prints: "file=SHA MODE OWNER SIZE MTIME PATH", then base64 or "".
    lines = [
        "__gpufleet_state=files",
        "file=" + "a" * 64 + " 644 root:root 9 1733040000 /etc/docker/daemon.json",
        "eyJhIjogMX0K",
        "file=" + "b" * 64 + " 600 root:root 0 1733040000 /etc/gpufleet/empty file",
        "",
        "file=" + "c" * 64 + " 644 root:root 900000 1733040000 /usr/local/share/ca-certificates/big.crt",
        "",
        "__gpufleet_rc=0",
    ]
    files = parse_host_state(lines).files
    assert files["/etc/docker/daemon.json"].content == '{"a": 1}\n'
    assert files["/etc/gpufleet/empty file"].content == ""  # names may hold spaces
    big = files["/usr/local/share/ca-certificates/big.crt"]
    assert big.content is None and big.sha256 == "c" * 64  # compared by hash only


def test_the_read_keeps_secret_contents_on_the_host(tmp_path: Path) -> None:
    # The files part run for real over a folder of its own: gpufleet's named secrets, anything
    # not world-readable, and /etc/docker's files but daemon.json travel as sha256/mode/owner
    # only; the content never appears in the script's output.
    etc, docker = tmp_path / "etc", tmp_path / "docker"
    etc.mkdir()
    docker.mkdir()
    files = {etc / "api-key.env": ("644", "VLLM_API_KEY=SECRET-named"),
             etc / "private.conf": ("640", "password=SECRET-mode"),
             etc / ".gpufleet-secret.abc123": ("644", "SECRET-staging"),
             docker / "key.json": ("644", "SECRET-docker"),
             docker / "daemon.json": ("600", '{"runtimes": {}}'),  # merged: read
             etc / "public.conf": ("644", "plain")}
    for path, (mode, text) in files.items():
        path.write_text(text)
        path.chmod(int(mode, 8))
    script = host_state_module._files_script(
        dirs=(str(etc), str(docker)), files=(), secrets=(str(etc / "api-key.env"),),
        secret_dirs=(str(docker),), readable=(str(docker / "daemon.json"),))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert "SECRET" not in out and "U0VDUkVU" not in out  # nor its base64
    read = host_state_module.parse_files(out)
    for path, (mode, text) in files.items():
        assert read[str(path)].sha256 == hashlib.sha256(text.encode()).hexdigest(), path
        assert read[str(path)].mode == mode, path
    assert [p for p, f in read.items() if f.content is not None] == [str(etc / "public.conf")]
    lines = out.splitlines()  # daemon.json's content travels whatever its mode (it is merged)
    header = next(i for i, line in enumerate(lines) if line.endswith("/docker/daemon.json"))
    assert base64.b64decode(lines[header + 1]) == b'{"runtimes": {}}'
    # The rule the script applies is the one is_secret states, for the real paths too.
    assert host_state_module.is_secret("/etc/gpufleet/inference/api-key.env", "644")
    assert host_state_module.is_secret("/etc/docker/key.json", "644")
    assert not host_state_module.is_secret("/etc/docker/daemon.json", "600")
    assert host_state_module.is_secret("/etc/default/anything", "600")


def test_the_parser_drops_a_secret_payload_even_if_one_is_printed() -> None:
    lines = ["file=" + "a" * 64 + " 600 root:root 5 1733040000 /etc/gpufleet/proxy.env",
             "c2VjcmV0"]
    assert host_state_module.parse_files("\n".join(lines))[
        "/etc/gpufleet/proxy.env"].content is None


def test_services_merge_unit_files_and_loaded_units() -> None:
    # `systemctl list-unit-files` and `list-units --plain` lines as the awk in the script
    # reduces them.
    text = "\n".join([
        "unitfile=docker.service enabled", "unitfile=nvidia-persistenced.service static",
        "unitfile=nvidia-fabricmanager.service disabled",
        "unit=docker.service active", "unit=nvidia-persistenced.service failed",
    ])
    services = parse_services(text)
    assert services["docker"].is_enabled and services["docker"].is_active
    assert services["nvidia-persistenced"].is_enabled and not services["nvidia-persistenced"].is_active
    assert services["nvidia-fabricmanager"].active == "inactive"


def test_images_by_tag_and_digest() -> None:
    text = "\n".join([
        "gpufleet-sim/cuda-base 12.1 <none>",
        "vllm/vllm-openai v0.4.3 sha256:" + "d" * 64,
        "<none> <none> <none>",
    ])
    assert parse_images(text) == frozenset({
        "gpufleet-sim/cuda-base:12.1", "vllm/vllm-openai:v0.4.3",
        "vllm/vllm-openai@sha256:" + "d" * 64})


def test_keyrings_list_primary_keys_only() -> None:
    # gpg --with-colons: a primary key (pub + fpr) and its subkey (sub + fpr).
    lines = [
        "__gpufleet_keyring=/etc/apt/keyrings/gpufleet-cuda.gpg",
        "pub:-:4096:1:A4B469963BF863CC:1649255434:::-:::scSC::::::23::0:",
        "fpr:::::::::EB693B3035CD5710E231E123A4B469963BF863CC:",
        "uid:-::::1649255434::8B2F2E6D4F4B2F5E::cudatools <cudatools@nvidia.com>::::::::::0:",
        "sub:-:4096:1:1234567890ABCDEF:1649255434::::::e::::::23:",
        "fpr:::::::::0123456789ABCDEF0123456789ABCDEF12345678:",
    ]
    assert parse_keyring_fingerprints(lines) == {
        "/etc/apt/keyrings/gpufleet-cuda.gpg": frozenset({"EB693B3035CD5710E231E123A4B469963BF863CC"})}


def test_watched_paths() -> None:
    assert is_watched("/etc/apt/sources.list")
    assert is_watched("/etc/apt/sources.list.d/cuda.list")
    assert not is_watched("/etc/apt/sources.list.d/sub/cuda.list")  # not recursive
    assert not is_watched("/etc/ssh/sshd_config")


def test_services_outside_the_watched_patterns_are_refused_not_reported_absent() -> None:
    state = HostStateResult(services={"docker": ServiceState("enabled", "active")})
    assert state.service("docker").is_active
    # Watched but not on the host: known to be absent.
    assert state.service("nvidia-fabricmanager") == ServiceState("", "")
    # Not covered by the read: "absent" would be a guess, so the operation refuses.
    with pytest.raises(OperationValueError, match="WATCHED_SERVICES"):
        state.service("sshd")
    assert all(f"{p}.service" in SERVICES_SCRIPT for p in WATCHED_SERVICES)
