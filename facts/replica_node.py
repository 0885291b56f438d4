"""``ReplicaNodeJoined``: has this node joined the replica it lends its GPUs to?

On a node of a replica spanning hosts that is not the head (the head's own check is the chat
completion it serves, which it only does once every node joined). vLLM: Ray's node table
(`ray.nodes()`, read by a short driver inside the node's container with the image's own Ray)
lists this node's address alive; `ray status` would not do: it names nodes by id only.
SGLang: its rank runs (a rank that cannot reach the head exits, and Docker restarts it).
Waits, bounded, for the node to join. Read at execution only; changes nothing.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

from pyinfra.api import FactBase

from facts._shell import clip, quote

_VERDICT = "__gpufleet_node="
_NODES = "__gpufleet_ray_nodes="
# The fields of Ray's node table (`ray.nodes()`) the check reads: the same in Ray 2.9 to 2.40.
RAY_NODE_FIELDS = ("NodeID", "NodeManagerAddress", "Alive")


def alive_addresses(nodes: list[dict[str, object]]) -> list[str]:
    """The addresses Ray's node table has alive (a node started again leaves a dead entry
    under its old id beside the alive one). Run inside the container too, by RAY_NODES:
    builtins only."""
    return sorted({str(node["NodeManagerAddress"]) for node in nodes if node["Alive"] is True})


# A driver run with the image's own Ray (argv: the GCS address, this node's address): prints
# the node table as one JSON line; exits 0 when this node is alive in it, 3 when not. The GCS
# is tried first: ray.init retries an unreachable one for minutes.
RAY_NODES = "\n".join([
    "import json, logging, socket, sys",
    "host, _, port = sys.argv[1].rpartition(':')",
    "try:",
    "    socket.create_connection((host, int(port)), timeout=5).close()",
    "except OSError as exc:",
    "    sys.exit(f'Ray\\'s GCS at {sys.argv[1]} not reachable: {exc}')",
    "import ray",
    inspect.getsource(alive_addresses),
    "ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)",
    f"nodes = [{{k: n[k] for k in {RAY_NODE_FIELDS!r}}} for n in ray.nodes()]",
    f"print({_NODES!r} + json.dumps(nodes, sort_keys=True), flush=True)",
    "sys.exit(0 if sys.argv[2:] and sys.argv[2] in alive_addresses(nodes) else 3)",
])


def parse_ray_nodes(lines: list[str]) -> list[dict[str, object]]:
    """Ray's node table from RAY_NODES' output: the last table printed (other lines are Ray's
    own messages); empty when none was (no Ray reached)."""
    table: list[dict[str, object]] = []
    for line in lines:
        if not line.startswith(_NODES):
            continue
        try:
            loaded = json.loads(line[len(_NODES):])
        except json.JSONDecodeError:
            continue
        if isinstance(loaded, list) and all(
                isinstance(n, dict) and all(k in n for k in RAY_NODE_FIELDS) for n in loaded):
            table = loaded
    return table


def describe_ray_nodes(nodes: list[dict[str, object]]) -> list[str]:
    """One line per node of Ray's table: "alive|dead ADDRESS (node ID...)"."""
    return [f"{'alive' if n['Alive'] is True else 'dead'} {n['NodeManagerAddress']} "
            f"(node {str(n['NodeID'])[:12]})" for n in nodes]


@dataclass(frozen=True)
class ReplicaNodeResult:
    """+ joined: the node is part of the replica; + detail: what was seen (Ray's nodes as
    "alive|dead ADDRESS (node ID)" lines, or the container state); + log: the container's
    last lines when not joined."""

    joined: bool
    detail: str = ""
    log: str = ""


def replica_node_script(container: str, engine: str, rendezvous: str, address: str,
                        wait_seconds: int) -> str:
    c = quote(container)
    if engine == "vllm":
        # the time limit inside the container: a `docker exec` killed leaves its process running
        probe = (f"seen=$(docker exec {c} timeout 60 python3 -c {quote(RAY_NODES)} "
                 f"{quote(rendezvous)} {quote(address)} 2>&1)")
    else:
        probe = (f"seen=$(docker inspect -f '{{{{.State.Status}}}} restarts="
                 f"{{{{.RestartCount}}}}' {c} 2>&1); echo \"$seen\" | grep -q '^running'")
    return "\n".join([
        f"deadline=$(( $(date +%s) + {int(wait_seconds)} ))",
        f"while :; do if {probe}; then echo '{_VERDICT}joined'; break; fi",
        f"  if [ $(date +%s) -ge $deadline ]; then echo '{_VERDICT}missing'; break; fi",
        "  sleep 3; done",
        "echo \"$seen\" | tail -n 20",
        "echo '@log'",
        f"docker logs --tail 20 {c} 2>&1 | tail -n 20",
    ])


def parse_replica_node(lines: list[str]) -> ReplicaNodeResult:
    verdict, detail, log, in_log = None, [], [], False
    for line in lines:
        if line.startswith(_VERDICT):
            verdict = line[len(_VERDICT):].strip()
        elif line == "@log":
            in_log = True
        elif in_log:
            log.append(line)
        elif line.startswith(_NODES):
            detail.extend(describe_ray_nodes(parse_ray_nodes([line])))
        else:
            detail.append(line)
    return ReplicaNodeResult(joined=verdict == "joined", detail=clip("\n".join(detail)),
                             log=clip("\n".join(log)))


class ReplicaNodeJoined(FactBase[ReplicaNodeResult]):
    """Whether this node joined its replica, waiting up to ``wait_seconds``.

    .. code:: python

        ReplicaNodeResult(joined=True, detail="alive 10.0.0.2 (node 833d85038c39)", log="")
    """

    def command(self, container: str, engine: str, rendezvous: str, address: str,
                wait_seconds: int) -> str:
        return replica_node_script(container, engine, rendezvous, address, wait_seconds)

    def process(self, output: list[str]) -> ReplicaNodeResult:
        return parse_replica_node(output)
