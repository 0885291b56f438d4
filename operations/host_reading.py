"""The current reading of the host's state (facts.host_state.HostState): one read per phase,
again after each change.

pyinfra does not cache facts and every read is a round trip, so ``host_state()`` reads the host
once per phase (change detection, execution) and again only after an operation on that host
changed something. The probe (facts.probe.GpuHostProbe) carries the same reading, so the
change-detection pass costs no command of its own (``remember_host_state``), nor does an
execution that follows promptly. The readings are the run's (operations/run_context.py).
"""

from __future__ import annotations

import time

from pyinfra import host

from facts.host_state import HostState, HostStateResult
from operations.pyinfra_adapter import changes_so_far
from operations.run_context import StateReading, run_context

# A reading taken while the deploy loaded (the probe's) still stands when execution starts
# this soon after and nothing has changed the host since: with -y that is seconds later, and a
# second read would double a no-op's remote work. After a longer pause (an operator reading
# the preview) execution reads again.
REUSE_ACROSS_PHASES_SECONDS = 30.0


def still_current(reading: StateReading, executing: bool, changes: int) -> bool:
    """Whether ``reading`` stands for the host now (in this phase, after ``changes``)."""
    if reading.changes != changes:
        return False
    if reading.executing == executing:
        return True
    return (executing and not reading.executing
            and time.monotonic() - reading.taken <= REUSE_ACROSS_PHASES_SECONDS)


def host_state() -> HostStateResult:
    """This host's state: read once per phase (the probe's reading carries over into a prompt
    execution), and again after an operation changed it."""
    executing = bool(host.state.is_executing)
    changes = changes_so_far(host.state, host)
    readings = run_context(host.state).readings
    cached = readings.get(host.name)
    if cached is not None and still_current(cached, executing, changes):
        return cached.result
    result = host.get_fact(HostState)
    readings[host.name] = StateReading(executing, changes, time.monotonic(), result)
    return result


def remember_host_state(result: HostStateResult, taken: float | None = None) -> None:
    """Use a reading taken in this phase (by the probe) as the current one. ``taken``: when
    it was read (time.monotonic()), if not just now."""
    run_context(host.state).readings[host.name] = StateReading(
        bool(host.state.is_executing), changes_so_far(host.state, host),
        time.monotonic() if taken is None else taken, result)
