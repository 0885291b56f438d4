"""End-to-end over the rehearsal fleet as `make rehearse` left it (inventory/sim.toml,
converged): the `gpufleet` commands a newcomer runs next, run as they run them (the console
script's module, from the checkout), each on the real simulated hosts. Nothing here changes
the fleet: `apply` on a converged fleet changes nothing, `plan`, `doctor` and `audit` are
read-only, `rollout --behind-only` finds no host behind, `drain` without --yes and with stdin
closed stops at its question, `canary status` is refused (the rehearsal has no canary host). The benchmark's recording is
checked against what the product sends to the same fleet now.

It starts and removes no container: without the rehearsal fleet up and converged (run `make
rehearse` first) it is skipped, saying so. It uses the rehearsal's API key where `make
rehearse` keeps it (the user's config folder; the test run's own would be a new key). `apply`'s output is held to the newcomer's checks
(tests/sim/rehearsal_log.py): no escape code, no absurd ETA, one row per step, no warning not
explained as expected in the simulator.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.sim import simctl
from tests.sim.rehearsal_log import problems

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[2]
SIM = str(REPO / "inventory" / "sim.toml")
STATE = REPO / "inventory" / "fleet-state" / "sim"
# The rehearsal fleet's API key is where `make rehearse` keeps it: the user's config folder,
# not the test run's own (tests/conftest.py), or `apply` would put a new key on the hosts.
TEST_CONFIG = os.path.join(tempfile.gettempdir(), "gpufleet-test-config-")


def user_environ() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k != "GPUFLEET_FLEET"}
    if environ.get("GPUFLEET_CONFIG_DIR", "").startswith(TEST_CONFIG):
        del environ["GPUFLEET_CONFIG_DIR"]
    return environ


@pytest.fixture(scope="module", autouse=True)
def rehearsed() -> None:
    if not simctl.engine_reachable():
        pytest.skip("Docker engine unreachable: the rehearsal fleet needs one")
    for host in simctl.rehearsal_hosts():
        state = simctl.container_state(host.name)
        if not (state and state["State"]["Running"]):
            pytest.skip(f"{host.name} is not running: run `make rehearse` first")
        if not (STATE / f"{host.name.removeprefix('gpufleet-')}.json").is_file():
            pytest.skip(f"{host.name} has no manifest in {STATE}: run `make rehearse` first")
    key = subprocess.run([sys.executable, "-c", "from inventory.key_files import "
                          "generated_key_path; print(generated_key_path('sim'))"], cwd=REPO,
                         env=user_environ(), capture_output=True, text=True, check=True)
    if not Path(key.stdout.strip()).is_file():
        pytest.skip(f"no key of the rehearsal fleet at {key.stdout.strip()}: run `make "
                    "rehearse` first")


def gpufleet(*args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "gpufleet", *args], cwd=REPO, text=True,
                         capture_output=True, env=user_environ(), stdin=subprocess.DEVNULL,
                         timeout=timeout)
    return run, time.monotonic() - started


def test_apply_on_the_rehearsed_fleet_is_clean_for_a_newcomer() -> None:
    run, seconds = gpufleet("apply", "--fleet", SIM, "--yes")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert problems(out, seconds) == [], "\n".join(problems(out, seconds))
    assert out.count("expected in the simulator: ") == 2  # once for each GPU host


def test_plan_doctor_and_audit_read_the_hosts() -> None:
    plan, _ = gpufleet("plan", "--fleet", SIM, "--limit", "sim-a100x2")
    said = plan.stdout + plan.stderr  # pyinfra writes its progress to stderr
    assert plan.returncode == 0, said[-4000:]
    assert "gpufleet preflight for sim-a100x2" in said
    assert "gpufleet-sim-h100x8" not in said  # --limit took the fleet's name
    doctor, _ = gpufleet("doctor", "--fleet", SIM, "--limit", "pcie")
    said = doctor.stdout + doctor.stderr
    assert doctor.returncode == 0, said[-4000:]
    assert "gpufleet doctor for sim-a100x2" in said
    audit, _ = gpufleet("audit", "--fleet", SIM)
    said = audit.stdout + audit.stderr
    assert audit.returncode == 0, said[-4000:]
    assert "no drift on 3 host(s)" in said
    assert json.loads((STATE / "audit.json").read_text()) == {
        "sim-a100x2": [], "sim-h100x8": [], "sim-monitor": []}


def test_rollout_behind_only_finds_nothing_behind() -> None:
    run, _ = gpufleet("rollout", "--fleet", SIM, "--behind-only")
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]


def test_drain_stops_at_its_question_and_canary_status_needs_a_canary() -> None:
    drain, _ = gpufleet("drain", "--fleet", SIM, "sim-a100x2")
    said = drain.stdout + drain.stderr
    assert drain.returncode == 2, said[-4000:]
    assert "but stdin is closed, so nobody can answer: stopped here, nothing was executed" \
        in said
    assert "Traceback" not in said
    canary, _ = gpufleet("canary", "status", "--fleet", SIM, "--yes")
    assert canary.returncode != 0
    assert "has settings.inference.variant = 'canary'" in canary.stdout + canary.stderr


def test_smoke_then_the_report_in_a_headless_browser(tmp_path: Path) -> None:
    smoke, _ = gpufleet("smoke", "--fleet", SIM, "--requests", "3", "--seconds", "10")
    assert smoke.returncode == 0, (smoke.stdout + smoke.stderr)[-4000:]
    recorded = json.loads((STATE / "smoke.json").read_text())["endpoints"]
    assert len(recorded) == 11 and all(e["ok"] for e in recorded)  # 8 + 2 replicas, gateway
    page = tmp_path / "fleet.html"
    report, _ = gpufleet("report", "--fleet", SIM, "--out", str(page), "--gpus", "1xa100-40gb",
                         "--requests-per-day", "100000", "--cloud-per-million-tokens", "0.6")
    assert report.returncode == 0, report.stderr
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (tools/ensure-host-tools.sh installs it)")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    for endpoint in recorded:
        assert f"{endpoint['url']}: {endpoint['completion_ms']:.1f} ms" in text
    assert "serving: 8/8 replica(s) answered" in text
    assert text.count("no drift") == 3
    assert dom.stdout.count("<svg") == 3


def test_the_benchmarks_recording_is_what_the_product_sends_now(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/recordings/sim.json is still what the product sends to the converged
    rehearsal fleet (preview, no-op and audit, command by command), so the controller
    benchmark never replays an old probe format. Recorded here, on the rehearsed fleet (a
    no-op), instead of on copies converged for it; a difference fails with the command that
    refreshes the recording."""
    from benchmarks import replay

    # record() points the controller at a config folder holding the hosts' own key
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", os.environ.get("GPUFLEET_CONFIG_DIR", ""))
    fresh = replay.record(replay.SIM_FLEET, replay.RECORDED_HOSTS)
    committed = json.loads(replay.RECORDING.read_text())
    stale = replay.stale_lines(committed, fresh)
    assert stale == [], "\n".join(stale)
