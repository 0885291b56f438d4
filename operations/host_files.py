"""Files gpufleet owns on a host: exact content, mode and owner; uploads; files moved aside.

pyinfra's files.put costs two facts per file (stat and checksum); these compare with the one
state read (facts.host_state), which already has every watched file's sha256, mode and owner.
Files are written next to the old one under a unique temporary name and renamed over it, so a
reader never sees half a file and a failed write leaves nothing behind. A secret's content never
goes on a command line (where /proc/*/cmdline, sudo's log and -vvv would show it): it is
uploaded into a file created 0600 beforehand (``secret_write_commands``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationValueError, StringCommand, operation
from pyinfra.api.command import PyinfraCommand

from facts._shell import quote
from facts.host_state import (
    SECRET_STAGING_PREFIX,
    FileState,
    require_secret,
    require_watched,
    sha256_text,
)
from operations.desired import desired
from operations.host_reading import host_state

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
                       owner: str = "root:root") -> StringCommand:
    """Write ``content`` to a unique temporary file beside ``path``, then rename it over.

    mktemp creates the file 0600, so the content is never readable by others before the
    final mode is set. The content travels on the command line: never for a secret
    (``secret_write_commands``).
    """
    data = quote(base64.b64encode(content.encode()).decode())
    folder = quote(str(PurePosixPath(path).parent))
    return StringCommand(
        f"install -d -m 0755 {folder} && "
        f"tmp=$(mktemp {folder}/.gpufleet-new.XXXXXX) && trap 'rm -f \"$tmp\"' EXIT && "
        f"printf %s {data} | base64 -d > \"$tmp\" && chmod {quote(mode)} \"$tmp\" && "
        f"chown {quote(owner)} \"$tmp\" && mv -f \"$tmp\" {quote(path)}",
    )


def secret_write_commands(path: str, content: str, mode: str = "600",
                          owner: str = "root:root") -> list[PyinfraCommand]:
    """Write a secret without it ever being part of a command: an upload (SFTP, or `docker
    cp`) into a file created 0600 beside ``path``, then chmod, chown and rename over.

    Through sudo, pyinfra uploads as the login user to ``remote_temp_filename`` and copies it
    with sudo: that staging file is created 0600 by the login user first (noclobber: a file
    planted under the name makes the write fail), so the secret is never readable by others
    there either, and it is removed after the copy.
    """
    folder = str(PurePosixPath(path).parent)
    token = uuid.uuid4().hex[:12]
    tmp = f"{folder}/{SECRET_STAGING_PREFIX}{token}"
    staging = f"/tmp/gpufleet-secret-{token}"
    return [
        StringCommand(f"(umask 077 && set -C && : > {quote(staging)})", _sudo=False),
        StringCommand(f"install -d -m 0755 {quote(folder)} && "
                      f"rm -f {quote(folder)}/{SECRET_STAGING_PREFIX}* && "
                      f"(umask 077 && set -C && : > {quote(tmp)})"),
        FileUploadCommand(io.BytesIO(content.encode()), tmp, remote_temp_filename=staging),
        StringCommand(f"trap 'rm -f {quote(tmp)} {quote(staging)}' EXIT && "
                      f"chmod {quote(mode)} {quote(tmp)} && chown {quote(owner)} {quote(tmp)} "
                      f"&& mv -f {quote(tmp)} {quote(path)}"),
    ]


def file_commands(path: str, current: FileState | None, wanted_sha256: str | None,
                  write: Sequence[PyinfraCommand] | None, mode: str,
                  owner: str) -> Iterator[PyinfraCommand]:
    """The commands that bring ``path`` to the wanted bytes, mode and owner (none if it has
    them); ``wanted_sha256`` None means the file must not exist; ``write``: the commands
    that write the wanted bytes."""
    if wanted_sha256 is None:
        if current is not None:
            yield StringCommand(f"rm -f {quote(path)}")
        return
    if current is None or current.sha256 != wanted_sha256:
        assert write is not None
        yield from write
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
    + secret: a credential: never on a command line (uploaded), never read back (the path
      must be one of facts.host_state.SECRET_FILES)
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
    if secret:
        require_secret(path)
    current = host_state().file(path)
    wanted = None if content is None else sha256_text(content)
    if record:
        desired().file(path, wanted, mode, owner, secret=secret)
    write: list[PyinfraCommand] | None = None
    if content is not None:
        write = (secret_write_commands(path, content, mode, owner) if secret
                 else [write_file_command(path, content, mode, owner)])
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
    commands = list(file_commands(path, host_state().file(path), wanted, [write], mode, owner))
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
                   owner: str = "root:root"):
    """
    Ensure a file has exactly this content, checked by a validator before it replaces the old
    one: a file the validator refuses never takes the place of a working one.

    + path: file on the host, in a folder the state read watches
    + content: the whole file
    + check: a command validating a candidate; ``{}`` is replaced by the candidate's path, which
      keeps the file's name (validators read the unit type from it)
    + mode / owner: as for managed_file (never a secret: the candidate travels in the command)

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
        f"work=$(mktemp -d) && trap 'rm -rf \"$work\"' EXIT && printf %s {data} "
        f"| base64 -d > {staged} && {check.replace('{}', staged)}",
    )
    write = write_file_command(path, content, mode, owner)
    commands = list(file_commands(path, current, sha256_text(content), [write], mode, owner))
    if not commands:
        host.noop(f"{path} is up to date")
        return
    if commands[0] is write:
        yield candidate
    yield from commands
