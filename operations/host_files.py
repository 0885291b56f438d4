"""Files gpufleet owns on a host: exact content, mode and owner; uploads; files moved aside.

pyinfra's files.put costs two facts per file (stat and checksum); these compare with the one
state read (facts.host_state), which already has every watched file's sha256, mode and owner.
Files are written next to the old one under a unique temporary name and renamed over it, so a
reader never sees half a file and a failed write leaves nothing behind.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Iterator
from pathlib import PurePosixPath

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationValueError, StringCommand, operation
from pyinfra.api.hiddenvalue import HiddenValue

from facts._shell import quote
from facts.host_state import FileState, host_state, require_watched, sha256_text
from operations.desired import desired

_MODE = re.compile(r"[0-7]{3,4}")
_OWNER = re.compile(r"[a-z_][a-z0-9_-]*:[a-z_][a-z0-9_-]*")


def _check_args(path: str, mode: str, owner: str) -> None:
    require_watched(path)
    if not _MODE.fullmatch(mode):
        raise OperationValueError(f"mode must be octal like 644 or 0600, got {mode!r}")
    if not _OWNER.fullmatch(owner):
        raise OperationValueError(f"owner must be USER:GROUP, got {owner!r}")


def _same_mode(current: str, wanted: str) -> bool:
    return int(current, 8) == int(wanted, 8)


def write_file_command(path: str, content: str, mode: str = "644",
                       owner: str = "root:root", secret: bool = False) -> StringCommand:
    """Write ``content`` to a unique temporary file beside ``path``, then rename it over.

    mktemp creates the file 0600, so the content is never readable by others before the
    final mode is set. ``secret``: the content is masked in pyinfra's output (-vv included).
    """
    data = quote(base64.b64encode(content.encode()).decode())
    folder = quote(str(PurePosixPath(path).parent))
    return StringCommand(
        f"install -d -m 0755 {folder} && "
        f"tmp=$(mktemp {folder}/.gpufleet-new.XXXXXX) && trap 'rm -f \"$tmp\"' EXIT && "
        "printf %s",
        HiddenValue(data) if secret else data,
        f"| base64 -d > \"$tmp\" && chmod {quote(mode)} \"$tmp\" && "
        f"chown {quote(owner)} \"$tmp\" && mv -f \"$tmp\" {quote(path)}",
    )


def file_commands(path: str, current: FileState | None, wanted_sha256: str | None,
                  write: StringCommand | None, mode: str, owner: str) -> Iterator[StringCommand]:
    """The commands that bring ``path`` to the wanted bytes, mode and owner (none if it has
    them); ``wanted_sha256`` None means the file must not exist."""
    if wanted_sha256 is None:
        if current is not None:
            yield StringCommand(f"rm -f {quote(path)}")
        return
    if current is None or current.sha256 != wanted_sha256:
        assert write is not None
        yield write
        return
    if not _same_mode(current.mode, mode):
        yield StringCommand(f"chmod {quote(mode)} {quote(path)}")
    if current.owner != owner:
        yield StringCommand(f"chown {quote(owner)} {quote(path)}")


@operation()
def managed_file(path: str, content: str | None, mode: str = "644", owner: str = "root:root",
                 secret: bool = False, record: bool = True):
    """
    Ensure a file has exactly this content, mode and owner (None: the file must not exist).

    + path: file on the host, in a folder the state read watches (facts.host_state)
    + content: the whole file; None removes it
    + mode: octal permissions (600 for anything holding a secret)
    + owner: USER:GROUP
    + secret: mask the content in pyinfra's output (credentials)
    + record: part of the host's manifest (False: a one-off repair of a file that is not
      gpufleet's, e.g. a user's apt source)

    **Example:**

    .. code:: python

        managed_file(
            name="Ensure nouveau is blacklisted",
            path="/etc/modprobe.d/gpufleet-blacklist-nouveau.conf",
            content="blacklist nouveau\\n",
        )
    """
    _check_args(path, mode, owner)
    current = host_state().file(path)
    wanted = None if content is None else sha256_text(content)
    if record:
        desired().file(path, wanted, mode, owner)
    write = None if content is None else write_file_command(path, content, mode, owner, secret)
    commands = list(file_commands(path, current, wanted, write, mode, owner))
    if not commands:
        host.noop(f"{path} is absent" if content is None else f"{path} is up to date")
        return
    yield from commands


@operation()
def uploaded_file(path: str, src: str, mode: str = "644", owner: str = "root:root"):
    """
    Ensure a file on the host is a copy of a controller file, uploaded only when it differs.

    For files too large for a command line (CA bundles); compared by sha256.

    + path: file on the host, in a folder the state read watches
    + src: file on the controller
    + mode: octal permissions
    + owner: USER:GROUP

    **Example:**

    .. code:: python

        uploaded_file(
            name="Ensure the fleet's extra CA bundle is trusted",
            path="/usr/local/share/ca-certificates/gpufleet-extra-ca.crt",
            src="certs/corporate-root-ca.pem",
        )
    """
    _check_args(path, mode, owner)
    with open(src, "rb") as handle:
        wanted = hashlib.sha256(handle.read()).hexdigest()
    desired().file(path, wanted, mode, owner)
    # A unique name per attempt; the leftovers of a failed upload are removed first.
    tmp = f"{path}.gpufleet-upload-{uuid.uuid4().hex[:12]}"
    write = StringCommand(
        f"trap 'rm -f {quote(tmp)}' EXIT && chmod {quote(mode)} {quote(tmp)} && "
        f"chown {quote(owner)} {quote(tmp)} && mv -f {quote(tmp)} {quote(path)}"
    )
    commands = list(file_commands(path, host_state().file(path), wanted, write, mode, owner))
    if not commands:
        host.noop(f"{path} is up to date")
        return
    if commands[0] is write:
        folder = quote(str(PurePosixPath(path).parent))
        yield StringCommand(f"install -d -m 0755 {folder} && rm -f {quote(path)}.gpufleet-upload-*")
        yield FileUploadCommand(src, tmp)
    yield from commands


@operation()
def moved_aside(path: str, backup_dir: str, why: str):
    """
    Ensure a file is no longer at ``path``: moved into ``backup_dir`` (never deleted).

    + path: the file to move away, in a folder the state read watches
    + backup_dir: where it is kept (created 0700); the name gets a timestamp suffix
    + why: one line for the log, naming what replaces it

    **Example:**

    .. code:: python

        moved_aside(
            name="Replace NVIDIA's own apt source cuda-ubuntu2204-x86_64.list",
            path="/etc/apt/sources.list.d/cuda-ubuntu2204-x86_64.list",
            backup_dir="/var/backups/gpufleet",
            why="gpufleet's signed source for the same repository replaces it",
        )
    """
    require_watched(path)
    if not PurePosixPath(backup_dir).is_absolute():
        raise OperationValueError(f"backup_dir must be absolute, got {backup_dir!r}")
    if host_state().file(path) is None:
        host.noop(f"{path} is not there")
        return
    name = quote(PurePosixPath(path).name)
    yield StringCommand(
        f"install -d -m 0700 {quote(backup_dir)} && "
        f"mv -f {quote(path)} {quote(backup_dir)}/{name}.$(date +%Y%m%d%H%M%S) && "
        f"echo {quote(f'gpufleet: moved {path} to {backup_dir}: {why}')}"
    )


@operation()
def validated_file(path: str, content: str, check: str, mode: str = "644",
                   owner: str = "root:root", secret: bool = False):
    """
    Ensure a file has exactly this content, checked by a validator before it replaces the old
    one: a file the validator refuses never takes the place of a working one.

    + path: file on the host, in a folder the state read watches
    + content: the whole file
    + check: a command validating a candidate; ``{}`` is replaced by the candidate's path, which
      keeps the file's name (validators read the unit type from it)
    + mode / owner / secret: as for managed_file

    **Example:**

    .. code:: python

        validated_file(
            name="Ensure the inference unit is up to date (systemd-analyze verify)",
            path="/etc/systemd/system/gpufleet-inference.service",
            content=unit_text, check="systemd-analyze verify {}",
        )
    """
    _check_args(path, mode, owner)
    if "{}" not in check:
        raise OperationValueError("check must name the candidate file as {}")
    current = host_state().file(path)
    desired().file(path, sha256_text(content), mode, owner)
    data = quote(base64.b64encode(content.encode()).decode())
    name = quote(PurePosixPath(path).name)
    staged = f'"$work"/{name}'
    candidate = StringCommand(
        "work=$(mktemp -d) && trap 'rm -rf \"$work\"' EXIT && printf %s",
        HiddenValue(data) if secret else data,
        f"| base64 -d > {staged} && {check.replace('{}', staged)}",
    )
    write = write_file_command(path, content, mode, owner, secret)
    commands = list(file_commands(path, current, sha256_text(content), write, mode, owner))
    if not commands:
        host.noop(f"{path} is up to date")
        return
    if commands[0] is write:
        yield candidate
    yield from commands
