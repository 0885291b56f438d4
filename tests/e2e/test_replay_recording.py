"""End-to-end: the benchmark's recording (benchmarks/recordings/sim.json) is still what the
product sends to a converged host, so the controller benchmark never replays an old probe.

This module's own copies of the rehearsal fleet's hosts (gpufleet-rec-*, never the rehearsal
fleet itself), named in the fleet file as inventory/sim.toml names them, converged with
inventory/sim.toml's settings; then the preview, the no-op and the audit are recorded exactly
as `benchmarks/replay.py record` records the rehearsal fleet (the copies' container names
written down as the rehearsal's), and compared with the committed recording: the command
lines, run by run and host by host. A difference fails with the command that refreshes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import replay
from tests.e2e import stack_helpers as sh
from tests.sim import simctl

pytestmark = pytest.mark.sim

HOSTS = [sh.copy_name("rec", f"gpufleet-sim-{hw}") for hw in ("a100x2", "h100x8", "monitor")]


def rehearsal_fleet_as_copies(dest: Path) -> Path:
    """inventory/sim.toml, its hosts' targets this module's copies, its paths absolute."""
    text = replay.SIM_FLEET.read_text().replace('"../tests/', f'"{sh.REPO}/tests/')
    text = text.replace('target = "@docker/gpufleet-sim-', 'target = "@docker/gpufleet-rec-')
    path = dest / "fleet.toml"
    path.write_text(text)
    return path


def test_the_committed_recording_is_what_the_product_sends(sim: None, tmp_path: Path) -> None:
    sh.start_hosts(HOSTS)
    try:
        fleet = rehearsal_fleet_as_copies(tmp_path)
        run = sh.deploy(sh.REPO, fleet)
        assert run.rc == 0, run.output[-6000:]
        fresh = replay.record(fleet, replay.RECORDED_HOSTS,
                              canonical=[("gpufleet-rec-", "gpufleet-sim-")])
    finally:
        simctl.remove_hosts(HOSTS)
    committed = json.loads(replay.RECORDING.read_text())
    stale = replay.stale_lines(committed, fresh)
    assert stale == [], "\n".join(stale)
