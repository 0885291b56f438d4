"""The entry deploy against the simulated fleet: converge, a no-op second run, refusals that
change nothing, and a doctor that only reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import (
    FLEETS,
    PYTHON_ENV_ON_HGX_ONLY,
    SIM_FLEET,
    WITHOUT_PYTHON_ENV,
    host_sh,
    pyinfra,
    sim_fleet_variant,
    snapshot,
)
from tests.e2e.stack_helpers import product_copy
from tests.sim import simctl

pytestmark = pytest.mark.sim

SIM_HOSTS = ["gpufleet-sim-h100x8", "gpufleet-sim-a100x2"]


@pytest.fixture(scope="module")
def fresh_fleet(sim: None) -> None:
    simctl.reset(SIM_HOSTS, quiet=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sim_fleet_variant(tmp_path_factory.mktemp("fleet"), WITHOUT_PYTHON_ENV,
                             replace=PYTHON_ENV_ON_HGX_ONLY)


def test_rehearsal_converges_and_the_second_run_changes_nothing(
    fresh_fleet: None, fleet: Path
) -> None:
    first = pyinfra("deploys/gpu_host.py", fleet)
    assert first.returncode == 0, first.output
    assert first.changed(), "a fresh host should have needed changes"
    assert not first.failed()

    second = pyinfra("deploys/gpu_host.py", fleet)
    assert second.returncode == 0, second.output
    assert second.changed() == {}, f"the second run changed something: {second.changed()}"

    # The stand-in repositories verify through the keyring we installed: no trusted=yes,
    # no apt-key; apt-get update succeeds with signature checking on.
    for host in SIM_HOSTS:
        sources = host_sh(host, "cat /etc/apt/sources.list.d/gpufleet-*.sources")
        assert "Signed-By: /etc/apt/keyrings/gpufleet-cuda.gpg" in sources
        assert "trusted" not in sources.lower()
        update = host_sh(host, "apt-get update 2>&1")
        assert "gpufleet-sim-repo" in update and "NO_PUBKEY" not in update
        assert host_sh(host, "apt-key list 2>/dev/null | grep -c gpufleet || true").strip() == "0"


def test_the_real_python_lock_is_installed_and_imports(fresh_fleet: None, fleet: Path) -> None:
    """The real torch210-cu121 lock, installed by the rehearsal above on the HGX host."""
    host = "gpufleet-sim-h100x8"
    out = host_sh(host, "/opt/gpufleet/venv/bin/python -c 'import numpy, torch, transformers; "
                        "print(torch.__version__, torch.version.cuda, transformers.__version__, "
                        "numpy.__version__)'")
    torch_version, cuda, transformers_version, numpy_version = out.split()
    assert (torch_version, cuda, transformers_version) == ("2.1.0+cu121", "12.1", "4.43.4")
    assert int(numpy_version.split(".")[0]) < 2
    # the A100 host has the Python environment switched off
    assert host_sh("gpufleet-sim-a100x2", "test -e /opt/gpufleet/venv && echo yes || echo no"
                   ).strip() == "no"


def test_a_wrong_key_fingerprint_is_refused(fresh_fleet: None, tmp_path: Path) -> None:
    # The CUDA repo's key is pinned to NVIDIA's real fingerprint: the served test key differs.
    fleet = sim_fleet_variant(tmp_path, WITHOUT_PYTHON_ENV, replace={
        'key_fingerprint = "E6EC58197F6A6D34A90230E7B299573318D8EAAE"\n\n[settings.repos.container':
        'key_fingerprint = "EB693B3035CD5710E231E123A4B469963BF863CC"\n\n[settings.repos.container',
    })
    host_sh("gpufleet-sim-a100x2", "rm -f /etc/apt/keyrings/gpufleet-cuda.gpg")
    run = pyinfra("deploys/gpu_host.py", fleet, "--limit", "@docker/gpufleet-sim-a100x2")
    assert run.returncode != 0
    assert "but EB693B3035CD5710E231E123A4B469963BF863CC is expected; not trusting it" in run.output
    assert host_sh("gpufleet-sim-a100x2",
                   "test -e /etc/apt/keyrings/gpufleet-cuda.gpg && echo present || echo absent"
                   ).strip() == "absent"


def test_a_pinned_version_the_repositories_lack_stops_the_host_before_installing(
    fresh_fleet: None, tmp_path: Path
) -> None:
    """A pin file asking for versions the (stand-in) repositories do not have: one message
    naming each package, the wanted version and what is offered; nothing installed."""
    tree = product_copy(tmp_path / "tree")
    pins = tree / "inventory" / "pins.toml"
    pins.write_text(pins.read_text()
                    .replace('version = "12.1.1-1"', 'version = "12.1.9-1"')
                    .replace('version = "1.14.6-1"', 'version = "1.99.0-1"'))
    host = "gpufleet-sim-a100x2"
    simctl.reset([host], quiet=True)
    run = pyinfra("deploys/gpu_host.py", sim_fleet_variant(tmp_path, WITHOUT_PYTHON_ENV),
                  "--limit", f"@docker/{host}", cwd=tree)
    assert run.returncode != 0
    assert "the pinned versions are not offered by the configured repositories" in run.output
    assert "cuda-toolkit-12-1 12.1.9-1: the configured repositories" in run.output
    assert "offer 12.1.1-1, 12.1.0-1" in run.output
    for package in ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
                    "libnvidia-container-tools", "libnvidia-container1"):
        assert f"{package} 1.99.0-1:" in run.output
    assert "cuda-drivers-535 535.183.06-1" not in run.output  # offered: not reported
    installed = host_sh(host, "dpkg -l | grep -E 'nvidia|cuda' || true")
    assert installed.strip() == "", f"packages were installed despite the refusal:\n{installed}"


def test_a_host_too_small_for_its_model_is_refused_and_left_untouched(sim: None) -> None:
    host = "gpufleet-sim-rtx4090"
    simctl.reset([host], quiet=True)
    before = snapshot(host)
    run = pyinfra("deploys/gpu_host.py", FLEETS / "too-small.toml")
    assert run.returncode != 0
    assert "ERROR [model-does-not-fit] deepseek-r1-distill-llama-70b at bf16 does not fit on 1 x NVIDIA GeForce RTX 4090" in run.output
    assert "what would fit:" in run.output
    # Secure Boot is on for this simulated host and the pin set's modules are DKMS-built:
    assert "[secure-boot-unsigned-driver]" in run.output
    assert "preflight refused this host; nothing was changed" in run.output
    assert snapshot(host) == before


def test_the_doctor_reports_and_changes_nothing(sim: None) -> None:
    hosts = ["gpufleet-sim-rtx4090", "gpufleet-sim-a100x2"]
    before = {host: snapshot(host) for host in hosts}
    small = pyinfra("deploys/doctor.py", FLEETS / "too-small.toml")
    fits = pyinfra("deploys/doctor.py", SIM_FLEET, "--data", "model=deepseek-r1-distill-qwen-7b",
                   "--data", "precision=bf16", inventory="@docker/gpufleet-sim-a100x2")
    assert "gpufleet doctor for sim-rtx4090" in small.output
    assert "would be REFUSED by preflight" in small.output
    assert "Sizing" in small.output or "per GPU" in small.output
    assert "gpufleet doctor for @docker/gpufleet-sim-a100x2" in fits.output
    assert "2 x NVIDIA A100-PCIE-40GB" in fits.output
    # the doctor adds no operation at all
    for run in (small, fits):
        assert run.results is not None and run.results["operations"] == [], run.output
    assert {host: snapshot(host) for host in hosts} == before
