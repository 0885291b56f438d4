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


# --- global arguments: type hints once, host data read once per call -------------------------
pyinfra_arguments = importlib.import_module("pyinfra.api.arguments")
pyinfra_facts = importlib.import_module("pyinfra.api.facts")
pyinfra_deploy = importlib.import_module("pyinfra.api.deploy")
PYINFRAS_POP = pyinfra_arguments.pop_global_arguments


def _pyinfras_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyinfra as it ships, whatever an earlier test (or inventory.py) installed."""
    own = adapter.PYINFRA_ALL_GLOBAL_ARGUMENTS
    assert (own.__module__, own.__qualname__) == ("pyinfra.api.arguments",
                                                  "all_global_arguments")
    assert (PYINFRAS_POP.__module__, PYINFRAS_POP.__qualname__) == (
        "pyinfra.api.arguments", "pop_global_arguments")
    monkeypatch.setattr(pyinfra_arguments, "all_global_arguments", own)
    monkeypatch.setattr(pyinfra_facts, "all_global_arguments", own)
    for module in (pyinfra_operation, pyinfra_facts, pyinfra_deploy):
        monkeypatch.setattr(module, "pop_global_arguments", PYINFRAS_POP)


def test_the_type_hints_once_are_pyinfras_own(monkeypatch: pytest.MonkeyPatch) -> None:
    _pyinfras_own(monkeypatch)
    theirs = pyinfra_arguments.all_global_arguments()
    assert adapter.all_global_arguments_once() == theirs
    assert len(theirs) > 20  # _sudo, _su_user, _env, _chdir, _if, _serial, ...
    # a fresh list each call, as pyinfra's (a caller may change it)
    adapter.all_global_arguments_once().clear()
    assert adapter.all_global_arguments_once() == theirs


def _fleet() -> Any:
    """An inventory whose global arguments come from every data source HostData reads:
    override, host, two groups (the later group winning), the inventory's data."""
    return pyinfra_inventory.Inventory(
        (["@local", ("@docker/x", {"_sudo_user": "hostuser", "_env": {"FROM": "host"}})],
         {"_chdir": "/srv", "_timeout": 30, "_env": {"FROM": "inventory"}}),
        override_data={"_shell_executable": "bash"},
        first=(["@local", "@docker/x"], {"_sudo": True, "_preserve_sudo_env": True,
                                         "_env": {"FROM": "first"}}),
        second=(["@docker/x"], {"_sudo": False, "_ignore_errors": True}),
    )


CALLS: list[dict[str, Any]] = [
    {},
    {"name": "an operation", "path": "/etc/x"},
    {"_sudo": True, "_env": {"A": "1"}, "_serial": True, "other": 3},
    {"_su_user": "svc", "_chdir": "/tmp", "_if": [lambda: True]},
]


def _outcome(pop: Any, state: Any, host: Any, call: dict[str, Any]) -> tuple[Any, ...]:
    """What ``pop`` returns (and leaves of the keyword arguments), or what it raises."""
    kwargs = dict(call)
    try:
        arguments, found = pop(state, host, kwargs)
    except Exception as error:  # compared: the same type and message
        return ("raised", type(error), str(error))
    return ("returned", arguments, found, kwargs)


def _compare_pop(state: Any, host: Any) -> None:
    for call in CALLS:
        theirs = _outcome(PYINFRAS_POP, state, host, call)
        ours = _outcome(adapter.pop_global_arguments_data_read_once, state, host, call)
        assert ours == theirs
        assert ours[0] == "returned"  # each call here is a valid one
        # HostData hands out shallow copies: neither returns the data's own object.
        if "_env" not in call:
            assert ours[1]["_env"] is not theirs[1]["_env"]


def test_the_global_arguments_with_the_data_read_once_are_pyinfras_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pyinfra.api import Config, State
    from pyinfra.context import ctx_config

    _pyinfras_own(monkeypatch)
    inv = _fleet()
    state = State(inv, Config(SUDO_USER="configured"))
    for host in inv:
        _compare_pop(state, host)
        # inside a @deploy: its keyword arguments and its data defaults
        deploy_kwargs = PYINFRAS_POP(state, host, {"_sudo": True, "_su_user": "dep"})[0]
        with host.deploy("outer", deploy_kwargs, {"_get_pty": True, "_retries": 4}):
            _compare_pop(state, host)
        # data set during the run (host.data.X = ...) lands in the override data
        host.data._use_su_login = True
        _compare_pop(state, host)
        with ctx_config.use(Config(SUDO=True)):
            _compare_pop(state, host)
    # a wrong type is refused with pyinfra's own message
    host = inv.get_host("@local")
    for bad in ({"_sudo_user": 3}, {"_serial": "yes"}):
        theirs = _outcome(PYINFRAS_POP, state, host, bad)
        assert theirs[0] == "raised"
        assert _outcome(adapter.pop_global_arguments_data_read_once, state, host, bad) == theirs


def test_the_view_reads_the_data_as_hostdata_does() -> None:
    inv = _fleet()
    host = inv.get_host("@docker/x")
    view = adapter._HostDataReadOnce(host)
    assert view.name == host.name and view.groups == host.groups
    for key in ("_sudo", "_sudo_user", "_env", "_chdir", "_shell_executable"):
        assert getattr(view.data, key) == getattr(host.data, key)
    # a shallow copy, as HostData hands out
    assert view.data._env is not inv.host_data["@docker/x"]["_env"]
    with pytest.raises(AttributeError) as theirs:
        host.data._nope  # noqa: B018
    with pytest.raises(AttributeError) as ours:
        view.data._nope  # noqa: B018
    assert str(ours.value) == str(theirs.value)
    assert getattr(view.data, "_nope", "absent") == "absent"


def _operations_global_arguments() -> dict[str, list[dict[str, Any]]]:
    """A real API-mode run's per-host global arguments: operations and a @deploy (operations
    that read no fact: nothing is connected)."""
    from pyinfra.api import Config, State
    from pyinfra.api.deploy import add_deploy, deploy
    from pyinfra.api.operation import add_op
    from pyinfra.operations import server

    @deploy("A deploy", data_defaults={"_get_pty": True})
    def a_deploy() -> None:
        server.shell(name="in the deploy", commands=["true"], _chdir="/opt")

    inv = _fleet()
    state = State(inv, Config())
    hosts = list(inv)
    add_op(state, server.shell, name="plain", commands=["echo hi"], host=hosts)
    add_op(state, server.shell, name="sudo", commands=["id"], _sudo=True, _env={"B": "2"},
           host=hosts)
    add_deploy(state, a_deploy, _su_user="svc", host=hosts)
    return {host.name: [dict(state.ops[host][op_hash].global_arguments)
                        for op_hash in state.get_op_order()] for host in inv}


def test_a_run_gives_the_same_global_arguments_installed_or_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _pyinfras_own(monkeypatch)
    theirs = _operations_global_arguments()
    adapter.install_global_arguments_once()
    for module in (pyinfra_operation, pyinfra_facts, pyinfra_deploy):
        assert module.pop_global_arguments is adapter.pop_global_arguments_data_read_once
    for module in (pyinfra_arguments, pyinfra_facts):
        assert module.all_global_arguments is adapter.all_global_arguments_once
    ours = _operations_global_arguments()
    assert ours == theirs
    assert len(ours["@docker/x"]) == 3
    assert ours["@docker/x"][2]["_su_user"] == "svc"
    assert ours["@docker/x"][0]["_sudo_user"] == "hostuser"


def test_the_connectors_are_found_once_and_are_pyinfras(monkeypatch: pytest.MonkeyPatch) -> None:
    own = pyinfra_inventory.get_all_connectors
    monkeypatch.setattr(pyinfra_inventory, "get_all_connectors", own)
    looked_up: list[int] = []

    def counted() -> dict[str, Any]:
        looked_up.append(1)
        return own()

    monkeypatch.setattr(pyinfra_inventory, "get_all_connectors", counted)
    adapter.install_connectors_found_once()
    adapter.install_connectors_found_once()  # idempotent: not wrapped twice
    inv = pyinfra_inventory.Inventory(
        ([f"@docker/c{i}" for i in range(5)] + ["@local"], {}))
    assert len(looked_up) == 1  # pyinfra's own: once per @host, 6 here
    assert [host.connector_cls for host in inv] == (
        [own()["docker"]] * 5 + [own()["local"]])
    found = pyinfra_inventory.get_all_connectors()
    assert found == own()
    found.clear()  # each call gets a dict of its own
    assert pyinfra_inventory.get_all_connectors() == own()
