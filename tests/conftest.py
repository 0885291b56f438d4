"""Test order for `make test` (pytest-xdist workers, a whole file each, --dist loadfile).

xdist hands a file to whichever worker is free, in collection order. Its default reorders
files by their number of tests, which puts the longest end-to-end files (few tests, minutes
each) last, and one worker then finishes minutes after the other. Longest first instead: the
classic longest-processing-time rule, with the durations measured on the 2-core development
machine (docs/performance.md). Files not listed keep their order, after these.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

# Keys generated for fleets whose engines listen beyond loopback (inventory.key_files) go to a
# folder of the test run, never the user's ~/.config/gpufleet; the deploys the end-to-end tests
# run inherit it, so test and deploy see the same key.
os.environ.setdefault("GPUFLEET_CONFIG_DIR", tempfile.mkdtemp(prefix="gpufleet-test-config-"))

# End-to-end files, longest first (seconds on the 2-core machine, one file alone, from the
# per-module table every run prints at its end; 2026-12-07 night, load 2-5; "snapshot": its
# hosts start from a converged snapshot, stack_helpers.converged_snapshot, made once per tree).
LONGEST_FIRST = (
    "tests/e2e/test_faults.py",  # 334-362: A bare, B and C from the snapshot
    "tests/e2e/test_rollout.py",  # 306 (+118 when it makes its older pins' snapshot): five
    #   hosts, three rollouts under a paced load
    "tests/e2e/test_monitoring.py",  # 175-198: snapshot; monitoring host, gateway, canary
    "tests/e2e/test_gpu_host.py",  # 220: bare, the real torch lock
    "tests/e2e/test_fleet_state.py",  # 188: snapshot, then a rebuild from bare
    "tests/e2e/test_nvidia_stack.py",  # 164: bare
    "tests/e2e/test_inference.py",  # 110: snapshot
    "tests/e2e/test_multinode.py",  # 107: snapshot, two hosts, one replica across them
    "tests/e2e/test_simulator.py",  # 86
    "tests/e2e/test_ssh.py",  # 85: bare over SSH
    "tests/e2e/test_python_env.py",  # 29: small locks on a plain host container
)


def _rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the order within a file, and of the rest, is kept


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadfile, but a worker is given its next file only when it starts the last test
    of the one it has (xdist's own gives it when two are left: a worker then holds two
    files of minutes each, and the longest-first order no longer decides who runs what)."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class JustInTime(LoadFileScheduling):
        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            # 1: the test the worker holds back until it knows the next one (its teardown
            # depends on it); it has started the one before it.
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return JustInTime(config, log)


# --- per-module times, printed at the end of every run (issue 23 item 4) -----------------------
# Setup + call + teardown of every test, summed per file, as the controller receives the reports
# (under xdist too: the workers send theirs). A module-scoped fixture's start and clean-up fall
# in its first test's setup and its last test's teardown, so they count. Also written to
# tests/sim/build/module-times.json for comparing runs.
_MODULE_SECONDS: dict[str, float] = {}
_MODULE_WORKER: dict[str, set[str]] = {}
_RUN_START = time.monotonic()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _MODULE_SECONDS[path] = _MODULE_SECONDS.get(path, 0.0) + report.duration
    node = getattr(report, "node", None)  # xdist: the worker that ran it
    gateway = getattr(node, "gateway", None)
    if gateway is not None:
        _MODULE_WORKER.setdefault(path, set()).add(str(gateway.id))


def module_times_table(seconds: dict[str, float], workers: dict[str, set[str]],
                       unit_rows: int = 5) -> list[str]:
    """Lines of the per-module table, longest first: every end-to-end file, the longest
    ``unit_rows`` unit files and the rest of them in one row; then the totals per suite and
    per worker (with --dist loadfile a file runs on one worker)."""
    def worker(path: str) -> str:
        return "+".join(sorted(workers.get(path, {"-"})))

    rows = sorted(seconds.items(), key=lambda kv: -kv[1])
    unit = [(p, s) for p, s in rows if p.startswith("tests/unit/")]
    shown = [(p, s) for p, s in rows if not p.startswith("tests/unit/")] + unit[:unit_rows]
    lines = [f"{'seconds':>8}  {'worker':<7}  module"]
    for path, secs in sorted(shown, key=lambda kv: -kv[1]):
        lines.append(f"{secs:8.1f}  {worker(path):<7}  {path}")
    if len(unit) > unit_rows:
        rest = unit[unit_rows:]
        lines.append(f"{sum(s for _, s in rest):8.1f}  {'':<7}  ({len(rest)} other unit files)")
    lines.append(f"{sum(s for _, s in unit):8.1f}  {'':<7}  (all of tests/unit)")
    e2e = sum(s for p, s in rows if p.startswith("tests/e2e/"))
    lines.append(f"{e2e:8.1f}  {'':<7}  (all of tests/e2e)")
    per_worker: dict[str, float] = {}
    for path, secs in rows:
        per_worker[worker(path)] = per_worker.get(worker(path), 0.0) + secs
    for name, secs in sorted(per_worker.items()):
        lines.append(f"{secs:8.1f}  {name:<7}  (worker total)")
    return lines


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Wait for the host copies still being removed in the background (stack_helpers.
    remove_later): a run leaves none behind. In each xdist worker, where they were started."""
    import sys

    helpers = sys.modules.get("tests.e2e.stack_helpers")
    if helpers is None:
        return
    started = time.monotonic()
    helpers.wait_for_removals()
    for error in helpers.REMOVAL_ERRORS:
        print(f"\nhost copies not removed: {error}", file=sys.stderr)
    if helpers.REMOVAL_ERRORS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif time.monotonic() - started > 1:
        print(f"\nhost copies removed at the end: {time.monotonic() - started:.0f} s",
              file=sys.stderr)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _MODULE_SECONDS or hasattr(config, "workerinput"):
        return
    wall = time.monotonic() - _RUN_START
    terminalreporter.write_sep("=", f"time per module (setup + call + teardown), wall {wall:.0f} s")
    for line in module_times_table(_MODULE_SECONDS, _MODULE_WORKER):
        terminalreporter.write_line(line)
    out = Path(__file__).resolve().parent / "sim" / "build" / "module-times.json"
    with contextlib.suppress(OSError):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"wall": round(wall, 1), "modules": {
            p: {"seconds": round(s, 1), "workers": sorted(_MODULE_WORKER.get(p, ()))}
            for p, s in sorted(_MODULE_SECONDS.items())}}, indent=1) + "\n")
