#!/usr/bin/env python3
# Managed by gpufleet: overwritten on the next deploy (change the fleet file instead).
#
# The head of a vLLM replica spanning hosts, run inside the serving image: start Ray's head
# on the inter-node address, wait (bounded) until every node of the replica has joined, then
# become the API server. vLLM places its workers on the Ray cluster it finds (RAY_ADDRESS);
# started before the other nodes joined, it would fail for want of GPUs. A node that never
# joins is named, with where to look. Started again (by Docker's restart policy or the
# unit), it starts over: the worker nodes rejoin the new head by themselves.
#
#   multinode-launch.py --address=10.0.0.1 --port=6379 --gpus=8 --timeout=600 \
#       --ray=--node-manager-port=6380 ... \
#       --node=gpu-a=10.0.0.1 --node=gpu-b=10.0.0.2 -- python3 -m vllm.entrypoints... ARGS
#
# --ray: a further `ray start` flag for the head (its fixed ports), passed on as given.
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

REPORT_EVERY_SECONDS = 30


def say(message: str) -> None:
    print(f"gpufleet: {message}", flush=True)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        sys.exit("gpufleet: usage: multinode-launch.py OPTIONS -- SERVER COMMAND")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="multinode-launch.py")
    parser.add_argument("--address", required=True, help="this node's inter-node address")
    parser.add_argument("--port", type=int, required=True, help="Ray's GCS port")
    parser.add_argument("--gpus", type=int, required=True, help="this node's GPUs")
    parser.add_argument("--timeout", type=int, required=True, help="seconds to wait for nodes")
    parser.add_argument("--node", action="append", default=[], metavar="NAME=ADDRESS",
                        help="every node of the replica, the head first")
    parser.add_argument("--ray", action="append", default=[], metavar="--FLAG=VALUE",
                        help="a further `ray start` flag for the head")
    args = parser.parse_args(argv[:cut])
    server = argv[cut + 1:]
    if not server:
        sys.exit("gpufleet: no server command after --")
    return args, server


def joined(ray: Any) -> set[str]:
    """The addresses of the nodes Ray sees alive."""
    return {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}


def main(argv: list[str]) -> int:
    args, server = parse(argv)
    pairs = (item.split("=", 1) for item in args.node)
    nodes = {address: name for name, address in pairs}  # address -> name
    head = subprocess.run([
        "ray", "start", "--head", f"--node-ip-address={args.address}", f"--port={args.port}",
        f"--num-gpus={args.gpus}", "--include-dashboard=false", "--disable-usage-stats",
        *args.ray,
    ])
    if head.returncode != 0:
        say(f"Ray's head did not start on {args.address}:{args.port} (exit {head.returncode})")
        return head.returncode or 1
    address = f"{args.address}:{args.port}"
    import ray  # the image's Ray

    ray.init(address=address)
    started = time.monotonic()
    reported = 0.0
    while True:
        missing = [f"{nodes[a]} ({a})" for a in nodes if a not in joined(ray)]
        waited = time.monotonic() - started
        if not missing:
            say(f"all {len(nodes)} nodes joined the Ray cluster at {address} "
                f"after {waited:.0f} s; starting the server")
            break
        if waited >= args.timeout:
            say(f"node(s) {', '.join(missing)} did not join the Ray cluster at {address} "
                f"within {args.timeout} s (settings.multinode.join_timeout_seconds): check "
                "`journalctl -u gpufleet-inference` and `docker logs gpufleet-inference-ray-node` "
                f"there, and that they reach {address} over the inter-node interface")
            ray.shutdown()
            subprocess.run(["ray", "stop"], check=False)
            return 1
        if waited - reported >= REPORT_EVERY_SECONDS or reported == 0.0:
            reported = max(waited, 0.001)
            say(f"waiting for {', '.join(missing)} to join the Ray cluster at {address} "
                f"({len(nodes) - len(missing)} of {len(nodes)} joined, {waited:.0f} s of "
                f"{args.timeout} s)")
        time.sleep(2)
    ray.shutdown()
    os.environ["RAY_ADDRESS"] = address
    os.execvp(server[0], server)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
