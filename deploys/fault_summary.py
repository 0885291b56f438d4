"""The fault summary at the end of every run (rules/faults.py says what it contains).

While the run goes, a logging handler keeps, per host, the warning and error lines pyinfra
and gpufleet print for it (they carry the host's name as their prefix: connection errors,
failed facts and commands, gpufleet's own messages). When the process exits — after
pyinfra's own results, whatever way the run ended — every failed host gets its step, its
cause in one line and what to do, on stderr (stdout stays pyinfra's: --json). A run
without a failed host prints nothing more.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
from collections import defaultdict

from pyinfra.api import State
from pyinfra.api.host import Host

from operations.pyinfra_adapter import host_op_meta
from operations.run_context import run_context
from rules.faults import HostFault, cause_of, clean, lost_before_any_step, render_summary

_PREFIX = re.compile(r"^\[(?P<host>[^\]]+)\]")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
LINES_KEPT = 400  # per host: the cause is near the end, a runaway output must not grow


class _HostLines(logging.Handler):
    """Per host: the warning and error lines, and (for the known causes only) the info lines:
    with -vvv pyinfra prints a failed fact's output at info level."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: dict[str, list[str]] = defaultdict(list)
        self.info: dict[str, list[str]] = defaultdict(list)

    def keep(self, record: logging.LogRecord) -> bool:
        """As a logging filter: note the record, let it through."""
        if record.levelno >= self.level:
            self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = _ANSI.sub("", record.getMessage()).strip()
        except Exception:  # a record that cannot be formatted has nothing to tell us
            return
        found = _PREFIX.match(text)
        if found:
            kept = (self.lines if record.levelno >= logging.WARNING else self.info)[found["host"]]
            kept.append(text)
            del kept[:-LINES_KEPT]


def _failed_step(state: State, host: Host) -> str | None:
    for op_hash in state.get_op_order():
        meta = host_op_meta(state, host, op_hash)
        if meta is None:
            continue
        if meta.is_complete() and meta.did_error():
            return ", ".join(state.get_op_meta(op_hash).names) or "an operation"
    return None


def faults(state: State, lines: dict[str, list[str]],
           info: dict[str, list[str]] | None = None) -> list[HostFault]:
    """Each failed host of the run: its failed step and the cause its lines give."""
    found = []
    for host in state.failed_hosts:
        mine, quiet = lines.get(host.name, []), (info or {}).get(host.name, [])
        step = _failed_step(state, host)
        if step is not None:
            found.append(HostFault(host.name, step, cause_of(mine, quiet)))
            continue
        # connected hosts are activated (pyinfra.api.connect); the others never were
        step = ("reading the host, before any change (the probe)"
                if host in state.activated_hosts else "connecting to the host")
        found.append(HostFault(host.name, step, lost_before_any_step(mine, quiet)))
    return found


def install_fault_summary(state: State) -> None:
    """Print the fault summary when this run ends (once per run, whichever host asks)."""
    context = run_context(state)
    if context.fault_summary_installed:  # the deploy file runs once per host
        return
    context.fault_summary_installed = True
    lines = _HostLines()
    # pyinfra's logger has pyinfra's handler: one more changes nothing it prints. gpufleet's
    # lines are read by a filter on its logger (which lets every record through to its own
    # handler, deploys/terminal.py).
    logging.getLogger("pyinfra").addHandler(lines)
    logging.getLogger("gpufleet").addFilter(lines.keep)

    def print_summary() -> None:
        in_run = [h for h in state.inventory if state.is_host_in_limit(h)]  # --limit
        text = render_summary(faults(state, lines.lines, lines.info), len(in_run))
        if text:
            print(text, file=sys.stderr, flush=True)

    atexit.register(print_summary)


__all__ = ["clean", "faults", "install_fault_summary"]
