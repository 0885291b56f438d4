"""The run lock: its rules (rules/run_lock.py) and its shell commands (operations/host_lock.py),
the commands run by a real shell on a folder standing in for the host's /var/lib/gpufleet."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from facts.lock_record import LockRecords, parse_lock_records
from operations import host_lock
from rules.run_lock import (
    LOCK_DIR,
    Holder,
    break_command,
    break_verdict,
    held_message,
    parse_holder,
    parse_wait,
    verdict,
)

NOW = 1_800_000_000.0
ALICE = Holder(token="a" * 32, who="alice", origin="ctl-1", command="pyinfra -y inventory.py "
               "deploys/gpu_host.py", since=NOW - 300, pid=4242, boot_id="boot-1")
BOB = Holder(token="b" * 32, who="bob", origin="ctl-2", command="tools/rollout.py",
             since=NOW, pid=77, boot_id="boot-9")


def on_ctl1(h: Holder) -> Holder:
    return replace(h, origin="ctl-1", boot_id="boot-1")


def test_the_record_round_trips_and_a_garbled_one_still_holds() -> None:
    assert parse_holder(ALICE.render()) == ALICE
    assert parse_holder(None) is None and parse_holder("  \n") is None
    garbled = parse_holder('{"token": "x", "who"')
    assert garbled is not None and garbled.token == ""  # nobody may assume the host is free
    assert garbled.describe(NOW) == """an unreadable lock record ('{"token": "x", "who"')"""
    assert break_command("gpu-01", garbled).endswith("--data break_lock=unreadable")
    assert break_verdict(garbled, "unreadable", "gpu-01", NOW)[0]


@pytest.mark.parametrize("found,alive,expected", [
    (None, True, "free"),
    (ALICE, True, "held"),  # another run on this controller, alive
    (ALICE, False, "dead"),  # its process is gone
    (replace(ALICE, boot_id="boot-0"), True, "dead"),  # this controller rebooted since
    (replace(ALICE, origin="ctl-3"), False, "held"),  # another controller: not ours to judge
    (replace(BOB, token="a" * 32), True, "mine"),  # the lock of the tool that started this run
])
def test_the_verdict_on_a_found_record(found: Holder | None, alive: bool, expected: str) -> None:
    mine = on_ctl1(BOB)
    assert verdict(found, mine if expected != "mine" else replace(mine, token="a" * 32),
                   lambda pid: alive) == expected


def test_the_held_message_names_who_where_what_since_and_the_break_command() -> None:
    line = held_message("gpu-01", ALICE, 30, NOW)
    assert "\n" not in line
    for part in ("gpu-01: locked by alice on ctl-1 (pid 4242)",
                 "`pyinfra -y inventory.py deploys/gpu_host.py`",
                 "since 2027-01-15 07:55:00 UTC (5 min ago)", "gave up after waiting 30 s",
                 "Nothing was changed", break_command("gpu-01", ALICE)):
        assert part in line, line
    assert break_command("gpu-01", ALICE) == (
        "pyinfra -y inventory.py deploys/lock.py --limit gpu-01 --data break_lock=" + "a" * 32)


def test_breaking_needs_the_holders_own_token() -> None:
    assert break_verdict(ALICE, "a" * 32, "gpu-01", NOW)[0]
    go, said = break_verdict(BOB, "a" * 32, "gpu-01", NOW)  # taken since, by bob
    assert not go and "bob on ctl-2" in said
    assert not break_verdict(None, "a" * 32, "gpu-01", NOW)[0]


@pytest.mark.parametrize("raw,seconds,ok", [
    (None, 0, True), ("", 0, True), (0, 0, True), ("120", 120, True), (3600, 3600, True),
    ("-1", 0, False), ("soon", 0, False), (3601, 0, False), ("1.5", 0, False)])
def test_the_wait_is_whole_seconds_in_a_bound(raw: object, seconds: int, ok: bool) -> None:
    got, problem = parse_wait(raw)
    assert (got, problem is None) == (seconds, ok)
    if not ok:
        assert problem is not None and "allowed: whole seconds from 0 to 3600" in problem


def test_the_fact_reads_both_records() -> None:
    assert parse_lock_records(["__gpufleet_lock__", ALICE.render(),
                               "__gpufleet_lock_last__"]) == (ALICE.render(), None)
    assert parse_lock_records(["__gpufleet_lock__", "__gpufleet_lock_last__", "x"]) == (
        None, "x")
    assert "cat /var/lib/gpufleet/run.lock " in LockRecords().command(
        "/var/lib/gpufleet/run.lock", "/var/lib/gpufleet/run.lock.last")


# --- the commands, run by a real shell ------------------------------------------------------


@dataclass
class _Output:
    stdout_lines: list[str]


@dataclass
class ShellHost:
    """A host whose commands run in a local shell, /var/lib/gpufleet moved into ``root``."""

    name: str
    root: Path
    data: dict[str, Any] = field(default_factory=dict)
    said: list[str] = field(default_factory=list)
    state: Any = field(default_factory=SimpleNamespace)  # pyinfra's State: the run context

    def log_styled(self, message: str, **kwargs: Any) -> None:
        self.said.append(message)

    def run_shell_command(self, command: Any, **kwargs: Any) -> tuple[bool, _Output]:
        script = command.get_raw_value().replace(LOCK_DIR, str(self.root / "gpufleet"))
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        return done.returncode == 0, _Output(done.stdout.splitlines())

    def lock(self) -> Path:
        return self.root / "gpufleet" / "run.lock"


@pytest.fixture
def shell_host(tmp_path: Path) -> ShellHost:
    return ShellHost("gpu-01", tmp_path)


def test_the_first_run_takes_the_lock_and_the_second_fails_at_once_naming_it(
        shell_host: ShellHost) -> None:
    alive_alice = replace(ALICE, origin="elsewhere")
    assert host_lock.take(shell_host, alive_alice, 0) is None  # type: ignore[arg-type]
    assert parse_holder(shell_host.lock().read_text()) == alive_alice
    assert oct(shell_host.lock().stat().st_mode)[-3:] == "600"
    waits: list[float] = []
    message = host_lock.take(shell_host, on_ctl1(BOB), 0,  # type: ignore[arg-type]
                             sleep=waits.append)
    assert message is not None and message.startswith("gpu-01: locked by alice on elsewhere")
    assert "not waiting" in message and waits == []
    assert parse_holder(shell_host.lock().read_text()) == alive_alice  # untouched
    host_lock.release(shell_host)  # type: ignore[arg-type]
    assert not shell_host.lock().exists()
    assert parse_holder((shell_host.root / "gpufleet" / "run.lock.last").read_text()) == \
        alive_alice


def test_a_second_run_waits_up_to_its_bound_then_names_the_holder(
        shell_host: ShellHost) -> None:
    assert host_lock.take(shell_host, replace(ALICE, origin="elsewhere"),  # type: ignore[arg-type]
                          0) is None
    clock = iter(range(0, 100, 2))
    slept: list[float] = []
    message = host_lock.take(shell_host, BOB, 6, sleep=slept.append,  # type: ignore[arg-type]
                             clock=lambda: float(next(clock)))
    assert message is not None and "gave up after waiting 6 s" in message
    assert 1 <= len(slept) <= 3 and set(slept) == {host_lock.POLL_SECONDS}


def test_a_waiting_run_gets_the_lock_once_it_is_given_back(shell_host: ShellHost) -> None:
    first = replace(ALICE, origin="elsewhere")
    assert host_lock.take(shell_host, first, 0) is None  # type: ignore[arg-type]

    def release_then_sleep(seconds: float) -> None:
        host_lock.release(shell_host)  # type: ignore[arg-type]

    assert host_lock.take(shell_host, BOB, 60,  # type: ignore[arg-type]
                          sleep=release_then_sleep) is None
    assert parse_holder(shell_host.lock().read_text()) == BOB


def test_a_dead_holder_is_never_waited_for_its_lock_is_taken_over_and_named(
        shell_host: ShellHost, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = on_ctl1(ALICE)
    assert host_lock.take(shell_host, dead, 0) is None  # type: ignore[arg-type]
    shell_host.state = SimpleNamespace()  # its process is gone (it never gave the lock back)
    monkeypatch.setattr(host_lock, "alive", lambda pid: False)
    assert host_lock.take(shell_host, on_ctl1(BOB), 600,  # type: ignore[arg-type]
                          sleep=lambda s: pytest.fail("waited for a dead holder")) is None
    assert parse_holder(shell_host.lock().read_text()) == on_ctl1(BOB)
    assert len(shell_host.said) == 1 and shell_host.said[0].startswith(
        "gpu-01: took over the run lock left by a run that is gone: alice on ctl-1 (pid 4242)")
    assert sorted(p.name for p in (shell_host.root / "gpufleet").iterdir()) == ["run.lock"]


def test_the_same_holder_on_another_controller_is_only_named_never_taken_over(
        shell_host: ShellHost, monkeypatch: pytest.MonkeyPatch) -> None:
    assert host_lock.take(shell_host, ALICE, 0) is None  # type: ignore[arg-type]
    shell_host.state = SimpleNamespace()  # a new run
    monkeypatch.setattr(host_lock, "alive", lambda pid: False)  # a pid of ctl-1, not ours
    message = host_lock.take(shell_host, BOB, 0)  # type: ignore[arg-type]
    assert message is not None and break_command("gpu-01", ALICE) in message
    assert parse_holder(shell_host.lock().read_text()) == ALICE


def test_breaking_moves_only_the_record_it_read(shell_host: ShellHost) -> None:
    assert host_lock.take(shell_host, ALICE, 0) is None  # type: ignore[arg-type]
    assert not host_lock.broken(shell_host, BOB.render())  # type: ignore[arg-type]
    assert parse_holder(shell_host.lock().read_text()) == ALICE  # put back
    assert host_lock.broken(shell_host, ALICE.render())  # type: ignore[arg-type]
    assert not shell_host.lock().exists()
    assert not host_lock.broken(shell_host, ALICE.render())  # type: ignore[arg-type]
    assert list((shell_host.root / "gpufleet").iterdir()) == []


def test_a_release_never_removes_a_lock_another_run_holds(shell_host: ShellHost) -> None:
    assert host_lock.take(shell_host, ALICE, 0) is None  # type: ignore[arg-type]
    shell_host.lock().write_text(BOB.render() + "\n")  # broken and taken again meanwhile
    host_lock.release(shell_host)  # type: ignore[arg-type]
    assert parse_holder(shell_host.lock().read_text()) == BOB


def test_a_tools_runs_go_on_under_its_lock_and_leave_it_held(shell_host: ShellHost) -> None:
    assert host_lock.take(shell_host, BOB, 0) is None  # type: ignore[arg-type]
    host_lock.forget(shell_host)  # type: ignore[arg-type]  # the tool keeps it
    assert host_lock.take(shell_host, BOB, 0) is None  # type: ignore[arg-type]
    assert not host_lock.holds(shell_host)  # type: ignore[arg-type]
    host_lock.release(shell_host)  # type: ignore[arg-type]
    assert parse_holder(shell_host.lock().read_text()) == BOB


def test_two_takers_at_once_one_wins(shell_host: ShellHost) -> None:
    """The lock is one `ln` of a complete record: of many shells racing, exactly one wins."""
    script = host_lock.take_script(BOB).replace(LOCK_DIR, str(shell_host.root / "gpufleet"))
    racers = [subprocess.Popen(["sh", "-c", script.replace(BOB.token, f"{i:032d}")],
                               stdout=subprocess.PIPE, text=True) for i in range(8)]
    first_lines = [r.communicate()[0].splitlines()[0] for r in racers]
    assert first_lines.count("taken") == 1
    holder = parse_holder(shell_host.lock().read_text())
    assert holder is not None and holder.token.isdigit()
    assert sorted(p.name for p in (shell_host.root / "gpufleet").iterdir()) == ["run.lock"]


def test_a_run_that_read_the_host_stops_if_another_changed_it_since(
        shell_host: ShellHost) -> None:
    assert host_lock.take(shell_host, ALICE, 0) is None  # type: ignore[arg-type]
    host_lock.release(shell_host)  # type: ignore[arg-type]  # alice ended after bob read
    message = host_lock.take_checked(shell_host, BOB, 0, None)  # type: ignore[arg-type]
    assert message is not None and "another run changed this host after this run read it" \
        in message and "alice on ctl-1" in message
    assert not shell_host.lock().exists()  # given back
    assert host_lock.take_checked(shell_host, BOB, 0, ALICE) is None  # type: ignore[arg-type]
