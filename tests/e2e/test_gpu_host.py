"""The entry deploy on simulated hosts: converge (over the sources NVIDIA's install guides leave
behind), a no-op second run, the real Python lock, refusals that change nothing, and a doctor
that only reads.

The hosts are this module's own copies of the simulated fleet (gpufleet-e2e-*): the rehearsal
fleet (`make rehearse`) is never touched by the tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import stack_helpers as sh
from tests.e2e.conftest import FLEETS, PYINFRA, REPO, PyinfraRun, pyinfra
from tests.e2e.hosts import ok

pytestmark = pytest.mark.sim

H100, A100, RTX = (sh.copy_name("e2e", n) for n in
                   ("gpufleet-sim-h100x8", "gpufleet-sim-a100x2", "gpufleet-sim-rtx4090"))
HOSTS = [H100, A100]
CUDA_URL = "http://gpufleet-sim-repo/cuda/repos/debian12/x86_64/"
CTK_URL = "http://gpufleet-sim-repo/libnvidia-container/stable/deb/amd64/"
# What NVIDIA's install guides leave on a host (cuda-keyring's .list and the container
# toolkit's .list), pointing at the same repositories under another keyring.
NVIDIA_DOCUMENTED_SOURCES = (
    "curl -fsS http://gpufleet-sim-repo/keys/gpufleet-sim-test.asc | gpg --dearmor "
    "> /usr/share/keyrings/cuda-archive-keyring.gpg && "
    "cp /usr/share/keyrings/cuda-archive-keyring.gpg "
    "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg && "
    f"echo 'deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {CUDA_URL} /' "
    "> /etc/apt/sources.list.d/cuda-debian12-x86_64.list && "
    "echo 'deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] "
    f"{CTK_URL} /' > /etc/apt/sources.list.d/nvidia-container-toolkit.list && apt-get update -q"
)


@pytest.fixture(scope="module")
def hosts(sim: None) -> Iterator[list[str]]:
    sh.start_hosts(HOSTS, fresh=True)
    yield HOSTS
    sh.remove_later([*HOSTS, RTX])  # the machine is left as it was found


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The real torch lock (2.7 GB) on the HGX host only.
    return sh.write_fleet(tmp_path_factory.mktemp("fleet"), HOSTS,
                          settings={H100: {"python_env": {"enabled": True}}})


def converges_together(fleet: Path, count: int = 2) -> list[PyinfraRun]:
    """``count`` converges of the whole fleet, started at the same moment."""
    env = {**os.environ, "GPUFLEET_FLEET": str(fleet)}
    procs = [subprocess.Popen([PYINFRA, "-y", "--json", "inventory.py", "deploys/gpu_host.py"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(count)]
    runs = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        try:
            results = json.loads(out).get("results")
        except json.JSONDecodeError:
            results = None
        runs.append(PyinfraRun(proc.returncode, out, err, results))
    return runs


def test_converges_over_nvidias_documented_sources_and_the_second_run_changes_nothing(
    hosts: list[str], fleet: Path
) -> None:
    ok(A100, NVIDIA_DOCUMENTED_SOURCES)  # apt works with them alone
    # Two operators converge the fresh fleet at once (issue 24): each host is converged by
    # one run; the other stops on it before reading it, naming the holder, and changes
    # nothing there. One venv, one reboot per host.
    runs = converges_together(fleet)
    changed: dict[str, list[str]] = {}
    for run in runs:
        for name, on in run.changed().items():
            changed.setdefault(name, []).extend(on)
    for host in HOSTS:
        pyinfra_name = f"@docker/{host}"
        winners = [r for r in runs if any(pyinfra_name in on for on in r.changed().values())]
        assert len(winners) == 1, [r.output[-3000:] for r in runs]
        winner = winners[0]
        assert not any(pyinfra_name in on for on in winner.failed().values()), winner.output
        loser = runs[1 - runs.index(winner)]
        stopped = re.search(rf"{re.escape(host)}: locked by \S+ on \S+ \(pid \d+\), running "
                            r"`pyinfra -y --json inventory\.py deploys/gpu_host\.py`, since ",
                            loser.output)
        assert stopped, loser.output[-4000:]
        assert loser.returncode != 0
        # (a run left with no host prints pyinfra's "No hosts remaining!" and no results)
        assert loser.results is None or any(pyinfra_name in on
                                            for on in loser.failed().values())
        reboots = [n for n, on in changed.items() if n.startswith("Reboot") and pyinfra_name in on]
        assert len(reboots) <= 1, reboots
    assert ok(H100, "ls -d /opt/gpufleet/venv.*").split() == [
        ok(H100, "readlink -f /opt/gpufleet/venv").strip()]  # one venv, the live one
    assert changed, "a fresh host should have needed changes"
    for host in HOSTS:
        assert ok(host, "test -e /var/lib/gpufleet/run.lock && echo held || echo free").strip() \
            == "free"
    # NVIDIA's own .list files went (kept aside), and the output says what replaced them.
    replaced = [name for name in changed
                if name.split(" | ")[-1].startswith("Replace /etc/apt/")]
    assert len(replaced) == 2 and all(changed[n] == [f"@docker/{A100}"]
                                      for n in replaced), changed
    assert "with gpufleet's signed source" in replaced[0]
    assert ok(A100, "ls /etc/apt/sources.list.d/").split() == [
        "debian.sources", "gpufleet-cuda.sources", "gpufleet-nvidia-container-toolkit.sources"]
    kept = ok(A100, "cat /var/backups/gpufleet/apt-sources/cuda-debian12-x86_64.list.*")
    assert "cuda-archive-keyring.gpg" in kept

    second = pyinfra("deploys/gpu_host.py", fleet)
    assert second.returncode == 0, second.output
    assert second.changed() == {}, f"the second run changed something: {second.changed()}"

    # The stand-in repositories verify through the keyring we installed: no trusted=yes,
    # no apt-key; apt-get update succeeds with signature checking on.
    for host in HOSTS:
        sources = ok(host, "cat /etc/apt/sources.list.d/gpufleet-*.sources")
        assert "Signed-By: /etc/apt/keyrings/gpufleet-cuda.gpg" in sources
        assert "trusted" not in sources.lower()
        update = ok(host, "apt-get update 2>&1")
        assert "gpufleet-sim-repo" in update and "NO_PUBKEY" not in update
        assert "Conflicting values" not in update
        assert ok(host, "apt-key list 2>/dev/null | grep -c gpufleet || true").strip() == "0"


def test_the_real_python_lock_is_installed_and_imports(hosts: list[str], fleet: Path) -> None:
    """The real torch210-cu121 lock, installed by the converge above on the HGX host."""
    out = ok(H100, "/opt/gpufleet/venv/bin/python -c 'import numpy, torch, transformers; "
                   "print(torch.__version__, torch.version.cuda, transformers.__version__, "
                   "numpy.__version__)'")
    torch_version, cuda, transformers_version, numpy_version = out.split()
    assert (torch_version, cuda, transformers_version) == ("2.1.0+cu121", "12.1", "4.43.4")
    assert int(numpy_version.split(".")[0]) < 2
    # the A100 host has the Python environment switched off
    assert ok(A100, "test -e /opt/gpufleet/venv && echo yes || echo no").strip() == "no"


def test_a_wrong_key_fingerprint_is_refused(hosts: list[str], tmp_path: Path) -> None:
    # The CUDA repo's key is pinned to NVIDIA's real fingerprint: the served test key differs.
    fleet = sh.write_fleet(tmp_path, [A100])
    sim_key = 'key_fingerprint = "E6EC58197F6A6D34A90230E7B299573318D8EAAE"\n\n[settings.repos.c'
    assert sim_key in fleet.read_text()
    fleet.write_text(fleet.read_text().replace(sim_key, sim_key.replace(
        "E6EC58197F6A6D34A90230E7B299573318D8EAAE", "EB693B3035CD5710E231E123A4B469963BF863CC")))
    ok(A100, "rm -f /etc/apt/keyrings/gpufleet-cuda.gpg")
    run = pyinfra("deploys/gpu_host.py", fleet)
    assert run.returncode != 0
    assert "but exactly EB693B3035CD5710E231E123A4B469963BF863CC is expected; not trusting it" \
        in run.output
    assert ok(A100, "test -e /etc/apt/keyrings/gpufleet-cuda.gpg && echo present || "
                    "echo absent").strip() == "absent"


def test_a_pinned_version_the_repositories_lack_stops_the_host_before_installing(
    hosts: list[str], tmp_path: Path
) -> None:
    """A pin file asking for versions the (stand-in) repositories do not have: one message
    naming each package, the wanted version and what is offered; nothing installed."""
    tree = sh.product_copy(tmp_path / "tree")
    pins = tree / "inventory" / "pins.toml"
    pins.write_text(pins.read_text()
                    .replace('version = "12.1.1-1"', 'version = "12.1.9-1"')
                    .replace('version = "1.14.6-1"', 'version = "1.99.0-1"'))
    sh.start_hosts([A100], fresh=True)
    run = pyinfra("deploys/gpu_host.py", sh.write_fleet(tmp_path, [A100]), cwd=tree)
    assert run.returncode != 0
    assert "the pinned versions are not offered by the configured repositories" in run.output
    assert "cuda-toolkit-12-1 12.1.9-1: the configured repositories" in run.output
    assert "offer 12.1.1-1, 12.1.0-1" in run.output
    for package in ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
                    "libnvidia-container-tools", "libnvidia-container1"):
        assert f"{package} 1.99.0-1:" in run.output
    assert "cuda-drivers-535 535.183.06-1" not in run.output  # offered: not reported
    installed = ok(A100, "dpkg -l | grep -E 'nvidia|cuda' || true")
    assert installed.strip() == "", f"packages were installed despite the refusal:\n{installed}"


def too_small_fleet(tmp_path: Path) -> Path:
    """tests/e2e/fleets/too-small.toml, aimed at this module's RTX 4090 copy."""
    path = tmp_path / "too-small.toml"
    path.write_text((FLEETS / "too-small.toml").read_text()
                    .replace("@docker/gpufleet-sim-rtx4090", f"@docker/{RTX}"))
    return path


def test_a_host_too_small_for_its_model_is_refused_and_left_untouched(
        sim: None, tmp_path: Path) -> None:
    sh.start_hosts([RTX], fresh=True)
    before = sh.snapshot(RTX)
    run = pyinfra("deploys/gpu_host.py", too_small_fleet(tmp_path))
    assert run.returncode != 0
    assert "ERROR [model-does-not-fit] deepseek-r1-distill-llama-70b at bf16 does not fit on 1 x NVIDIA GeForce RTX 4090" in run.output
    assert "what would fit:" in run.output
    # Secure Boot is on for this simulated host and the pin set's modules are DKMS-built:
    assert "[secure-boot-unsigned-driver]" in run.output
    assert "preflight refused this host; nothing was changed" in run.output
    assert sh.snapshot(RTX) == before


def test_serving_that_cannot_work_is_refused_before_anything_changes(
        sim: None, tmp_path: Path) -> None:
    """A consumer GPU with an image that needs CUDA forward compatibility (error 804 at
    startup), and a model the pinned engine cannot load: refused by preflight, host untouched."""
    sh.start_hosts([RTX], fresh=False)
    before = sh.snapshot(RTX)
    cases = {
        "image-needs-forward-compat": {"pin_set": "r535-fwdcompat"},
        "engine-cannot-load-model": {"model": "deepseek-r1-distill-llama-8b"},
    }
    for code, settings in cases.items():
        fleet = sh.write_fleet(tmp_path, [RTX], inference=True, name=f"{code}.toml",
                               settings={RTX: {**settings, "concurrency": 1,
                                               "context_length": 4096}})
        run = pyinfra("deploys/gpu_host.py", fleet)
        assert run.returncode != 0
        assert f"ERROR [{code}]" in run.output, run.output[-3000:]
        assert "preflight refused this host; nothing was changed" in run.output
    assert sh.snapshot(RTX) == before


def test_the_doctor_reports_and_changes_nothing(hosts: list[str], tmp_path: Path) -> None:
    sh.start_hosts([RTX], fresh=False)
    before = {host: sh.snapshot(host) for host in (RTX, A100)}
    small = pyinfra("deploys/doctor.py", too_small_fleet(tmp_path))
    fits = pyinfra("deploys/doctor.py", sh.write_fleet(tmp_path, [A100]), "--data",
                   "model=deepseek-r1-distill-qwen-7b", "--data", "precision=bf16",
                   inventory=f"@docker/{A100}")
    assert "gpufleet doctor for sim-rtx4090" in small.output
    assert "would be REFUSED by preflight" in small.output
    assert "Sizing" in small.output or "per GPU" in small.output
    assert f"gpufleet doctor for @docker/{A100}" in fits.output
    assert "2 x NVIDIA A100-PCIE-40GB" in fits.output
    # The GPU nvidia-smi names is found in the catalog: what one replica carries, estimated.
    assert "capacity ESTIMATE (datasheet figures, not a measurement): one replica" in fits.output
    # the doctor adds no operation at all
    for run in (small, fits):
        assert run.results is not None and run.results["operations"] == [], run.output
    assert {host: sh.snapshot(host) for host in (RTX, A100)} == before
