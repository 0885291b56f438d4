"""Preflight decisions: from a fleet spec and one host probe to findings, without a host.

The probe values are built from the facts' own dataclasses (their parsers are tested on real
command output in tests/unit/facts); here we test what preflight concludes from them.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from components.dcgm_exporter.decisions import exporter_pin_findings
from facts.docker import ContainerToolkitResult, DockerInfoResult
from facts.host_state import HostStateResult
from facts.nvidia import (
    Gpu,
    GpuQuery,
    KernelModuleState,
    NvidiaPci,
    PciDevice,
    SecureBootState,
)
from facts.probe import HostProbe
from facts.storage import FreeSpaceResult, LeafDisk, Mount, StorageLocationResult
from facts.system import (
    CudaToolkitResult,
    OsRelease,
    PythonInterpretersResult,
    SystemInfoResult,
)
from facts.weights_files import WeightsListing
from inventory.fleet import HostSpec, load_fleet
from rules.assessment import assess, render, storage_class
from rules.host_plan import HostPlan, plan_host
from tests.sim.weights import config_json

Refusal = list  # plan_host answers a host it cannot plan with its findings

TB = 10**12


def spec(tmp_path: Path, settings: str = "", pins: str | None = None) -> HostSpec:
    path = tmp_path / "fleet.toml"
    path.write_text(textwrap.dedent("""
        [settings]
        weights_path = "/srv/models/m"
    """) + textwrap.dedent(settings) + "\n[groups.g.hosts.h]\n")
    return load_fleet(path).hosts[0]


def h100_pci(count: int = 8, nvswitches: int = 4) -> NvidiaPci:
    gpus = tuple(
        PciDevice(f"0000:{0x18 + i:02x}:00.0", "0302", "3D controller",
                  "NVIDIA Corporation GH100 [H100 SXM5 80GB]", "10de", "2330", "a1")
        for i in range(count)
    )
    switches = tuple(
        PciDevice(f"0000:0{5 + i}:00.0", "0680", "Bridge",
                  "NVIDIA Corporation GH100 [H100 NVSwitch]", "10de", "22a3", "a1")
        for i in range(nvswitches)
    )
    return NvidiaPci("ok" if gpus or switches else "none", gpus=gpus, nvswitches=switches)


def smi(name: str, memory_mib: int, cc: tuple[int, int], count: int = 1) -> GpuQuery:
    return GpuQuery("ok", gpus=tuple(
        Gpu(i, name, f"GPU-{i}", memory_mib, 0, cc, "535.183.06", f"00000000:{i:02x}:00.0",
            True, None)
        for i in range(count)
    ))


def nvme_location(kind: str = "nvme", transport: str | None = "nvme",
                  rotational: bool = False) -> StorageLocationResult:
    return StorageLocationResult(
        "ok", "/srv/models/m", "/srv", Mount("/dev/mapper/vg-models", "xfs", "/srv"),
        (LeafDisk("nvme0n1", "disk", transport, rotational, "SAMSUNG MZQL23T8HCLS", "3.5T"),),
        kind,  # type: ignore[arg-type]
    )


def bare_host(**changes: object) -> HostProbe:
    """A bare Ubuntu 22.04 HGX box: GPUs on the bus, no driver yet, weights on NVMe."""
    probe = HostProbe(
        gpus=GpuQuery("not_installed", reason="nvidia-smi is not installed"),
        pci=h100_pci(),
        kernel_module=KernelModuleState("not_loaded", nouveau_loaded=True),
        secure_boot=SecureBootState("disabled", source="mokutil"),
        system=SystemInfoResult(
            "ok", OsRelease("ubuntu", "22.04", "jammy", "Ubuntu 22.04.4 LTS"), "x86_64",
            "amd64", "5.15.0-105-generic", True,
        ),
        cuda=CudaToolkitResult("not_installed"),
        python=PythonInterpretersResult("ok", {"python3": "3.10.12", "python3.10": "3.10.12"}),
        weights_location=nvme_location(),
        weights_free_space=FreeSpaceResult("ok", "/srv/models/m", "/srv", 3 * TB, 3 * TB, "/srv"),
        docker=DockerInfoResult("not_installed"),
        container_toolkit=ContainerToolkitResult("not_installed"),
        weights=WeightsListing("ok", files={"config.json": (700, "1.0")},
                               config=config_json("deepseek-r1-distill-qwen-7b")),
        state=HostStateResult(),
    )
    return replace(probe, **changes)  # type: ignore[arg-type]


def codes(tmp_path: Path, probe: HostProbe, settings: str = "", severity: str = "error") -> list[str]:
    return [f.code for f in assess(spec(tmp_path, settings), probe).findings.of(severity)]  # type: ignore[arg-type]


def test_a_bare_hgx_box_passes_and_the_smallest_tensor_parallel_is_chosen(tmp_path: Path) -> None:
    assessment = assess(spec(tmp_path), bare_host())
    assert assessment.findings.errors == []
    assert not assessment.refused
    assert assessment.sizing is not None and assessment.sizing.fits
    assert assessment.sizing.tp == 1  # a 7B model needs one H100, not eight
    assert [g.source for g in assessment.gpus] == ["PCI bus"] * 8
    assert assessment.gpus[0].name == "NVIDIA H100 80GB HBM3"  # named from the catalog
    assert "model-fits" in assessment.findings.codes()
    report = render(assessment)
    assert "8 x NVIDIA H100 80GB HBM3 (from PCI bus)" in report
    assert "0 error(s)" in report


def test_70b_fp16_on_one_4090_is_refused_with_numbers_and_ways_out(tmp_path: Path) -> None:
    probe = bare_host(gpus=smi("NVIDIA GeForce RTX 4090", 24564, (8, 9)), pci=h100_pci(0, 0))
    assessment = assess(
        spec(tmp_path, 'model = "deepseek-r1-distill-llama-70b"\nprecision = "fp16"\n'), probe
    )
    assert assessment.refused
    finding = next(f for f in assessment.findings.errors if f.code == "model-does-not-fit")
    assert "does not fit on 1 x NVIDIA GeForce RTX 4090" in finding.what
    assert "short by" in finding.measured
    assert finding.fix.startswith("what would fit:")
    assert assessment.sizing is not None
    assert assessment.sizing.weights_total > 140 * 10**9  # the brief's ~140 GB at fp16


def test_no_gpu_at_all_says_so(tmp_path: Path) -> None:
    probe = bare_host(pci=NvidiaPci("none"))
    assert "no-gpu" in codes(tmp_path, probe)


def test_expected_gpus_are_checked(tmp_path: Path) -> None:
    probe = bare_host(gpus=smi("NVIDIA H100 80GB HBM3", 81559, (9, 0), count=7))
    found = codes(tmp_path, probe, "gpus = { count = 8, model = 'A100', memory_gib = 90 }\n")
    assert {"gpu-count-differs", "gpu-model-differs", "gpu-memory-differs"} <= set(found)


def test_catalog_memory_is_not_held_against_the_expected_minimum(tmp_path: Path) -> None:
    # Before the driver runs, memory comes from the catalog (nominal); only nvidia-smi counts.
    assert "gpu-memory-differs" not in codes(tmp_path, bare_host(), "gpus = { memory_gib = 90 }\n")


def test_secure_boot_with_unsigned_dkms_modules_is_refused(tmp_path: Path) -> None:
    probe = bare_host(secure_boot=SecureBootState("enabled", source="mokutil"))
    assert "secure-boot-unsigned-driver" in codes(tmp_path, probe)


def test_python_outside_torchs_range_is_refused(tmp_path: Path) -> None:
    probe = bare_host(python=PythonInterpretersResult("ok", {"python3": "3.12.3"}))
    assert "python-unsupported-by-torch" in codes(tmp_path, probe)
    assert "python-unsupported-by-torch" not in codes(
        tmp_path, probe, "python_env = { enabled = false }\n"
    )


def test_debian12_needs_a_mirror_for_cuda_121(tmp_path: Path) -> None:
    probe = bare_host(system=SystemInfoResult(
        "ok", OsRelease("debian", "12", "bookworm", "Debian GNU/Linux 12"), "x86_64", "amd64",
        "6.1.0-18-amd64", True))
    assert "cuda-not-in-distro-repo" in codes(tmp_path, probe)
    mirror = 'repos = { cuda = { url = "https://mirror.internal/cuda/{distro}/{arch}" } }\n'
    assert "cuda-not-in-distro-repo" not in codes(tmp_path, probe, mirror)
    assert "cuda-from-mirror" in codes(tmp_path, probe, mirror, severity="info")


def test_hdd_is_refused_under_require_and_accepted_when_downgraded(tmp_path: Path) -> None:
    probe = bare_host(weights_location=nvme_location("hdd", "sata", True))
    assert "storage-hdd" in codes(tmp_path, probe)
    accepted = assess(spec(tmp_path, 'preflight = { downgrade_errors = ["storage-hdd"] }\n'), probe)
    assert not accepted.refused
    warning = next(f for f in accepted.findings.warnings if f.code == "storage-hdd")
    assert "accepted: settings.preflight.downgrade_errors" in warning.fix


def test_storage_classes_map_ssd_transports() -> None:
    assert storage_class(nvme_location()) == "nvme"
    assert storage_class(nvme_location("ssd", "sata")) == "sata-ssd"
    assert storage_class(nvme_location("ssd", "sas")) == "sas-ssd"
    assert storage_class(nvme_location("ssd", "usb")) == "usb"


def test_free_space_short(tmp_path: Path) -> None:
    probe = bare_host(weights_free_space=FreeSpaceResult("ok", "/srv/models/m", "/srv", 10**9))
    assert "disk-space-short" in codes(tmp_path, probe)


def test_weights_already_in_place_count_as_room(tmp_path: Path) -> None:
    # a converged host: the model's weights on the disk, a third of their size free besides
    size = spec(tmp_path).model.weights_bytes
    shards = {f"model-0000{i}-of-00002.safetensors": (size // 2, "1.0") for i in (1, 2)}
    present = replace(bare_host().weights, files={"config.json": (700, "1.0"), **shards})
    free = FreeSpaceResult("ok", "/srv/models/m", "/srv", size // 3)
    assert "disk-space-short" not in codes(tmp_path, bare_host(weights=present,
                                                               weights_free_space=free))
    assert "disk-space-short" in codes(tmp_path, bare_host(weights_free_space=free))


def test_blackwell_is_refused_for_torch_210(tmp_path: Path) -> None:
    probe = bare_host(gpus=smi("NVIDIA B200", 183359, (10, 0), count=8), pci=h100_pci(0, 0))
    assert "gpu-arch-unsupported-by-torch" in codes(tmp_path, probe)


def test_driver_library_mismatch_is_reported(tmp_path: Path) -> None:
    probe = bare_host(
        gpus=GpuQuery("version_mismatch", reason="Driver/library version mismatch"),
        kernel_module=KernelModuleState("loaded", "535.161.08", None, False, ("535.183.06",),
                                        False, True),
    )
    assert "driver-library-mismatch" in codes(tmp_path, probe, severity="warning")


def test_sampling_extremes_warn(tmp_path: Path) -> None:
    assert "temperature-too-high" in codes(
        tmp_path, bare_host(), "sampling = { temperature = 1.5 }\n", severity="warning"
    )


def test_explicit_tensor_parallel_that_cannot_work_is_an_error(tmp_path: Path) -> None:
    found = codes(tmp_path, bare_host(), "tensor_parallel = 16\n")
    assert "sizing-input" in found


@pytest.mark.parametrize(
    ("os_id", "version", "arch", "expected"),
    [
        ("ubuntu", "22.04", "amd64", "ubuntu2204"),
        ("rocky", "9", "x86_64", Refusal),
        ("ubuntu", "22.04", "ppc64el", Refusal),
    ],
)
def test_plan_names_distro_and_packages_or_refuses(
    tmp_path: Path, os_id: str, version: str, arch: str, expected: object
) -> None:
    probe = bare_host(system=SystemInfoResult(
        "ok", OsRelease(os_id, version, None, None), "x86_64", arch, "k", True))
    plan = plan_host(spec(tmp_path), probe)
    if expected is Refusal:
        assert isinstance(plan, list)
        assert [f.code for f in plan] == ["unsupported-platform"]
        assert "Ubuntu 20.04/22.04/24.04 and Debian 11/12" in plan[0].required
    else:
        assert isinstance(plan, HostPlan)
        assert plan.distro == expected
        assert plan.nvswitch  # the HGX box has NVSwitches: Fabric Manager is pinned too
        assert plan.pinned.driver["nvidia-fabricmanager-535"] == "535.183.06-1"
        assert plan.docker_packages == {"docker.io": "24.0.7-0ubuntu2~22.04.1"}


def test_plan_refuses_a_distro_the_pin_set_has_no_docker_for(tmp_path: Path) -> None:
    probe = bare_host(system=SystemInfoResult(
        "ok", OsRelease("ubuntu", "24.04", "noble", None), "x86_64", "amd64", "k", True))
    plan = plan_host(spec(tmp_path), probe)
    assert isinstance(plan, list)
    assert [f.code for f in plan] == ["docker-not-pinned"]
    assert "no Docker engine version for ubuntu2404" in plan[0].what
    # and preflight refuses the host for it, before anything changes
    assert "docker-not-pinned" in codes(tmp_path, probe)


def test_every_image_the_fleet_pulls_is_warned_about_until_pinned_by_digest(
        tmp_path: Path) -> None:
    """image-not-pinned covers the GPU test image and the DCGM exporter, not only the engine."""
    def unpinned(assessment_spec: HostSpec) -> list[str]:
        return [f.what for f in assess(assessment_spec, bare_host()).findings.warnings
                if f.code == "image-not-pinned"]

    host_spec = spec(tmp_path)
    assert any(w.startswith("the GPU test image nvidia/cuda:") for w in unpinned(host_spec))
    (exporter,) = exporter_pin_findings(host_spec)
    assert exporter.code == "image-not-pinned" and "dcgm-exporter" in exporter.what
    digest = "sha256:" + "0" * 64
    pinned = spec(tmp_path, f'verify = {{ gpu_test_image = "nvidia/cuda@{digest}" }}')
    assert not any("GPU test image" in w for w in unpinned(pinned))


def test_expected_warnings_are_said_in_one_line_and_only_where_the_fleet_expects_them(
        tmp_path: Path) -> None:
    """A clean rehearsal shows no warning a user cannot act on: the simulator's fleet file
    declares its own (settings.preflight.expected_warnings) and preflight says them in one
    line; a fleet that declares nothing (a real one) still sees every warning in full."""
    probe = bare_host()
    plain = render(assess(spec(tmp_path), probe))
    tagged = [f.code for f in assess(spec(tmp_path), probe).findings.warnings]
    assert "image-not-pinned" in tagged, plain  # the serving image is pinned by tag only
    assert "WARNING [image-not-pinned]" in plain
    expecting = ('preflight = { expected_warnings = ["image-not-pinned"], '
                 'expected_because = "in the simulator" }\n')
    report = render(assess(spec(tmp_path, expecting), probe))
    assert "WARNING [image-not-pinned]" not in report
    count = tagged.count("image-not-pinned")
    line = next(x for x in report.splitlines() if "expected in the simulator:" in x)
    assert line.strip() == ("expected in the simulator: image-not-pinned"
                            + (f" x{count}" if count > 1 else "")
                            + " (settings.preflight.expected_warnings)")
    assert f"and {count} expected" in report.splitlines()[-1]
    # the other warnings are still said in full
    others = [c for c in tagged if c != "image-not-pinned"]
    for code in others:
        assert f"WARNING [{code}]" in report


def test_an_expected_code_never_hides_an_error(tmp_path: Path) -> None:
    probe = bare_host(weights_location=nvme_location("hdd", "sata", True))
    found = assess(spec(tmp_path, 'preflight = { expected_warnings = ["storage-hdd"] }\n'), probe)
    assert found.refused
    assert "ERROR [storage-hdd]" in render(found)
