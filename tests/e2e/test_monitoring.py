"""End-to-end: monitoring, the gateway and a 20 % canary, against live traffic.

Three simulated hosts of this module's own: a stable GPU host (H100 copy, 2 replicas), a
canary GPU host (A100 copy, 2 replicas with other engine flags) and a GPU-less monitoring host
running Debian's real Prometheus, Alertmanager and nginx. The engines and the DCGM exporter
are stand-ins (tests/sim/images) with knobs for latency and errors; everything else is real.

One story, in order: converge (every target up) -> a re-run changes nothing -> `canary start`
and a bounded load (2,000 requests at concurrency 8) lands 20 % +- 3 % on the canary ->
`promote` and then `rollback` under load drop no request -> a canary whose first token takes
800 ms fires the latency alert within its `for` window and `status` says roll back (and does
it, with auto_rollback) -> every dashboard query returns data -> a corrupt canary shard keeps
`canary start` from routing to it.
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from rules.monitoring import DASHBOARDS
from tests.e2e import stack_helpers as sh
from tests.e2e.hosts import ok
from tests.e2e.hosts import sh as run_on
from tests.e2e.load import Load

pytestmark = pytest.mark.sim

STABLE = sh.copy_name("mon", "gpufleet-sim-h100x8")
CANARY = sh.copy_name("mon", "gpufleet-sim-a100x2")
MONITOR = sh.copy_name("mon", "gpufleet-sim-monitor")
MODEL = "deepseek-r1-distill-qwen-7b"
ENGINES = ["gpufleet-inference-engine-0", "gpufleet-inference-engine-1"]
TTFT_FOR_SECONDS = 30


def write_fleet(tmp: Path, auto_rollback: bool = False) -> Path:
    return sh.write_fleet(tmp, [STABLE, CANARY, MONITOR], inference=True, settings={
        STABLE: {"inference": {"replicas": 2}},
        # the canary: the same served model, other engine flags
        CANARY: {"inference": {"replicas": 2, "variant": "canary", "max_num_seqs": 16}},
        MONITOR: {"monitoring": {"scrape_interval": "5s",
                                 "alerts": {"ttft_for": f"{TTFT_FOR_SECONDS}s"}},
                  "gateway": {"bind": "0.0.0.0"},
                  "canary": {"window": "1m", "min_requests": 20,
                             "auto_rollback": auto_rollback}},
    }, name="fleet-auto.toml" if auto_rollback else "fleet.toml")


@dataclass
class Stack:
    tree: Path
    fleet: Path
    auto_fleet: Path
    gateway: str  # host:port from the controller
    key: str | None  # the fleet's API key (generated: the engines listen beyond loopback)

    def canary(self, action: str, fleet: Path | None = None) -> sh.DeployRun:
        return sh.deploy(self.tree, fleet or self.fleet, "--data", f"action={action}",
                         script="deploys/canary.py", timeout=600)


@pytest.fixture(scope="module")
def stack(sim: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("monitoring")
    sh.start_hosts([STABLE, CANARY, MONITOR])
    tree = sh.product_copy(tmp / "tree")
    fleet, auto = write_fleet(tmp), write_fleet(tmp, auto_rollback=True)
    with sh.process_lists([STABLE, CANARY]) as seen:
        run = sh.deploy(tree, fleet, "-vvv")
    assert run.rc == 0, run.output[-6000:]
    # The engines listen beyond loopback: the fleet got a key, and the converge showed it
    # nowhere: not in pyinfra's -vvv output, not on the hosts' command lines.
    key = sh.api_key(fleet)
    assert key is not None and len(key) >= 32
    assert seen and key not in run.output and not any(key in line for line in seen)
    env_b64 = base64.b64encode(f"VLLM_API_KEY={key}\n".encode()).decode()
    assert env_b64 not in run.output and not any(env_b64 in line for line in seen)
    yield Stack(tree, fleet, auto, f"{address_of(MONITOR)}:8080", key)


def address_of(container: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "--format",
         "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container],
        capture_output=True, text=True, check=True).stdout.split()[0]


# --- helpers: Prometheus on the monitoring host, bounded load through the gateway -----------
def prometheus(path: str, **params: str) -> dict:
    query = " ".join(f"--data-urlencode {shlex.quote(f'{k}={v}')}" for k, v in params.items())
    out = ok(MONITOR, f"curl -sf -G {query} http://127.0.0.1:9090{path}")
    data: dict = json.loads(out)
    assert data["status"] == "success", data
    return data


def targets() -> list[dict]:
    return prometheus("/api/v1/targets")["data"]["activeTargets"]


def wait_for(what: str, condition, seconds: float, every: float = 2.0):
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f} s"
        time.sleep(every)


def set_knobs(host: str, knobs: dict) -> None:
    """Turn the stand-in engines' knobs on ``host`` (tests/sim/images/engine)."""
    write = f"echo {shlex.quote(json.dumps(knobs))} > /tmp/gpufleet-sim-knobs.json"
    for engine in ENGINES:
        ok(host, f"docker exec {engine} sh -c {shlex.quote(write)}")


def gateway_conf() -> str:
    return ok(MONITOR, "cat /etc/nginx/conf.d/gpufleet-gateway.conf")


def split(conf: str) -> list[str]:
    """The lines of the gateway's split_clients block."""
    lines = conf.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("split_clients "))
    return [line.strip() for line in lines[start + 1:lines.index("}", start)]]


# --- the story --------------------------------------------------------------------------------
def test_every_engine_exporter_and_gateway_is_scraped(stack: Stack) -> None:
    def all_up() -> list[dict] | None:
        found = targets()
        return found if len(found) == 11 and all(t["health"] == "up" for t in found) else None

    found = wait_for("every target up", all_up, 90)
    jobs = sorted(t["labels"]["job"] for t in found)
    assert jobs == ["alertmanager", "dcgm", "dcgm", "engine", "engine", "engine", "engine",
                    "gateway", "node", "node", "prometheus"]
    engines = {(t["labels"]["host"], t["labels"]["replica"], t["labels"]["variant"])
               for t in found if t["labels"]["job"] == "engine"}
    assert engines == {(STABLE, "0", "stable"), (STABLE, "1", "stable"),
                       (CANARY, "0", "canary"), (CANARY, "1", "canary")}
    # The real services, listening where the fleet file says
    for unit in ("prometheus", "prometheus-alertmanager", "nginx", "prometheus-nginx-exporter"):
        assert ok(MONITOR, f"systemctl is-active {unit}").strip() == "active"
    listening = ok(MONITOR, "ss -ltnH | awk '{print $4}'").split()
    assert "127.0.0.1:9090" in listening and "127.0.0.1:9093" in listening
    assert not any(a.endswith(":9094") for a in listening)  # no Alertmanager cluster port
    # DCGM metrics of the simulated GPUs, with their labels
    result = prometheus("/api/v1/query", query="DCGM_FI_DEV_FB_FREE")["data"]["result"]
    assert {(r["metric"]["host"], r["metric"]["gpu"]) for r in result} == {
        (STABLE, str(i)) for i in range(8)} | {(CANARY, "0"), (CANARY, "1")}


def test_a_rerun_changes_nothing_with_monitoring_and_gateway(stack: Stack) -> None:
    run = sh.deploy(stack.tree, stack.fleet)
    assert run.rc == 0, run.output[-4000:]
    assert run.changed_ops == [], run.output[-4000:]


def test_canary_start_sends_20_percent_to_the_canary(stack: Stack) -> None:
    assert split(gateway_conf()) == ["* stable;"]  # deployed, but no traffic before `start`
    run = stack.canary("start")
    assert run.rc == 0, run.output[-4000:]
    assert "Ensure every canary weights file matches its manifest" in run.output
    assert split(gateway_conf()) == ["20% canary;", "* stable;"]
    load = Load(stack.gateway, key=stack.key, count=2000, concurrency=8).start().wait()
    assert load.failures == []
    assert len(load.results) == 2000
    share = load.share("canary")
    print(f"canary share over 2,000 requests: {share:.1%}")
    assert 0.17 <= share <= 0.23
    # nginx's own log agrees: every request counted as canary went to a canary replica (nginx
    # logs the address it resolved the host name to)
    log = ok(MONITOR, "tail -n 2000 /var/log/nginx/gpufleet-gateway.log")
    entries = [json.loads(line) for line in log.splitlines()]
    canary_ip = address_of(CANARY) + ":"
    assert len(entries) == 2000
    assert all(e["upstream"].startswith(canary_ip) == (e["variant"] == "canary")
               for e in entries), entries[:3]


@pytest.mark.parametrize("action,then", [("promote", "canary"), ("rollback", "stable")])
def test_promote_and_rollback_under_load_drop_no_request(stack: Stack, action: str,
                                                          then: str) -> None:
    load = Load(stack.gateway, key=stack.key, count=100_000, concurrency=8, seconds=300).start()
    try:
        wait_for("load under way", lambda: len(load.results) >= 200, 60, every=0.2)
        run = stack.canary(action)
        assert run.rc == 0, run.output[-4000:]
        done = time.monotonic()
        wait_for("requests after the change", lambda: load.sent_after(done) >= 300, 120,
                 every=0.5)
    finally:
        load.stop()
        load.wait()
    print(f"{action} under load: {len(load.results)} requests, {len(load.failures)} failed")
    assert load.failures == []
    # every request sent once the reload was done went to the new side
    assert load.share(then, since=done) == 1.0


def test_a_slow_canary_fires_the_latency_alert_and_status_rolls_it_back(stack: Stack) -> None:
    run = stack.canary("start")
    assert run.rc == 0, run.output[-4000:]
    set_knobs(CANARY, {"ttft_seconds": 0.8})
    slowed = time.monotonic()
    load = Load(stack.gateway, key=stack.key, count=100000, concurrency=8, seconds=240).start()
    try:
        def firing() -> list[dict]:
            alerts = prometheus("/api/v1/alerts")["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "GpufleetTimeToFirstTokenHigh"
                    and a["state"] == "firing"]

        fired = wait_for("the latency alert", firing, 200)
        delay = time.monotonic() - slowed
        pending = max(datetime.fromisoformat(a["activeAt"].replace("Z", "+00:00")).timestamp()
                      for a in fired) - (time.time() - delay)
        print(f"latency alert pending {pending:.0f} s and firing {delay:.0f} s after the "
              f"canary slowed (for: {TTFT_FOR_SECONDS} s)")
        assert {a["labels"]["variant"] for a in fired} == {"canary"}
        assert {a["labels"]["host"] for a in fired} <= {CANARY}
        # the rate window must first fill with slow requests, then `for` must pass
        assert delay <= TTFT_FOR_SECONDS + 90
        status = stack.canary("status")
        assert status.rc == 0, status.output[-4000:]
        assert "canary verdict: ROLL BACK" in status.output
        assert "> the alert's 500 ms" in status.output
        assert split(gateway_conf()) == ["20% canary;", "* stable;"]  # status changes nothing
        auto = stack.canary("status", stack.auto_fleet)
        assert auto.rc == 0, auto.output[-4000:]
        conf = gateway_conf()
        assert "# Canary: rolled-back" in conf and split(conf) == ["* stable;"]
    finally:
        load.stop()
        load.wait()
        set_knobs(CANARY, {})
    assert load.failures == []


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    for uid, (_, panels) in DASHBOARDS.items():
        for panel in panels:
            result = prometheus("/api/v1/query", query=panel.expr)["data"]["result"]
            assert result, f"{uid}: {panel.title}: {panel.expr} returned no data"


def test_a_corrupt_canary_shard_keeps_the_canary_out_of_traffic(stack: Stack) -> None:
    shard = f"/srv/models/{MODEL}/model-00001-of-00002.safetensors"
    ok(CANARY, f"printf x >> {shard}")
    try:
        before = gateway_conf()
        run = stack.canary("start")
        assert run.rc != 0
        assert "do not match" in run.output or "model-00001-of-00002" in run.output, \
            run.output[-3000:]
        assert gateway_conf() == before  # still rolled back: no traffic to a bad canary
    finally:
        ok(CANARY, f"truncate -s -1 {shard}")
    assert run_on(CANARY, "true").returncode == 0
