"""What pyinfra's per-call work costs, and what operations/pyinfra_adapter.py's replacements
cost, call for call, on a host like a fleet's (host data in two groups, the fleet spec in it).

    .venv/bin/python benchmarks/pyinfra_calls.py

The numbers behind docs/scale.md's "What an upstream pyinfra change would save": each
replacement gives pyinfra's own result (tests/unit/test_pyinfra_adapter.py); this measures
the time each takes per call.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyinfra.api import Config, State
from pyinfra.api.inventory import Inventory

from operations import pyinfra_adapter as adapter

arguments = importlib.import_module("pyinfra.api.arguments")
connectors = importlib.import_module("pyinfra.api.connectors")
util = importlib.import_module("pyinfra.api.util")


def per_call(function: Callable[[], Any], calls: int) -> float:
    """Seconds per call (the best of three rounds)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def at_depth(depth: int, function: Callable[[], Any]) -> Any:
    """``function`` called from ``depth`` frames down (operation calls come from deep stacks)."""
    return at_depth(depth - 1, function) if depth else function()


def main() -> int:
    spec = {"name": "gpu-01", "settings": {f"key{i}": {"nested": list(range(5))}
                                           for i in range(40)}}
    inv = Inventory((["@local"], {"_chdir": "/srv"}),
                    pcie=(["@local"], {"gpufleet": spec, "_sudo": False}),
                    fleet=(["@local"], {f"setting{i}": i for i in range(30)}))
    state = State(inv, Config())
    host = inv.get_host("@local")
    own_types = adapter.PYINFRA_ALL_GLOBAL_ARGUMENTS
    rows = []

    def theirs_pop() -> Any:
        setattr(arguments, "all_global_arguments", own_types)  # noqa: B010
        return arguments.pop_global_arguments(state, host, {"_sudo": True, "path": "/x"})

    def ours_pop() -> Any:
        setattr(arguments, "all_global_arguments",  # noqa: B010
                adapter.all_global_arguments_once)
        return adapter.pop_global_arguments_data_read_once(state, host, {"_sudo": True,
                                                                         "path": "/x"})

    rows.append(("pop_global_arguments (every operation, fact and @deploy call)",
                 per_call(theirs_pop, 2000), per_call(ours_pop, 2000)))
    setattr(arguments, "all_global_arguments", own_types)  # noqa: B010
    state.current_deploy_filename = None
    for depth in (20, 40):
        rows.append((f"operation order from the stack, {depth} frames deep",
                     per_call(lambda d=depth: at_depth(  # type: ignore[misc]
                         d, lambda: util.get_operation_order_from_stack(state)), 200),
                     per_call(lambda d=depth: at_depth(  # type: ignore[misc]
                         d, lambda: adapter.operation_order_from_frames(state)), 200)))
    found = connectors.get_all_connectors()
    rows.append(("get_all_connectors (each @connector host of the inventory)",
                 per_call(connectors.get_all_connectors, 50), per_call(lambda: dict(found), 50)))
    print("| call | pyinfra 3.10.0 (ms) | gpufleet's replacement (ms) |")
    print("|---|---:|---:|")
    for name, theirs, ours in rows:
        print(f"| {name} | {theirs * 1000:.3f} | {ours * 1000:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
