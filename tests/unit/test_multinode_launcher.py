"""The vLLM head's launcher (templates/inference/multinode-launch.py) against the simulator's
stand-in Ray, as processes on loopback (see tests/unit/test_standin_distributed.py): it becomes
the server only once every node joined, and names the node that never did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rules.multinode import RayPorts
from rules.render import TEMPLATES_DIR
from tests.unit.test_standin_distributed import (
    HEAD_IP,
    RAY,
    WORKER_IP,
    Cluster,
    free_port,
    wait_for,
)

LAUNCHER = TEMPLATES_DIR / "inference" / "multinode-launch.py"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    # `ray` on PATH, as in the serving image: the stand-in's CLI.
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "ray").write_text('#!/bin/sh\nexec python3 -m ray.scripts.scripts "$@"\n')
    (shim / "ray").chmod(0o755)
    c.env["PATH"] = f"{shim}:{c.env['PATH']}"
    try:
        yield c
    finally:
        c.close()


def launcher(port: int, timeout: int) -> list[str]:
    return [str(LAUNCHER), f"--address={HEAD_IP}", f"--port={port}", "--gpus=2",
            f"--timeout={timeout}", f"--node=gpu-a={HEAD_IP}", f"--node=gpu-b={WORKER_IP}",
            "--", "python3", "-c", "import os; print('SERVER STARTED', os.environ['RAY_ADDRESS'])"]


def test_the_server_starts_only_once_every_node_joined(cluster: Cluster) -> None:
    port = free_port(HEAD_IP)
    head = cluster.start("head", launcher(port, timeout=60))
    wait_for(lambda: "waiting for gpu-b" in head.output, 20, "the launcher waits")
    assert "SERVER STARTED" not in head.output
    assert f"waiting for gpu-b ({WORKER_IP}) to join the Ray cluster at {HEAD_IP}:{port} " \
           "(1 of 2 joined" in head.output
    cluster.worker(port)
    assert head.wait(30) == 0, head.output
    out = head.output
    assert out.index("all 2 nodes joined") < out.index(f"SERVER STARTED {HEAD_IP}:{port}")


def test_a_node_that_never_joins_is_named(cluster: Cluster) -> None:
    port = free_port(HEAD_IP)
    code, out = cluster.run("head", launcher(port, timeout=3), seconds=30)
    assert code == 1, out
    assert (f"node(s) gpu-b ({WORKER_IP}) did not join the Ray cluster at {HEAD_IP}:{port} "
            "within 3 s (settings.multinode.join_timeout_seconds)") in out
    assert "SERVER STARTED" not in out


def test_the_rendered_ray_ports_start_the_head_and_join_the_worker(cluster: Cluster) -> None:
    """The fixed ports as the compose file renders them (rules.multinode.RayPorts): the head
    through the launcher's --ray, the worker on `ray start`; a head-only flag on a worker is
    refused as real Ray refuses it."""
    port = free_port(HEAD_IP)
    ports = RayPorts(port)
    args = launcher(port, timeout=60)
    cut = args.index("--")
    head_flags = [f"--ray={f}" for f in ports.start_flags(head=True) if not f.startswith("--port=")]
    head = cluster.start("head", [*args[:cut], *head_flags, *args[cut:]])
    wait_for(lambda: "waiting for gpu-b" in head.output, 20, "the launcher waits")
    code, out = cluster.run("worker", [*RAY, "start", f"--address={HEAD_IP}:{port}",
                                       f"--node-ip-address={WORKER_IP}", "--block",
                                       *ports.start_flags(head=True)], seconds=10)
    assert code == 1 and "--port should only be specified when starting head node" in out
    worker = cluster.start("worker", [*RAY, "start", f"--address={HEAD_IP}:{port}",
                                      f"--node-ip-address={WORKER_IP}", "--block",
                                      *ports.start_flags(head=False)])
    assert head.wait(30) == 0, head.output + worker.output
    assert "SERVER STARTED" in head.output


def test_the_standin_ray_refuses_the_client_server_port_as_a_minimal_ray_does(
        cluster: Cluster) -> None:
    """vLLM's images carry Ray without ray[client]: real Ray refuses --ray-client-server-port
    there, so the stand-in does too (and gpufleet never renders it)."""
    import subprocess

    result = subprocess.run(["ray", "start", "--head", f"--node-ip-address={HEAD_IP}",
                             "--ray-client-server-port=10001"], env=cluster.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Ray Client requires pip package `ray[client]`" in result.stderr
