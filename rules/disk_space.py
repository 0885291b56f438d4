"""Disk space for the steps that write a lot (the Python environment, the weights): what a step
needs, what the filesystem that will hold it has free, and the one-line messages for a shortage
found before writing and for a disk that filled anyway (ENOSPC) while writing.

Pure: operations/disk_guard.py runs ``free_space_script`` on the host at execution (never in
the preview), parses it here, and fails the host with these messages; rules/faults.py turns them
into the fault summary's cause and action.

Both messages are one line, ending with what to do:

    gpufleet: not enough disk space for the weights on HOST: /srv/models/m is on /dev/sdb1
    (mounted on /srv), 2.1 GB needed (the files to push), 1.2 GB free; nothing was written.
    Free space there, or set settings.weights_path to a filesystem with room
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from facts import storage

# The second sentence of both messages; rules/faults.py reads the setting from it.
TODO = "Free space there, or set {setting} to a filesystem with room"
# A command that finds the space it needs only as it runs (a hub download: the sizes come with
# the hub's listing) prints "gpufleet-space-needed BYTES", and " short" when it stopped before
# writing anything (templates/weights/weights_tool.py).
NEEDED_MARK = re.compile(r"^gpufleet-space-needed (?P<bytes>\d+)(?P<short> short)?\s*$", re.M)

# How the errors of a full disk read: strerror(ENOSPC) as C programs, Python ("[Errno 28] No
# space left on device") and apt ("28: No space left on device") print it, and as Go prints it
# (Docker's daemon: "write /srv/x: no space left on device").
_ENOSPC = re.compile(r"no space left on device|\bENOSPC\b|\[Errno 28\]", re.I)

# The Python environment when its size cannot be read from the lock (the lock has hashes, not
# sizes): a fresh venv with pip and setuptools (Python 3.11 on Debian 12: 22 MB) and room to
# spare for the smallest locks.
EMPTY_VENV_BYTES = 32 * 10**6
# Without a wheelhouse the new environment is estimated from the live one (the same lock, a few
# versions moved): its size plus half of it, because pip downloads each wheel next to it
# (TMPDIR beside the new venv) before unpacking it, and torch's wheel is 2.5 GB of a 5 GB
# environment.
LIVE_VENV_GROWTH = 1.5
# With a wheelhouse the wheels' sizes are known on the controller; unpacked they take about
# twice that (torch210-cu121: 2.7 GB of wheels install into about 5 GB).
WHEELS_UNPACKED = 2.0


def says_no_space(text: str) -> bool:
    """Whether a command's output (or an exception's text) says the disk was full."""
    return bool(_ENOSPC.search(text))


def needed_mark(text: str) -> tuple[int, bool] | None:
    """(bytes, stopped before writing) from a command's "gpufleet-space-needed" line."""
    found = NEEDED_MARK.search(text)
    return (int(found["bytes"]), bool(found["short"])) if found else None


def human(size: int) -> str:
    """Bytes in decimal units, as the weights' progress lines print them: 2.1 GB, 48.0 MB."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{max(size, 0)} bytes"


@dataclass(frozen=True)
class SpaceNeed:
    """What a step is about to write under ``path``.

    ``need`` bytes, found as ``how`` says; ``partials``: files an earlier attempt left that this
    one overwrites (their bytes are given back first); ``live``: a folder (or link to one) whose
    size on the host says what the step needs when ``need`` cannot (the live venv: the new one
    is about as big, see LIVE_VENV_GROWTH).
    """

    path: str
    what: str  # "the weights", "the Python environment"
    setting: str  # what moves it elsewhere: "settings.weights_path"
    need: int
    how: str
    partials: tuple[str, ...] = ()
    live: str | None = None


@dataclass(frozen=True)
class FreeSpace:
    """The filesystem that holds (or will hold) a path, as `df -P` reports it."""

    folder: str  # the nearest existing folder of the path: df's argument
    device: str  # df's Filesystem column: /dev/nvme0n1p2, tmpfs, overlay
    mount: str
    free: int  # bytes available (df's Available: without the blocks reserved for root)
    inodes_free: int | None = None  # None where the filesystem has no inode limit (btrfs)
    partial_bytes: int = 0  # what the SpaceNeed's partials hold already
    live_bytes: int | None = None  # the size of SpaceNeed.live, when it exists

    @property
    def where(self) -> str:
        return f"{self.device} (mounted on {self.mount})"


def free_space_script(need: SpaceNeed) -> str:
    """A POSIX shell script printing what ``parse_free_space`` reads: the probe's df of the
    path's nearest existing folder (facts.storage), then the inodes there, the partial files
    and the live venv's size (df, du, stat: coreutils). It only reads."""
    q = shlex.quote
    lines = [
        "LC_ALL=C; export LC_ALL",
        storage.free_space_script(need.path),  # sets $r, the nearest existing folder
        'df -Pi "$r" 2>/dev/null | tail -n 1 | sed "s/^/dfi=/"',
    ]
    for partial in need.partials:
        lines.append(f"[ -f {q(partial)} ] && stat -c 'partial=%s' {q(partial)}")
    if need.live:
        lines.append(f"[ -e {q(need.live)} ] && du -sk \"$(readlink -f {q(need.live)})\" "
                     "| sed 's/^/live=/'")
    lines.append("true")
    return "\n".join(lines)


def parse_free_space(text: str) -> FreeSpace | None:
    """``free_space_script``'s output; None when df printed nothing usable."""
    df = storage.parse_df(text)
    if df.available_bytes is None or df.device is None or df.mount_point is None:
        return None
    dfi, partial, live = None, 0, None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "dfi":
            dfi = value.split()
        elif key == "partial" and value.strip().isdigit():
            partial += int(value)
        elif key == "live" and value.split()[:1] and value.split()[0].isdigit():
            live = int(value.split()[0]) * 1024
    # Filesystem Inodes IUsed IFree IUse% Mounted-on
    inodes = None
    if dfi and len(dfi) >= 6 and dfi[1].isdigit() and dfi[3].isdigit() and int(dfi[1]) > 0:
        inodes = int(dfi[3])
    return FreeSpace(folder=df.resolved_path or df.mount_point, device=df.device,
                     mount=df.mount_point, free=df.available_bytes, inodes_free=inodes,
                     partial_bytes=partial, live_bytes=live)


def needed(need: SpaceNeed, space: FreeSpace) -> tuple[int, str]:
    """Bytes the step needs on that filesystem now, and how that was found."""
    total, how = need.need, need.how
    if need.live and space.live_bytes:
        grown = int(space.live_bytes * LIVE_VENV_GROWTH)
        if grown > total:
            total, how = grown, (f"estimated from the live environment's "
                                 f"{human(space.live_bytes)}, plus half for pip's downloads")
    return max(total - space.partial_bytes, 0), how


def shortage(host: str, need: SpaceNeed, space: FreeSpace) -> str | None:
    """The message when the step does not fit (None when it does): one line."""
    bytes_needed, how = needed(need, space)
    if space.free >= bytes_needed:
        return None
    return (f"gpufleet: not enough disk space for {need.what} on {host}: {need.path} is on "
            f"{space.where}, {human(bytes_needed)} needed ({how}), {human(space.free)} free; "
            f"nothing was written. {TODO.format(setting=need.setting)}")


def no_space_left(host: str, need: SpaceNeed, space: FreeSpace | None) -> str:
    """The message when a write failed because the disk filled up anyway (another writer took
    the space after the check, an estimate fell short, the inodes ran out): one line, read
    after the partial files were removed."""
    if space is None:
        where = "(its filesystem could not be read)"
    else:
        bytes_needed, how = needed(need, space)
        inodes = " and no free inodes (df -i)" if space.inodes_free == 0 else ""
        where = (f"is on {space.where}, {human(space.free)} free now{inodes} "
                 f"(the check before writing expected {human(bytes_needed)}: {how})")
    kept = f"{need.what.removeprefix('the ')} {'are' if need.what.endswith('s') else 'is'}"
    return (f"gpufleet: no space left on device while writing {need.what} on {host}: "
            f"{need.path} {where}; the partial files were removed, the previous {kept} "
            f"untouched. {TODO.format(setting=need.setting)}")


def venv_need(path: str, new: str, wheels: Sequence[int] | None,
              push: Sequence[int] = ()) -> SpaceNeed:
    """What building the Python environment at ``new`` (beside the live one at ``path``) needs.

    ``wheels``: the sizes of the lock's wheels when a wheelhouse is used; ``push``: those of
    them not yet on the host. Without a wheelhouse (None) pip downloads them and their sizes
    are unknown (the lock has hashes only): the live venv's size, read on the host, is the
    estimate (LIVE_VENV_GROWTH), and a fresh venv's size when there is none.
    """
    if wheels is not None:
        need = int(sum(wheels) * WHEELS_UNPACKED) + sum(push)
        how = (f"estimated from the lock's {human(sum(wheels))} of wheels, unpacked"
               + (f", and {human(sum(push))} of them to push" if push else ""))
    else:
        need, how = EMPTY_VENV_BYTES, ("estimated: a fresh venv, the lock's size is not known "
                                       "without a wheelhouse")
    return SpaceNeed(path=new, what="the Python environment", setting="settings.python_env.path",
                     need=max(need, EMPTY_VENV_BYTES), how=how,
                     live=path if wheels is None else None)
