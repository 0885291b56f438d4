"""``LockRecords``: the host's run lock record and the last released one, as text (what they
mean: rules/run_lock.py). Read-only; a missing file reads as None."""

from __future__ import annotations

from pyinfra.api import FactBase

from facts._shell import quote

LOCK_MARKER = "__gpufleet_lock__"
LAST_MARKER = "__gpufleet_lock_last__"


def parse_lock_records(lines: list[str]) -> tuple[str | None, str | None]:
    """(the lock record, the last released record) from the fact's output."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line in (LOCK_MARKER, LAST_MARKER):
            current = found.setdefault(line, [])
        elif current is not None:
            current.append(line)
    lock, last = found.get(LOCK_MARKER), found.get(LAST_MARKER)
    return ("\n".join(lock) if lock else None), ("\n".join(last) if last else None)


class LockRecords(FactBase[tuple[str | None, str | None]]):
    """
    The run lock's record and the last released one.

    .. code:: python

        host.get_fact(LockRecords, lock="/var/lib/gpufleet/run.lock",
                      last="/var/lib/gpufleet/run.lock.last")
        ('{"token": "...", ...}', None)
    """

    @staticmethod
    def default() -> tuple[str | None, str | None]:
        return None, None

    def command(self, lock: str, last: str) -> str:
        return (f"echo {LOCK_MARKER}; cat {quote(lock)} 2>/dev/null; "
                f"echo {LAST_MARKER}; cat {quote(last)} 2>/dev/null; true")

    def process(self, output: list[str]) -> tuple[str | None, str | None]:
        return parse_lock_records(output)
