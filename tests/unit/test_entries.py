"""canary, drain, audit and doctor are declared entries on the one runner
(deploys/runner.py: Entry, run_entry): spec -> run lock -> probe -> step -> lock given back, in
that order for every entry; no entry reads its spec, takes a lock or probes the host its own way
at module level."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deploys import runner
from deploys.runner import Entry, EntryRun, run_entry

REPO = Path(__file__).resolve().parents[2]
ENTRIES = {"canary": "CANARY", "drain": "DRAIN", "audit": "AUDIT", "doctor": "DOCTOR"}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_each_entry_file_declares_an_entry_and_hands_it_to_the_runner(entry: str) -> None:
    tree = ast.parse((REPO / "deploys" / f"{entry}.py").read_text())
    statements = [node for node in tree.body
                  if not isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef,
                                           ast.ClassDef))
                  and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    # constants (names, choices), the logger and the declaration are fine; what runs is the
    # runner call
    def declares(node: ast.stmt) -> bool:
        if not isinstance(node, ast.Assign):
            return False
        value = node.value
        return isinstance(value, (ast.Constant, ast.Tuple)) or (
            isinstance(value, ast.Call)
            and ast.unparse(value.func) in ("Entry", "logging.getLogger"))

    running = [ast.unparse(node) for node in statements if not declares(node)]
    assert running == [f"run_entry({ENTRIES[entry]})"], running
    declared = [node for node in statements if isinstance(node, ast.Assign)
                and ast.unparse(node.targets[0]) == ENTRIES[entry]]
    assert len(declared) == 1 and isinstance(declared[0].value, ast.Call)
    assert ast.unparse(declared[0].value.func) == "Entry"
    # the shared pieces are the runner's: no entry reads the host or takes the lock at module
    # level, or takes the spec other than through the runner
    module_calls = {ast.unparse(node.func) for stmt in statements for node in ast.walk(stmt)
                    if isinstance(node, ast.Call)}
    assert not module_calls & {"host_spec", "fleet_specs", "read_host", "run_lock_held",
                               "run_lock_done"}, module_calls


class Pieces:
    """The runner's shared pieces, replaced by recorders (what a host would be asked)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, lock_granted: bool = True) -> None:
        self.calls: list[str] = []
        self.spec = SimpleNamespace(name="gpu-01")
        self.fleet = [self.spec]
        self.probe = SimpleNamespace(name="probe")
        monkeypatch.setattr(runner, "fleet_specs", lambda: self.fleet)
        monkeypatch.setattr(runner, "run_lock_held", self._held(lock_granted))
        monkeypatch.setattr(runner, "run_lock_done", lambda: self.calls.append("release"))
        monkeypatch.setattr(runner, "read_host", self._read)
        monkeypatch.setattr(runner, "refuse_host",
                            lambda name, message: self.calls.append(f"refuse {name}: {message}"))

    def _held(self, granted: bool) -> Any:
        def held() -> bool:
            self.calls.append("lock")
            return granted
        return held

    def _read(self, spec: Any) -> Any:
        self.calls.append(f"probe {spec.name}")
        return self.probe

    def entry(self, **kwargs: Any) -> Entry:
        def step(run: EntryRun) -> None:
            name = run.spec.name
            self.calls.append(f"step {name} probe={run.probe is not None} fleet={len(run.fleet)}")
        return Entry("test", step, spec=lambda: self.spec, **kwargs)  # type: ignore[arg-type,return-value]


def test_a_locking_reading_entry_takes_the_lock_first_and_gives_it_back_last(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pieces = Pieces(monkeypatch)
    run_entry(pieces.entry(locks=lambda s, f: True, probes=lambda s, f: True))
    assert pieces.calls == ["lock", "probe gpu-01", "step gpu-01 probe=True fleet=1", "release"]


def test_a_refused_lock_reads_and_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    pieces = Pieces(monkeypatch, lock_granted=False)
    run_entry(pieces.entry(locks=lambda s, f: True, probes=lambda s, f: True))
    assert pieces.calls == ["lock"]


def test_a_read_only_entry_takes_no_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    pieces = Pieces(monkeypatch)
    run_entry(pieces.entry(probes=lambda s, f: True))
    assert pieces.calls == ["probe gpu-01", "step gpu-01 probe=True fleet=1"]
    pieces.calls.clear()
    run_entry(pieces.entry())  # no probe asked: the step reads what it needs itself
    assert pieces.calls == ["step gpu-01 probe=False fleet=1"]


def test_a_spec_that_cannot_be_made_stops_the_host_with_the_entrys_title(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pieces = Pieces(monkeypatch)
    entry = Entry("doctor", lambda run: pieces.calls.append("step"),
                  locks=lambda s, f: True, probes=lambda s, f: True,
                  spec=lambda: "--data model='x': unknown",
                  unusable="Doctor: the input is not usable")
    run_entry(entry)
    assert pieces.calls == ["refuse Doctor: the input is not usable: --data model='x': unknown"]
