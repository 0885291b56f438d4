"""The run context (operations/run_context.py): what one run keeps between hosts and passes,
typed, on pyinfra's State; and the current state reading it holds (operations/host_reading.py).
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

from pyinfra.api import Config, Inventory, State

from facts.host_state import HostStateResult
from operations import host_reading
from operations.run_context import RunContext, StateReading, run_context

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("inventory", "facts", "rules", "operations", "deploys", "components")


def _state() -> State:
    return State(Inventory((["gpu-01", "gpu-02"], {})), Config())


def test_one_context_per_run_created_empty_and_kept() -> None:
    first, second = _state(), _state()
    context = run_context(first)
    assert context == RunContext()  # empty on first use
    context.fleet.append("spec")  # type: ignore[arg-type]
    context.fault_summary_installed = True
    assert run_context(first) is context  # every host of the run sees the same
    assert run_context(second) == RunContext()  # a new run starts empty
    assert run_context(second) is not context


def test_the_context_is_one_attribute_of_the_state() -> None:
    state = _state()
    before = set(vars(state))
    run_context(state)
    assert set(vars(state)) - before == {"gpufleet_run"}


def _run_data_outside_the_context(path: Path) -> list[str]:
    """Loose run data: a ``State.__dict__`` key, a ``setattr``/``getattr`` on a state, a
    ``global`` rebinding, or a module-level mutable container (other than caches of files)."""
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        on_state = (isinstance(node, ast.Attribute) and node.attr == "__dict__"
                    and "state" in ast.unparse(node.value))
        by_name = (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                   and node.func.id in ("setattr", "getattr") and bool(node.args)
                   and "state" in ast.unparse(node.args[0]))
        if on_state or by_name:
            found.append(f"{path.name}:{getattr(node, 'lineno', 0)}: {ast.unparse(node)}")
        elif isinstance(node, ast.Global):
            found.append(f"{path.name}:{node.lineno}: global {', '.join(node.names)}")
    for node in tree.body:  # an empty container at module level, filled as the run goes
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        empty = (isinstance(value, (ast.List, ast.Set)) and not value.elts) or \
            (isinstance(value, ast.Dict) and not value.keys) or \
            (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
             and value.func.id in ("dict", "list", "set") and not value.args)
        if empty:
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_run_data_outside_the_context() -> None:
    # The run context module itself is the one place that touches the State's attributes;
    # pyinfra_adapter's tables are about pyinfra's code (source files, call-site lines, the
    # global arguments' types), the same in every run. A memo of a pure function elsewhere is
    # an lru_cache, keyed by the whole input (invisible to this scan, and not run data).
    allowed = {"run_context.py", "pyinfra_adapter.py"}
    found = [line for layer in PRODUCT for path in sorted((REPO / layer).rglob("*.py"))
             if path.name not in allowed
             for line in _run_data_outside_the_context(path)]
    assert found == []


# --- the current state reading ----------------------------------------------------------------
def _reading(executing: bool, changes: int = 0, age: float = 0.0) -> StateReading:
    return StateReading(executing, changes, time.monotonic() - age, HostStateResult())


def test_a_reading_stands_within_its_phase_until_an_operation_changes_the_host() -> None:
    still_current = host_reading.still_current
    assert still_current(_reading(executing=False), executing=False, changes=0)
    assert still_current(_reading(executing=True, age=600), executing=True, changes=0)
    assert not still_current(_reading(executing=True, changes=1), executing=True, changes=2)


def test_the_probe_reading_carries_into_a_prompt_execution_only() -> None:
    still_current = host_reading.still_current
    limit = host_reading.REUSE_ACROSS_PHASES_SECONDS
    # `pyinfra -y`: execution starts seconds after the deploy loaded.
    assert still_current(_reading(executing=False, age=2), executing=True, changes=0)
    # An operator read the preview for a while: read again.
    assert not still_current(_reading(executing=False, age=limit + 1), executing=True,
                             changes=0)
    # Never backwards: an execution reading does not stand in for a later preview.
    assert not still_current(_reading(executing=True), executing=False, changes=0)
