"""The newcomer's checks on a rehearsal log (tests/sim/rehearsal_log.py), over lines in the
format `make rehearse > log 2>&1` writes them: each defect the issue names is found, and the
preflight of the simulated fleet as it is now renders nothing the checker refuses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from facts.probe import HostProbe
from inventory.fleet import load_fleet
from rules.assessment import assess, render
from tests.sim.rehearsal_log import problems
from tests.unit.test_preflight import bare_host

REPO = Path(__file__).resolve().parents[2]

TABLE = """\
--> Results:
    Operation                                                                      Hosts   Success   Error   No Change
    Host network: proxy and extra CA | Ensure no gpufleet apt proxy is configured  3       -         -       3
    NVIDIA driver | Ensure nouveau is blacklisted                                  2       -         -       2
    Host manifest | Ensure the host manifest records what this run made the host   3       3         -       -
    Grand total                                                                    8       3         -       5
"""

PREFLIGHT_BEFORE = """\
[@docker/gpufleet-sim-a100x2]  gpufleet preflight for sim-a100x2:
[@docker/gpufleet-sim-a100x2]    WARNING [storage-overlay] weights are not on NVMe (overlay filesystem: the real disk underneath is unknown)
[@docker/gpufleet-sim-a100x2]    0 error(s), 1 warning(s), 2 note(s)
"""


def test_a_clean_log_passes() -> None:
    assert problems(TABLE + "[@docker/x]    0 error(s), 0 warning(s) and 5 expected, 2 note(s)\n"
                    "[@docker/x]    expected in the simulator: storage-overlay, "
                    "image-not-pinned x3 (settings.preflight.expected_warnings)\n", 60) == []


def test_an_escape_code_is_found() -> None:
    (found,) = problems("[@docker/x]  \x1b[33mWARNING\x1b[0m colour\n".replace("WARNING", "x"),
                        60)
    assert found.startswith("line 1: an escape code")


def test_an_eta_above_ten_times_the_run_is_found() -> None:
    line = ("[@docker/gpufleet-sim-h100x8]  weights: config.json pushed, 0.00 of 0.01 GB, "
            "0 MB/s, about 7332 s left\n")
    (found,) = problems(line, 60)
    assert "an ETA of 7332 s in a run of 60 s" in found
    assert problems(line.replace("7332", "600"), 60) == []


def test_one_step_with_two_rows_is_found() -> None:
    doubled = TABLE.replace(
        "    NVIDIA driver |",
        "    Host network: proxy and extra CA | Ensure no gpufleet apt proxy is configured  1"
        "       -         -       1\n    NVIDIA driver |")
    (found,) = problems(doubled, 60)
    assert found == ("results table: 2 rows for one step: Host network: proxy and extra CA | "
                     "Ensure no gpufleet apt proxy is configured")


def test_an_unexplained_warning_is_found() -> None:
    found = problems(PREFLIGHT_BEFORE, 60)
    assert len(found) == 2  # the warning and the summary that counts it
    assert "WARNING [storage-overlay]" in found[0]
    assert problems("[@docker/x]  warning: linux-headers-6.1 is not offered\n", 60)


def test_the_command_line_exits_1_on_a_problem(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text(PREFLIGHT_BEFORE)
    run = subprocess.run([sys.executable, str(REPO / "tests/sim/rehearsal_log.py"), str(log),
                          "--seconds", "60"], capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "WARNING [storage-overlay]" in run.stdout


def rendered(probe: HostProbe, tmp_path: Path) -> str:
    """The preflight report of the rehearsal fleet's A100 host, as the rehearsal prints it.
    The fleet file is read from a copy beside stand-ins for the files the simulator builds
    (image archives, weights): a unit test must not need `make rehearse` to have run (`make
    test` on a fresh clone runs it before the e2e modules have built them)."""
    copy = tmp_path / "inventory" / "sim.toml"
    copy.parent.mkdir()
    text = (REPO / "inventory" / "sim.toml").read_text()
    copy.write_text(text)
    for built in sorted(set(re.findall(r'"\.\./(tests/sim/build/[^"]+)"', text))):
        path = tmp_path / built
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".tar":
            path.write_bytes(b"")
        else:
            path.mkdir()
    fleet = load_fleet(copy)
    spec = next(s for s in fleet.hosts if s.name == "sim-a100x2")
    return "\n".join(f"[@docker/gpufleet-sim-a100x2]    {line}"
                     for line in render(assess(spec, probe)).splitlines())


def test_the_simulated_fleets_preflight_has_no_unexplained_warning(tmp_path: Path) -> None:
    report = rendered(bare_host(), tmp_path)
    assert "expected in the simulator: " in report
    assert problems(report, 60) == [], report
