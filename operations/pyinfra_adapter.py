"""Every use of pyinfra's private API, in one place, pinned to the locked pyinfra.

gpufleet otherwise uses pyinfra's public API (operations, facts, deploys, the CLI). What it
needs beyond that lives here, each with the reason, and tests/unit/test_pyinfra_adapter.py
checks each against the locked version (PYINFRA_VERSION): a pyinfra upgrade that moves any of
them fails that test first, with the name of what moved.
"""

from __future__ import annotations

from copy import copy
from typing import Any

import pyinfra
import pyinfra.api.arguments as pyinfra_arguments
from pyinfra.api.command import FunctionCommand
from pyinfra.api.host import HostData
from pyinfra.api.operation import OperationMeta

# The pyinfra these reach-ins were written against (requirements lock, pyproject.toml).
PYINFRA_VERSION = "3.10.0"


def locked_version_problem() -> str | None:
    """None when the running pyinfra is the one this module was written against."""
    if pyinfra.__version__ != PYINFRA_VERSION:
        return (f"pyinfra {pyinfra.__version__} is not the locked {PYINFRA_VERSION}: "
                "check operations/pyinfra_adapter.py against it")
    return None


def change_detected(op: OperationMeta) -> bool | None:
    """What the change-detection pass (the preview) found for ``op``: True, False, or None
    when it did not run (-y). pyinfra keeps it in the private ``_maybe_is_change``."""
    value: bool | None = op._maybe_is_change
    return value


def use_connector(name: str, connector: type) -> None:
    """Make ``@name/...`` hosts use ``connector`` in this process (the benchmark's replay and
    recording connectors stand in for @docker). pyinfra finds connectors by entry point only;
    the inventory module imports the two look-ups by name, so those are what is replaced."""
    import importlib

    inventory = importlib.import_module("pyinfra.api.inventory")
    found_all = getattr(inventory, "get_all_connectors")  # noqa: B009
    found_exec = getattr(inventory, "get_execution_connectors")  # noqa: B009

    def all_connectors() -> dict[str, Any]:
        return {**found_all(), name: connector}

    def execution_connectors() -> dict[str, Any]:
        return {**found_exec(), name: connector}

    setattr(inventory, "get_all_connectors", all_connectors)  # noqa: B010
    setattr(inventory, "get_execution_connectors", execution_connectors)  # noqa: B010


# --- operation order without source lines ---------------------------------------------------
# In CLI mode pyinfra orders (and hashes) each operation by the line numbers of the deploy
# code that called it: pyinfra.api.util.get_operation_order_from_stack, which builds
# inspect.stack() -- a FrameInfo with the source line of every frame, read through linecache
# and inspect.getmodule -- and then getframeinfo() again for each frame. Only the file names
# and line numbers are used. The walk below takes the same two things straight from the
# frames: the same order and the same operation hashes, without reading any source.
_SOURCE_FILES: dict[str, str] = {}


def _frame_file(frame: Any) -> str:
    """inspect.getframeinfo(frame).filename, cached per code file name."""
    name: str = frame.f_code.co_filename
    found = _SOURCE_FILES.get(name)
    if found is None:
        import inspect

        found = inspect.getsourcefile(frame) or inspect.getfile(frame)
        _SOURCE_FILES[name] = found
    return found


# (code, instruction offset) -> its first line: finding it walks the code's positions up to
# the instruction; the same call sites run for every host.
_LINES: dict[tuple[Any, int], int] = {}


def _frame_line(frame: Any) -> int:
    """inspect.getframeinfo(frame).lineno: the first line of the instruction running."""
    key = (frame.f_code, frame.f_lasti)
    line = _LINES.get(key)
    if line is None:
        line = _LINES[key] = _instruction_line(frame)
    return line


def _instruction_line(frame: Any) -> int:
    positions = getattr(frame.f_code, "co_positions", None)
    if positions is not None and frame.f_lasti >= 0:
        from itertools import islice

        line = next(islice(positions(), frame.f_lasti // 2, None))[0]
        if line is not None:
            return int(line)
    return int(frame.f_lineno)


def operation_order_from_frames(state: Any) -> list[int]:
    """pyinfra.api.util.get_operation_order_from_stack, from the frames alone."""
    import sys

    from pyinfra.api.util import PYINFRA_INSTALL_DIR

    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    frames.reverse()
    start = 0
    if state.current_deploy_filename:
        # pyinfra's loop ends on its own (skipped) frame when the deploy file is not found.
        start = next((i for i, frame in enumerate(frames)
                      if _frame_file(frame) == state.current_deploy_filename), len(frames))
    line_numbers = []
    if pyinfra.is_cli:
        line_numbers.append(state.current_op_file_number)
    for frame in frames[start:]:
        if _frame_file(frame).startswith(PYINFRA_INSTALL_DIR):
            continue
        line_numbers.append(_frame_line(frame))
    return line_numbers


def install_operation_order_from_frames() -> None:
    """Make pyinfra order operations with operation_order_from_frames (idempotent)."""
    import importlib

    operation = importlib.import_module("pyinfra.api.operation")
    setattr(operation, "get_operation_order_from_stack",  # noqa: B010
            operation_order_from_frames)


# --- what a run did, per host ------------------------------------------------------------------
def host_outcomes(state: Any) -> dict[str, dict[str, Any]]:
    """For each host pyinfra ran: its operations, those that changed it (executed) or would
    (the preview's detection), and those that failed. Reads pyinfra's per-host op table."""
    outcomes: dict[str, dict[str, Any]] = {}
    for host in state.inventory.iter_activated_hosts():
        changed, failed = [], []
        ops = state.ops.get(host, {})
        for op_hash, op_data in ops.items():
            meta = op_data.operation_meta
            name = ", ".join(sorted(state.get_op_meta(op_hash).names))
            if meta.is_complete():
                if not meta.did_succeed():
                    failed.append(name)
                elif meta.did_change():
                    changed.append(name)
            elif change_detected(meta):
                changed.append(name)
        outcomes[host.name] = {"ops": len(ops), "changed": changed, "failed": failed}
    return outcomes


def changes_so_far(state: Any, host: Any) -> int:
    """How many operations have changed ``host`` so far in this run (completed, changed).
    Reads pyinfra's per-host op table."""
    return sum(1 for op_data in state.ops.get(host, {}).values()
               if op_data.operation_meta.is_complete() and op_data.operation_meta.did_change())


def host_op_meta(state: Any, host: Any, op_hash: str) -> OperationMeta | None:
    """``host``'s result of the operation ``op_hash``; None when the host does not run it.
    pyinfra keeps the per-host operation table in ``state.ops``."""
    op_data = state.ops.get(host, {}).get(op_hash)
    return None if op_data is None else op_data.operation_meta


def executing_op_arguments(state: Any, host: Any) -> dict[str, Any]:
    """The global arguments (_sudo, _su_user, ...) of the operation ``host`` is executing
    (the innermost, for a nested one); empty outside execution. pyinfra keeps the executing
    operation's hash on the host."""
    op_hash = host.nested_executing_op_hash or host.executing_op_hash
    if op_hash is None:
        return {}
    return dict(state.get_op_data_for_host(host, op_hash).global_arguments)


def may_have_changed(state: Any, host: Any, failing_op_hash: str) -> bool:
    """Whether this run may have changed ``host`` by the time its operation ``failing_op_hash``
    fails: an earlier operation ran a command on the host (not only Python on the controller),
    or the failing one is not a refusal. A refusal ("Refuse: ...", operations/checks.py) runs
    only on the controller; pyinfra completes the failing operation after its error callbacks,
    so its own commands are not known yet. Reads the per-host op table and the private
    ``_commands`` of each completed operation."""
    if not all(name.startswith("Refuse") for name in state.get_op_meta(failing_op_hash).names):
        return True
    for op_data in state.ops.get(host, {}).values():
        meta = op_data.operation_meta
        commands = meta._commands or [] if meta.is_complete() else []
        if any(not isinstance(command, FunctionCommand) for command in commands):
            return True
    return False


# --- global arguments: the type hints resolved once, the host data read once per call --------
# Every operation, fact and @deploy call runs pyinfra.api.arguments.pop_global_arguments. For
# each of the ~32 global arguments it (a) calls all_global_arguments(), i.e.
# typing.get_type_hints(AllArguments), resolved again on every call, and (b) reads the host's
# data with getattr(host.data, key): HostData evaluates its five data sources each time
# (override, host, the host's groups -- a dict merged from every group --, inventory, @deploy
# data), so one call merges the group data ~32 times. Below: (a) the hints resolved once
# (AllArguments is a class of pyinfra's, never changed at run time); (b) pyinfra's own
# pop_global_arguments, run with a view of the host whose data sources were evaluated once at
# the start of the call: HostData returns the first source holding a key, which is what the
# sources merged last-to-first hold (HostData.dict()), shallow-copied as HostData does.
_GLOBAL_ARGUMENT_TYPES: list[tuple[str, type]] = []
# pyinfra's own, kept before anything here replaces it (the test compares against it).
PYINFRA_ALL_GLOBAL_ARGUMENTS = pyinfra_arguments.all_global_arguments


def all_global_arguments_once() -> list[tuple[str, type]]:
    """pyinfra.api.arguments.all_global_arguments, its type hints resolved once."""
    if not _GLOBAL_ARGUMENT_TYPES:
        from typing import get_type_hints

        _GLOBAL_ARGUMENT_TYPES.extend(get_type_hints(pyinfra_arguments.AllArguments).items())
    return list(_GLOBAL_ARGUMENT_TYPES)


class _DataReadOnce:
    """HostData's look-up (the first source holding the key, shallow-copied; AttributeError
    when none does) over the sources evaluated once: merged last to first, as HostData.dict()
    merges them, each key holds the first source's value."""

    __slots__ = ("_host", "_merged")

    def __init__(self, data: HostData) -> None:
        self._merged = data.dict()
        self._host = data.host

    def __getattr__(self, key: str) -> Any:
        try:
            return copy(self._merged[key])
        except KeyError:
            raise AttributeError(f"Host `{self._host}` has no data `{key}`") from None


class _HostDataReadOnce:
    """A host as pop_global_arguments sees it: the host, its data sources evaluated once."""

    __slots__ = ("_host", "data")

    def __init__(self, host: Any) -> None:
        self._host = host
        self.data = _DataReadOnce(host.data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


def pop_global_arguments_data_read_once(state: Any, host: Any, kwargs: dict[str, Any]
                                        ) -> tuple[Any, list[str]]:
    """pyinfra.api.arguments.pop_global_arguments (pyinfra's own, which stays in its module),
    the host's data sources evaluated once per call instead of once per global argument."""
    if type(host.data) is not HostData:
        return pyinfra_arguments.pop_global_arguments(state, host, kwargs)
    view: Any = _HostDataReadOnce(host)  # reads like the host: data, current_deploy_kwargs
    return pyinfra_arguments.pop_global_arguments(state, view, kwargs)


def install_global_arguments_once() -> None:
    """Make pyinfra's operation, fact and @deploy calls use all_global_arguments_once and
    pop_global_arguments_data_read_once (idempotent). The three modules imported the
    function by name, so each module's name is replaced."""
    import importlib

    for name in ("pyinfra.api.arguments", "pyinfra.api.facts"):
        setattr(importlib.import_module(name), "all_global_arguments",  # noqa: B010
                all_global_arguments_once)
    for name in ("pyinfra.api.operation", "pyinfra.api.facts", "pyinfra.api.deploy"):
        setattr(importlib.import_module(name), "pop_global_arguments",  # noqa: B010
                pop_global_arguments_data_read_once)


# --- the connectors, found once -----------------------------------------------------------------
# pyinfra.api.inventory looks every connector up through the package entry points
# (get_all_connectors: importlib.metadata scans the installed distributions, ~5 ms) once for
# each host named @connector/... (@docker, @local): 5 s of a 1,000-host fleet file. The
# installed packages do not change during a run: look them up once.
def install_connectors_found_once() -> None:
    """Make pyinfra's inventory find the connectors (as its current look-up finds them) once
    per process (idempotent); each call still gets a dict of its own."""
    import importlib

    inventory = importlib.import_module("pyinfra.api.inventory")
    current = inventory.get_all_connectors
    if getattr(current, "__qualname__", "").startswith("install_connectors_found_once"):
        return
    found: list[dict[str, Any]] = []

    def all_connectors() -> dict[str, Any]:
        if not found:
            found.append(current())
        return dict(found[0])

    setattr(inventory, "get_all_connectors", all_connectors)  # noqa: B010


def install_faster_pyinfra() -> None:
    """All of the above (idempotent): pyinfra's results, less of the controller's CPU per
    operation and host. Installed by inventory.py when pyinfra loads the fleet."""
    install_operation_order_from_frames()
    install_global_arguments_once()
    install_connectors_found_once()
