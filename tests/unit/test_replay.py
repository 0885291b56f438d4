"""The replay connector (benchmarks/replay.py): a clone of a recorded host answers exactly what
the recording answered, as itself; anything not recorded fails loudly."""

from __future__ import annotations

import importlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Config, State, StringCommand

from benchmarks import replay
from operations.pyinfra_adapter import use_connector

pyinfra_inventory = importlib.import_module("pyinfra.api.inventory")


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """@docker/gpufleet-sim-a100x2--0007 in replay, from a recording of gpufleet-sim-a100x2."""
    monkeypatch.setattr(pyinfra_inventory, "get_all_connectors",
                        pyinfra_inventory.get_all_connectors)
    monkeypatch.setattr(pyinfra_inventory, "get_execution_connectors",
                        pyinfra_inventory.get_execution_connectors)
    use_connector("docker", replay.ReplayConnector)
    inv = pyinfra_inventory.Inventory((["@docker/gpufleet-sim-a100x2--0007"], {}))
    State(inv, Config())  # binds the hosts to a state, as pyinfra does
    clone = inv.get_host("@docker/gpufleet-sim-a100x2--0007")
    recorded = "@docker/gpufleet-sim-a100x2"
    entries = [
        {"key": "run sh -c 'cat /etc/gpufleet/manifest.json'", "ok": True,
         "out": [["stdout", '{"host": "sim-a100x2", "container": "gpufleet-sim-a100x2"}']]},
        {"key": "run sh -c 'echo sim-a100x2'", "ok": False, "out": [["stderr", "no"]]},
        {"key": "put /etc/x sha256:" + __import__("hashlib").sha256(b"data").hexdigest(),
         "ok": True},
    ]
    path = tmp_path / "recording.json"
    path.write_text(json.dumps({"runs": {"no-op": {recorded: entries}}}))
    monkeypatch.setenv(replay.ENV_FILE, str(path))
    monkeypatch.setenv(replay.ENV_RUN, "no-op")
    monkeypatch.setattr(replay, "_RECORDINGS", {})
    yield clone.connector


def test_a_recorded_command_is_answered_as_the_clone(host: Any) -> None:
    assert host.__class__ is replay.ReplayConnector
    ok, output = host.run_shell_command(StringCommand("cat", "/etc/gpufleet/manifest.json"))
    assert ok is True
    assert output.stdout == ('{"host": "sim-a100x2--0007", '
                             '"container": "gpufleet-sim-a100x2--0007"}')
    # The clone names itself in a command: the recorded host's command is looked up.
    ok, output = host.run_shell_command(StringCommand("echo", "sim-a100x2--0007"))
    assert (ok, output.stderr) == (False, "no")
    assert replay.EXCHANGES["@docker/gpufleet-sim-a100x2--0007"] >= 2


def test_a_command_not_recorded_fails_loudly(host: Any) -> None:
    with pytest.raises(replay.ReplayMiss, match=r"^@docker/gpufleet-sim-a100x2--0007: no "
                       r"recorded answer \(recorded host @docker/gpufleet-sim-a100x2, run "
                       r"no-op\) for: run sh -c 'cat /etc/shadow'\n  refresh the recording"):
        host.run_shell_command(StringCommand("cat", "/etc/shadow"))


def test_an_upload_is_answered_only_for_the_recorded_content(host: Any) -> None:
    assert host.put_file(io.BytesIO(b"data"), "/etc/x") is True
    with pytest.raises(replay.ReplayMiss):
        host.put_file(io.BytesIO(b"other data"), "/etc/x")
    with pytest.raises(replay.ReplayMiss):
        host.get_file("/etc/x", io.BytesIO())


def test_a_recording_is_stale_when_the_product_sends_something_else() -> None:
    old = {"runs": {"no-op": {"h": [{"key": "run a"}, {"key": "run b"}]}}}
    assert replay.stale_lines(old, old) == []
    new = {"runs": {"no-op": {"h": [{"key": "run a"}, {"key": "run c"}]}}}
    lines = replay.stale_lines(old, new)
    assert lines[0] == "no-op h: 2 -> 2 exchanges; 1 new, 1 no longer sent; first new: run c"
    assert "benchmarks/replay.py record" in lines[-1]


def test_the_benchmark_fleet_has_distinct_clones_and_the_recordings_settings() -> None:
    import tomllib

    from benchmarks.controller import fleet_text

    fleet = tomllib.loads(fleet_text({"pcie": 3, "hgx": 2}))
    sim = tomllib.loads(replay.SIM_FLEET.read_text())
    hosts = {group: {name: host["target"] for name, host in table["hosts"].items()}
             for group, table in fleet["groups"].items()}
    assert hosts == {
        "pcie": {f"sim-a100x2--000{i}": f"@docker/gpufleet-sim-a100x2--000{i}"
                 for i in (1, 2, 3)},
        "hgx": {f"sim-h100x8--000{i}": f"@docker/gpufleet-sim-h100x8--000{i}" for i in (1, 2)},
        # The monitoring host stays, as in the recording's fleet.
        "monitor": {"sim-monitor": "@docker/gpufleet-sim-monitor"}}
    # The recording's settings, only the controller paths made absolute.
    assert fleet["settings"]["inference"]["image_archives"] == [
        str(replay.REPO / "tests/sim/build/images/engine.tar")]
    for group in ("pcie", "hgx"):
        assert fleet["groups"][group]["settings"] == sim["groups"][group]["settings"]


def test_the_run_locks_holder_record_is_matched_whatever_run_wrote_it() -> None:
    """Every run takes the host's lock with its own holder (pid, time, token): the replay
    matches the command with the record left out, or no no-op could be replayed."""
    from rules.run_lock import Holder

    def take(pid: int, token: str) -> str:
        record = Holder(who="ops", origin="ctl", command="pyinfra -y x", pid=pid,
                        boot_id="b", since=1.5 * pid, token=token).render()
        return f"sh -c 'printf %s {record} > /var/lib/gpufleet/run.lock'"

    assert take(1, "aa") != take(2, "bb")
    assert replay._key("run", take(1, "aa")) == replay._key("run", take(2, "bb"))
    assert "<run lock holder>" in replay._key("run", take(1, "aa"))


def test_a_swapped_digest_is_replaced_inside_base64_file_contents(host: Any) -> None:
    """The engine's applied-stamp travels base64-encoded in the state read; the benchmark's
    own key changes it, so the swap reaches inside."""
    import base64

    connector = host
    connector.swaps = [["old-digest", "new-digest"]]
    inside = base64.b64encode(b"compose-digest key:old-digest\n").decode()
    swapped = connector._as_clone(f"file {inside}")
    assert base64.b64decode(swapped.split()[1]).decode() == "compose-digest key:new-digest\n"


def test_the_recording_answers_the_state_read_of_a_late_execution(host: Any) -> None:
    """At 1,000 hosts execution starts more than REUSE_ACROSS_PHASES_SECONDS after the probe,
    so the no-op reads each host's state again: the recording holds that read's answer (the
    no-op is recorded with the read forced, LATE_READ_RUNS), or the replay fails with
    ReplayMiss there."""
    from facts.host_state import host_state_script

    late = replay.command_key(host, StringCommand(host_state_script()), {})
    recording = json.loads(replay.RECORDING.read_text())
    assert "no-op" in replay.LATE_READ_RUNS
    for name in replay.RECORDED_HOSTS:
        entries = recording["runs"]["no-op"][f"@docker/gpufleet-{name}"]
        answers = [entry for entry in entries if entry["key"] == late]
        assert len(answers) == 1, name
        assert answers[0]["ok"] and any("__gpufleet_state=dpkg" in line
                                        for _, line in answers[0]["out"])


class _Forgetful(set[Any]):
    def add(self, item: Any) -> None:
        pass


def test_a_clones_answers_are_the_same_with_the_unchanged_contents_remembered(
        host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay remembers which base64 contents no clone changes; a clone's answer (the real
    recorded state read: files, the manifest naming the host, the key's digest) is the same
    as when each content is decoded again."""
    recording = json.loads(replay.RECORDING.read_text())
    lines = [line for entry in recording["runs"]["no-op"]["@docker/gpufleet-sim-a100x2"]
             for _, line in entry.get("out", [])]
    host.swaps = [[recording["api_key_env_sha256"], "f" * 64]]
    monkeypatch.setattr(replay, "_UNCHANGED_BASE64", _Forgetful())
    decoded_each_time = [host._as_clone(line) for line in lines]
    monkeypatch.setattr(replay, "_UNCHANGED_BASE64", set())
    first = [host._as_clone(line) for line in lines]
    assert replay._UNCHANGED_BASE64  # remembered
    assert first == decoded_each_time
    assert [host._as_clone(line) for line in lines] == decoded_each_time
    assert decoded_each_time != lines  # the clone's name and the swapped digest went in
