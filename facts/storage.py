"""Storage facts: where a path lives (down to every leaf disk), free space, read speed.

Weights must sit on NVMe: a 140 GB load takes hours from an HDD and minutes from NVMe. The
location fact resolves a path (or its nearest existing parent, since the weights directory may
not exist yet) to its mount with ``findmnt``, then walks ``lsblk -s`` (the inverse tree: the
mounted device first, its backing devices as ``children``) through LVM, dm-crypt and md RAID to
every leaf disk. The path is only as fast as its slowest leaf.

Public API
----------
Facts: ``StorageLocation(path)``, ``FreeSpace(path)``, ``ReadSpeed(path, seconds, max_mib)``.
Parsers: ``parse_findmnt_json``, ``parse_lsblk_inverse_json``, ``classify_storage``,
``parse_storage_location``, ``parse_df``, ``parse_dd_summary``, ``parse_fio_json``,
``parse_read_speed``.
Script builders (reused by ``facts.probe``): ``storage_location_script``, ``free_space_script``,
``read_speed_script``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pyinfra.api import FactBase

from facts._shell import CommandResult, clip, never_raises, quote, require_tool, split_rc, wrap

StorageKind = Literal["nvme", "ssd", "hdd", "virtual", "network", "overlay", "tmpfs", "unknown"]

# Filesystems whose bytes live on another machine.
NETWORK_FSTYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "fuse.ceph",
        "fuse.sshfs",
        "sshfs",
        "glusterfs",
        "fuse.glusterfs",
        "lustre",
        "9p",
        "beegfs",
        "gpfs",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.juicefs",
    }
)
_VIRTUAL_FSTYPES = frozenset({"virtiofs"})
_MEMORY_FSTYPES = frozenset({"tmpfs", "ramfs"})
# Disks that look local but are a hypervisor's or a cloud's network volume.
_VIRTUAL_MODEL_MARKERS = (
    "Virtual Disk",
    "Elastic Block Store",
    "PersistentDisk",
    "QEMU HARDDISK",
    "VMware Virtual",
    "VBOX HARDDISK",
)
_VIRTUAL_NAME = re.compile(r"^(?:/dev/)?(?:vd[a-z]+|xvd[a-z]+)$")


def _nearest_parent(path_var: str) -> str:
    # The weights directory may not exist before the first deploy: measure where it would live.
    return (
        f'r={path_var}; while [ ! -e "$r" ]; do r=$(dirname "$r"); done\n'
        f"printf 'requested=%s\\n' {path_var}; printf 'resolved=%s\\n' \"$r\""
    )


# --------------------------------------------------------------------------------------------
# Location: mount and leaf disks
# --------------------------------------------------------------------------------------------


def storage_location_script(path: str) -> str:
    """findmnt for the path's mount, then lsblk -s for the mounted block device."""
    return "\n".join(
        [
            f"p={quote(path)}",
            _nearest_parent('"$p"'),
            require_tool("findmnt"),
            "echo '@findmnt'",
            'findmnt -n -J -o SOURCE,FSTYPE,TARGET --target "$r"',
            # btrfs subvolumes print as /dev/sda2[/@home]; lsblk wants the device.
            "src=$(findmnt -n -o SOURCE --target \"$r\" | sed 's/\\[.*\\]$//')",
            'case "$src" in /dev/*)',
            "  echo '@lsblk'; lsblk -s -J -o NAME,TYPE,TRAN,ROTA,MODEL,SIZE \"$src\" ;;",
            "esac",
            "echo '@end'",
        ]
    )


@dataclass(frozen=True)
class Mount:
    source: str
    fstype: str
    target: str


@dataclass(frozen=True)
class LeafDisk:
    """A device at the bottom of the ``lsblk -s`` tree (normally ``type == "disk"``)."""

    name: str
    type: str
    transport: str | None  # nvme, sata, sas, usb, ata, ...; None for virtio and partitions
    rotational: bool | None
    model: str | None
    size: str | None


@dataclass(frozen=True)
class StorageLocationResult:
    """Where a path lives and what kind of storage that is.

    ``status`` is ``ok`` (``kind`` decided, maybe ``unknown`` with a ``reason``) or ``unknown``
    (the probe output could not be read). ``path_exists`` is False when ``resolved_path`` is
    the nearest existing parent of a path that does not exist yet.
    """

    status: Literal["ok", "unknown"]
    requested_path: str | None = None
    resolved_path: str | None = None
    mount: Mount | None = None
    leaves: tuple[LeafDisk, ...] = ()
    kind: StorageKind = "unknown"
    reason: str = ""
    raw: str = ""

    @property
    def path_exists(self) -> bool | None:
        if self.requested_path is None or self.resolved_path is None:
            return None
        return (self.requested_path.rstrip("/") or "/") == (self.resolved_path.rstrip("/") or "/")


def _json_document(text: str) -> Any:
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in output")
    return json.loads(text[start:])


def parse_findmnt_json(text: str) -> Mount | None:
    """The mount from ``findmnt -J -o SOURCE,FSTYPE,TARGET``; None when unreadable."""
    try:
        data = _json_document(text)
        entry = data["filesystems"][0]
        return Mount(
            source=str(entry.get("source") or ""),
            fstype=str(entry.get("fstype") or ""),
            target=str(entry.get("target") or ""),
        )
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _rotational(value: Any) -> bool | None:
    # util-linux >= 2.33 prints booleans; older versions print "0" / "1" strings.
    if isinstance(value, bool):
        return value
    if value in ("1", 1, "true"):
        return True
    if value in ("0", 0, "false"):
        return False
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def parse_lsblk_inverse_json(text: str) -> tuple[LeafDisk, ...] | None:
    """Every leaf of an ``lsblk -s -J`` tree, deduplicated by name; None when unreadable."""
    try:
        data = _json_document(text)
        roots = data["blockdevices"]
    except (ValueError, KeyError, TypeError):
        return None
    leaves: dict[str, LeafDisk] = {}
    stack: list[Any] = list(roots) if isinstance(roots, list) else []
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        children = node.get("children")
        if isinstance(children, list) and children:
            stack.extend(children)
            continue
        name = _text(node.get("name")) or "?"
        leaves.setdefault(
            name,
            LeafDisk(
                name=name,
                type=_text(node.get("type")) or "?",
                transport=_text(node.get("tran")),
                rotational=_rotational(node.get("rota")),
                model=_text(node.get("model")),
                size=_text(node.get("size")),
            ),
        )
    return tuple(sorted(leaves.values(), key=lambda leaf: leaf.name))


def _leaf_is_virtual(leaf: LeafDisk) -> bool:
    if leaf.transport == "virtio" or _VIRTUAL_NAME.match(leaf.name):
        return True
    return any(marker in (leaf.model or "") for marker in _VIRTUAL_MODEL_MARKERS)


def _leaf_is_nvme(leaf: LeafDisk) -> bool:
    return leaf.transport == "nvme" or leaf.name.removeprefix("/dev/").startswith("nvme")


def classify_storage(fstype: str | None, leaves: tuple[LeafDisk, ...]) -> tuple[StorageKind, str]:
    """Kind of storage and a one-line reason. The slowest leaf decides (a RAID of NVMe and
    HDD reads like an HDD)."""
    fstype = (fstype or "").lower()
    if fstype in NETWORK_FSTYPES or fstype.startswith("fuse.s"):
        return "network", f"{fstype} is a network filesystem"
    if fstype == "overlay":
        return "overlay", "overlay filesystem (a container layer); its backing disk is hidden"
    if fstype in _MEMORY_FSTYPES:
        return "tmpfs", f"{fstype}: memory, gone at reboot"
    if fstype in _VIRTUAL_FSTYPES:
        return "virtual", f"{fstype}: a share from the hypervisor"
    if not leaves:
        return "unknown", f"no block device found under the {fstype or 'unknown'} mount"
    odd = [leaf.name for leaf in leaves if leaf.type not in ("disk", "mpath")]
    if any(_leaf_is_virtual(leaf) for leaf in leaves):
        return "virtual", "virtual disk: " + ", ".join(leaf.name for leaf in leaves)
    if odd:
        return "unknown", f"leaf devices that are not disks: {', '.join(odd)}"
    if any(leaf.rotational for leaf in leaves):
        return "hdd", "rotational disk: " + ", ".join(
            leaf.name for leaf in leaves if leaf.rotational
        )
    if all(_leaf_is_nvme(leaf) for leaf in leaves):
        return "nvme", "all leaf disks are NVMe: " + ", ".join(leaf.name for leaf in leaves)
    if all(leaf.rotational is False for leaf in leaves):
        return "ssd", "non-rotational, not all NVMe: " + ", ".join(
            f"{leaf.name} ({leaf.transport or '?'})" for leaf in leaves
        )
    return "unknown", "rotational flag unknown for " + ", ".join(leaf.name for leaf in leaves)


def _labelled_parts(text: str, names: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
    """Split ``@name`` blocks (ended by the next marker or ``@end``) from ``key=value`` lines."""
    blocks: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@") and line[1:] in names:
            current = blocks.setdefault(line[1:], [])
        elif line == "@end":
            current = None
        elif line.startswith("@") and "=" in line:  # "@tool_rc=0" closes a block
            current = None
            key, _, value = line.partition("=")
            labels.setdefault(key, value)
        elif current is not None:
            current.append(line)
        else:
            key, sep, value = line.partition("=")
            if sep and key and " " not in key:
                labels.setdefault(key, value)
    return {k: "\n".join(v) for k, v in blocks.items()}, labels


@never_raises(StorageLocationResult)
def parse_storage_location(text: str, exit_code: int | None = None) -> StorageLocationResult:
    """Parse ``storage_location_script`` output. Never raises."""
    raw = clip(text)
    if CommandResult(text, exit_code).missing_tool:
        return StorageLocationResult(
            "unknown", reason="findmnt (util-linux) is not installed", raw=raw
        )
    blocks, labels = _labelled_parts(text, ("findmnt", "lsblk"))
    requested, resolved = labels.get("requested"), labels.get("resolved")
    mount = parse_findmnt_json(blocks.get("findmnt", ""))
    if mount is None:
        return StorageLocationResult(
            "unknown", requested, resolved, reason="findmnt output unreadable", raw=raw
        )
    leaves: tuple[LeafDisk, ...] = ()
    if "lsblk" in blocks:
        parsed = parse_lsblk_inverse_json(blocks["lsblk"])
        if parsed is None:
            return StorageLocationResult(
                "unknown",
                requested,
                resolved,
                mount,
                reason=f"lsblk output unreadable for {mount.source}",
                raw=raw,
            )
        leaves = parsed
    kind, reason = classify_storage(mount.fstype, leaves)
    return StorageLocationResult("ok", requested, resolved, mount, leaves, kind, reason, raw)


class StorageLocation(FactBase[StorageLocationResult]):
    """Mount, filesystem and leaf disks under a path, classified (``nvme``, ``ssd``, ``hdd``,
    ``virtual``, ``network``, ``overlay``, ``tmpfs``, ``unknown``).

    + path: the path to locate; a missing path is resolved to its nearest existing parent

    .. code:: python

        StorageLocationResult(status="ok", requested_path="/srv/models",
            resolved_path="/srv/models", mount=Mount(source="/dev/mapper/vg0-models",
            fstype="xfs", target="/srv"), leaves=(LeafDisk(name="nvme0n1", type="disk",
            transport="nvme", rotational=False, model="...", size="3.5T"),), kind="nvme")
    """

    def command(self, path: str) -> str:
        return wrap(storage_location_script(path))

    @staticmethod
    def default() -> StorageLocationResult:
        return StorageLocationResult("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> StorageLocationResult:
        result = split_rc(output)
        return parse_storage_location(result.text, result.exit_code)


# --------------------------------------------------------------------------------------------
# Free space
# --------------------------------------------------------------------------------------------


def free_space_script(path: str) -> str:
    # -B1 is GNU; POSIX -k is the fallback (busybox). The header says which unit came back.
    return "\n".join(
        [
            f"p={quote(path)}",
            _nearest_parent('"$p"'),
            'df -P -B1 "$r" 2>/dev/null || df -P -k "$r"',
        ]
    )


@dataclass(frozen=True)
class FreeSpaceResult:
    """Free bytes (for an unprivileged writer) on the filesystem holding a path."""

    status: Literal["ok", "unknown"]
    requested_path: str | None = None
    resolved_path: str | None = None
    available_bytes: int | None = None
    total_bytes: int | None = None
    mount_point: str | None = None
    device: str | None = None  # df's Filesystem column: /dev/nvme0n1p2, tmpfs, overlay
    reason: str = ""
    raw: str = ""


@never_raises(FreeSpaceResult)
def parse_df(text: str, exit_code: int | None = None) -> FreeSpaceResult:
    """Parse ``df -P`` output (1-blocks or 1024-blocks), with optional ``requested=`` /
    ``resolved=`` lines. Never raises."""
    raw = clip(text)
    _, labels = _labelled_parts(text, ())
    requested, resolved = labels.get("requested"), labels.get("resolved")
    lines = [line for line in text.splitlines() if line.strip()]
    header_at = next((i for i, line in enumerate(lines) if line.startswith("Filesystem")), None)
    if header_at is None or header_at + 1 >= len(lines):
        return FreeSpaceResult("unknown", requested, resolved, reason="no df table", raw=raw)
    unit_match = re.search(r"(\d+)([KMG]?)-blocks", lines[header_at])
    if not unit_match:
        return FreeSpaceResult("unknown", requested, resolved, reason="df unit?", raw=raw)
    unit = (
        int(unit_match.group(1))
        * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit_match.group(2)]
    )
    fields = lines[header_at + 1].split()
    pct = next((i for i, f in enumerate(fields) if re.fullmatch(r"\d+%|-", f)), None)
    if pct is None or pct < 4:
        return FreeSpaceResult("unknown", requested, resolved, reason="df row?", raw=raw)
    return FreeSpaceResult(
        "ok",
        requested,
        resolved,
        available_bytes=int(fields[pct - 1]) * unit,
        total_bytes=int(fields[pct - 3]) * unit,
        mount_point=" ".join(fields[pct + 1 :]) or None,
        device=" ".join(fields[: pct - 3]) or None,
        raw=raw,
    )


class FreeSpace(FactBase[FreeSpaceResult]):
    """Available bytes where a path lives (nearest existing parent if it does not exist).

    + path: the path to check

    .. code:: python

        FreeSpaceResult(status="ok", available_bytes=84491829248, total_bytes=270553174016,
                        mount_point="/")
    """

    def command(self, path: str) -> str:
        return wrap(free_space_script(path))

    @staticmethod
    def default() -> FreeSpaceResult:
        return FreeSpaceResult("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> FreeSpaceResult:
        result = split_rc(output)
        return parse_df(result.text, result.exit_code)


# --------------------------------------------------------------------------------------------
# Read speed (optional, bounded in time)
# --------------------------------------------------------------------------------------------

_MODEL_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")


def read_speed_script(path: str, seconds: int = 10, max_mib: int = 4096) -> str:
    """Read the largest model file under ``path`` with O_DIRECT for at most ``seconds``.

    O_DIRECT bypasses the page cache, so a second run measures the disk, not memory. fio is
    preferred; dd is the fallback (``timeout -s INT`` makes dd print its summary when cut).
    """
    seconds = max(1, int(seconds))
    max_mib = max(1, int(max_mib))
    names = " -o ".join(f"-name {quote(p)}" for p in _MODEL_FILE_PATTERNS)
    largest = "-printf '%s %p\\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-"
    return "\n".join(
        [
            f"p={quote(path)}; s={seconds}; m={max_mib}",
            "if [ ! -e \"$p\" ]; then echo 'status=path_missing'; exit 0; fi",
            # -H: the weights folder may be a link, links inside it are not followed (the
            # weights tool's policy, facts.weights_files)
            f'f=$(find -H "$p" -xdev -type f \\( {names} \\) -size +1M {largest})',
            f'[ -n "$f" ] || f=$(find -H "$p" -xdev -type f -size +1M {largest})',
            "if [ -z \"$f\" ]; then echo 'status=no_file'; exit 0; fi",
            'b=$(stat -c %s "$f"); printf \'file=%s\\nfile_bytes=%s\\n\' "$f" "$b"',
            "z=$((b < m * 1048576 ? b : m * 1048576)); z=$((z / 1048576 * 1048576))",
            "if command -v fio >/dev/null 2>&1; then",
            "  echo 'tool=fio'; echo '@fio'",
            '  timeout $((s + 15)) fio --name=gpufleet-read --filename="$f" --readonly'
            ' --direct=1 --rw=read --bs=1M --size="$z" --runtime="$s"'
            " --output-format=json",
            "else",
            "  echo 'tool=dd'; echo '@dd'",
            '  timeout -s INT "$s" dd if="$f" of=/dev/null bs=1M iflag=direct count="$m"',
            "fi",
            'echo "@tool_rc=$?"',
        ]
    )


@dataclass(frozen=True)
class ReadSpeedResult:
    """Sequential O_DIRECT read speed of one file under a path.

    ``status``: ``ok``; ``no_file`` (nothing to measure yet); ``path_missing``; ``unknown``.
    ``timed_out`` is True when the time bound cut the read short (the rate is still valid).
    """

    status: Literal["ok", "no_file", "path_missing", "unknown"]
    file: str | None = None
    file_bytes: int | None = None
    tool: Literal["fio", "dd"] | None = None
    bytes_read: int | None = None
    seconds: float | None = None
    bytes_per_second: float | None = None
    timed_out: bool = False
    reason: str = ""
    raw: str = ""


@dataclass(frozen=True)
class Throughput:
    bytes_read: int
    seconds: float

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_read / self.seconds if self.seconds > 0 else 0.0


# GNU: "209715200 bytes (210 MB, 200 MiB) copied, 0.312885 s, 670 MB/s"
# busybox: "209715200 bytes (200.0MB) copied, 0.312885 seconds, 639.2MB/s"
_DD_SUMMARY = re.compile(r"(?P<bytes>\d+) bytes\b[^\n]*?copied,\s*(?P<secs>[\d.]+)\s*s")


def parse_dd_summary(text: str) -> Throughput | None:
    """Bytes and seconds from dd's last summary line; None when there is none."""
    matches = list(_DD_SUMMARY.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return Throughput(int(last.group("bytes")), float(last.group("secs")))


def parse_fio_json(text: str) -> Throughput | None:
    """Bytes and seconds of the first job's reads in fio's JSON output; None when unreadable.

    fio 3 reports ``io_bytes`` in bytes and adds ``bw_bytes``; fio 2 reported ``io_bytes`` in
    KiB (fio issue #378), which the absence of ``bw_bytes`` tells apart.
    """
    try:
        read = _json_document(text)["jobs"][0]["read"]
        runtime_ms = float(read["runtime"])
        io = int(read["io_bytes"])
        if "bw_bytes" not in read:
            io *= 1024
        return Throughput(io, runtime_ms / 1000.0)
    except (ValueError, KeyError, IndexError, TypeError):
        return None


@never_raises(ReadSpeedResult)
def parse_read_speed(text: str, exit_code: int | None = None) -> ReadSpeedResult:
    """Parse ``read_speed_script`` output. Never raises."""
    raw = clip(text)
    blocks, labels = _labelled_parts(text, ("fio", "dd"))
    status = labels.get("status")
    if status in ("no_file", "path_missing"):
        reason = "no file to measure" if status == "no_file" else "path does not exist"
        return ReadSpeedResult(status, reason=reason, raw=raw)  # type: ignore[arg-type]
    tool_rc_text = labels.get("@tool_rc")
    tool_rc = int(tool_rc_text) if tool_rc_text and tool_rc_text.isdigit() else None
    file_bytes = labels.get("file_bytes")
    common: dict[str, Any] = {
        "file": labels.get("file"),
        "file_bytes": int(file_bytes) if file_bytes and file_bytes.isdigit() else None,
        "raw": raw,
    }
    tool: Literal["fio", "dd"]
    if labels.get("tool") == "fio":
        tool, measured = "fio", parse_fio_json(blocks.get("fio", ""))
    elif labels.get("tool") == "dd":
        tool, measured = "dd", parse_dd_summary(blocks.get("dd", ""))
    else:
        return ReadSpeedResult("unknown", reason="no measurement tool ran", **common)
    if measured is None or measured.seconds <= 0:
        return ReadSpeedResult(
            "unknown", tool=tool, reason=f"{tool} gave no readable result", **common
        )
    return ReadSpeedResult(
        "ok",
        tool=tool,
        bytes_read=measured.bytes_read,
        seconds=measured.seconds,
        bytes_per_second=measured.bytes_per_second,
        timed_out=tool_rc == 124,  # timeout(1)'s status when the bound was hit
        **common,
    )


class ReadSpeed(FactBase[ReadSpeedResult]):
    """Sequential read speed of the largest model file under a path (O_DIRECT, time-bounded).

    Not part of ``GpuHostProbe``: it reads up to ``max_mib`` from disk, so run it on purpose.

    + path: directory (or file) holding the weights
    + seconds: upper bound on the read time
    + max_mib: upper bound on the bytes read, in MiB

    .. code:: python

        ReadSpeedResult(status="ok", file="/srv/models/x/model-00001-of-00008.safetensors",
                        tool="fio", bytes_read=4294967296, seconds=1.6,
                        bytes_per_second=2.68e9)
    """

    def command(self, path: str, seconds: int = 10, max_mib: int = 4096) -> str:
        return wrap(read_speed_script(path, seconds, max_mib))

    @staticmethod
    def default() -> ReadSpeedResult:
        return ReadSpeedResult("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> ReadSpeedResult:
        result = split_rc(output)
        return parse_read_speed(result.text, result.exit_code)
