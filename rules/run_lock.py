"""One run at a time on a host: the run lock's record, who holds it, and what to tell the
operator. Pure (the commands that take and release it: operations/host_lock.py).

A converge, a rollout, a canary action and a drain hold the lock of every host they change for
their whole run. pyinfra runs many separate remote commands, so the lock cannot be a process
holding a file open: it is a record, ``LOCK_PATH``, created atomically on the host (a complete
temp file hard-linked to the name: `ln` fails when the name exists) and removed at the run's
end, failed or not. The record says who holds it: the user, the controller's host name, the
command, since when, the controller's pid and boot id, and a token. A released lock leaves its
record as ``LAST_PATH``: a run that read the host before taking the lock (the preview first,
then the operator's yes) knows from it whether another run changed the host in between.

A second run waits up to ``--data lock_wait=SECONDS`` (0 unless asked: it fails at once), then
fails naming the holder and printing the command that breaks its lock. A holder whose
controller is this machine and whose process is gone (or whose boot id is not this boot's) is
certainly dead (killed, or its host went away before it could give the lock back): the next
run takes the lock over and says whose it was. A holder on another controller cannot be
checked from here: its operator judges, and breaks it with the printed command. Breaking
needs the holder's token, so it never removes a lock taken since.

A tool holding the locks for many pyinfra runs (tools/rollout.py) passes its record to them
in ``HOLDER_ENV``: a run whose lock is held under its own token goes on and leaves it held.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

LOCK_DIR = "/var/lib/gpufleet"
LOCK_PATH = f"{LOCK_DIR}/run.lock"
LAST_PATH = f"{LOCK_DIR}/run.lock.last"
# `--data` keys: how long to wait for a held lock; the token of a dead holder to break.
LOCK_WAIT_DATA = "lock_wait"
BREAK_DATA = "break_lock"
# A tool holding the locks for the pyinfra runs it starts passes its holder record in this.
HOLDER_ENV = "GPUFLEET_LOCK_HOLDER"
MAX_WAIT_SECONDS = 3600
COMMAND_CHARS = 160

Verdict = Literal["free", "mine", "held", "dead"]


@dataclass(frozen=True)
class Holder:
    """Who holds (or asks for) a host's run lock."""

    token: str
    who: str  # the user on the controller
    origin: str  # the controller's host name
    command: str
    since: float  # epoch seconds
    pid: int  # the controller process holding it
    boot_id: str  # the controller's /proc/sys/kernel/random/boot_id

    def render(self) -> str:
        """The record, one JSON line (what the host keeps)."""
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self, now: float) -> str:
        if not self.token:  # a record nobody can read: say so, not a made-up holder
            return self.command
        return (f"{self.who} on {self.origin} (pid {self.pid}), running `{self.command}`, "
                f"since {when(self.since)} ({ago(now - self.since)})")


def when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def parse_holder(text: str | None) -> Holder | None:
    """A holder record; None when there is none. A record that cannot be read (cut, edited)
    is a holder all the same: nobody may assume the host is free."""
    if text is None or not text.strip():
        return None
    try:
        data = json.loads(text)
        return Holder(token=str(data["token"]), who=str(data["who"]),
                      origin=str(data["origin"]), command=str(data["command"]),
                      since=float(data["since"]), pid=int(data["pid"]),
                      boot_id=str(data["boot_id"]))
    except (ValueError, KeyError, TypeError):
        return Holder(token="", who="someone", origin="an unknown controller",
                      command=f"an unreadable lock record ({text.strip()[:60]!r})", since=0.0,
                      pid=0, boot_id="")


def short_command(argv: list[str]) -> str:
    text = " ".join(argv)
    return text if len(text) <= COMMAND_CHARS else text[:COMMAND_CHARS - 3] + "..."


def verdict(found: Holder | None, mine: Holder, alive: Callable[[int], bool]) -> Verdict:
    """What ``found`` (the host's record) means to the run ``mine``. ``alive(pid)`` says
    whether a process of this controller still runs."""
    if found is None:
        return "free"
    if found.token and found.token == mine.token:
        return "mine"
    if found.origin == mine.origin and found.token and (
            found.boot_id != mine.boot_id or not alive(found.pid)):
        return "dead"
    return "held"


def break_command(host: str, found: Holder) -> str:
    return (f"pyinfra -y inventory.py deploys/lock.py --limit {host} "
            f"--data {BREAK_DATA}={found.token or 'unreadable'}")


def held_message(host: str, found: Holder, waited: int, now: float) -> str:
    """The one line a run that could not take the lock ends with."""
    return (f"{host}: locked by {found.describe(now)}; "
            + (f"gave up after waiting {waited} s" if waited else "not waiting")
            + f" (--data {LOCK_WAIT_DATA}=SECONDS waits). Nothing was changed by this run. "
            f"If that run is gone, break its lock with: {break_command(host, found)}")


def dead_message(host: str, found: Holder, now: float) -> str:
    """What the preview says of a lock whose run is certainly gone."""
    return (f"{host}: locked by a run that is gone: {found.describe(now)}, and that process "
            "no longer runs on this controller: this run takes the lock over")


def taken_over_message(host: str, found: Holder, now: float) -> str:
    return (f"{host}: took over the run lock left by a run that is gone: "
            f"{found.describe(now)} (that process no longer runs on this controller; what it "
            "left unfinished, this run converges or reports)")


def changed_meanwhile(host: str, last: Holder, now: float) -> str:
    """A run that read the host, then took the lock after another run changed it."""
    return (f"{host}: another run changed this host after this run read it: "
            f"{last.describe(now)}. Nothing was changed by this run; run it again to see "
            "what is left to do.")


def parse_wait(raw: object) -> tuple[int, str | None]:
    """``--data lock_wait`` as seconds, or an error line naming what is allowed."""
    if raw is None or raw == "":
        return 0, None
    try:
        seconds = int(str(raw))
    except ValueError:
        seconds = -1
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        return 0, (f"--data {LOCK_WAIT_DATA}={raw!r}: allowed: whole seconds from 0 to "
                   f"{MAX_WAIT_SECONDS}")
    return seconds, None


def break_verdict(found: Holder | None, token: str, host: str, now: float) -> tuple[bool, str]:
    """Whether ``--data break_lock=TOKEN`` removes the host's lock, and what to say."""
    if found is None:
        return False, f"{host}: not locked; nothing to break"
    if found.token != token and not (token == "unreadable" and not found.token):
        return False, (f"{host}: the lock is held by another run than the one named (token "
                       f"{token}): {found.describe(now)}; nothing was broken")
    return True, f"{host}: breaking the lock of {found.describe(now)}"
