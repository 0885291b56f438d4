"""The end of the NVIDIA stack: prove it works, not that it was installed.

nvidia-smi must see the GPUs the fleet file expects (count, model, memory; the same rule
preflight applies), run the pinned driver, nvcc must say the pinned CUDA release, Fabric
Manager must run on NVSwitch systems, and a container started with GPUs must run nvidia-smi.
Read-only: a verified host reports no change.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from deploys.driver import DriverOutcome
from deploys.plan import HostPlan
from deploys.preflight import MIB, GpuView, expected_gpu_findings
from facts.host_state import StackQuery, StackVerification, StackVerificationResult, stack_state
from facts.nvidia import GpuQuery, parse_nvidia_smi_query
from inventory.findings import Finding
from inventory.fleet import HostSpec
from inventory.nvidia_stack import FABRICMANAGER_SERVICE, reboot_pending_finding, refusal_message
from operations.docker_config import image_from_archive
from operations.stack_checks import check


def gpu_views(gpus: GpuQuery) -> list[GpuView]:
    return [
        GpuView(
            name=gpu.name,
            memory_bytes=gpu.memory_total_mib * MIB if gpu.memory_total_mib else None,
            compute_capability=(f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
                                if gpu.compute_capability else None),
            source="nvidia-smi",
        )
        for gpu in gpus.gpus
    ]


def verification_findings(
    spec: HostSpec, result: StackVerificationResult, fabric_manager_active: bool | None
) -> list[Finding]:
    """Everything wrong with a finished stack; empty when it works. Pure."""
    pins = spec.pins
    found: list[Finding] = []
    if not result.gpus.ok:
        found.append(Finding(
            "error", "nvidia-smi-failed", "nvidia-smi cannot list the GPUs",
            f"{result.gpus.status}: {result.gpus.reason}", "nvidia-smi lists every GPU",
            "read the output above; `dmesg | grep -i nvrm` on the host",
        ))
    else:
        found += expected_gpu_findings(spec, gpu_views(result.gpus))
        drivers = sorted({g.driver_version or "?" for g in result.gpus.gpus})
        if drivers != [pins.driver.upstream]:
            found.append(Finding(
                "error", "driver-version-differs", "nvidia-smi reports another driver",
                ", ".join(drivers), f"{pins.driver.upstream} (pins.toml)",
                "re-run the deploy; reboot if the module was not reloaded",
            ))
    if result.cuda.status != "ok" or result.cuda.version != pins.cuda.release:
        found.append(Finding(
            "error", "nvcc-differs", "nvcc does not report the pinned CUDA release",
            result.cuda.version or f"{result.cuda.status}: {result.cuda.reason}",
            f"CUDA {pins.cuda.release}", f"check {pins.cuda.toolkit_package} and /usr/local/cuda",
        ))
    if fabric_manager_active is False:
        found.append(Finding(
            "error", "fabric-manager-down", "Fabric Manager is not running on an NVSwitch system",
            "nvidia-fabricmanager inactive", "active (CUDA fails with error 802 without it)",
            "journalctl -u nvidia-fabricmanager: its version must equal the loaded driver's",
        ))
    inside = parse_nvidia_smi_query(result.container_output, result.container_exit)
    expected = len(result.gpus.gpus) if result.gpus.ok else None
    if result.container_exit != 0 or not inside.ok or (
            expected is not None and len(inside.gpus) != expected):
        found.append(Finding(
            "error", "gpu-container-failed",
            "a container started with --gpus all does not see the GPUs",
            f"exit {result.container_exit}, {len(inside.gpus)} GPU(s): "
            + (result.container_output.strip().splitlines() or ["no output"])[-1][:200],
            f"{expected if expected is not None else 'all'} GPU(s) inside "
            f"{spec.settings.verify.gpu_test_image}",
            "check /etc/docker/daemon.json and `docker info | grep -i runtime`; the image "
            "must be present or pullable (settings.verify.image_archives)",
        ))
    return found


@deploy("Verify the GPU stack")
def verify_stack(
    spec: HostSpec, plan: HostPlan, query: StackQuery, outcome: DriverOutcome
) -> None:
    image = spec.settings.verify.gpu_test_image
    for archive in spec.settings.verify.image_archives:
        image_from_archive(
            name=f"Ensure the GPU test image {image} is present", image=image,
            archive=str(spec.controller_path(archive)), query=query,
        )

    def verdict() -> tuple[str | None, str]:
        if outcome.reboot_pending:
            return refusal_message("the stack is installed but not running yet:",
                                   [reboot_pending_finding(outcome.reboot_pending)]), ""
        fm_active = (stack_state(query).service(FABRICMANAGER_SERVICE).is_active
                     if plan.nvswitch else None)
        result = host.get_fact(StackVerification, image=image)
        found = verification_findings(spec, result, fm_active)
        errors = [f for f in found if f.severity == "error"]
        if errors:
            return refusal_message("the GPU stack does not work:", errors), ""
        count = len(result.gpus.gpus)
        return None, (f"{count} x {result.gpus.gpus[0].name}, driver {spec.pins.driver.upstream}"
                      f", CUDA {result.cuda.version}, GPU container OK")

    check(name="Ensure the GPUs, CUDA and a GPU container work", verdict=verdict)
