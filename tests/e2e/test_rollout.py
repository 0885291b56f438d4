"""End-to-end: a rolling pin change over four GPU hosts in batches of two, behind the gateway.

This module's own hosts: four copies of the A100 host (2 replicas each) and a monitoring host
with the gateway. Converged on older pins, then `tools/rollout.py` moves them to newer ones
(driver, CUDA, container toolkit: a reboot per host) while a bounded load goes through the
gateway: every batch is drained first, so no request fails, and at most two hosts are ever
out. Then a rollout back whose second batch breaks (a malformed apt source on one host) stops
there, leaves that batch drained and says which host is on which pins; fixed, `--behind-only`
finishes it. Last, a fleet file whose one batch holds every replica is refused before any
change and goes with --allow-outage, and a host drained by hand stays drained through it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import stack_helpers as sh
from tests.e2e.hosts import ok
from tests.e2e.load import Load

pytestmark = pytest.mark.sim

GPUS = [sh.copy_name(f"roll{i}", "gpufleet-sim-a100x2") for i in range(1, 5)]
MONITOR = sh.copy_name("roll", "gpufleet-sim-monitor")
OLD = ("535.161.08-1", "12.1.0-1", "1.14.6-1")
NEW = ("535.183.06-1", "12.1.1-1", "1.15.0-1")
BROKEN = "/etc/apt/sources.list.d/broken-by-hand.list"


@dataclass
class Rollout:
    tree: Path
    fleet: Path
    gateway: str
    key: str | None  # the fleet's API key (generated: the engines listen beyond loopback)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GPUFLEET_FLEET": str(self.fleet), "PYTHONUNBUFFERED": "1"}
        return subprocess.run([sys.executable, str(self.tree / "tools" / "rollout.py"), *args],
                              cwd=self.tree, env=env, capture_output=True, text=True,
                              timeout=1500)


def address_of(container: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "--format",
         "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container],
        capture_output=True, text=True, check=True).stdout.split()[0]


def routed(gateway: str, host: str) -> bool:
    """Whether the gateway file routes to ``host``'s first replica: a server by the address
    its name resolves to, the name beside it in a comment (rules/gateway.py)."""
    return (f"server {address_of(host)}:8000 max_fails=3 fail_timeout=10s;  # {host}:8000"
            in gateway)


@pytest.fixture(scope="module")
def rollout(sim: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollout]:
    tmp = tmp_path_factory.mktemp("rollout")
    # From a converged snapshot of the older pins (stack_helpers; made once per product tree,
    # beside the default pins' one the other modules share): the rollouts under load are this
    # module's subject, not the converge from bare, nor a first downgrade of four hosts with
    # a reboot each. The converge below gives the hosts this module's fleet (names, key).
    sh.start_converged([*GPUS, MONITOR], pins=OLD)
    tree = sh.product_copy(tmp / "tree")
    (tree / "tools").mkdir()
    shutil.copy2(sh.REPO / "tools" / "rollout.py", tree / "tools" / "rollout.py")
    sh.set_pins(tree, *OLD)
    per_gpu = {"inference": {"replicas": 2}, "rollout": {"batch": 2}}
    fleet = sh.write_fleet(tmp, [*GPUS, MONITOR], inference=True, settings={
        **{name: per_gpu for name in GPUS}, MONITOR: {"gateway": {"bind": "0.0.0.0"}}})
    run = sh.deploy(tree, fleet)
    assert run.rc == 0, run.output[-5000:]
    yield Rollout(tree, fleet, f"{address_of(MONITOR)}:8080", sh.api_key(fleet))


def boot_id(host: str) -> str:
    """When the host's init started (a simulated host shares the kernel, so its boot_id does
    not change on a reboot: its PID 1 does)."""
    return ok(host, "cut -d' ' -f22 /proc/1/stat").strip()


def under_load(rollout: Rollout, *args: str) -> tuple[subprocess.CompletedProcess[str], Load]:
    """The rollout, with a bounded load through the gateway for as long as it runs: 25
    requests a second (each engine answers in ~15 ms), so every drain, reboot and gateway
    reload of the rollout happens with requests in flight; unpaced, the load alone kept a
    core busy for the whole rollout."""
    load = Load(rollout.gateway, key=rollout.key, count=1_000_000, concurrency=4, seconds=900,
                rate=25).start()
    try:
        run = rollout.run(*args)
    finally:
        load.stop()
        load.wait()
    return run, load


def drained_batches(output: str) -> list[list[str]]:
    return [names.split(",") for names in re.findall(r"--data drain=(\S+)", output)]


def test_a_pin_change_rolls_through_in_batches_without_a_failed_request(
        rollout: Rollout) -> None:
    sh.set_pins(rollout.tree, *NEW)
    boots = {host: boot_id(host) for host in GPUS}
    run, load = under_load(rollout)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    print(f"rolling pin change: {len(load.results)} requests through the gateway, "
          f"{len(load.failures)} failed")
    assert load.failures == [] and len(load.results) > 100
    assert drained_batches(run.stdout) == [GPUS[:2], GPUS[2:]]  # never more than half out
    assert f"==> the other hosts: {MONITOR}" in run.stdout  # then the monitoring host
    assert all(boot_id(host) != boots[host] for host in GPUS)  # each rebooted, in its batch
    for host in GPUS:
        assert f"{host}: r535-cuda121 (the fleet file's pins)" in run.stdout
        assert sh.dpkg_versions(host, ["cuda-toolkit-12-1"]) == {"cuda-toolkit-12-1": NEW[1]}
    gateway = ok(MONITOR, "cat /etc/nginx/conf.d/gpufleet-gateway.conf")
    assert all(routed(gateway, host) for host in GPUS)  # everyone back

    # The drift audit of the rolled fleet: one table and one JSON for all five hosts.
    audit = sh.deploy(rollout.tree, rollout.fleet, script="deploys/audit.py", timeout=300)
    assert audit.rc == 0, audit.output[-4000:]
    assert audit.output.count("--> Drift audit") == 1
    assert "no drift on 5 host(s)" in audit.output
    report = json.loads((rollout.fleet.parent / "fleet-state" / "sim" / "audit.json").read_text())
    assert sorted(report) == sorted([*GPUS, MONITOR]) and not any(report.values())


def test_a_failed_batch_stops_the_rollout_and_says_who_is_on_which_pins(
        rollout: Rollout) -> None:
    sh.set_pins(rollout.tree, *OLD)
    ok(GPUS[2], f"echo 'deb this-is-not-a-source' > {BROKEN}")
    run, load = under_load(rollout)
    assert run.returncode == 1
    assert load.failures == []
    assert f"batch 2 ({GPUS[2]}, {GPUS[3]}) failed" in run.stderr
    assert f"{GPUS[0]}: r535-cuda121 (the fleet file's pins)" in run.stdout
    assert f"{GPUS[2]}: r535-cuda121 (older pins)" in run.stdout
    gateway = ok(MONITOR, "cat /etc/nginx/conf.d/gpufleet-gateway.conf")
    assert not routed(gateway, GPUS[2])  # the failed batch stays out
    assert routed(gateway, GPUS[0])

    ok(GPUS[2], f"rm -f {BROKEN}")
    resumed = rollout.run("--behind-only")
    assert resumed.returncode == 0, resumed.stdout[-6000:] + resumed.stderr[-3000:]
    assert drained_batches(resumed.stdout) == [[GPUS[2]]] or \
        drained_batches(resumed.stdout) == [[GPUS[2], GPUS[3]]]
    assert all(f"{host}: r535-cuda121 (the fleet file's pins)" in resumed.stdout
               for host in GPUS)


def test_a_batch_holding_every_replica_is_refused_and_a_host_drained_by_hand_stays_drained(
        rollout: Rollout) -> None:
    """Issue 24, Done when: a batch holding every replica is refused before any change, and
    proceeds with --allow-outage; a host drained by hand stays drained through the rollout."""
    hand = GPUS[0]
    drained = sh.deploy(rollout.tree, rollout.fleet, "--limit", MONITOR, "--data",
                        f"drain={hand}", script="deploys/drain.py", timeout=300)
    assert drained.rc == 0, drained.output[-4000:]
    before = ok(MONITOR, "cat /etc/nginx/conf.d/gpufleet-gateway.conf")
    state = ok(MONITOR, "cat /var/lib/gpufleet/drained.json")
    assert not routed(before, hand) and json.loads(state)["by"] == {hand: "hand"}

    per_gpu = {"inference": {"replicas": 2}, "rollout": {"batch": "100%"}}
    whole = Rollout(rollout.tree, sh.write_fleet(
        rollout.fleet.parent, [*GPUS, MONITOR], inference=True, name="fleet-whole.toml",
        settings={**{name: per_gpu for name in GPUS}, MONITOR: {"gateway": {"bind": "0.0.0.0"}}}),
        rollout.gateway, rollout.key)
    refused = whole.run()
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert f"batch 1 ({', '.join(GPUS)}) holds every replica" in refused.stderr
    assert "--allow-outage" in refused.stderr
    assert "-->" not in refused.stdout  # no pyinfra run: nothing drained, locked or converged
    assert ok(MONITOR, "cat /etc/nginx/conf.d/gpufleet-gateway.conf") == before
    assert ok(MONITOR, "cat /var/lib/gpufleet/drained.json") == state

    run = whole.run("--allow-outage")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert drained_batches(run.stdout) == [GPUS]
    gateway = ok(MONITOR, "cat /etc/nginx/conf.d/gpufleet-gateway.conf")
    assert not routed(gateway, hand)  # drained by hand: still out
    assert all(routed(gateway, host) for host in GPUS[1:])
    assert json.loads(ok(MONITOR, "cat /var/lib/gpufleet/drained.json"))["by"] == {hand: "hand"}
    assert ok(MONITOR, "ls /var/lib/gpufleet/run.lock 2>/dev/null || echo free").strip() == \
        "free"  # the rollout gave every lock back

    back = sh.deploy(rollout.tree, rollout.fleet, "--limit", MONITOR, "--data",
                     f"restore={hand}", script="deploys/drain.py", timeout=300)
    assert back.rc == 0, back.output[-4000:]
    assert routed(ok(MONITOR, "cat /etc/nginx/conf.d/gpufleet-gateway.conf"), hand)
