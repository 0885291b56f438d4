"""The per-module time table `make test` prints at its end (tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.conftest import module_times_table


def test_the_table_lists_e2e_files_longest_first_and_sums_the_unit_files() -> None:
    seconds = {"tests/e2e/test_a.py": 100.0, "tests/e2e/test_b.py": 300.0,
               "tests/unit/test_x.py": 5.0, "tests/unit/test_y.py": 7.0,
               "tests/unit/test_z.py": 1.0}
    workers = {"tests/e2e/test_a.py": {"gw0"}, "tests/e2e/test_b.py": {"gw1"},
               "tests/unit/test_x.py": {"gw0"}, "tests/unit/test_y.py": {"gw0", "gw1"},
               "tests/unit/test_z.py": {"gw1"}}
    lines = module_times_table(seconds, workers, unit_rows=1)
    rows = [line.split() for line in lines[1:]]
    assert [r[-1] for r in rows[:3]] == ["tests/e2e/test_b.py", "tests/e2e/test_a.py",
                                         "tests/unit/test_y.py"]
    assert rows[2][1] == "gw0+gw1"  # a file split over both workers says so
    assert lines[4].split()[0] == "6.0" and "(2 other unit files)" in lines[4]
    assert lines[5].split()[0] == "13.0" and "(all of tests/unit)" in lines[5]
    assert lines[6].split()[0] == "400.0" and "(all of tests/e2e)" in lines[6]
    assert [line.split()[:2] for line in lines[7:]] == [
        ["105.0", "gw0"], ["7.0", "gw0+gw1"], ["301.0", "gw1"]]  # the totals per worker


def test_a_host_removed_in_the_background_is_waited_for_before_it_starts_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """stack_helpers.remove_later: a module's host copies go in the background, but starting
    one of them again (or the run's end) waits until its removal is over: a new container
    never meets the old one's volumes."""
    import threading

    from tests.e2e import stack_helpers

    events: list[str] = []
    release = {"gpufleet-t-a100x2": threading.Event(), "gpufleet-u-a100x2": threading.Event()}

    def slow_remove(names: list[str] | None = None) -> None:
        release[(names or [""])[0]].wait(10)
        events.append(f"removed {','.join(names or [])}")

    monkeypatch.setattr(stack_helpers.simctl, "remove_hosts", slow_remove)
    monkeypatch.setattr(stack_helpers, "REMOVAL_ERRORS", [])
    stack_helpers.remove_later(["gpufleet-t-a100x2"], then=lambda: events.append("then"))
    stack_helpers.remove_later(["gpufleet-u-a100x2"])
    assert events == []  # not waited for: the caller goes on
    threading.Timer(0.2, release["gpufleet-t-a100x2"].set).start()
    stack_helpers.wait_for_removals(["gpufleet-t-a100x2"])  # what start_hosts does first
    assert events == ["removed gpufleet-t-a100x2", "then"]  # the other one still under way
    release["gpufleet-u-a100x2"].set()
    stack_helpers.wait_for_removals()  # what the run's end does
    assert events == ["removed gpufleet-t-a100x2", "then", "removed gpufleet-u-a100x2"]
    assert stack_helpers.REMOVAL_ERRORS == []


def test_a_background_removal_that_fails_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.e2e import stack_helpers

    def failing(names: list[str] | None = None) -> None:
        raise stack_helpers.simctl.SimError("docker rm: device or resource busy")

    monkeypatch.setattr(stack_helpers.simctl, "remove_hosts", failing)
    monkeypatch.setattr(stack_helpers, "REMOVAL_ERRORS", [])
    stack_helpers.remove_later(["gpufleet-v-a100x2"])
    stack_helpers.wait_for_removals()
    assert stack_helpers.REMOVAL_ERRORS == [
        "gpufleet-v-a100x2: docker rm: device or resource busy"]


def test_a_host_already_being_removed_is_not_removed_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A module's fixture removes its host at its end, then the autouse fixture removes every
    host the module started: the second must not ask Docker again while the first removal is
    under way (Docker answers "removal ... is already in progress" and the run failed)."""
    import threading

    from tests.e2e import stack_helpers

    asked: list[list[str]] = []
    release = threading.Event()

    def slow_remove(names: list[str] | None = None) -> None:
        asked.append(list(names or []))
        release.wait(10)

    monkeypatch.setattr(stack_helpers.simctl, "remove_hosts", slow_remove)
    monkeypatch.setattr(stack_helpers, "REMOVAL_ERRORS", [])
    monkeypatch.setattr(stack_helpers, "STARTED", {"gpufleet-w-a100x2", "gpufleet-x-a100x2"})
    stack_helpers.remove_later(["gpufleet-w-a100x2"])  # the module's own teardown
    assert sorted(stack_helpers.STARTED) == ["gpufleet-x-a100x2"]  # no longer the module's to remove
    stack_helpers.remove_later(["gpufleet-w-a100x2", "gpufleet-x-a100x2"])  # a second ask
    release.set()
    stack_helpers.wait_for_removals()
    assert sorted(map(sorted, asked)) == [["gpufleet-w-a100x2"], ["gpufleet-x-a100x2"]]
    assert stack_helpers.REMOVAL_ERRORS == []
