"""operations/pyinfra_adapter.py against the locked pyinfra: every private name it uses is
where it expects, and its faster operation order is pyinfra's own, number for number."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyinfra
import pytest

from operations import pyinfra_adapter as adapter

pyinfra_inventory = importlib.import_module("pyinfra.api.inventory")
pyinfra_operation = importlib.import_module("pyinfra.api.operation")
pyinfra_util = importlib.import_module("pyinfra.api.util")

HERE = str(Path(__file__).resolve())


def test_the_locked_pyinfra_is_the_one_the_adapter_was_written_for() -> None:
    locks = (Path(__file__).resolve().parents[2] / "requirements").glob("*.lock")
    locked = [line for lock in locks for line in lock.read_text().splitlines()
              if line.startswith("pyinfra==")]
    assert locked, "no pyinfra pin in requirements/*.lock"
    assert {line.split()[0].rstrip("\\").strip() for line in locked} == {
        f"pyinfra=={adapter.PYINFRA_VERSION}"}
    assert adapter.locked_version_problem() is None


def test_a_different_pyinfra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyinfra, "__version__", "3.99.0")
    assert adapter.locked_version_problem() == (
        "pyinfra 3.99.0 is not the locked 3.10.0: check operations/pyinfra_adapter.py "
        "against it")


def test_the_private_names_the_adapter_uses_exist() -> None:
    # Replaced: the order function the operation module calls, the connector look-ups the
    # inventory module calls; read: the install dir the order skips, the detection result.
    assert pyinfra_operation.get_operation_order_from_stack is not None
    assert callable(pyinfra_inventory.get_all_connectors)
    assert callable(pyinfra_inventory.get_execution_connectors)
    assert isinstance(pyinfra_util.PYINFRA_INSTALL_DIR, str)
    op = pyinfra_operation.OperationMeta(hash="h", is_change=None)
    assert adapter.change_detected(op) is None
    assert adapter.change_detected(
        pyinfra_operation.OperationMeta(hash="h", is_change=False)) is False


def _both(state: Any) -> tuple[list[int], list[int]]:
    # One line: the two calls are made from the same line of this frame.
    theirs, ours = pyinfra_util.get_operation_order_from_stack, adapter.operation_order_from_frames
    return theirs(state), ours(state)


def _nested(state: Any, depth: int) -> tuple[list[int], list[int]]:
    if depth:
        return _nested(
            state,
            depth - 1,
        )
    return _both(
        state,
    )


@pytest.mark.parametrize("is_cli", [True, False])
@pytest.mark.parametrize("deploy_file", [HERE, None, "/nowhere/deploy.py"])
def test_the_order_from_frames_is_pyinfras_own(monkeypatch: pytest.MonkeyPatch,
                                                is_cli: bool, deploy_file: str | None) -> None:
    monkeypatch.setattr(pyinfra, "is_cli", is_cli)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
    for depth in (0, 1, 3):
        theirs, ours = _nested(
            state,
            depth,
        )
        # pyinfra's own frame (util.py) is skipped by both; the caller lines are the same.
        assert ours == theirs
        if deploy_file != "/nowhere/deploy.py":  # else: no frame follows the deploy file
            assert len(ours) >= 2 + depth


def test_the_installed_order_is_used_by_pyinfra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyinfra_operation, "get_operation_order_from_stack",
                        pyinfra_util.get_operation_order_from_stack)
    adapter.install_operation_order_from_frames()
    assert pyinfra_operation.get_operation_order_from_stack is \
        adapter.operation_order_from_frames


def test_use_connector_answers_a_connector_name_with_the_given_class(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyinfra_inventory, "get_all_connectors",
                        pyinfra_inventory.get_all_connectors)
    monkeypatch.setattr(pyinfra_inventory, "get_execution_connectors",
                        pyinfra_inventory.get_execution_connectors)

    class Stand(pyinfra_inventory.get_all_connectors()["docker"]):  # type: ignore[misc]
        pass

    adapter.use_connector("docker", Stand)
    inv = pyinfra_inventory.Inventory((["@docker/some-container"], {}))
    host = inv.get_host("@docker/some-container")
    assert host.connector_cls is Stand


def test_per_host_tables_and_the_executing_operation_are_read_where_pyinfra_keeps_them(
) -> None:
    from pyinfra.api import Config, State
    from pyinfra.api.state import StateOperationHostData

    inv = pyinfra_inventory.Inventory((["@local"], {}))
    state = State(inv, Config())
    host = inv.get_host("@local")
    assert adapter.host_op_meta(state, host, "nope") is None
    assert adapter.executing_op_arguments(state, host) == {}
    meta = pyinfra_operation.OperationMeta(hash="op1", is_change=True)
    state.ops[host]["op1"] = StateOperationHostData(
        command_generator=lambda: iter(()), global_arguments={"_sudo": True},  # type: ignore[typeddict-item]
        operation_meta=meta)
    assert adapter.host_op_meta(state, host, "op1") is meta
    host.executing_op_hash = "op1"
    assert adapter.executing_op_arguments(state, host) == {"_sudo": True}
    host.nested_executing_op_hash = "nested"
    state.ops[host]["nested"] = StateOperationHostData(
        command_generator=lambda: iter(()), global_arguments={"_su_user": "x"},  # type: ignore[typeddict-item]
        operation_meta=pyinfra_operation.OperationMeta(hash="nested", is_change=None))
    assert adapter.executing_op_arguments(state, host) == {"_su_user": "x"}


def test_a_host_refused_before_any_command_ran_on_it_was_not_changed() -> None:
    """A preflight refusal runs only on the controller: the run lock's release then keeps no
    record of the run on the host (nothing changed), unlike a failure after a command ran."""
    from pyinfra.api import Config, State, StringCommand
    from pyinfra.api.command import FunctionCommand
    from pyinfra.api.state import StateOperationHostData, StateOperationMeta
    from pyinfra.connectors.util import CommandOutput

    inv = pyinfra_inventory.Inventory((["@local"], {}))
    state = State(inv, Config())
    host = inv.get_host("@local")

    def add(op_hash: str, name: str, commands: list[Any] | None) -> None:
        state.op_meta[op_hash] = StateOperationMeta((len(state.op_meta),))
        state.op_meta[op_hash].names.add(name)
        meta = pyinfra_operation.OperationMeta(hash=op_hash, is_change=None)
        if commands is not None:
            meta.set_complete(True, commands, CommandOutput([]))
        state.ops[host][op_hash] = StateOperationHostData(
            command_generator=lambda: iter(()), global_arguments={},  # type: ignore[typeddict-item]
            operation_meta=meta)

    add("lock", "Hold the run lock", [FunctionCommand(print, (), {})])
    add("refuse", "Refuse: preflight found problems", None)
    assert adapter.may_have_changed(state, host, "refuse") is False
    add("apt", "Install the driver", None)
    assert adapter.may_have_changed(state, host, "apt") is True  # not a refusal
    add("write", "Ensure a file", [StringCommand("true")])
    assert adapter.may_have_changed(state, host, "refuse") is True  # a command ran before
