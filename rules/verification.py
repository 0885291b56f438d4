"""What a finished GPU stack must show, as a pure function of what it reports: nvidia-smi sees
the GPUs the fleet file expects (the same rule preflight applies) and runs the pinned driver,
nvcc says the pinned CUDA release, Fabric Manager runs on NVSwitch systems, and a container
started with GPUs sees them all.
"""

from __future__ import annotations

from facts.gpu_stack import StackVerificationResult
from facts.nvidia import parse_nvidia_smi_query
from inventory.fleet import HostSpec
from rules.findings import Finding, explaining_lines
from rules.gpu_inventory import expected_gpu_findings, gpu_views


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
        cause = explaining_lines(result.container_output)
        found.append(Finding(
            "error", "gpu-container-failed",
            "a container started with --gpus all does not see the GPUs",
            f"exit {result.container_exit}, {len(inside.gpus)} GPU(s): {cause}",
            f"{expected if expected is not None else 'all'} GPU(s) inside "
            f"{spec.settings.verify.gpu_test_image}",
            gpu_container_fix(cause),
        ))
    return found


# What the GPU test container's failure means, by the line that explains it.
_GPU_CONTAINER_FIXES = (
    ("load library failed: libnvidia-ml.so",
     "the container toolkit cannot load the driver's NVML library: the driver's user-space "
     "libraries are missing or half-installed; reinstall the pinned driver (re-run the deploy) "
     "and check `ldconfig -p | grep libnvidia-ml`"),
    ("could not select device driver",
     "Docker knows no GPU device driver: the NVIDIA container toolkit is missing, or Docker "
     "was not restarted after `nvidia-ctk runtime configure` (re-run the deploy)"),
    ("Unknown runtime specified nvidia",
     "/etc/docker/daemon.json has no nvidia runtime: re-run the deploy (it merges the runtime "
     "in), then `systemctl restart docker`"),
    ("unsatisfied condition: cuda>=",
     "the image needs a newer CUDA than the driver supports: pin an image built for the "
     "driver's CUDA, or a newer driver"),
    ("Failed to initialize NVML: Unknown Error",
     "the container lost its GPU devices (systemd re-applied cgroups under Docker's cgroupfs "
     "driver: NVIDIA/nvidia-docker#1730); use Docker's systemd cgroup driver and restart the "
     "containers"),
    ("Driver/library version mismatch",
     "the loaded kernel module is not the installed driver: reboot the host"),
)


def gpu_container_fix(cause: str) -> str:
    for needle, fix in _GPU_CONTAINER_FIXES:
        if needle.lower() in cause.lower():
            return fix
    return ("check /etc/docker/daemon.json and `docker info | grep -i runtime`; the image "
            "must be present or pullable (settings.verify.image_archives)")


