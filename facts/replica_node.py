"""``ReplicaNodeJoined``: has this node joined the replica it lends its GPUs to?

On a node of a replica spanning hosts that is not the head (the head's own check is the chat
completion it serves, which it only does once every node joined). vLLM: Ray's node table
(`ray.nodes()`, read by a short driver inside the node's container with the image's own Ray)
lists this node's address alive; `ray status` would not do: it names nodes by id only.
SGLang: its rank runs (a rank that cannot reach the head exits, and Docker restarts it).
Waits, bounded, for the node to join. Read at execution only; changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import FactBase

from facts._shell import clip, quote

_VERDICT = "__gpufleet_node="
# One line per node Ray knows: "alive ADDRESS" or "dead ADDRESS" (argv[1]: the GCS address).
RAY_NODES = ("import logging, sys, ray; "
              "ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False); "
              "[print('alive' if n['Alive'] else 'dead', n['NodeManagerAddress']) "
              "for n in ray.nodes()]")


@dataclass(frozen=True)
class ReplicaNodeResult:
    """+ joined: the node is part of the replica; + detail: what was seen (Ray's nodes as
    "alive|dead ADDRESS" lines, or the container state); + log: the container's last lines
    when not joined."""

    joined: bool
    detail: str = ""
    log: str = ""


def replica_node_script(container: str, engine: str, rendezvous: str, address: str,
                        wait_seconds: int) -> str:
    c = quote(container)
    if engine == "vllm":
        probe = (f"seen=$(timeout 60 docker exec {c} python3 -c {quote(RAY_NODES)} "
                 f"{quote(rendezvous)} 2>&1); "
                 f"echo \"$seen\" | grep -qxF {quote('alive ' + address)}")
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
        else:
            detail.append(line)
    return ReplicaNodeResult(joined=verdict == "joined", detail=clip("\n".join(detail)),
                             log=clip("\n".join(log)))


class ReplicaNodeJoined(FactBase[ReplicaNodeResult]):
    """Whether this node joined its replica, waiting up to ``wait_seconds``.

    .. code:: python

        ReplicaNodeResult(joined=True, detail="... 10.0.0.2 ...", log="")
    """

    def command(self, container: str, engine: str, rendezvous: str, address: str,
                wait_seconds: int) -> str:
        return replica_node_script(container, engine, rendezvous, address, wait_seconds)

    def process(self, output: list[str]) -> ReplicaNodeResult:
        return parse_replica_node(output)
