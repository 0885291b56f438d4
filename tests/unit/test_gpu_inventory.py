"""What preflight decides from each nvidia-smi / PCI state, over real outputs (the fixtures under
tests/fixtures/facts, with their sources) composed into one probe: a GPU host with a broken or
missing driver is still a GPU host, and every state is a finding with its cause and its fix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from facts import nvidia
from facts.probe import HostProbe
from rules.assessment import Assessment, assess, render
from rules.findings import Finding
from tests.unit.test_preflight import bare_host, spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "facts"


def fixture(tool: str, case: str, exit_code: int | None = 0) -> Any:
    text = (FIXTURES / tool / f"{case}.txt").read_text()
    parse = {"nvidia_smi": nvidia.parse_nvidia_smi_query, "pci_probe": nvidia.parse_pci_probe,
             "nvidia_module": nvidia.parse_kernel_module_state}[tool]
    return parse(text, exit_code)


def hgx(lspci: bool) -> nvidia.NvidiaPci:
    """An HGX H200 board (8 GPUs, NVSwitches) read from sysfs, with or without pciutils."""
    return fixture("pci_probe", "hgx_h200_with_lspci" if lspci else "hgx_h200_without_lspci")


def run(tmp_path: Path, probe: HostProbe, settings: str = "") -> Assessment:
    return assess(spec(tmp_path, settings), probe)


def finding(assessment: Assessment, code: str) -> Finding:
    matches = [f for f in assessment.findings if f.code == code]
    assert matches, f"no {code} finding in:\n{render(assessment)}"
    return matches[0]


@pytest.mark.parametrize("lspci", [True, False], ids=["with-lspci", "without-lspci"])
def test_driver_library_mismatch_is_a_gpu_host_that_needs_a_reboot(tmp_path: Path,
                                                                    lspci: bool) -> None:
    probe = bare_host(
        gpus=fixture("nvidia_smi", "version_mismatch", 18),
        pci=hgx(lspci),
        kernel_module=fixture("nvidia_module", "mismatch_after_upgrade"),
    )
    assessment = run(tmp_path, probe)
    assert "no-gpu" not in assessment.findings.codes()
    assert len(assessment.gpus) == 8 and assessment.gpus[0].name == "NVIDIA H200"
    mismatch = finding(assessment, "driver-library-mismatch")
    assert mismatch.severity == "warning" and "reboot" in mismatch.fix
    assert "8 NVIDIA GPU(s) on the PCI bus" in mismatch.measured
    assert assessment.sizing is not None  # sized from the catalog's H200
    assert assessment.plan is not None and assessment.plan.nvswitch  # Fabric Manager comes too
    assert any("fabricmanager" in name for name in assessment.plan.pinned.all())


@pytest.mark.parametrize("lspci", [True, False], ids=["with-lspci", "without-lspci"])
def test_driver_not_loaded_names_the_cause(tmp_path: Path, lspci: bool) -> None:
    probe = bare_host(
        gpus=fixture("nvidia_smi", "no_driver", 9),
        pci=hgx(lspci),
        kernel_module=fixture("nvidia_module", "not_loaded_controller"),
    )
    assessment = run(tmp_path, probe)
    assert "no-gpu" not in assessment.findings.codes() and len(assessment.gpus) == 8
    not_loaded = finding(assessment, "driver-module-not-loaded")
    assert "cannot reach the driver" in not_loaded.what and "reboots" in not_loaded.fix


def test_nouveau_holding_the_gpus_is_named_as_the_cause(tmp_path: Path) -> None:
    probe = bare_host(gpus=fixture("nvidia_smi", "no_driver", 9), pci=hgx(False),
                      kernel_module=nvidia.KernelModuleState("not_loaded", nouveau_loaded=True))
    assert "nouveau holds the GPUs" in finding(run(tmp_path, probe),
                                               "driver-module-not-loaded").what


def test_no_driver_yet_is_a_note_not_a_refusal(tmp_path: Path) -> None:
    assessment = run(tmp_path, bare_host(pci=hgx(False)))
    assert not assessment.refused
    assert finding(assessment, "driver-not-installed").severity == "info"


def test_no_devices_found_with_gpus_on_the_bus_is_a_failed_initialisation(tmp_path: Path) -> None:
    probe = bare_host(
        gpus=fixture("nvidia_smi", "no_devices", 6), pci=hgx(False),
        kernel_module=fixture("nvidia_module", "open_565_matching_userspace"),
    )
    assessment = run(tmp_path, probe)
    failed = finding(assessment, "gpu-init-failed")
    assert failed.severity == "error" and assessment.refused
    assert "Above 4G Decoding" in failed.fix and "Xid 79" in failed.fix
    assert "no-gpu" not in assessment.findings.codes()


def test_no_devices_found_and_nothing_on_the_bus_is_no_gpu(tmp_path: Path) -> None:
    probe = bare_host(gpus=fixture("nvidia_smi", "no_devices", 6),
                      pci=fixture("pci_probe", "no_nvidia_device"))
    assessment = run(tmp_path, probe)
    assert finding(assessment, "no-gpu").severity == "error"
    assert "gpu-init-failed" not in assessment.findings.codes()


def test_an_unreadable_bus_is_not_reported_as_an_empty_one(tmp_path: Path) -> None:
    unreadable = nvidia.NvidiaPci("not_installed", reason="lspci (pciutils) is not installed")
    no_gpu = finding(run(tmp_path, bare_host(pci=unreadable)), "no-gpu")
    assert "could not be read" in no_gpu.measured and "/sys/bus/pci" in no_gpu.fix


def test_mig_sizes_against_the_slices_not_the_card(tmp_path: Path) -> None:
    probe = bare_host(gpus=fixture("nvidia_smi", "h100_mig_with_listing"),
                      pci=nvidia.NvidiaPci("none"))
    assessment = run(tmp_path, probe, "inference = { enabled = false }\n")
    assert assessment.sizing is not None
    slice_bytes = 40 * nvidia.MIG_BYTES_PER_PROFILE_GB
    assert assessment.sizing.request.gpu_memory_bytes == slice_bytes  # not 81559 MiB
    assert assessment.sizing.tp == 1
    assert "slices of 38.0 GiB" in finding(assessment, "mig-enabled").what
    assert "MIG devices: 3g.40gb" in render(assessment)


def test_a_model_too_big_for_a_slice_says_mig_is_on(tmp_path: Path) -> None:
    probe = bare_host(gpus=fixture("nvidia_smi", "h100_mig_with_listing"),
                      pci=nvidia.NvidiaPci("none"))
    assessment = run(tmp_path, probe, 'model = "deepseek-r1-distill-qwen-32b"\n'
                                      "inference = { enabled = false }\n")
    refused = finding(assessment, "model-does-not-fit")
    assert "MIG is on: the engine sees slices of 38.0 GiB; disable MIG or size for a slice" \
        in refused.fix


def test_mig_on_without_instances_and_serving_on_mig_are_refused(tmp_path: Path) -> None:
    # The query alone (no listing): MIG is on and no MIG device is known.
    probe = bare_host(gpus=fixture("nvidia_smi", "h100_mig_enabled"), pci=nvidia.NvidiaPci("none"))
    assert finding(run(tmp_path, probe), "mig-no-instances").severity == "error"
    listed = bare_host(gpus=fixture("nvidia_smi", "h100_mig_with_listing"),
                       pci=nvidia.NvidiaPci("none"))
    assert finding(run(tmp_path, listed), "mig-serving-unsupported").severity == "error"
    assert finding(run(tmp_path, listed, "tensor_parallel = 2\ninference = { enabled = false }\n"),
                   "mig-tensor-parallel").severity == "error"


def test_memory_not_available_is_a_warning_that_says_why(tmp_path: Path) -> None:
    probe = bare_host(gpus=fixture("nvidia_smi", "gb10_unified_memory_na"),
                      pci=nvidia.NvidiaPci("none"))
    assessment = run(tmp_path, probe)
    assert assessment.sizing is None
    unknown = finding(assessment, "gpu-memory-unknown")
    assert "[N/A]" in unknown.what and "unified memory" in unknown.measured
    assert finding(assessment, "cannot-size").what == "cannot size: GPU memory unknown"


def test_memory_not_available_on_a_known_gpu_is_sized_from_the_catalog(tmp_path: Path) -> None:
    query = fixture("nvidia_smi", "h100")
    na = replace(query, gpus=tuple(replace(g, memory_total_mib=None) for g in query.gpus))
    assessment = run(tmp_path, bare_host(gpus=na, pci=nvidia.NvidiaPci("none")))
    assert assessment.sizing is not None
    assert "sized with the catalog's" in finding(assessment, "gpu-memory-unknown").what
