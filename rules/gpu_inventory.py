"""The host's GPUs as preflight, the doctor and the verification see them, and what an engine
would run on, as pure functions of one probe.

Where a driver answers, nvidia-smi is the truth. Where it does not, the PCI bus (sysfs, named
by lspci when installed) and the GPU catalog stand in, and every state nvidia-smi can be in
becomes a finding with its cause and its fix. With MIG on, an engine sees MIG devices, not
cards: `engine_devices` is what the sizing plans against.
"""

from __future__ import annotations

from dataclasses import dataclass

from facts.nvidia import GpuQuery, MigDevice, NvidiaPci
from facts.probe import HostProbe
from inventory.catalog import GpuSpec, catalog_gpus
from inventory.fleet import HostSpec
from rules.findings import Finding, Findings

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class GpuView:
    """One physical GPU as preflight sees it: from nvidia-smi when a driver runs, else the PCI
    bus and the catalog."""

    name: str
    memory_bytes: int | None
    compute_capability: str | None  # "9.0"
    source: str  # "nvidia-smi", "catalog" (identified on the PCI bus), ...
    mig: tuple[MigDevice, ...] | None = None  # None: MIG off (or not a MIG GPU)


@dataclass(frozen=True)
class EngineDevice:
    """What a serving engine gets as one CUDA device: a whole GPU or one MIG device."""

    name: str
    memory_bytes: int


def engine_devices(gpus: list[GpuView]) -> list[EngineDevice]:
    """The CUDA devices an engine would see (MIG devices replace their card). Devices whose
    memory is unknown are left out: they cannot be sized."""
    devices = []
    for gpu in gpus:
        if gpu.mig is not None:
            devices += [EngineDevice(f"{gpu.name} MIG {d.profile}", d.memory_bytes)
                        for d in gpu.mig]
        elif gpu.memory_bytes:
            devices.append(EngineDevice(gpu.name, gpu.memory_bytes))
    return devices


def mig_enabled(gpus: list[GpuView]) -> bool:
    return any(gpu.mig is not None for gpu in gpus)


# --- reading the GPUs --------------------------------------------------------------------------
def _catalog_by_pci_id() -> dict[str, GpuSpec]:
    """NVIDIA device id (the part after 10de:) -> catalog GPU."""
    return {
        device_id.lower(): gpu
        for gpu in catalog_gpus().values()
        for device_id in gpu.pci_device_ids
    }


def _catalog_by_name() -> dict[str, GpuSpec]:
    return {name: gpu for gpu in catalog_gpus().values() for name in gpu.names}


def gpu_views(gpus: GpuQuery) -> list[GpuView]:
    """The GPUs as nvidia-smi lists them (memory as reported; None where it says [N/A])."""
    return [
        GpuView(
            name=gpu.name,
            memory_bytes=gpu.memory_total_mib * MIB if gpu.memory_total_mib else None,
            compute_capability=(f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
                                if gpu.compute_capability else None),
            source="nvidia-smi",
            mig=gpu.mig_devices if gpu.mig_enabled else None,
        )
        for gpu in gpus.gpus
    ]


def _with_catalog_memory(views: list[GpuView]) -> tuple[list[GpuView], list[Finding]]:
    """nvidia-smi printed [N/A] for memory: use the catalog's figure when it knows the GPU."""
    catalog = _catalog_by_name()
    found: list[Finding] = []
    out = []
    for name in sorted({v.name for v in views if v.memory_bytes is None and v.mig is None}):
        gpu = catalog.get(name)
        found.append(Finding(
            "warning", "gpu-memory-unknown",
            f"nvidia-smi reports no memory size for {name} ([N/A])"
            + (f": sized with the catalog's {gpu.memory_bytes / GIB:.1f} GiB" if gpu else
               ": this GPU cannot be sized"),
            "memory.total [N/A]: unified memory (GH200/GB10-class systems), a vGPU profile or "
            "a driver that cannot read the board", "a memory size per GPU",
            "check `nvidia-smi -q -d MEMORY`" + ("" if gpu else "; add the GPU and its memory "
                                                 "to inventory/catalog/gpus.toml to size it"),
        ))
    for view in views:
        gpu = catalog.get(view.name) if view.memory_bytes is None and view.mig is None else None
        out.append(view if gpu is None else GpuView(
            view.name, gpu.memory_bytes, view.compute_capability, "nvidia-smi + catalog"))
    return out, found


def _mig_findings(views: list[GpuView]) -> list[Finding]:
    found = []
    empty = [v for v in views if v.mig == ()]
    if empty:
        found.append(Finding(
            "error", "mig-no-instances",
            f"MIG is on for {len(empty)} GPU(s) without any MIG device: an engine sees "
            "nothing of them",
            "mig.mode.current Enabled, `nvidia-smi -L` lists no MIG device", "MIG off, or "
            "MIG devices created",
            "disable MIG (`nvidia-smi -i <gpu> -mig 0`, then reset the GPU or reboot), or "
            "create instances (`nvidia-smi mig -cgi <profiles> -C`)",
        ))
    sliced = [v for v in views if v.mig]
    if sliced:
        sizes = sorted({d.memory_bytes for v in sliced for d in v.mig or ()})
        profiles = sorted({d.profile for v in sliced for d in v.mig or ()})
        found.append(Finding(
            "warning", "mig-enabled",
            f"MIG is on: the engine sees slices of {sizes[0] / GIB:.1f}"
            + (f"-{sizes[-1] / GIB:.1f}" if len(sizes) > 1 else "")
            + " GiB, not whole GPUs; sizing uses the slices",
            f"MIG devices {', '.join(profiles)} on {len(sliced)} GPU(s)",
            "whole GPUs for serving (tensor parallelism does not span MIG devices)",
            "disable MIG (`nvidia-smi -i <gpu> -mig 0`, then reset) or size for a slice",
        ))
    return found


def _bus_findings(probe: HostProbe, on_bus: int) -> list[Finding]:
    """nvidia-smi did not list the GPUs: say why, from the module state, and what to do."""
    smi, module, pci = probe.gpus, probe.kernel_module, probe.pci
    where = f"{on_bus} NVIDIA GPU(s) on the PCI bus" if on_bus else _bus_words(pci)
    if smi.status == "not_installed":
        if not on_bus:
            return []
        return [Finding(
            "info", "driver-not-installed",
            "no NVIDIA driver yet: the GPUs were identified on the PCI bus",
            f"nvidia-smi not installed; {where}", "the pinned driver",
            "the deploy installs it (and reboots to load it)",
        )]
    if smi.status == "no_driver":
        if module.status == "loaded":
            cause = ("the module is loaded but /dev/nvidia* is missing or unreadable (a "
                     "container without the devices, or permissions)")
        elif module.nouveau_loaded:
            cause = "nouveau holds the GPUs, so the nvidia module cannot load"
        elif probe.secure_boot.enforcing:
            cause = "Secure Boot is on and may have refused an unsigned nvidia module"
        elif module.userspace_versions:
            cause = (f"driver {', '.join(module.userspace_versions)} is installed but its module "
                     "is not loaded (not built for the running kernel, or not loaded yet)")
        else:
            cause = "no nvidia kernel module is loaded"
        return [Finding(
            "warning", "driver-module-not-loaded",
            f"nvidia-smi cannot reach the driver: {cause}",
            f"{smi.reason}; {where}", "the pinned driver loaded",
            "the deploy installs the pinned driver and reboots (settings.driver.reboot = "
            "'if-needed'); if it persists: `dmesg | grep -i nvrm`, `dkms status`",
        )]
    if smi.status == "version_mismatch":
        return [Finding(
            "warning", "driver-library-mismatch",
            "the loaded NVIDIA kernel module and the installed driver libraries differ "
            "(nvidia-smi: Driver/library version mismatch)",
            f"loaded {module.loaded_version or '?'}, installed "
            f"{', '.join(module.userspace_versions) or smi.nvml_library_version or '?'}; "
            f"{where}",
            "one driver version, loaded and installed",
            "reboot the host (the deploy does it when settings.driver.reboot = 'if-needed')",
        )]
    if smi.status == "no_devices":
        if pci.status == "none":
            return []  # the no-gpu finding says it
        return [Finding(
            "error", "gpu-init-failed",
            "the NVIDIA driver is loaded but initialised no GPU (nvidia-smi: No devices were "
            "found)",
            where,
            "every GPU on the bus initialised by the driver",
            "`dmesg | grep -i -e NVRM -e Xid`: 'BAR ... is invalid' / 'not enough memory "
            "resources' means enabling Above 4G Decoding (and Resizable BAR) in the firmware; "
            "Xid 79 'fallen off the bus' means power or seating (reseat, check PSU cables); "
            "a GPU newer than the driver needs the pinned driver branch that supports it",
        )]
    return [Finding(
        "warning", "nvidia-smi-unreadable",
        "nvidia-smi answered in a way gpufleet cannot read; the GPUs were taken from the PCI bus",
        f"{smi.reason or smi.status}: {smi.raw[:200]!r}; {where}", "a readable GPU query",
        "run `nvidia-smi` on the host and read its message",
    )]


def _bus_words(pci: NvidiaPci) -> str:
    if pci.status == "none":
        return "no NVIDIA device on the PCI bus"
    if pci.status in ("unknown", "not_installed"):
        return f"the PCI bus could not be read ({pci.reason})"
    return "no NVIDIA GPU on the PCI bus"


def gpus_of(probe: HostProbe) -> tuple[list[GpuView], Findings]:
    """The host's GPUs, and findings about how they could (not) be read."""
    found = Findings()
    if probe.gpus.ok:
        views, memory = _with_catalog_memory(gpu_views(probe.gpus))
        found.extend(memory)
        found.extend(_mig_findings(views))
        return views, found
    # No working driver: identify the GPUs from the PCI bus and the catalog.
    by_id = _catalog_by_pci_id()
    views = []
    unknown_ids: set[str] = set()
    for device in probe.pci.gpus:
        gpu = by_id.get((device.device_id or "").lower())
        if gpu is None:
            views.append(GpuView(device.device_name, None, None, "PCI bus"))
            if device.device_id in unknown_ids:
                continue
            unknown_ids.add(device.device_id or "")
            found.add(Finding(
                "warning", "gpu-not-in-catalog",
                f"GPU {device.device_name} at {device.address} is not in the GPU catalog, so "
                "its memory is unknown until the driver runs",
                f"PCI id {device.vendor_id}:{device.device_id}",
                "an entry in inventory/catalog/gpus.toml",
                "add the GPU to the catalog, or rerun preflight once the driver is installed",
            ))
        else:
            views.append(GpuView(gpu.names[0] if gpu.names else gpu.id, gpu.memory_bytes,
                                 gpu.compute_capability, "PCI bus"))
    found.extend(_bus_findings(probe, len(views)))
    return views, found


def no_gpu_finding(model_id: str, pci: NvidiaPci) -> Finding:
    """Neither nvidia-smi nor the PCI bus shows a GPU."""
    if pci.status in ("unknown", "not_installed"):
        return Finding(
            "error", "no-gpu",
            f"no NVIDIA GPU found: this host cannot serve {model_id}",
            f"nvidia-smi lists none and {_bus_words(pci)}", "at least one NVIDIA GPU",
            "check /sys/bus/pci/devices/*/vendor for 0x10de (or install pciutils and run "
            "`lspci -nn -d 10de:`)",
        )
    return Finding(
        "error", "no-gpu",
        f"no NVIDIA GPU found: this host cannot serve {model_id}",
        f"nvidia-smi lists none and {_bus_words(pci)}", "at least one NVIDIA GPU",
        "check that this is the GPU server you meant (target in the fleet file); on a VM, that "
        "the GPU is passed through (vendor 0x10de in /sys/bus/pci/devices/*/vendor)",
    )


def expected_gpu_findings(spec: HostSpec, gpus: list[GpuView]) -> list[Finding]:
    """The GPUs against what the fleet file expects (settings.gpus)."""
    expected = spec.settings.gpus
    found: list[Finding] = []
    if expected.count is not None and len(gpus) != expected.count:
        found.append(Finding(
            "error", "gpu-count-differs",
            "the host does not have the number of GPUs the fleet file expects",
            f"{len(gpus)} GPU(s)", f"{expected.count} (settings.gpus.count)",
            "check the hardware (reseated cards, a GPU fallen off the bus: dmesg, "
            "/sys/bus/pci/devices) or correct settings.gpus.count",
        ))
    if expected.model:
        wrong = sorted({g.name for g in gpus if expected.model.lower() not in g.name.lower()})
        if wrong:
            found.append(Finding(
                "error", "gpu-model-differs", "GPUs of another model than expected",
                ", ".join(wrong), f"names containing {expected.model!r} (settings.gpus.model)",
                "correct settings.gpus.model, or move this host to the right group",
            ))
    if expected.memory_gib:
        # Only nvidia-smi's reading is exact; the catalog's figure for a PCI id is nominal.
        small = [g for g in gpus if g.source == "nvidia-smi" and g.memory_bytes
                 and g.memory_bytes < expected.memory_gib * GIB]
        if small:
            found.append(Finding(
                "error", "gpu-memory-differs", "GPUs with less memory than expected",
                ", ".join(f"{g.name} {g.memory_bytes / GIB:.1f} GiB" for g in small
                          if g.memory_bytes),
                f">= {expected.memory_gib} GiB each (settings.gpus.memory_gib)",
                "correct settings.gpus.memory_gib",
            ))
    return found


def render_gpus(gpus: list[GpuView]) -> str:
    """One line: "8 x NVIDIA H100 80GB HBM3 (from nvidia-smi)"."""
    by_name: dict[str, int] = {}
    for gpu in gpus:
        by_name[gpu.name] = by_name.get(gpu.name, 0) + 1
    line = ", ".join(f"{n} x {name}" for name, n in by_name.items())
    sources = sorted({gpu.source for gpu in gpus})
    line += f" (from {', '.join(sources)})"
    slices = [d.profile for gpu in gpus for d in gpu.mig or ()]
    if mig_enabled(gpus):
        line += f"; MIG devices: {', '.join(slices) or 'none'}"
    return line
