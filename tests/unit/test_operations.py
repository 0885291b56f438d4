"""Operation tests as data, in the style of pyinfra's own tests/operations/<op>/<case>.json.

Each case under tests/operations/<module>.<operation>/ gives the facts the operation reads
(injected: no host), its arguments, and what it must do: the exact commands, or the no-op
message, or a refusal, or an argument error raised before any host is touched. Every case that
changes something also gives ``facts_after`` (the host once the commands ran), and the loader
runs the operation a second time on those: it must then do nothing. That second run is what
makes every run safe to repeat; operations that are not idempotent by design (a reboot, a
refusal) say so in ``second_run`` and must be declared ``is_idempotent=False``.

Case keys:
  description        what the case shows
  args / kwargs      the operation's arguments (JSON); {"__verdict__": [message, note]} becomes
                     a callable returning that tuple (for checks)
  facts              fact class name -> value (HostState takes HostStateResult.from_dict's shape;
                     other facts: {"ARGS": value} keyed by their arguments, "*" for any)
  executing          false: the change-detection pass (the preview); default true
  commands           the commands, in order: a string is the exact command; {"contains": [..]}
                     matches by substrings; "upload SRC -> DEST" and "function NAME" for the
                     other command kinds
  noop               the no-op message (when there are no commands)
  refuses            a substring of the message a refusal prints
  says               a substring of what the operation tells the operator as it runs
  output_hides       strings that must not appear in the commands as pyinfra prints them
  command_hides      strings that must not appear in any command as it runs on the host (its
                     command line: /proc/*/cmdline, sudo's log), masked or not
  uploads            destination -> the exact text an in-memory upload sends there
  raises             a substring of the argument error
  facts_after        the facts for the second run (required when commands change the host)
  second_run         "not idempotent: WHY" instead of facts_after
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from pyinfra.api import (
    Config,
    FileUploadCommand,
    FunctionCommand,
    Inventory,
    OperationValueError,
    State,
    StringCommand,
)
from pyinfra.context import ctx_host, ctx_state

from facts.host_state import HostStateResult
from facts.venv_state import PythonEnvStateResult
from rules.daemon_json import DaemonJsonWanted
from rules.python_env_plan import InstallSource

CASES_DIR = Path(__file__).resolve().parents[1] / "operations"
OPERATION_MODULES = ("host_files", "apt_pins", "apt_repos", "services", "reboot",
                     "docker_config", "checks", "locked_venv", "compose", "model_weights",
                     "host_manifest")
FIXED_UUID = uuid.UUID("12345678123456781234567812345678")


def _fact_value(name: str, value: Any) -> Any:
    if name == "HostState":
        return HostStateResult.from_dict(value)
    if name == "AptOffered":
        return {package: tuple(versions) for package, versions in value.items()}
    if name == "PythonEnvState":
        return PythonEnvStateResult(**value)
    return value


def _arguments(value: Any, key: str = "") -> Any:
    """JSON arguments -> Python values (callables and the dataclasses some operations take)."""
    if isinstance(value, dict) and "__verdict__" in value:
        message, note = value["__verdict__"]
        return lambda: (message, note)
    if isinstance(value, dict) and "__install_source__" in value:
        return InstallSource(**value["__install_source__"])
    if key == "wanted":
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in value.items()}
        return DaemonJsonWanted(**fields)
    if key == "lock_file":
        return Path(value)
    if isinstance(value, dict):
        return {k: _arguments(item, k) for k, item in value.items()}
    if isinstance(value, list):
        return [_arguments(item) for item in value]
    return value


class Run:
    """One call of an operation's generator against injected facts."""

    def __init__(self, facts: dict[str, Any], executing: bool) -> None:
        self.facts = facts
        self.state = State(Inventory((["somehost"], {})), Config())
        self.state.is_executing = executing
        self.host = self.state.inventory.get_host("somehost")
        self.noops: list[str] = []
        self.facts_read: list[str] = []

    def get_fact(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        name = cls.__name__
        self.facts_read.append(name)
        if name not in self.facts:
            raise AssertionError(f"the operation read {name}, which the case does not give")
        value = self.facts[name]
        if name == "HostState":
            return _fact_value(name, value)
        key = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
        if key in value:
            return _fact_value(name, value[key])
        if "*" in value:
            return _fact_value(name, value["*"])
        raise AssertionError(f"{name}({key}) is not given by the case; it has {list(value)}")

    @contextmanager
    def context(self) -> Iterator[None]:
        with ctx_state.use(self.state), ctx_host.use(self.host), \
                mock.patch.object(self.host, "get_fact", self.get_fact), \
                mock.patch.object(self.host, "noop", self.noops.append), \
                mock.patch("uuid.uuid4", return_value=FIXED_UUID):
            yield

    def commands(self, func: Callable[..., Any], args: list[Any],
                 kwargs: dict[str, Any]) -> list[Any]:
        with self.context():
            return list(func(*args, **kwargs))


def describe(command: Any) -> str:
    if isinstance(command, str):
        return command
    if isinstance(command, StringCommand):
        env = command.connector_arguments.get("_env") or {}
        prefix = "".join(f"export {key}={value} && " for key, value in env.items())
        return prefix + command.get_raw_value()
    if isinstance(command, FileUploadCommand) and command.remote_temp_filename:
        return f"upload (memory) -> {command.dest} via {command.remote_temp_filename}"
    if isinstance(command, FileUploadCommand):
        return f"upload {command.src} -> {command.dest}"
    if isinstance(command, FunctionCommand) and command.function.__name__ == "_run_guarded":
        return "guarded " + describe(command.args[0])  # operations.disk_guard.guarded
    if isinstance(command, FunctionCommand) and command.function.__name__ == "_check_space":
        need = command.args[0]  # operations.disk_guard.space_checked
        return f"space check: {need.need} bytes under {need.path} ({need.how})"
    if isinstance(command, FunctionCommand):
        return f"function {command.function.__name__}"
    raise AssertionError(f"unexpected command {command!r}")


def message_of(command: Any, function: str) -> str | None:
    """The message a FunctionCommand of ``function`` (fail_host, tell) carries."""
    if isinstance(command, FunctionCommand) and command.function.__name__ == function:
        return str(command.args[0])
    return None


def matches(expected: Any, actual: str) -> bool:
    if isinstance(expected, str):
        return expected == actual
    return all(part in actual for part in expected["contains"])


def load_cases() -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    for folder in sorted(CASES_DIR.iterdir()):
        for path in sorted(folder.glob("*.json")):
            cases.append((folder.name, path.stem, json.loads(path.read_text())))
    return cases


CASES = load_cases()


def operation(name: str) -> Any:
    module, _, function = name.partition(".")
    return getattr(importlib.import_module(f"operations.{module}"), function)


@pytest.mark.parametrize(("op", "case", "data"), CASES, ids=[f"{o}/{c}" for o, c, _ in CASES])
def test_operation_case(op: str, case: str, data: dict[str, Any]) -> None:
    wrapped = operation(op)
    func = wrapped._inner
    args = _arguments(data.get("args", []))
    kwargs = _arguments(data.get("kwargs", {}))
    executing = data.get("executing", True)

    first = Run(data.get("facts", {}), executing)
    if "raises" in data:
        with pytest.raises((OperationValueError, ValueError)) as error:
            first.commands(func, args, kwargs)
        assert data["raises"] in str(error.value)
        return
    commands = first.commands(func, args, kwargs)

    if "refuses" in data:
        messages = [m for c in commands if (m := message_of(c, "fail_host")) is not None]
        assert messages, f"{op}/{case}: expected a refusal, got {[describe(c) for c in commands]}"
        assert data["refuses"] in messages[0], messages[0]
    else:
        got = [describe(c) for c in commands]
        expected = data.get("commands", [])
        assert len(got) == len(expected) and all(map(matches, expected, got)), (
            f"{op}/{case}: commands differ\n  expected: {expected}\n  got:      {got}")
        if not expected:
            assert first.noops == [data["noop"]] if "noop" in data else first.noops == [], \
                f"{op}/{case}: no-op message {first.noops}"
        for hidden in data.get("output_hides", []):
            printed = [c.get_masked_value() for c in commands if isinstance(c, StringCommand)]
            assert not any(hidden in line for line in printed), f"{op}/{case}: shows {hidden}"
        for hidden in data.get("command_hides", []):
            ran = [c.get_raw_value() if isinstance(c, StringCommand) else describe(c)
                   for c in commands]
            assert not any(hidden in line for line in ran), f"{op}/{case}: runs with {hidden}"
        for dest, text in data.get("uploads", {}).items():
            sent = [c.src for c in commands if isinstance(c, FileUploadCommand) and c.dest == dest]
            assert len(sent) == 1 and hasattr(sent[0], "getvalue"), f"{op}/{case}: {sent}"
            assert sent[0].getvalue() == text.encode(), f"{op}/{case}: uploads {sent[0]!r}"
        if "says" in data:
            told = [m for c in commands if (m := message_of(c, "tell")) is not None]
            assert any(data["says"] in m for m in told), f"{op}/{case}: said {told}"

    # The second run: on the host as the first run left it, nothing more to do.
    if "second_run" in data:
        assert data["second_run"].startswith("not idempotent: ")
        assert not getattr(func, "is_idempotent", True), \
            f"{op} says it is not idempotent but is declared is_idempotent=True"
        return
    if not commands or "refuses" in data:
        return
    assert "facts_after" in data, f"{op}/{case}: a changing case needs facts_after"
    second = Run(data["facts_after"], executing).commands(func, args, kwargs)
    assert second == [], f"{op}/{case}: the second run would do {[describe(c) for c in second]}"


def test_every_operation_has_cases() -> None:
    covered = {op for op, _, _ in CASES}
    missing = []
    for module in OPERATION_MODULES:
        loaded = importlib.import_module(f"operations.{module}")
        for name, value in vars(loaded).items():
            is_operation = hasattr(value, "_inner") and value.__module__ == loaded.__name__
            if is_operation and f"{module}.{name}" not in covered:
                missing.append(f"{module}.{name}")
    assert missing == [], f"operations without data cases in tests/operations/: {missing}"


def test_every_changing_case_is_followed_by_a_second_run() -> None:
    for op, case, data in CASES:
        if data.get("commands") and "refuses" not in data:
            assert "facts_after" in data or "second_run" in data, f"{op}/{case}"
