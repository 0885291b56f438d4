"""The host's run lock on the host (rules/run_lock.py says what it is and why).

``take(host, mine, wait)``: create the lock record atomically (a complete temp file
hard-linked to LOCK_PATH: `ln` refuses an existing name), waiting up to ``wait`` seconds for
a live holder; a dead holder is never waited for. ``release(host, mine)``: keep the record as
LAST_PATH, remove LOCK_PATH, only if it is still ours (compared byte for byte). Every lock
this process took is noted per host, so a failed host gives its lock back at once
(``ReleaseOnFailure``, a pyinfra state callback) and a run cut short on the controller (an
exception, a lost host) gives back what it can when it exits.

``run_lock``: an operation holding the lock at execution for a run that read the host before
taking it (the preview, then the operator's yes): it checks that no other run changed the host
in between (LAST_PATH). ``run_lock_released``: the last operation of a run.
"""

from __future__ import annotations

import atexit
import getpass
import logging
import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from pyinfra import host as current_host
from pyinfra.api import FunctionCommand, State, StringCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import BaseStateCallback

from operations.messages import fail_host, tell
from operations.pyinfra_adapter import may_have_changed
from operations.run_context import run_context
from rules.run_lock import (
    HOLDER_ENV,
    LAST_PATH,
    LOCK_DIR,
    LOCK_PATH,
    Holder,
    break_verdict,
    changed_meanwhile,
    held_message,
    parse_holder,
    short_command,
    taken_over_message,
    verdict,
)

POLL_SECONDS = 2
MAX_QUICK_TRIES = 10  # retries without a wait: released or taken over just now
logger = logging.getLogger("gpufleet")
BOOT_ID = "/proc/sys/kernel/random/boot_id"

def _taken(host: Host) -> dict[str, tuple[Host, Holder]]:
    """What this run holds, per host name: the holder record (released at the end)."""
    return run_context(host.state).locks_taken


def boot_id() -> str:
    try:
        with open(BOOT_ID) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether a process of this controller runs with ``pid``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def controller_holder(argv: list[str] | None = None) -> Holder:
    """This run's holder record: the one a tool passed down (HOLDER_ENV), or a new one."""
    passed = parse_holder(os.environ.get(HOLDER_ENV))
    if passed is not None and passed.token:
        return passed
    return Holder(token=uuid.uuid4().hex, who=os.environ.get("SUDO_USER") or getpass.getuser(),
                  origin=socket.gethostname(), command=short_command(argv or sys.argv),
                  since=time.time(), pid=os.getpid(), boot_id=boot_id())


def label(host: Host) -> str:
    """The host as the operator names it: its fleet file name (pyinfra's for a host without
    one); `--limit` takes it."""
    spec = host.data.get("gpufleet")
    name = spec.get("name") if isinstance(spec, dict) else None
    return str(name) if name else host.name


def _arguments(host: Host) -> dict[str, Any]:
    return {"_sudo": True} if host.data.get("_sudo") else {}


def _run(host: Host, script: str) -> tuple[bool, str]:
    try:
        ok, output = host.run_shell_command(StringCommand(script), **_arguments(host))
    except Exception as exc:  # a host gone mid-run: said by the caller, in one line
        return False, str(exc)
    return ok, "\n".join(output.stdout_lines)


def take_script(mine: Holder) -> str:
    """Prints "taken", or "held" and the holder's record."""
    return (f"mkdir -p {LOCK_DIR} && umask 077 && t={LOCK_PATH}.$$ && "
            f"printf '%s\\n' {shlex.quote(mine.render())} > \"$t\" && "
            f"if ln \"$t\" {LOCK_PATH} 2>/dev/null; then echo taken; "
            f"else echo held; cat {LOCK_PATH} 2>/dev/null; fi; rm -f \"$t\"")


def release_script(mine: Holder, changed: bool = True) -> str:
    """Removes the lock only while it is still ``mine``'s record; keeps it as the last one
    (``changed``: the run may have changed the host; one that stopped at once did not)."""
    keep = (f"cp {LOCK_PATH} {LAST_PATH}.tmp && mv -f {LAST_PATH}.tmp {LAST_PATH}; "
            if changed else "")
    return (f"if printf '%s\\n' {shlex.quote(mine.render())} | cmp -s - {LOCK_PATH}; then "
            f"{keep}rm -f {LOCK_PATH}; fi")


def break_script(record: str) -> str:
    """Removes the lock only while it is ``record`` (as read): moved aside first (a rename is
    atomic: of two breakers, one gets it), put back when it turns out to be another one.
    Prints "broken", or "changed" when the lock was no longer that record."""
    return (f"a={LOCK_PATH}.broken.$$; mv {LOCK_PATH} \"$a\" 2>/dev/null || "
            "{ echo changed; exit 0; }; "
            f"if printf '%s\\n' {shlex.quote(record)} | cmp -s - \"$a\"; then rm -f \"$a\"; "
            f"echo broken; else ln \"$a\" {LOCK_PATH} 2>/dev/null; rm -f \"$a\"; echo changed; "
            "fi")


def broken(host: Host, record: str) -> bool:
    """Remove the lock if it is still ``record``; whether it was."""
    ok, text = _run(host, break_script(record))
    return ok and text.strip() == "broken"


def read_last(host: Host) -> Holder | None:
    ok, text = _run(host, f"cat {LAST_PATH} 2>/dev/null || true")
    return parse_holder(text) if ok else None


def take(host: Host, mine: Holder, wait: int, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.time) -> str | None:
    """Take ``host``'s lock for ``mine``; None once held, else the one line saying why not."""
    started, tries = clock(), 0
    while True:
        tries += 1
        if tries > MAX_QUICK_TRIES + wait // POLL_SECONDS:  # a lock that will not settle
            return (f"{label(host)}: could not take the run lock ({LOCK_PATH}) after {tries - 1} "
                    "tries; look at it on the host")
        ok, text = _run(host, take_script(mine))
        lines = text.splitlines()
        if not ok or not lines:
            return f"{label(host)}: could not take the run lock ({LOCK_PATH}): {text.strip()}"
        if lines[0] == "taken":
            _taken(host)[host.name] = (host, mine)
            return None
        record = "\n".join(lines[1:])
        found = parse_holder(record)
        seen = verdict(found, mine, alive)
        if found is None:  # released just now
            continue
        if seen == "mine":  # the lock of the tool that started this run
            return None
        waited = int(clock() - started)
        if seen == "dead":  # certainly gone: its process no longer runs on this controller
            if broken(host, record):
                host.log_styled(taken_over_message(label(host), found, clock()), fg="yellow",
                                log_func=logger.warning)
            continue
        if waited >= wait:
            return held_message(label(host), found, waited, clock())
        sleep(POLL_SECONDS)


def release(host: Host, changed: bool = True) -> None:
    """Give back ``host``'s lock if this process took it."""
    taken = _taken(host).pop(host.name, None)
    if taken is not None:
        _run(taken[0], release_script(taken[1], changed))


def holds(host: Host) -> bool:
    return host.name in _taken(host)


class ReleaseOnFailure(BaseStateCallback):
    """A host that failed runs nothing more in this run: it gives its lock back at once."""

    @staticmethod
    def operation_host_error(state: State, host: Host, op_hash: Any,
                             retry_count: int = 0, max_retries: int = 0) -> None:
        with suppress(Exception):  # the failure itself is what the operator reads
            # a host refused before anything ran on it keeps no trace of this run
            release(host, changed=may_have_changed(state, host, op_hash))


def _release_all(state: State) -> None:
    taken = run_context(state).locks_taken
    for name in list(taken):
        host = taken[name][0]
        with suppress(Exception):  # a host lost: its lock is the dead holder's (rules)
            release(host)


def release_when_done(state: State) -> None:
    """Once per run: a failed host releases at once; whatever is left, when the process ends."""
    context = run_context(state)
    if context.lock_release_installed:
        return
    context.lock_release_installed = True
    state.add_callback_handler(ReleaseOnFailure())
    atexit.register(_release_all, state)


def take_checked(host: Host, mine: Holder, wait: int, seen_last: Holder | None) -> str | None:
    """Take the lock for a run that read the host before: None once held, else why not
    (another run holds it, or changed the host since this run read it)."""
    message = take(host, mine, wait)
    if message is None and holds(host):
        last = read_last(host)
        if last is not None and (seen_last is None or last.token != seen_last.token):
            release(host, changed=False)
            return changed_meanwhile(label(host), last, time.time())
    return message


@operation(is_idempotent=False)
def run_lock(mine: Holder, wait: int, seen_last: Holder | None, held: bool):
    """
    Hold this host's run lock from here to the run's end, at execution only (the preview takes
    no lock). ``held``: taken already, before the host was read (a run with -y).

    + mine: this run's holder record
    + wait: seconds to wait for a live holder
    + seen_last: the last released holder when the host was read: another one since means
      another run changed the host after this run read it, and it stops

    **Example:**

    .. code:: python

        run_lock(name="Hold the run lock", mine=controller_holder(), wait=0, seen_last=None,
                 held=False)
    """
    if not current_host.state.is_executing:
        return
    message = None if held else take_checked(current_host, mine, wait, seen_last)
    if message:
        yield FunctionCommand(fail_host, (message,), {})
    else:  # taking a lock is no change to the host: a second run still reports none
        current_host.noop("run lock held" + (" since this run read the host" if held else ""))


@operation(is_idempotent=False)
def run_lock_released():
    """
    Give this host's run lock back (the run's last operation; a failed host gives it back when
    it fails).

    **Example:**

    .. code:: python

        run_lock_released(name="Release the run lock")
    """
    if not current_host.state.is_executing:
        return
    release(current_host)
    current_host.noop("run lock released")
    yield from ()


def forget(host: Host) -> None:
    """Keep ``host``'s lock held after this process ends (a tool holds it across its runs)."""
    _taken(host).pop(host.name, None)


def _keep(state: State, host: Host, mine: Holder, wait: int) -> bool:
    message = take(host, mine, wait)
    if message:
        return fail_host(state, host, message)
    forget(host)
    return True


def _give_back(state: State, host: Host, mine: Holder) -> bool:
    _taken(host)[host.name] = (host, mine)
    release(host)
    return True


def _break(state: State, host: Host, token: str) -> bool:
    ok, text = _run(host, f"cat {LOCK_PATH} 2>/dev/null || true")
    found = parse_holder(text) if ok else None
    go, message = break_verdict(found, token, label(host), time.time())
    if not go:
        return fail_host(state, host, message) if found is not None else tell(state, host,
                                                                            message)
    tell(state, host, message)
    return broken(host, text) or fail_host(
        state, host, f"{label(host)}: the lock changed while breaking it; nothing was broken")


@operation(is_idempotent=False)
def lock_kept(mine: Holder, wait: int):
    """
    Take this host's run lock for a tool that holds it across several pyinfra runs (they
    pass ``mine`` on in the environment); it stays held when this run ends.

    + mine: the tool's holder record
    + wait: seconds to wait for a live holder

    **Example:**

    .. code:: python

        lock_kept(name="Take the run lock for the rollout", mine=controller_holder(), wait=0)
    """
    yield FunctionCommand(_keep, (mine, wait), {})


@operation(is_idempotent=False)
def lock_given_back(mine: Holder):
    """
    Give back a run lock a tool took with ``lock_kept`` (nothing if another run holds it).

    + mine: the tool's holder record

    **Example:**

    .. code:: python

        lock_given_back(name="Give the rollout's run lock back", mine=controller_holder())
    """
    yield FunctionCommand(_give_back, (mine,), {})


@operation(is_idempotent=False)
def lock_broken(token: str):
    """
    Remove a run lock left by a run that is gone, named by its token (printed in the message
    of the run that found it): a lock taken since, by another run, is left alone.

    + token: the dead holder's token

    **Example:**

    .. code:: python

        lock_broken(name="Break the run lock", token="5f0c...")
    """
    yield FunctionCommand(_break, (token,), {})
