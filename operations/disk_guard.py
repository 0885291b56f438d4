"""Disk space around the big writes (the Python environment, the weights), at execution only.

``space_checked(need)``: a command that reads the free space of the filesystem that will hold
``need.path`` (df of it, or of its nearest existing parent) and fails the host with one line
(host, path, filesystem, needed, free, what to do) before anything is written when the step
does not fit. ``guarded(command, need, cleanup)``: runs a write (a shell command or an upload);
when it fails and the disk is full (the error says "No space left on device", or the filesystem
has less free than the step needs: an SFTP upload only says "Failure"), it runs ``cleanup``
(removes the partial files) and fails the host with the same kind of line. Another failure
(a lost connection) fails the host as pyinfra would, the partial files kept for the next run.

Both are FunctionCommands: the preview runs no command, so they read and write nothing there.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import replace
from typing import Any

from pyinfra.api import FileUploadCommand, FunctionCommand, State, StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.host import Host
from pyinfra.api.util import log_host_command_error, print_host_combined_output

from operations.messages import fail_host, tell
from operations.pyinfra_adapter import executing_op_arguments
from rules.disk_space import (
    FreeSpace,
    SpaceNeed,
    free_space_script,
    needed,
    needed_mark,
    no_space_left,
    parse_free_space,
    says_no_space,
    shortage,
)


def _connector_arguments(state: State, host: Host) -> dict[str, Any]:
    """The connector arguments (_sudo, _su_user, ...) of the operation running this command,
    as pyinfra gives them to the commands it runs itself (api/operations.py)."""
    arguments = executing_op_arguments(state, host)
    return {key: arguments[key] for key in CONNECTOR_ARGUMENT_KEYS if key in arguments}


def read_free_space(state: State, host: Host, need: SpaceNeed) -> FreeSpace | None:
    try:
        ok, output = host.run_shell_command(StringCommand(free_space_script(need)),
                                            **_connector_arguments(state, host))
    except Exception:  # a failed read is reported by the caller as unknown
        return None
    return parse_free_space("\n".join(output.stdout_lines)) if ok else None


def _check_space(state: State, host: Host, need: SpaceNeed) -> bool:
    space = read_free_space(state, host, need)
    if space is None:
        return tell(state, host, f"gpufleet: could not read the free space for {need.path} "
                                 "(df); going on without the check")
    message = shortage(host.name, need, space)
    return fail_host(state, host, message) if message else True


def space_checked(need: SpaceNeed) -> FunctionCommand:
    """At execution: fail the host, writing nothing, when ``need`` does not fit."""
    return FunctionCommand(_check_space, (need,), {})


def _run_guarded(state: State, host: Host, command: StringCommand | FileUploadCommand,
                 need: SpaceNeed, cleanup: str | None) -> bool:
    arguments = _connector_arguments(state, host)
    said = ""
    try:
        if isinstance(command, StringCommand):
            status, output = command.execute(state, host, arguments)  # type: ignore[arg-type]
            said = "\n".join(line.line for line in output)
            if not status and not state.print_output:
                print_host_combined_output(host, output)
        else:
            status = command.execute(state, host, arguments)  # type: ignore[arg-type]
    except Exception as exc:  # what pyinfra catches for its own commands, and more
        log_host_command_error(host, exc)
        status, said = False, str(exc)
    if status:
        return True
    mark = needed_mark(said)
    if mark is not None:
        need = replace(need, need=mark[0])
    space = read_free_space(state, host, need)
    if mark is not None and mark[1] and space is not None:  # stopped before writing
        message = shortage(host.name, need, space)
        if message:
            return fail_host(state, host, message)
    full = says_no_space(said) or (space is not None and space.free < needed(need, space)[0])
    if not full:
        return False  # another failure: its lines were printed above, the partial files stay
    if cleanup:
        with suppress(Exception):  # the failure below is what matters
            host.run_shell_command(StringCommand(cleanup), **arguments)
        space = read_free_space(state, host, need)
    return fail_host(state, host, no_space_left(host.name, need, space))


def guarded(command: StringCommand | FileUploadCommand, need: SpaceNeed,
            cleanup: str | None = None) -> FunctionCommand:
    """Run ``command``; when it fails on a full disk, run ``cleanup`` and say so in one line."""
    return FunctionCommand(_run_guarded, (command, need, cleanup), {})
