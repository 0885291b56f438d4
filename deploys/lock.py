"""The hosts' run locks by hand (rules/run_lock.py): break one left by a run that is gone, or
hold them across several runs (tools/rollout.py does).

    pyinfra -y inventory.py deploys/lock.py --limit gpu-01 --data break_lock=TOKEN
    pyinfra -y inventory.py deploys/lock.py --data lock=take       # GPUFLEET_LOCK_HOLDER set
    pyinfra -y inventory.py deploys/lock.py --data lock=release    # the same holder

The token comes from the message of the run that found the lock; a lock taken since by another
run has another token and is left alone. `take` and `release` act for the holder record in
$GPUFLEET_LOCK_HOLDER (the tool's), which the tool passes to every run it starts: those runs
find the lock held under their own token and go on.
"""

from __future__ import annotations

import os

from pyinfra import host

from operations.checks import refuse_host
from operations.host_lock import controller_holder, lock_broken, lock_given_back, lock_kept
from rules.run_lock import BREAK_DATA, HOLDER_ENV, LOCK_WAIT_DATA, parse_holder, parse_wait

ACTIONS = ("take", "release")

token, action = host.data.get(BREAK_DATA), host.data.get("lock")
wait, problem = parse_wait(host.data.get(LOCK_WAIT_DATA))
holder = parse_holder(os.environ.get(HOLDER_ENV))
if token is not None:
    lock_broken(name="Break the run lock of a run that is gone", token=str(token))
elif problem or action not in ACTIONS:
    refuse_host(name="Refuse: what to do with the run lock?",
                message=problem or f"--data lock={action!r}: allowed: {', '.join(ACTIONS)}, or "
                                   f"--data {BREAK_DATA}=TOKEN")
elif holder is None or not holder.token:
    refuse_host(name="Refuse: whose run lock?",
                message=f"--data lock={action} acts for the holder in ${HOLDER_ENV} (set by "
                        "tools/rollout.py); to break a lock use --data break_lock=TOKEN")
elif action == "take":
    lock_kept(name="Take the run lock", mine=controller_holder(), wait=wait)
else:
    lock_given_back(name="Give the run lock back", mine=controller_holder())
