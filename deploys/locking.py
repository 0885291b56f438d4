"""Every entry that changes a host holds its run lock for the whole run (rules/run_lock.py).

    if run_lock_held():        # first, before the host is read
        ...                    # the entry's steps
        run_lock_done()        # last

A run with -y takes the lock before it reads the host, waiting up to ``--data lock_wait``
seconds for another run (0: it fails at once, naming the holder), so what it plans is what it
finds. A run that asks first (no -y) takes no lock for its preview, which only says who holds
one; once the operator says yes, its first operation takes the lock and stops if another run
changed the host since the preview read it. A host that fails gives its lock back when it
fails; one lost mid-run (or a run killed) leaves it to a process that is gone once the run
ends: the next run from this controller takes it over and says whose it was; from another
controller, the message names the holder and prints the command that breaks it.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import cache

from pyinfra import host

from facts.lock_record import LockRecords
from operations.checks import refuse_host
from operations.host_lock import (
    alive,
    controller_holder,
    label,
    release_when_done,
    run_lock,
    run_lock_released,
    take,
)
from rules.run_lock import (
    LAST_PATH,
    LOCK_PATH,
    LOCK_WAIT_DATA,
    Holder,
    dead_message,
    parse_holder,
    parse_wait,
    verdict,
)

logger = logging.getLogger("gpufleet")


@cache
def this_run() -> Holder:
    """This run's holder record (one per process: every host of the run gets the same)."""
    return controller_holder([os.path.basename(sys.argv[0]), *sys.argv[1:]])


def executes_unasked() -> bool:
    """A run with -y (and not --dry): it goes on to change hosts without asking."""
    return not host.state.check_for_changes and "--dry" not in sys.argv


def run_lock_held() -> bool:
    """Hold this host's run lock (see above); False when this host stops here (refused)."""
    release_when_done(host.state)
    wait, problem = parse_wait(host.data.get(LOCK_WAIT_DATA))
    if problem:
        refuse_host(name="Refuse: how long to wait for the run lock?",
                    message=f"{label(host)}: {problem}")
        return False
    mine = this_run()
    # Read first: a host that does not answer fails here as on any read, before any change.
    lock_text, last_text = host.get_fact(LockRecords, lock=LOCK_PATH, last=LAST_PATH)
    if host in host.state.failed_hosts:
        return False
    if executes_unasked():
        message = take(host, mine, wait)
        if message:
            refuse_host(name="Refuse: another run holds this host's lock", message=message)
            return False
        run_lock(name="Hold the run lock", mine=mine, wait=wait, seen_last=None, held=True)
        return True
    say_holder_of(lock_text, "this run would wait for it (--data lock_wait=SECONDS) or stop")
    run_lock(name="Hold the run lock", mine=mine, wait=wait, seen_last=parse_holder(last_text),
             held=False)
    return True


def say_holder(then: str = "a run here would wait or stop") -> None:
    """Say who holds this host's lock, if anyone (a status): one read of the lock record."""
    say_holder_of(host.get_fact(LockRecords, lock=LOCK_PATH, last=LAST_PATH)[0], then)


def say_holder_of(lock_text: str | None, then: str) -> None:
    """Say who holds the lock whose record (None: no lock) was read already (the preview)."""
    mine = this_run()
    found = parse_holder(lock_text)
    seen = verdict(found, mine, alive)
    if found is not None and seen == "dead":
        host.log_styled(dead_message(label(host), found, mine.since), fg="yellow",
                        log_func=logger.warning)
    elif found is not None and seen == "held":
        host.log_styled(f"{label(host)}: locked by {found.describe(mine.since)}: {then}",
                        fg="yellow", log_func=logger.warning)


def run_lock_done() -> None:
    """The run's last operation on this host: the lock goes back."""
    run_lock_released(name="Release the run lock")
