"""End-to-end: one replica across two simulated hosts (settings.multinode), on the real Ray
(the engine image's, tests/sim/images/engine/ray.lock) with the stand-in vLLM on it: the head
starts Ray's head and waits for the other node to join over the network between the two
hosts, and serves only then; the stand-in vLLM places its workers on both Ray nodes (a Ray
task on each looks at the model folder there).

The two hosts are this module's own copies of the A100 host (2 GPUs each: tensor parallel 4
across them), joined by a private Docker network of their own (their eth1: the inter-node
interface, static addresses), besides the network they reach the repository on (eth0).

One story, in order: the worker's inter-node interface is named otherwise (ens9) ->
preflight refuses the replica on both hosts before anything changes -> with the name back,
both converge and the head serves a completion once both joined -> a second run changes
nothing -> the worker's unit stopped, the head stops serving and says which node it waits
for; started again, the worker rejoins and the head serves again.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facts.replica_node import RAY_NODES, parse_ray_nodes
from facts.replica_node import alive_addresses as alive_in
from tests.e2e import stack_helpers as sh
from tests.e2e.hosts import ok
from tests.e2e.hosts import sh as run_on
from tests.sim import simctl

pytestmark = pytest.mark.sim

HEAD = sh.copy_name("mnode0", "gpufleet-sim-a100x2")
WORKER = sh.copy_name("mnode1", "gpufleet-sim-a100x2")
# The inter-node network (the hosts' eth1). Docker numbers a container's interfaces by the
# names of its networks when it starts again (a simulated host's reboot): this name sorts
# after the simulator's own network (gpufleet-sim, eth0), so it stays eth1.
NETWORK = "gpufleet-sim-mnode"
SUBNET = "10.213.7.0/24"
ADDRESS = {HEAD: "10.213.7.11", WORKER: "10.213.7.12"}
MODEL = "deepseek-r1-distill-qwen-7b"
HEAD_CONTAINER = "gpufleet-inference-engine-0"
NODE_CONTAINER = "gpufleet-inference-ray-node"
GCS = f"{ADDRESS[HEAD]}:6379"
RAY_LOCK = simctl.SIM_DIR / "images" / "engine" / "ray.lock"


def locked_ray() -> str:
    """The Ray version the engine image installs (ray.lock)."""
    found = re.search(r"^ray==(\S+)", RAY_LOCK.read_text(), re.M)
    assert found, RAY_LOCK
    return found.group(1)


def ray_status() -> str:
    """Real `ray status`, run in the head's container."""
    return ok(HEAD, f"docker exec {HEAD_CONTAINER} ray status --address {GCS}")


def active_nodes(status: str) -> int:
    """The nodes `ray status` lists as active: one ` 1 node_<id>` line each (by id only)."""
    active = status.split("Active:", 1)[1].split("Pending:", 1)[0]
    return len(re.findall(r"^ 1 node_[0-9a-f]+$", active, re.M))


def alive_addresses() -> set[str]:
    """The addresses of the nodes Ray's node table has alive (the worker's join check's driver,
    run in the head's container)."""
    out = run_on(HEAD, f"docker exec {HEAD_CONTAINER} python3 -c {shlex.quote(RAY_NODES)} {GCS}")
    return set(alive_in(parse_ray_nodes(out.stdout.splitlines())))


def zombies(host: str, container: str) -> list[str]:
    """The processes in a container left to PID 1 that exited and were never reaped (state Z,
    parent 1): what a PID 1 that reaps nothing accumulates."""
    script = ("for f in /proc/[0-9]*/status; do awk '/^State:/ {s=$2} /^PPid:/ {p=$2} "
              "END {if (s == \"Z\" && p == 1) print FILENAME}' $f 2>/dev/null; done")
    return ok(host, f"docker exec {container} sh -c {shlex.quote(script)}").split()


def connect(host: str) -> None:
    subprocess.run(["docker", "network", "connect", "--ip", ADDRESS[host], NETWORK, host],
                   check=True, capture_output=True)


def rename_link(host: str, old: str, new: str) -> None:
    """As a NIC named otherwise on one node (ens5f0 here, ens5f1 there); the address stays.
    Taking the link down drops the routes Docker set on it (its default route may be one of
    them): they are put back, under the new name."""
    routes = ok(host, f"ip route show dev {old}").splitlines()
    ok(host, f"ip link set dev {old} down && ip link set dev {old} name {new} && "
             f"ip link set dev {new} up")
    for route in routes:
        ok(host, f"ip route replace {route.strip()} dev {new}")


def fleet(tmp: Path) -> Path:
    return sh.write_fleet(
        tmp, [HEAD, WORKER], inference=True,
        settings={h: {"multinode": {"address": ADDRESS[h]},
                      "inference": {"bind": "127.0.0.1"}} for h in (HEAD, WORKER)},
        extra_toml='[settings.multinode]\nnodes = 2\ninterface = "eth1"\n'
                   "join_timeout_seconds = 180\n")


def completion() -> dict[str, object]:
    body = json.dumps({"model": MODEL, "max_tokens": 5, "temperature": 0.6, "top_p": 0.95,
                       "messages": [{"role": "user", "content": "hi"}]})
    out = ok(HEAD, f"curl -fsS -H 'Content-Type: application/json' -d '{body}' "
                   "http://127.0.0.1:8000/v1/chat/completions")
    answer: dict[str, object] = json.loads(out)
    return answer


def serving() -> bool:
    return run_on(HEAD, "curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:8000/health"
                  ).returncode == 0


def wait_for(condition: str, seconds: float, check: object) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(2)
    pytest.fail(f"not {condition} within {seconds:.0f} s")


def head_log(since: int | None = None) -> str:
    """The head container's log, every run of it (or those since a time on the host)."""
    after = f"--since {since} " if since is not None else ""
    return run_on(HEAD, f"docker logs {after}{HEAD_CONTAINER} 2>&1").stdout


@pytest.fixture(scope="module")
def story(sim: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("mnode")
    # From the converged snapshot (two single-host A100s, another fleet's): what this story
    # proves starts where the GPU stack is in place, and is turned into one replica here.
    sh.start_converged([HEAD, WORKER])
    subprocess.run(["docker", "network", "rm", NETWORK], capture_output=True)
    subprocess.run(["docker", "network", "create", "--subnet", SUBNET, NETWORK], check=True,
                   capture_output=True)
    for host in (HEAD, WORKER):
        connect(host)
    # The weights are pushed from the controller to each node (the rehearsal fleet's
    # settings.weights): the same files at the same path on every node, as the engines need.
    yield tmp
    sh.remove_later([HEAD, WORKER], then=lambda: subprocess.run(  # (in use until then)
        ["docker", "network", "rm", NETWORK], capture_output=True))  # left as it was found


def test_a_worker_without_the_interface_refuses_the_replica_before_anything_changes(
        story: Path) -> None:
    rename_link(WORKER, "eth1", "ens9")
    try:
        before = {h: sh.snapshot(h) for h in (HEAD, WORKER)}
        run = sh.deploy(sh.REPO, fleet(story))
        assert run.rc != 0
        assert (f"[multinode-interface-missing] the inter-node interface eth1 does not exist "
                f"on {WORKER}") in run.output, run.output[-6000:]
        # every interface the worker has, named (a converged host has Docker's too: docker0,
        # a bridge, its containers' veths)
        shown = re.search(r"found:    interfaces: (.*)", run.output)
        assert shown, run.output[-6000:]
        names = shown.group(1).strip().split(", ")
        assert {"ens9", "eth0", "lo"} <= set(names) and "eth1" not in names, names
        assert names == ok(WORKER, "ls /sys/class/net").split()
        assert (f"[multinode-node-refused] node {WORKER} of replica 0 of group pcie"
                in run.output), run.output[-6000:]
        assert {h: sh.snapshot(h) for h in (HEAD, WORKER)} == before
    finally:
        rename_link(WORKER, "ens9", "eth1")


def test_both_converge_and_the_head_serves_once_both_joined(story: Path) -> None:
    started = time.monotonic()
    run = sh.deploy(sh.REPO, fleet(story))
    (story / "converge.log").write_text(run.output)  # the whole of it, for a failure
    assert run.rc == 0, f"{story / 'converge.log'}:\n{run.output[-8000:]}"
    print(f"\ntwo converged hosts (another fleet's) to a replica across them serving: {time.monotonic() - started:.1f} s")
    # the worker's own check ran (and passed: the run's exit status): Ray lists it alive
    assert f"Ensure this node joined the replica headed by {HEAD}" in run.output
    log = head_log()
    joined = log.index("all 2 nodes joined the Ray cluster at 10.213.7.11:6379")
    # the server (the stand-in's startup lines) comes after the join, never before
    assert "GPUs visible" not in log[:joined], log
    # the real Ray, at the locked version, in both containers
    for host, container in ((HEAD, HEAD_CONTAINER), (WORKER, NODE_CONTAINER)):
        assert ok(host, f"docker exec {container} ray --version").strip().endswith(
            f"version {locked_ray()}")
    # Ray's monitor refreshes what `ray status` reports every few seconds
    wait_for("ray status listing both nodes", 30, lambda: active_nodes(ray_status()) == 2)
    assert " 0.0/4.0 GPU" in ray_status()
    assert alive_addresses() == {ADDRESS[HEAD], ADDRESS[WORKER]}
    # the stand-in vLLM ran a Ray task on each node (the model folder there)
    assert (f"Ray placement: {ADDRESS[HEAD]} (2 GPUs), {ADDRESS[WORKER]} (2 GPUs)"
            in head_log()), head_log()[-4000:]
    # the engine is on the host's network, told which interface and address are inter-node
    env = ok(WORKER, f"docker inspect --format '{{{{json .Config.Env}}}}' {NODE_CONTAINER}")
    assert "NCCL_SOCKET_IFNAME==eth1" in env and f"VLLM_HOST_IP={ADDRESS[WORKER]}" in env
    assert completion()["usage"]["completion_tokens"] == 5  # type: ignore[index]
    # the API stays on the head's loopback
    assert run_on(WORKER, f"curl -fsS --max-time 5 http://{ADDRESS[HEAD]}:8000/health"
                  ).returncode != 0


def test_a_second_run_changes_nothing(story: Path) -> None:
    run = sh.deploy(sh.REPO, fleet(story))
    assert run.rc == 0 and run.changed_ops == [], run.output[-6000:]


def test_the_head_waits_for_a_stopped_worker_which_rejoins_when_started(story: Path) -> None:
    restarts = int(ok(HEAD, f"docker inspect -f '{{{{.RestartCount}}}}' {HEAD_CONTAINER}"))
    since = sh.host_clock(HEAD)
    ok(WORKER, "systemctl stop gpufleet-inference")
    # the head's server loses its worker node, exits, and Docker starts the head again: it
    # waits for the node, naming it
    waiting = f"waiting for {WORKER} ({ADDRESS[WORKER]}) to join"
    wait_for("waiting for the worker", 120,
             lambda: not serving() and waiting in head_log(since))
    ok(WORKER, "systemctl start gpufleet-inference")
    wait_for("serving again", 180, serving)
    assert int(ok(HEAD, f"docker inspect -f '{{{{.RestartCount}}}}' {HEAD_CONTAINER}")) > restarts
    assert "RayActorError: The actor died unexpectedly" in head_log(since)
    wait_for("ray status listing both nodes", 30, lambda: active_nodes(ray_status()) == 2)
    assert alive_addresses() == {ADDRESS[HEAD], ADDRESS[WORKER]}
    assert completion()["choices"]
    # Docker's init, PID 1 of both, reaped the Ray processes that exited meanwhile
    for host, container in ((HEAD, HEAD_CONTAINER), (WORKER, NODE_CONTAINER)):
        assert ok(host, f"docker inspect -f '{{{{.HostConfig.Init}}}}' {container}").strip() \
            == "true"
        assert zombies(host, container) == [], (host, container)
