"""End to end: the Python environment step against a Debian 12 host container.

The host is a container of the simulator's host image (Debian 12, python3 3.11 without
python3.11-venv), started here with a plain `sleep` instead of systemd (this step needs no
service) and removed at the end. The controller's CA bundle is mounted over the host's system
bundle: what the network step produces on a real host from settings.network.extra_ca_bundle.

CI cannot afford the real torch lock (2.7 GB of wheels, about 5 GB installed), so this test
drives the same deploy code with small locks generated here with uv (same format, same
hashes, same lock name, `check_pins=False`); the real-lock run is documented in
inventory/locks/README.md. What is proved, in order:

1. a fresh host gets python3.11-venv and the venv from lock A (index download);
2. a second run changes nothing, with the host cut off from the network;
3. lock B from a controller wheelhouse with one tampered wheel fails with pip's hash message
   and the previous venv still imports, unchanged;
4. lock B from a good wheelhouse installs without any network on the host, keeps A beside it;
5. and again a second run changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inventory.pins import load_pins
from inventory.python_locks import load_lock, wheelhouse_dir

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[2]
HOST = "gpufleet-pyenv-e2e"
VENV = "/opt/gpufleet/venv"
LOCK_NAME = load_pins().sets["r535-cuda121"].python.lock  # the small locks stand in for it
CA = "/etc/ssl/certs/ca-certificates.crt"
LOCK_A = "six==1.16.0\n"
LOCK_B = "six==1.17.0\nidna==3.10\n"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=600)


def on_host(script: str) -> str:
    proc = docker("exec", HOST, "sh", "-c", script, check=False)
    assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip()


def rx_bytes() -> int:
    return int(on_host("cat /sys/class/net/eth0/statistics/rx_bytes"))


def make_lock(root: Path, requirements: str) -> Path:
    folder = root / LOCK_NAME
    folder.mkdir(parents=True)
    (folder / "requirements.in").write_text(requirements)
    env = dict(os.environ, SSL_CERT_FILE=CA)
    subprocess.run(
        [str(Path(sys.executable).with_name("uv")), "pip", "compile", "requirements.in",
         "--generate-hashes", "--python-version", "3.11", "--python-platform",
         "x86_64-manylinux_2_28", "--only-binary", ":all:", "--no-config", "--quiet",
         "-o", "cp311-x86_64.txt"],
        cwd=folder, env=env, check=True, timeout=300,
    )
    return root


@pytest.fixture(scope="module")
def host() -> Iterator[str]:
    from tests.sim import simctl

    image = simctl.ensure_shared()["host"]
    docker("rm", "-f", HOST, check=False)
    docker("run", "-d", "--name", HOST, "-v", f"{CA}:{CA}:ro", "--entrypoint", "sleep",
           image, "infinity")
    try:
        yield HOST
    finally:
        docker("rm", "-f", HOST, check=False)


def deploy(tmp: Path, locks: Path, wheelhouse: Path, use_wheelhouse: bool,
           tag: str) -> tuple[int, str, float]:
    """Run `pyinfra inventory.py <a deploy calling python_env()>` against the host."""
    fleet = tmp / f"fleet-{tag}.toml"
    fleet.write_text(textwrap.dedent(f"""\
        [settings]
        weights_path = "/srv/models/m"
        python_env = {{ path = "{VENV}", wheelhouse = {str(use_wheelhouse).lower()} }}
        network = {{ extra_ca_bundle = "{CA}" }}
        [groups.e2e.hosts.pyenv]
        target = "@docker/{HOST}"
        """))
    deploy_file = tmp / f"deploy-{tag}.py"
    deploy_file.write_text(textwrap.dedent(f"""\
        from pathlib import Path
        from deploys.python_env import python_env
        python_env(locks_dir=Path({str(locks)!r}), wheelhouse_root=Path({str(wheelhouse)!r}),
                   check_pins=False)
        """))
    env = dict(os.environ, GPUFLEET_FLEET=str(fleet))
    started = time.monotonic()
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), "-y", "-vv", "inventory.py",
         str(deploy_file)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    output = proc.stdout + proc.stderr
    (tmp / f"pyinfra-{tag}.log").write_text(output)
    return proc.returncode, output, time.monotonic() - started


def link() -> str:
    return on_host(f"readlink {VENV}")


def test_python_env_lifecycle(host: str, tmp_path: Path) -> None:
    locks_a = make_lock(tmp_path / "locks-a", LOCK_A)
    locks_b = make_lock(tmp_path / "locks-b", LOCK_B)
    wheelhouse = tmp_path / "wheelhouse"

    # 1. A fresh host: installs python3.11-venv, then lock A from the index.
    before = rx_bytes()
    code, out, seconds = deploy(tmp_path, locks_a, wheelhouse, False, "1-install-a")
    assert code == 0, out
    index_bytes = rx_bytes() - before
    venv_a = link()
    digest_a = load_lock(LOCK_NAME, "3.11", "x86_64", locks_a).digest
    assert venv_a == f"{VENV}.{digest_a[:12]}"
    assert on_host(f"{VENV}/bin/python -c 'import six; print(six.__version__)'") == "1.16.0"
    assert digest_a in on_host(f"cat {VENV}/gpufleet-lock.json")
    print(f"\n[1] fresh install from the index: {seconds:.1f} s, host received "
          f"{index_bytes} bytes (apt lists + python3.11-venv + pip download)")

    # 2. Converged: no change, and no network needed (the host is cut off).
    mtime = on_host(f"stat -c %Y {venv_a} {venv_a}/lib/python3.11/site-packages")
    docker("network", "disconnect", "bridge", HOST)
    try:
        code, out, seconds = deploy(tmp_path, locks_a, wheelhouse, False, "2-noop")
    finally:
        docker("network", "connect", "bridge", HOST)
    assert code == 0, out
    assert "verified: Python 3.11" in out, out
    assert "Ensure /opt/gpufleet/venv holds" not in out and "python3.11-venv" not in out
    assert link() == venv_a
    assert on_host(f"stat -c %Y {venv_a} {venv_a}/lib/python3.11/site-packages") == mtime
    print(f"[2] no-op run, host offline: {seconds:.1f} s")

    # 3. Lock B from a controller wheelhouse in which one wheel was tampered with.
    subprocess.run([sys.executable, str(REPO / "tools/wheelhouse.py"), "--lock", LOCK_NAME,
                    "--locks-dir", str(locks_b), "--root", str(wheelhouse)],
                   check=True, timeout=300, env=dict(os.environ, PIP_CERT=CA))
    lock_b = load_lock(LOCK_NAME, "3.11", "x86_64", locks_b)
    folder = wheelhouse_dir(lock_b, wheelhouse)
    six_wheel = next(folder.glob("six-1.17.0-*.whl"))
    pristine = six_wheel.read_bytes()
    six_wheel.write_bytes(pristine + b"tampered")
    docker("network", "disconnect", "bridge", HOST)
    try:
        code, out, _ = deploy(tmp_path, locks_b, wheelhouse, True, "3-tampered")
    finally:
        docker("network", "connect", "bridge", HOST)
    assert code != 0, out
    assert "DO NOT MATCH THE HASHES" in out, out
    assert "the previous environment is untouched" in out, out
    assert link() == venv_a
    assert on_host(f"{VENV}/bin/python -c 'import six; print(six.__version__)'") == "1.16.0"
    assert on_host("ls /opt/gpufleet/wheelhouse | grep -c six-1.17.0 || true") == "0"
    assert on_host("ls -d /opt/gpufleet/venv.* | wc -l") == "1"  # the half-built one is gone

    # 4. A good wheelhouse: installs B with the host offline; A stays beside it.
    six_wheel.write_bytes(pristine)
    docker("network", "disconnect", "bridge", HOST)
    try:
        code, out, seconds = deploy(tmp_path, locks_b, wheelhouse, True, "4-wheelhouse-b")
    finally:
        docker("network", "connect", "bridge", HOST)
    assert code == 0, out
    pushed = sum(p.stat().st_size for p in folder.glob("*.whl"))
    assert link() == f"{VENV}.{lock_b.digest[:12]}"
    assert on_host(f"{VENV}/bin/python -c 'import idna, six; print(six.__version__)'") == "1.17.0"
    assert on_host(f"{venv_a}/bin/python -c 'import six; print(six.__version__)'") == "1.16.0"
    print(f"[4] lock B from the wheelhouse, host offline: {seconds:.1f} s, {pushed} bytes "
          "pushed from the controller, 0 from the index")

    # 5. Converged again.
    code, out, _ = deploy(tmp_path, locks_b, wheelhouse, True, "5-noop")
    assert code == 0 and "verified: Python 3.11" in out, out
    assert "Ensure /opt/gpufleet/venv holds" not in out
