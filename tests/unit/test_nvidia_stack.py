"""The NVIDIA stack's rules: what preflight refuses for the stack before anything is installed
(CUDA vs driver and distro, CDI vs Docker, docker-ce, daemon.json), Compose per distro, the
fleet's daemon.json wish, what the state read must cover, and the verification's findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploys.cuda_toolkit import CUDA_PROFILE_PATH
from deploys.nvidia_repositories import LISTS_STAMP
from facts.gpu_stack import StackVerificationResult
from facts.host_state import HostStateResult, is_watched
from facts.nvidia import parse_nvidia_smi_query
from facts.system import OsRelease, SystemInfoResult, parse_nvcc_version
from inventory.fleet import HostSpec, load_fleet
from rules.assessment import assess
from rules.container_runtime import (
    CDI_SPEC_PATH,
    COMPOSE_BY_DISTRO,
    DAEMON_JSON_CLAIMS_PATH,
    DAEMON_JSON_PATH,
    docker_supports_cdi,
    wanted_daemon_json,
)
from rules.driver_state import NOUVEAU_BLACKLIST_PATH
from rules.host_plan import HostPlan, plan_host
from rules.network import APT_PROXY_PATH, EXTRA_CA_PATH, PROXY_ENV_PATH
from rules.packages import preferences_path
from rules.verification import gpu_container_fix, verification_findings
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


def errors(host_spec: HostSpec, os_id: str = "ubuntu", version: str = "22.04",
           **probe: object) -> list[str]:
    system = SystemInfoResult("ok", OsRelease(os_id, version, None, None), "x86_64", "amd64",
                              "5.15.0-105-generic", True)
    return [f.code for f in assess(host_spec, bare_host(system=system, **probe)).findings.errors]


def test_cuda_121_on_ubuntu_2204_passes(tmp_path: Path) -> None:
    assert errors(spec(tmp_path)) == []


def test_driver_too_old_for_cuda_121_is_refused(tmp_path: Path) -> None:
    old = pinned_spec(tmp_path, driver="525.147.05-1")
    (finding,) = [f for f in assess(old, bare_host()).findings.errors
                  if f.code == "driver-too-old-for-cuda"]
    assert "530.30.02" in finding.required


def test_debian12_without_a_mirror_is_refused_with_the_alternatives(tmp_path: Path) -> None:
    host_spec = spec(tmp_path)
    assert "cuda-not-in-distro-repo" in errors(host_spec, "debian", "12")


def test_debian12_with_a_mirror_is_left_to_the_repository_check(tmp_path: Path) -> None:
    mirrored = spec(tmp_path, """
        [settings.repos.cuda]
        url = "http://mirror.example.internal/cuda/{distro}/{arch}"
    """)
    assert "cuda-not-in-distro-repo" not in errors(mirrored, "debian", "12")


def plan(tmp_path: Path, host_spec: HostSpec | None = None) -> HostPlan:
    result = plan_host(host_spec or spec(tmp_path), bare_host())
    assert isinstance(result, HostPlan)
    return result


def test_cdi_needs_docker_25(tmp_path: Path) -> None:
    cdi = spec(tmp_path, '[settings.docker]\ngpu_device_protection = "cdi"\n')
    (finding,) = [f for f in assess(cdi, bare_host()).findings.errors
                  if f.code == "cdi-needs-newer-docker"]  # ubuntu2204 pins docker.io 24.0.7
    assert "25.0" in finding.what and "cgroupfs" in finding.fix
    assert "cdi-needs-newer-docker" not in errors(spec(tmp_path))
    assert docker_supports_cdi("26.1.3-0ubuntu1~22.04.1")
    assert not docker_supports_cdi("20.10.24+dfsg1-1+deb12u1+b6")


def test_docker_ce_is_never_replaced_silently(tmp_path: Path) -> None:
    with_ce = HostStateResult(installed={"docker-ce": "5:26.1.4-1~ubuntu.22.04~jammy"})
    assert "docker-ce-installed" in errors(spec(tmp_path), state=with_ce)
    assert "docker-ce-installed" not in errors(
        spec(tmp_path), state=HostStateResult(installed={"docker.io": "x"}))


def test_a_daemon_json_that_cannot_be_merged_is_refused_before_any_change(
        tmp_path: Path) -> None:
    broken = HostStateResult.from_dict({"files": {DAEMON_JSON_PATH: {"content": "{not json"}}})
    assert "daemon-json-unreadable" in errors(spec(tmp_path), state=broken)
    fine = HostStateResult.from_dict({"files": {DAEMON_JSON_PATH: {"content": "{}"}}})
    assert "daemon-json-unreadable" not in errors(spec(tmp_path), state=fine)


def test_compose_per_distro() -> None:
    assert COMPOSE_BY_DISTRO["debian12"].command == ("docker-compose",)
    assert COMPOSE_BY_DISTRO["ubuntu2204"].command == ("docker", "compose")


def test_fleet_settings_become_the_daemon_json_wish(tmp_path: Path) -> None:
    wanted = wanted_daemon_json(spec(tmp_path, """
        [settings.docker]
        default_runtime_nvidia = true
        registry_mirrors = ["https://mirror.example.internal/"]
        daemon_json = { "live-restore" = true }
    """).settings.docker)
    assert wanted.default_runtime_nvidia and wanted.protection == "cgroupfs"
    assert wanted.registry_mirrors == ("https://mirror.example.internal",)
    assert wanted.extra == {"live-restore": True}


def test_every_file_the_stack_writes_is_covered_by_the_one_state_read(tmp_path: Path) -> None:
    host_plan = plan(tmp_path)
    written = [
        APT_PROXY_PATH, PROXY_ENV_PATH, EXTRA_CA_PATH, NOUVEAU_BLACKLIST_PATH, CUDA_PROFILE_PATH,
        DAEMON_JSON_PATH, DAEMON_JSON_CLAIMS_PATH, CDI_SPEC_PATH, LISTS_STAMP,
        *(preferences_path(c) for c in ("nvidia-driver", "cuda-toolkit", "docker",
                                         "nvidia-container-toolkit")),
        *(source.sources_path for source in host_plan.sources),
        *(source.keyring_path for source in host_plan.sources),
    ]
    assert [path for path in written if not is_watched(path)] == []


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


GPU_CONTAINER_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_container"


@pytest.mark.parametrize("case", sorted(p.stem for p in GPU_CONTAINER_FIXTURES.glob("*.txt")))
def test_a_failed_gpu_container_is_reported_by_the_line_that_explains_it(
        one_h100: HostSpec, case: str) -> None:
    output = (GPU_CONTAINER_FIXTURES / f"{case}.txt").read_text()
    source = (GPU_CONTAINER_FIXTURES / f"{case}.source").read_text()
    cause = source.split("expected cause:", 1)[1].strip()
    (finding,) = verification_findings(one_h100, verification(H100_SMI, output, 125), None)
    assert finding.code == "gpu-container-failed"
    assert cause in finding.measured, finding.measured
    assert "error waiting for container" not in finding.measured  # Docker's noise, not a cause
    assert finding.fix != gpu_container_fix("something unheard of")  # a fix for this cause
