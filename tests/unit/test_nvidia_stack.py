"""The CUDA, Docker and verification decisions of the NVIDIA stack, and its one state query."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploys.container_toolkit import cdi_refusal, wanted_daemon_json
from deploys.cuda_toolkit import cuda_refusal, installed_driver_refusal
from deploys.docker_engine import docker_ce_refusal
from deploys.nvidia_stack import stack_query
from deploys.plan import HostPlan, plan_host
from deploys.verify_stack import verification_findings
from facts.host_state import StackVerificationResult
from facts.nvidia import parse_nvidia_smi_query
from facts.system import parse_nvcc_version
from inventory.fleet import HostSpec, load_fleet
from inventory.nvidia_stack import COMPOSE_BY_DISTRO, docker_supports_cdi
from tests.unit.test_preflight import bare_host, spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "facts"
H100_SMI = (FIXTURES / "nvidia_smi" / "h100.txt").read_text()  # one real H100 row, 590.48.01
NVCC_121 = (FIXTURES / "nvcc" / "cuda_12_1.txt").read_text()


def pinned_spec(tmp_path: Path, settings: str = "", driver: str | None = None) -> HostSpec:
    pins = Path("inventory/pins.toml").read_text()
    if driver:
        pins = pins.replace('version = "535.183.06-1"', f'version = "{driver}"')
        pins = pins.replace('branch = "535"', f'branch = "{driver[:3]}"')
    (tmp_path / "pins.toml").write_text(pins)
    (tmp_path / "fleet.toml").write_text(
        '[settings]\nweights_path = "/srv/m"\n' + settings + "\n[groups.g.hosts.h]\n")
    return load_fleet(tmp_path / "fleet.toml", tmp_path / "pins.toml").hosts[0]


def test_cuda_121_on_ubuntu_2204_passes(tmp_path: Path) -> None:
    assert cuda_refusal(spec(tmp_path), "ubuntu", "22.04") is None


def test_driver_too_old_for_cuda_121_is_refused(tmp_path: Path) -> None:
    message = cuda_refusal(pinned_spec(tmp_path, driver="525.147.05-1"), "ubuntu", "22.04")
    assert message is not None
    assert "driver-too-old-for-cuda" in message and "530.30.02" in message


def test_debian12_without_a_mirror_is_refused_with_the_alternatives(tmp_path: Path) -> None:
    message = cuda_refusal(spec(tmp_path), "debian", "12")
    assert message is not None and "cuda-not-in-distro-repo" in message
    assert "ubuntu 22.04" in message and "mirror" in message


def test_debian12_with_a_mirror_is_left_to_the_repository_check(tmp_path: Path) -> None:
    mirrored = spec(tmp_path, """
        [settings.repos.cuda]
        url = "http://mirror.example.internal/cuda/{distro}/{arch}"
    """)
    assert cuda_refusal(mirrored, "debian", "12") is None


def test_the_installed_driver_is_checked_too(tmp_path: Path) -> None:
    host_spec = spec(tmp_path)
    assert installed_driver_refusal({"nvidia-utils-535": "535.183.06-1"}, host_spec) is None
    old = installed_driver_refusal({"nvidia-utils-535": "525.60.13-1"}, host_spec)
    assert old is not None and "530.30.02" in old
    assert "no NVIDIA driver" in (installed_driver_refusal({}, host_spec) or "")


def plan(tmp_path: Path, host_spec: HostSpec | None = None) -> HostPlan:
    result = plan_host(host_spec or spec(tmp_path), bare_host())
    assert isinstance(result, HostPlan)
    return result


def test_cdi_needs_docker_25(tmp_path: Path) -> None:
    cdi = spec(tmp_path, '[settings.docker]\ngpu_device_protection = "cdi"\n')
    message = cdi_refusal(cdi, plan(tmp_path, cdi))  # ubuntu2204 pins docker.io 24.0.7
    assert message is not None and "25.0" in message and "cgroupfs" in message
    assert cdi_refusal(spec(tmp_path), plan(tmp_path)) is None
    assert docker_supports_cdi("26.1.3-0ubuntu1~22.04.1")
    assert not docker_supports_cdi("20.10.24+dfsg1-1+deb12u1+b6")


def test_docker_ce_is_never_replaced_silently() -> None:
    assert docker_ce_refusal({"docker.io": "x"}) is None
    message = docker_ce_refusal({"docker-ce": "5:26.1.4-1~ubuntu.22.04~jammy"})
    assert message is not None and "docker-ce" in message


def test_compose_per_distro() -> None:
    assert COMPOSE_BY_DISTRO["debian12"].command == ("docker-compose",)
    assert COMPOSE_BY_DISTRO["ubuntu2204"].command == ("docker", "compose")


def test_fleet_settings_become_the_daemon_json_wish(tmp_path: Path) -> None:
    wanted = wanted_daemon_json(spec(tmp_path, """
        [settings.docker]
        default_runtime_nvidia = true
        registry_mirrors = ["https://mirror.example.internal/"]
        daemon_json = { "live-restore" = true }
    """))
    assert wanted.default_runtime_nvidia and wanted.protection == "cgroupfs"
    assert wanted.registry_mirrors == ("https://mirror.example.internal",)
    assert wanted.extra == {"live-restore": True}


def test_one_query_covers_every_package_file_and_service(tmp_path: Path) -> None:
    host_spec = spec(tmp_path)
    query = stack_query(host_spec, bare_host(), plan(tmp_path))
    assert {"nvidia-driver-535", "nvidia-fabricmanager-535", "cuda-toolkit-12-1", "docker.io",
            "docker-compose-v2", "nvidia-container-toolkit", "libnvidia-container1",
            "docker-ce"} <= set(query.packages)
    assert "/etc/docker/daemon.json" in query.files
    assert "/etc/apt/preferences.d/gpufleet-nvidia-driver.pref" in query.files
    assert query.services == ("nvidia-persistenced", "nvidia-fabricmanager", "docker")
    assert query.images == (host_spec.settings.verify.gpu_test_image,)


def verification(smi: str, container: str, container_exit: int = 0) -> StackVerificationResult:
    return StackVerificationResult(
        gpus=parse_nvidia_smi_query(smi, 0), cuda=parse_nvcc_version(NVCC_121, 0),
        container_exit=container_exit, container_output=container)


@pytest.fixture
def one_h100(tmp_path: Path) -> HostSpec:
    # The fixture's driver is 590.48.01: pin it, so only what a test changes differs.
    return pinned_spec(tmp_path, """
        [settings.gpus]
        count = 1
        model = "H100 80GB HBM3"
        memory_gib = 79
    """, driver="590.48.01-1")


def test_a_working_stack_verifies(one_h100: HostSpec) -> None:
    assert verification_findings(one_h100, verification(H100_SMI, H100_SMI), None) == []


def test_verification_names_each_problem(one_h100: HostSpec) -> None:
    no_driver = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    found = verification_findings(
        one_h100, verification(H100_SMI, no_driver, container_exit=9), False)
    assert [f.code for f in found] == ["fabric-manager-down", "gpu-container-failed"]


def test_verification_checks_count_and_pinned_driver(tmp_path: Path) -> None:
    eight = pinned_spec(tmp_path, "[settings.gpus]\ncount = 8\n")  # pins 535.183.06
    codes = [f.code for f in verification_findings(eight, verification(H100_SMI, H100_SMI), None)]
    assert codes == ["gpu-count-differs", "driver-version-differs"]
