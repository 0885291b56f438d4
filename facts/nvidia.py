"""NVIDIA facts: GPUs as nvidia-smi sees them, PCI devices, kernel module state, Secure Boot.

Each fact is a pyinfra ``FactBase`` over a pure ``parse_*`` function (text in, frozen dataclass
out). Parsers never raise: text they cannot read becomes ``status="unknown"`` with a ``reason``
and the ``raw`` output, which checks report as "could not check". A missing tool or a missing GPU
is a normal answer with its own status ("absent"), never an error.

Public API
----------
Facts: ``NvidiaGpus``, ``NvidiaPciDevices``, ``NvidiaKernelModule``, ``SecureBoot``.
Parsers: ``parse_nvidia_smi_query``, ``parse_lspci_nvidia``, ``parse_kernel_module_state``,
``parse_mokutil_sb_state``, ``parse_efivar_secureboot``, ``parse_secure_boot_probe``.
Shell snippets (reused by ``facts.probe``): ``NVIDIA_SMI_SCRIPT``, ``LSPCI_SCRIPT``,
``KERNEL_MODULE_SCRIPT``, ``SECURE_BOOT_SCRIPT``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from typing import Literal

from pyinfra.api import FactBase

from facts._shell import (
    RC_NOT_FOUND,
    CommandResult,
    clip,
    never_raises,
    require_tool,
    split_rc,
    wrap,
)

# --------------------------------------------------------------------------------------------
# GPUs from nvidia-smi
# --------------------------------------------------------------------------------------------

# The one GPU query gpufleet runs; field order is the CSV column order below.
NVIDIA_SMI_FIELDS = (
    "index",
    "name",
    "uuid",
    "memory.total",
    "memory.used",
    "compute_cap",
    "driver_version",
    "pci.bus_id",
    "persistence_mode",
    "mig.mode.current",
)
NVIDIA_SMI_QUERY = (
    f"nvidia-smi --query-gpu={','.join(NVIDIA_SMI_FIELDS)} --format=csv,noheader,nounits"
)
# Where a GPU has MIG on, the engine sees its MIG devices, not the card: list them too.
# mig.mode.current is the query's last column, so ", Enabled" at a line's end means MIG is on
# (persistence_mode, the column before, cannot match there).
MIG_LISTING_MARKER = "__gpufleet_mig_listing"
NVIDIA_SMI_SCRIPT = "\n".join([
    require_tool("nvidia-smi"),
    f"out=$({NVIDIA_SMI_QUERY} 2>&1); rc=$?",
    "printf '%s\\n' \"$out\"",
    "if printf '%s\\n' \"$out\" | grep -q ', Enabled$'; then",
    f"  echo {MIG_LISTING_MARKER}; nvidia-smi -L 2>&1; fi",
    "exit $rc",
])

GpuQueryStatus = Literal[
    "ok", "no_driver", "no_devices", "version_mismatch", "not_installed", "unknown"
]

# nvidia-smi prints these for values a GPU does not report.
_NOT_AVAILABLE = {"[N/A]", "N/A", "[Not Supported]", "Not Supported", "[Unknown Error]", ""}


# A MIG profile names its memory in (decimal-ish) GB: "3g.40gb". NVIDIA's A100 table gives
# 1g.5gb = 4864 MiB and 1g.10gb = 9728 MiB: 0.95 GiB per "gb", the smallest ratio of any profile,
# so sizing against it never overstates a slice.
MIG_BYTES_PER_PROFILE_GB = int(0.95 * 2**30)
_MIG_LINE = re.compile(
    r"^\s+MIG\s+(?P<profile>(?:\d+c\.)?\d+g\.(?P<gb>\d+)gb(?:\+\w+)?)\s+"
    r"Device\s+(?P<device>\d+):\s*\(UUID:\s*(?P<uuid>[^)]+)\)"
)
_L_GPU_LINE = re.compile(r"^GPU\s+(?P<index>\d+):")


@dataclass(frozen=True)
class MigDevice:
    """One MIG device (``nvidia-smi -L``): what an engine sees instead of the whole card."""

    profile: str  # "3g.40gb", "1c.2g.20gb", "1g.10gb+me"
    device: int
    uuid: str
    memory_bytes: int  # from the profile name, see MIG_BYTES_PER_PROFILE_GB


def parse_mig_listing(text: str) -> dict[int, tuple[MigDevice, ...]]:
    """GPU index -> its MIG devices, from ``nvidia-smi -L``. GPUs without any are left out."""
    found: dict[int, list[MigDevice]] = {}
    gpu: int | None = None
    for line in text.splitlines():
        head = _L_GPU_LINE.match(line)
        if head:
            gpu = int(head.group("index"))
            continue
        mig = _MIG_LINE.match(line)
        if mig and gpu is not None:
            found.setdefault(gpu, []).append(MigDevice(
                mig.group("profile"), int(mig.group("device")), mig.group("uuid").strip(),
                int(mig.group("gb")) * MIG_BYTES_PER_PROFILE_GB,
            ))
    return {index: tuple(devices) for index, devices in found.items()}


@dataclass(frozen=True)
class Gpu:
    """One GPU row of the nvidia-smi query."""

    index: int
    name: str
    uuid: str
    memory_total_mib: int | None
    memory_used_mib: int | None
    compute_capability: tuple[int, int] | None
    driver_version: str | None
    pci_bus_id: str | None
    persistence_mode: bool | None
    mig_mode: str | None  # "Enabled" / "Disabled"; None where the GPU has no MIG ([N/A])
    mig_devices: tuple[MigDevice, ...] = ()  # from ``nvidia-smi -L`` where MIG is on

    @property
    def mig_enabled(self) -> bool:
        return self.mig_mode == "Enabled"


@dataclass(frozen=True)
class GpuQuery:
    """What ``nvidia-smi --query-gpu`` said.

    ``status`` is ``ok`` (``gpus`` filled), an absent state (``not_installed``, ``no_driver``,
    ``no_devices``), ``version_mismatch`` (kernel module and userspace differ: reboot or reload
    needed) or ``unknown`` (``reason`` says why; ``raw`` holds the output).
    """

    status: GpuQueryStatus
    gpus: tuple[Gpu, ...] = ()
    reason: str = ""
    raw: str = ""
    nvml_library_version: str | None = None  # newer drivers print it with a version mismatch
    mig_listed: bool = False  # ``nvidia-smi -L`` ran (some GPU has MIG on)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def total_memory_mib(self) -> int:
        return sum(g.memory_total_mib or 0 for g in self.gpus)


def _value(cell: str) -> str | None:
    cell = cell.strip()
    return None if cell in _NOT_AVAILABLE else cell


def _int(cell: str) -> int | None:
    value = _value(cell)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _compute_capability(cell: str) -> tuple[int, int] | None:
    value = _value(cell)
    match = re.fullmatch(r"(\d+)\.(\d+)", value or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def _persistence(cell: str) -> bool | None:
    value = (_value(cell) or "").lower()
    return {"enabled": True, "disabled": False}.get(value)


def _mig(cell: str) -> str | None:
    value = _value(cell)
    return value if value in ("Enabled", "Disabled") else None


@never_raises(GpuQuery)
def parse_nvidia_smi_query(text: str, exit_code: int | None = None) -> GpuQuery:
    """Parse the output of ``NVIDIA_SMI_QUERY`` (stderr folded in). Never raises."""
    raw = clip(text)
    text, marker, listing = text.partition(MIG_LISTING_MARKER)
    if marker:
        query = parse_nvidia_smi_query(text, exit_code)
        devices = parse_mig_listing(listing)
        return replace(query, raw=raw, mig_listed=True, gpus=tuple(
            replace(gpu, mig_devices=devices.get(gpu.index, ())) for gpu in query.gpus))
    result = CommandResult(text, exit_code)
    if result.missing_tool or (exit_code == RC_NOT_FOUND and "not found" in text):
        return GpuQuery("not_installed", reason="nvidia-smi is not installed", raw=raw)
    # The message wording varies by a quote character ("couldn't" / "couldn‘t").
    if "communicate with the NVIDIA driver" in text:
        return GpuQuery("no_driver", reason="nvidia-smi cannot reach the NVIDIA driver", raw=raw)
    if "No devices were found" in text:
        return GpuQuery("no_devices", reason="the driver sees no NVIDIA GPU", raw=raw)
    if "Driver/library version mismatch" in text:
        lib = re.search(r"NVML library version:\s*([0-9][0-9.]*)", text)
        return GpuQuery(
            "version_mismatch",
            reason="kernel module and NVML library versions differ (reload module or reboot)",
            raw=raw,
            nvml_library_version=lib.group(1) if lib else None,
        )
    invalid = re.search(r'Field "([^"]+)" is not a valid field to query', text)
    if invalid:
        return GpuQuery(
            "unknown",
            reason=f'nvidia-smi does not know the field "{invalid.group(1)}" '
            "(driver too old: compute_cap needs about 510 or newer)",
            raw=raw,
        )

    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return GpuQuery("unknown", reason="nvidia-smi printed nothing", raw=raw)

    gpus: list[Gpu] = []
    for row in csv.reader(lines, skipinitialspace=True):
        if len(row) != len(NVIDIA_SMI_FIELDS):
            return GpuQuery(
                "unknown",
                reason=f"expected {len(NVIDIA_SMI_FIELDS)} CSV fields, got {len(row)}: {row[:3]}",
                raw=raw,
            )
        index = _int(row[0])
        if index is None:
            return GpuQuery("unknown", reason=f"GPU index is not a number: {row[0]!r}", raw=raw)
        gpus.append(
            Gpu(
                index=index,
                name=row[1].strip(),
                uuid=row[2].strip(),
                memory_total_mib=_int(row[3]),
                memory_used_mib=_int(row[4]),
                compute_capability=_compute_capability(row[5]),
                driver_version=_value(row[6]),
                pci_bus_id=_value(row[7]),
                persistence_mode=_persistence(row[8]),
                mig_mode=_mig(row[9]),
            )
        )
    if exit_code not in (None, 0):
        return GpuQuery(
            "unknown", reason=f"nvidia-smi exited {exit_code}", raw=raw, gpus=tuple(gpus)
        )
    return GpuQuery("ok", gpus=tuple(gpus), raw=raw)


class NvidiaGpus(FactBase[GpuQuery]):
    """GPUs and driver as ``nvidia-smi --query-gpu`` reports them.

    .. code:: python

        GpuQuery(status="ok", gpus=(Gpu(index=0, name="NVIDIA H100 80GB HBM3",
                 uuid="GPU-…", memory_total_mib=81559, memory_used_mib=0,
                 compute_capability=(9, 0), driver_version="535.129.03",
                 pci_bus_id="00000000:18:00.0", persistence_mode=True, mig_mode="Disabled"),))
    """

    def command(self) -> str:
        return wrap(NVIDIA_SMI_SCRIPT)

    @staticmethod
    def default() -> GpuQuery:
        return GpuQuery("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> GpuQuery:
        result = split_rc(output)
        return parse_nvidia_smi_query(result.text, result.exit_code)


# --------------------------------------------------------------------------------------------
# NVIDIA PCI devices (before any driver exists)
# --------------------------------------------------------------------------------------------

LSPCI_SCRIPT = f"{require_tool('lspci')}\nlspci -Dnn -d 10de:"

# The bus as the kernel sees it, then lspci for names when it is installed. sysfs needs no
# package and no driver, so a minimal image with a broken driver still shows its GPUs and
# NVSwitches (the kernel's ABI: vendor "0x10de", class "0x030200", device "0x2330").
PCI_SYSFS = "/sys/bus/pci/devices"
PCI_SCRIPT = "\n".join([
    f"if [ -d {PCI_SYSFS} ]; then",
    f"  for d in {PCI_SYSFS}/*; do",
    '    [ -r "$d/vendor" ] || continue',
    '    [ "$(cat "$d/vendor")" = 0x10de ] || continue',
    '    printf \'sysfs=%s %s %s\\n\' "${d##*/}" "$(cat "$d/class")" "$(cat "$d/device")"',
    "  done",
    "else echo sysfs=absent; fi",
    "if command -v lspci >/dev/null 2>&1; then",
    "  out=$(lspci -Dnn -d 10de: 2>&1); rc=$?",
    "  printf '%s\\n' \"$out\" | sed -n 's/^./lspci=&/p'",
    '  echo "lspci_rc=$rc"',
    f"else echo lspci_rc={RC_NOT_FOUND}; fi",
])

PciStatus = Literal["ok", "none", "not_installed", "unknown"]

_GPU_CLASSES = {"0300", "0302"}  # VGA compatible controller, 3D controller
_GPU_CLASS_NAMES = {"VGA compatible controller", "3D controller"}
_NVSWITCH_CLASS = "0680"  # "Bridge" (other bridge device); HGX NVSwitches use it
_CLASS_NAMES = {"0300": "VGA compatible controller", "0302": "3D controller", "0680": "Bridge",
                "0403": "Audio device", "0c03": "USB controller", "0c80": "Serial bus controller"}

_LSPCI_LINE = re.compile(
    r"^(?P<address>(?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s+"
    r"(?P<class_name>[^\[:]+?)(?:\s+\[(?P<class_code>[0-9a-fA-F]{4})\])?:\s+(?P<rest>.*)$"
)
_LSPCI_IDS = re.compile(r"\s*\[(?P<vendor>[0-9a-fA-F]{4}):(?P<device>[0-9a-fA-F]{4})\]\s*$")
_LSPCI_REV = re.compile(r"\s*\(rev (?P<rev>[0-9a-fA-F]+)\)\s*$")
_SYSFS_LINE = re.compile(
    r"^sysfs=(?P<address>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s+"
    r"0x(?P<class>[0-9a-fA-F]{6})\s+0x(?P<device>[0-9a-fA-F]{4})$"
)


@dataclass(frozen=True)
class PciDevice:
    """One NVIDIA PCI function (an ``lspci -Dnn`` line, or its sysfs entry)."""

    address: str
    class_code: str | None  # e.g. "0302"; None when lspci ran without -nn
    class_name: str
    device_name: str  # e.g. "NVIDIA Corporation GH100 [H100 SXM5 80GB]"
    vendor_id: str | None
    device_id: str | None
    revision: str | None

    @property
    def is_gpu(self) -> bool:
        if self.class_code is not None:
            return self.class_code in _GPU_CLASSES
        return self.class_name in _GPU_CLASS_NAMES

    @property
    def is_nvswitch(self) -> bool:
        return self.class_code == _NVSWITCH_CLASS or "NVSwitch" in self.device_name


@dataclass(frozen=True)
class NvidiaPci:
    """NVIDIA PCI functions split into GPUs, NVSwitches and the rest (audio, USB-C, ...).

    ``status`` is ``ok`` (devices found), ``none`` (no NVIDIA device on the bus),
    ``not_installed`` (lspci alone was asked and is missing) or ``unknown``. ``source`` says
    what listed them: "sysfs" (names from lspci when ``lspci`` is "ok"), or "lspci".
    NVSwitch presence decides Fabric Manager.
    """

    status: PciStatus
    gpus: tuple[PciDevice, ...] = ()
    nvswitches: tuple[PciDevice, ...] = ()
    others: tuple[PciDevice, ...] = ()
    reason: str = ""
    raw: str = ""
    source: str = "lspci"
    lspci: str = "ok"  # "ok", "not_installed" or "failed: <why>"

    @property
    def has_nvswitch(self) -> bool:
        return bool(self.nvswitches)

    @property
    def devices(self) -> tuple[PciDevice, ...]:
        return (*self.gpus, *self.nvswitches, *self.others)


def _parse_lspci_line(line: str) -> PciDevice | None:
    match = _LSPCI_LINE.match(line.strip())
    if not match:
        return None
    rest = match.group("rest")
    revision = None
    rev = _LSPCI_REV.search(rest)
    if rev:
        revision = rev.group("rev")
        rest = rest[: rev.start()]
    vendor_id = device_id = None
    ids = _LSPCI_IDS.search(rest)
    if ids:
        vendor_id, device_id = ids.group("vendor").lower(), ids.group("device").lower()
        rest = rest[: ids.start()]
    code = match.group("class_code")
    return PciDevice(
        address=match.group("address"),
        class_code=code.lower() if code else None,
        class_name=match.group("class_name").strip(),
        device_name=rest.strip(),
        vendor_id=vendor_id,
        device_id=device_id,
        revision=revision,
    )


def _split_devices(status: PciStatus, devices: list[PciDevice], **extra: str) -> NvidiaPci:
    return NvidiaPci(
        status,
        gpus=tuple(d for d in devices if d.is_gpu and not d.is_nvswitch),
        nvswitches=tuple(d for d in devices if d.is_nvswitch),
        others=tuple(d for d in devices if not d.is_gpu and not d.is_nvswitch),
        **extra,
    )


@never_raises(NvidiaPci)
def parse_lspci_nvidia(text: str, exit_code: int | None = None) -> NvidiaPci:
    """Parse ``lspci -Dnn -d 10de:`` output. Never raises."""
    raw = clip(text)
    if CommandResult(text, exit_code).missing_tool or exit_code == RC_NOT_FOUND:
        return NvidiaPci("not_installed", reason="lspci (pciutils) is not installed", raw=raw,
                         lspci="not_installed")
    lines = [line for line in text.splitlines() if line.strip()]
    if exit_code not in (None, 0):
        return NvidiaPci("unknown", reason=f"lspci exited {exit_code}", raw=raw,
                         lspci=f"failed: exit {exit_code}")
    if not lines:
        if exit_code is None:  # no status line: the output was cut, nothing was said
            return NvidiaPci("unknown", reason="no output from lspci", raw=raw)
        return NvidiaPci("none", reason="no NVIDIA device on the PCI bus", raw=raw)
    devices: list[PciDevice] = []
    for line in lines:
        device = _parse_lspci_line(line)
        if device is None:
            return NvidiaPci("unknown", reason=f"unreadable lspci line: {line[:120]!r}", raw=raw,
                             lspci="failed: unreadable output")
        devices.append(device)
    # lspci -d 10de: already filters, but a fixture or wrapper may not; keep NVIDIA only.
    nvidia = [d for d in devices if d.vendor_id in (None, "10de")]
    return _split_devices("ok" if nvidia else "none", nvidia, raw=raw)


@never_raises(NvidiaPci)
def parse_pci_probe(text: str, exit_code: int | None = None) -> NvidiaPci:
    """Parse ``PCI_SCRIPT`` output: NVIDIA functions from sysfs, named by lspci when it ran.

    sysfs decides what is on the bus; lspci only adds names and revisions. Without sysfs
    (an unusual container) lspci's own listing stands. Never raises.
    """
    raw = clip(text)
    sysfs: list[PciDevice] = []
    sysfs_present = True
    lspci_lines: list[str] = []
    lspci_rc: int | None = None
    for line in text.splitlines():
        if line == "sysfs=absent":
            sysfs_present = False
        elif line.startswith("sysfs="):
            match = _SYSFS_LINE.match(line.strip())
            if match is None:
                return NvidiaPci("unknown", reason=f"unreadable sysfs line: {line[:120]!r}",
                                 raw=raw, source="sysfs")
            code = match.group("class")[:4].lower()
            sysfs.append(PciDevice(
                address=match.group("address").lower(), class_code=code,
                class_name=_CLASS_NAMES.get(code, f"Class {code}"),
                device_name=f"NVIDIA device [10de:{match.group('device').lower()}]",
                vendor_id="10de", device_id=match.group("device").lower(), revision=None,
            ))
        elif line.startswith("lspci="):
            lspci_lines.append(line[len("lspci="):])
        elif line.startswith("lspci_rc="):
            value = line[len("lspci_rc="):].strip()
            lspci_rc = int(value) if value.isdigit() else None
    if lspci_rc is None and not sysfs and sysfs_present:
        return NvidiaPci("unknown", reason="no output from the PCI probe", raw=raw)
    named = parse_lspci_nvidia("\n".join(lspci_lines), lspci_rc)
    if not sysfs_present:
        return replace(named, raw=raw)
    by_address = {_full_address(d.address): d for d in named.devices}
    merged = []
    for device in sysfs:
        listed = by_address.pop(device.address, None)
        merged.append(device if listed is None else replace(
            listed, address=device.address, class_code=device.class_code,
            vendor_id="10de", device_id=device.device_id))
    merged += by_address.values()  # listed by lspci, hidden from this sysfs view: keep them
    lspci_state = named.lspci if named.status != "unknown" or named.lspci != "ok" else \
        f"failed: {named.reason}"
    return _split_devices(
        "ok" if merged else "none", merged, raw=raw, source="sysfs", lspci=lspci_state,
        reason="" if merged else "no NVIDIA device on the PCI bus",
    )


def _full_address(address: str) -> str:
    """lspci without -D omits the PCI domain 0000."""
    return address.lower() if address.count(":") == 2 else f"0000:{address.lower()}"


class NvidiaPciDevices(FactBase[NvidiaPci]):
    """NVIDIA devices on the PCI bus, from sysfs (works before any driver, without pciutils),
    named by lspci when it is installed.

    .. code:: python

        NvidiaPci(status="ok", gpus=(PciDevice(address="0000:18:00.0", class_code="0302",
                  class_name="3D controller", device_name="NVIDIA Corporation GH100 [...]",
                  vendor_id="10de", device_id="2330", revision="a1"), ...),
                  nvswitches=(...), others=(), source="sysfs", lspci="ok")
    """

    def command(self) -> str:
        return wrap(PCI_SCRIPT)

    @staticmethod
    def default() -> NvidiaPci:
        return NvidiaPci("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> NvidiaPci:
        result = split_rc(output)
        return parse_pci_probe(result.text, result.exit_code)


# --------------------------------------------------------------------------------------------
# Kernel module versus userspace
# --------------------------------------------------------------------------------------------

# Usual homes of libnvidia-ml.so.<version> (Debian/Ubuntu multiarch, RHEL, others).
NVML_LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
)

KERNEL_MODULE_SCRIPT = "\n".join(
    [
        "if [ -d /sys/module/nvidia ]; then echo nvidia_loaded=yes; else echo nvidia_loaded=no; fi",
        "if [ -r /sys/module/nvidia/version ]; then"
        " printf 'module_version=%s\\n' \"$(cat /sys/module/nvidia/version)\"; fi",
        "if [ -r /proc/driver/nvidia/version ]; then"
        " sed 's/^/proc_version=/' /proc/driver/nvidia/version; fi",
        f"for d in {' '.join(NVML_LIB_DIRS)}; do",
        '  for f in "$d"/libnvidia-ml.so.*; do'
        ' if [ -e "$f" ]; then printf \'nvml_lib=%s\\n\' "$f"; fi; done',
        "done",
        "if [ -d /sys/module/nouveau ]; then echo nouveau_loaded=yes;"
        " else echo nouveau_loaded=no; fi",
    ]
)

ModuleStatus = Literal["loaded", "not_loaded", "unknown"]

_NVRM = re.compile(
    r"NVRM version: NVIDIA UNIX (?P<open>Open )?(?:\S+ )?Kernel Module(?: for \S+)?\s+"
    r"(?P<version>\d+\.\d+(?:\.\d+)?)"
)
_NVML_FILE = re.compile(r"libnvidia-ml\.so\.(?P<version>\d+\.\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class KernelModuleState:
    """The loaded ``nvidia`` kernel module against the installed userspace (NVML) library.

    ``mismatch`` is True when the loaded module's version is not among the installed
    ``libnvidia-ml.so.<version>`` files (the "Driver/library version mismatch" state after an
    upgrade without reboot), False when it is, None when either side is unknown.
    """

    status: ModuleStatus
    loaded_version: str | None = None
    proc_version_line: str | None = None
    open_kernel_module: bool | None = None
    userspace_versions: tuple[str, ...] = ()
    nouveau_loaded: bool | None = None
    mismatch: bool | None = None
    reason: str = ""
    raw: str = ""


@never_raises(KernelModuleState)
def parse_kernel_module_state(text: str, exit_code: int | None = None) -> KernelModuleState:
    """Parse the labelled lines of ``KERNEL_MODULE_SCRIPT``. Never raises."""
    raw = clip(text)
    labels: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            labels.setdefault(key.strip(), []).append(value.strip())
    if "nvidia_loaded" not in labels:
        return KernelModuleState("unknown", reason="module probe printed no state", raw=raw)

    loaded = labels["nvidia_loaded"][0] == "yes"
    proc_line = next(iter(labels.get("proc_version", [])), None)
    nvrm = _NVRM.search(proc_line or "")
    module_version = next(iter(labels.get("module_version", [])), None) or None
    loaded_version = module_version or (nvrm.group("version") if nvrm else None)

    versions: list[str] = []
    for path in labels.get("nvml_lib", []):
        match = _NVML_FILE.search(path)
        if match and match.group("version") not in versions:
            versions.append(match.group("version"))

    mismatch: bool | None = None
    if loaded and loaded_version and versions:
        mismatch = loaded_version not in versions
    nouveau = labels.get("nouveau_loaded", [""])[0]
    reason = ""
    if loaded and not loaded_version:
        reason = "nvidia module is loaded but its version could not be read"
    return KernelModuleState(
        "loaded" if loaded else "not_loaded",
        loaded_version=loaded_version if loaded else None,
        proc_version_line=proc_line,
        open_kernel_module=bool(nvrm.group("open")) if nvrm else None,
        userspace_versions=tuple(versions),
        nouveau_loaded={"yes": True, "no": False}.get(nouveau),
        mismatch=mismatch,
        reason=reason,
        raw=raw,
    )


class NvidiaKernelModule(FactBase[KernelModuleState]):
    """Loaded ``nvidia`` module version, installed NVML versions, nouveau, mismatch flag.

    .. code:: python

        KernelModuleState(status="loaded", loaded_version="535.129.03",
                          userspace_versions=("535.129.03",), nouveau_loaded=False,
                          mismatch=False)
    """

    def command(self) -> str:
        return wrap(KERNEL_MODULE_SCRIPT)

    @staticmethod
    def default() -> KernelModuleState:
        return KernelModuleState("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> KernelModuleState:
        result = split_rc(output)
        return parse_kernel_module_state(result.text, result.exit_code)


# --------------------------------------------------------------------------------------------
# Secure Boot
# --------------------------------------------------------------------------------------------

SECURE_BOOT_EFIVAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
SECURE_BOOT_SCRIPT = "\n".join(
    [
        "if command -v mokutil >/dev/null 2>&1; then",
        "  echo '@mokutil'; mokutil --sb-state 2>&1; echo \"@mokutil_rc=$?\"",
        "fi",
        f"if [ -r {SECURE_BOOT_EFIVAR} ]; then",
        f"  echo '@efivar'; od -An -tu1 {SECURE_BOOT_EFIVAR}",
        "elif [ -d /sys/firmware/efi ]; then echo '@efi=yes'; else echo '@efi=no'; fi",
    ]
)

SecureBootStatus = Literal["enabled", "disabled", "not_efi", "unknown"]


@dataclass(frozen=True)
class SecureBootState:
    """Whether the firmware enforces Secure Boot (unsigned kernel modules are then refused).

    ``source`` says which reading decided: ``mokutil``, ``efivar`` (the SecureBoot EFI
    variable read with ``od``) or ``firmware`` (no EFI firmware at all: ``not_efi``).
    """

    status: SecureBootStatus
    source: Literal["mokutil", "efivar", "firmware"] | None = None
    setup_mode: bool = False
    shim_validation_disabled: bool = False
    reason: str = ""
    raw: str = ""

    @property
    def enforcing(self) -> bool | None:
        """Whether unsigned kernel modules are refused: True / False, None when unknown.

        Legacy BIOS boot (no EFI) enforces nothing."""
        return {"enabled": True, "disabled": False, "not_efi": False}.get(self.status)


@never_raises(SecureBootState)
def parse_mokutil_sb_state(text: str, exit_code: int | None = None) -> SecureBootState:
    """Parse ``mokutil --sb-state`` output. Never raises."""
    raw = clip(text)
    if "EFI variables are not supported" in text or "doesn't support Secure Boot" in text:
        return SecureBootState("not_efi", "mokutil", reason="not booted through EFI", raw=raw)
    setup = "Platform is in Setup Mode" in text
    shim_off = "SecureBoot validation is disabled in shim" in text
    if re.search(r"^SecureBoot enabled\s*$", text, re.MULTILINE):
        return SecureBootState(
            "enabled", "mokutil", setup_mode=setup, shim_validation_disabled=shim_off, raw=raw
        )
    if re.search(r"^SecureBoot disabled\s*$", text, re.MULTILINE):
        return SecureBootState("disabled", "mokutil", setup_mode=setup, raw=raw)
    return SecureBootState(
        "unknown", "mokutil", reason="mokutil gave no Secure Boot state", raw=raw
    )


def parse_efivar_secureboot(text: str) -> SecureBootState:
    """Parse ``od -An -tu1`` of the SecureBoot efivar: 4 attribute bytes, then the value byte."""
    raw = clip(text)
    values = [int(v) for v in re.findall(r"\b\d{1,3}\b", text)]
    if len(values) < 5 or any(v > 255 for v in values):
        return SecureBootState("unknown", "efivar", reason="unexpected efivar content", raw=raw)
    state = {1: "enabled", 0: "disabled"}.get(values[-1])
    if state is None:
        return SecureBootState("unknown", "efivar", reason=f"value byte {values[-1]}", raw=raw)
    return SecureBootState("enabled" if state == "enabled" else "disabled", "efivar", raw=raw)


@never_raises(SecureBootState)
def parse_secure_boot_probe(text: str, exit_code: int | None = None) -> SecureBootState:
    """Parse ``SECURE_BOOT_SCRIPT`` output: mokutil first, then the efivar fallback."""
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    firmware_efi: bool | None = None
    for line in text.splitlines():
        if line in ("@mokutil", "@efivar"):
            current = parts.setdefault(line[1:], [])
        elif line.startswith("@mokutil_rc="):
            current = None
        elif line in ("@efi=yes", "@efi=no"):
            firmware_efi = line == "@efi=yes"
            current = None
        elif current is not None:
            current.append(line)
    if "mokutil" in parts:
        state = parse_mokutil_sb_state("\n".join(parts["mokutil"]))
        if state.status == "not_efi" and firmware_efi:
            # Booted through EFI, but the variables are not readable (efivarfs not mounted):
            # Secure Boot may well be on. Unknown, not "no EFI".
            return SecureBootState(
                "unknown", "mokutil",
                reason="booted through EFI (/sys/firmware/efi exists) but the EFI variables "
                "are not readable: mount efivarfs (mount -t efivarfs efivarfs "
                "/sys/firmware/efi/efivars) and run `mokutil --sb-state`, or look in the "
                "firmware setup", raw=clip(text))
        if state.status != "unknown":
            return state
    if "efivar" in parts:
        return parse_efivar_secureboot("\n".join(parts["efivar"]))
    if firmware_efi is False:
        return SecureBootState(
            "not_efi", "firmware", reason="no /sys/firmware/efi: legacy BIOS boot", raw=clip(text)
        )
    return SecureBootState(
        "unknown", reason="neither mokutil nor the SecureBoot efivar could be read", raw=clip(text)
    )


class SecureBoot(FactBase[SecureBootState]):
    """Secure Boot state from ``mokutil --sb-state``, else the SecureBoot EFI variable.

    .. code:: python

        SecureBootState(status="enabled", source="mokutil", setup_mode=False)
    """

    def command(self) -> str:
        return wrap(SECURE_BOOT_SCRIPT)

    @staticmethod
    def default() -> SecureBootState:
        return SecureBootState("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> SecureBootState:
        result = split_rc(output)
        return parse_secure_boot_probe(result.text, result.exit_code)
