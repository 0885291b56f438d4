"""The per-module time table `make test` prints at its end (tests/conftest.py)."""

from __future__ import annotations

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
