"""A replica that spans hosts (settings.multinode), as pure decisions.

The parallel layout across the replica's GPUs, the checks on the fleet file (made before any
host is contacted), the checks on what each node's probe saw of the network between the nodes,
and what the nodes of one replica must agree on. The engines bring their own distributed
runtimes: vLLM runs on a Ray cluster (the head runs Ray's head and the API server, the others
join as Ray workers), SGLang runs the same command on every node with --nnodes/--node-rank.
Rendering is in rules/serving.py; nothing here touches a host.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from packaging.version import Version

from facts.node_network import NodeNetworkResult
from inventory.fleet import MISSING, HostSpec, Problem, ReplicaSpan
from rules.findings import Finding
from rules.sizing import tensor_parallel_sizes

# vLLM's OpenAI server runs pipeline parallelism from 0.5.1 (vllm-project/vllm#6054).
VLLM_ONLINE_PP = Version("0.5.1")
# Ray as vLLM's executor: --worker-use-ray until 0.4.x, --distributed-executor-backend ray
# from 0.5.0, the older flag deprecated then (vllm-project/vllm#5944).
VLLM_EXECUTOR_BACKEND_FLAG = Version("0.5.0")
# The rendezvous port each engine's documentation uses: Ray's GCS, SGLang's dist-init-addr.
DEFAULT_PORT = {"vllm": 6379, "sglang": 5000}
# Ray's other ports, fixed so that a firewall between the nodes can be written (Ray picks
# the node manager's, object manager's and agents' ports at random otherwise, and its
# workers anywhere in 10002-19999). The flags are those of `ray start` in the Ray the pinned
# vLLM image carries (vllm 0.7.3 pins ray[adag]==2.40.0; ray/scripts/scripts.py of that
# release defines every one below, and so does 2.9.0's, the floor `ray>=2.9` of vLLM 0.4.2
# and 0.6.6.post1; --port on the head only, refused on a worker: "should only be specified
# when starting head node"). The simulator runs them on the real Ray 2.20.0 (the default
# set's image; tests/sim/images/engine/ray.lock). No --ray-client-server-port: Ray refuses it
# unless ray[client] (grpcio) is installed ("Ray Client requires pip package `ray[client]`",
# ray/_private/parameter.py), and vLLM asks for Ray without that extra (0.4.2 and
# 0.6.6.post1: ray>=2.9; 0.7.3: ray[adag]), so nothing puts grpcio there; where ray[client]
# is installed, Ray starts its client server on the head at its default, 10001, which stays
# among the ports checked between nodes.
RAY_NODE_MANAGER_PORT = 6380
RAY_OBJECT_MANAGER_PORT = 6381
RAY_DASHBOARD_AGENT_GRPC_PORT = 6382
RAY_RUNTIME_ENV_AGENT_PORT = 6383
RAY_METRICS_EXPORT_PORT = 6384
RAY_DASHBOARD_AGENT_LISTEN_PORT = 52365  # Ray's default, made explicit
RAY_CLIENT_SERVER_PORT = 10001  # Ray's default (only with ray[client]: not rendered)
RAY_MIN_WORKER_PORT, RAY_MAX_WORKER_PORT = 10002, 10999  # one port per worker process
# The settings every node of one replica must share: they run one engine together.
AGREED = (
    "role", "pin_set", "model", "precision", "tensor_parallel", "pipeline_parallel",
    "context_length", "concurrency", "gpu_memory_utilization", "weights_path",
    "gpus.count", "gpus.model", "weights.source", "weights.revision",
    "weights.controller_path", "weights.hub_endpoint", "inference.enabled",
    "inference.engine", "inference.image", "inference.quantization",
    "inference.max_num_seqs", "inference.served_model_name", "multinode.nodes",
    "multinode.interface", "multinode.port", "multinode.join_timeout_seconds",
    "multinode.infiniband_hca",
)


@dataclass(frozen=True)
class Layout:
    """How one replica's GPUs are split: tensor parallel x pipeline parallel over nodes."""

    nodes: int
    per_node: int
    tp: int
    pp: int

    @property
    def total(self) -> int:
        return self.nodes * self.per_node


def engine_version(spec: HostSpec) -> Version | None:
    pinned = spec.pins.inference.engine(spec.settings.inference.engine)
    return Version(pinned.version) if pinned else None


def replica_layout(spec: HostSpec, per_node: int) -> Layout:
    """tensor_parallel set: as given. Unset: vLLM with online pipeline parallelism puts tensor
    parallel over each node's NVLink and pipeline parallel across the slower network between
    nodes (vLLM's distributed-serving guide); an older vLLM, and SGLang (whose DeepSeek-V3
    guide runs --tp 16 over 2 nodes), put tensor parallel over every GPU of the replica."""
    settings = spec.settings
    nodes = settings.multinode.nodes
    if settings.tensor_parallel is not None:
        return Layout(nodes, per_node, settings.tensor_parallel, settings.pipeline_parallel)
    version = engine_version(spec)
    if settings.inference.engine == "vllm" and version is not None and version >= VLLM_ONLINE_PP:
        return Layout(nodes, per_node, per_node, nodes)
    return Layout(nodes, per_node, per_node * nodes, 1)


def rendezvous_port(spec: HostSpec) -> int:
    return spec.settings.multinode.port or DEFAULT_PORT[spec.settings.inference.engine]


@dataclass(frozen=True)
class RayPorts:
    """Every port Ray opens on a node, fixed. ``between_nodes``: the ones the other nodes
    connect to (the rest are reached on the node itself, or by the monitoring host)."""

    gcs: int

    def head_only(self) -> dict[str, int]:
        return {"--port": self.gcs}

    def every_node(self) -> dict[str, int]:
        return {
            "--node-manager-port": RAY_NODE_MANAGER_PORT,
            "--object-manager-port": RAY_OBJECT_MANAGER_PORT,
            "--min-worker-port": RAY_MIN_WORKER_PORT,
            "--max-worker-port": RAY_MAX_WORKER_PORT,
            "--dashboard-agent-grpc-port": RAY_DASHBOARD_AGENT_GRPC_PORT,
            "--dashboard-agent-listen-port": RAY_DASHBOARD_AGENT_LISTEN_PORT,
            "--runtime-env-agent-port": RAY_RUNTIME_ENV_AGENT_PORT,
            "--metrics-export-port": RAY_METRICS_EXPORT_PORT,
        }

    def start_flags(self, head: bool) -> list[str]:
        """`ray start`'s port flags on the head or on another node."""
        ports = {**(self.head_only() if head else {}), **self.every_node()}
        return [f"{flag}={port}" for flag, port in ports.items()]

    def between_nodes(self, head: bool) -> dict[str, int]:
        """What the other nodes connect to on a node: name -> port. The worker range is
        checked at both ends (a firewall rule is one range)."""
        found = {"GCS": self.gcs, "Ray client server": RAY_CLIENT_SERVER_PORT} if head else {}
        return {**found, "node manager": RAY_NODE_MANAGER_PORT,
                "object manager": RAY_OBJECT_MANAGER_PORT,
                "lowest worker port": RAY_MIN_WORKER_PORT,
                "highest worker port": RAY_MAX_WORKER_PORT}

    def taken_besides_gcs(self, port: int) -> bool:
        """Whether a port is one of Ray's others (the worker range included)."""
        others = {RAY_CLIENT_SERVER_PORT, *self.every_node().values()}
        return port in others or RAY_MIN_WORKER_PORT <= port <= RAY_MAX_WORKER_PORT


def ray_ports(spec: HostSpec) -> RayPorts:
    return RayPorts(gcs=rendezvous_port(spec))


def nccl_socket_ifname(interface: str) -> str:
    """NCCL_SOCKET_IFNAME for exactly this interface: NCCL treats a bare name as a prefix
    (eth1 also matches eth10); a leading '=' makes it exact (NCCL's environment docs)."""
    return f"={interface}"


# --- the fleet file ---------------------------------------------------------------------------
def _value(spec: HostSpec, dotted: str) -> Any:
    value: Any = spec.settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def multinode_problems(hosts: Iterable[HostSpec]) -> list[Problem]:
    """Every problem of the replicas spanning hosts that the file alone shows."""
    problems: list[Problem] = []
    by_group: dict[str, list[HostSpec]] = {}
    for spec in hosts:
        by_group.setdefault(spec.group, []).append(spec)
    for group, members in by_group.items():
        counts = sorted({m.settings.multinode.nodes for m in members})
        if counts == [1]:
            continue
        where = f"group {group}"
        if len(counts) > 1:
            problems.append(Problem(
                where, "settings.multinode.nodes", counts,
                "the hosts of one group must agree on it (a group's hosts are taken, in the "
                "order listed, N at a time for each replica); set it for the group"))
            continue
        size = counts[0]
        if len(members) % size:
            problems.append(Problem(
                where, "settings.multinode.nodes", size,
                f"the group lists {len(members)} host(s); each replica takes {size} of them, "
                f"in the order listed, so the group needs a multiple of {size} hosts"))
            continue
        for spec in members:
            if spec.replica is not None:
                problems += _node_problems(spec, members)
    return problems


def _node_problems(spec: HostSpec, members: list[HostSpec]) -> list[Problem]:
    span = spec.replica
    assert span is not None
    settings, where = spec.settings, spec.where
    nodes = settings.multinode.nodes
    problems: list[Problem] = []
    head = next(m for m in members if m.name == span.head.name)
    if spec is not head and spec.name != head.name:
        for dotted in AGREED:
            mine, theirs = _value(spec, dotted), _value(head, dotted)
            if mine != theirs:
                problems.append(Problem(
                    where, f"settings.{dotted}", mine,
                    f"differs from the head {head.name}'s {theirs!r}: the nodes of "
                    f"{span.label} run one engine together and must agree"))
    if settings.multinode.interface is None:
        problems.append(Problem(
            where, "settings.multinode.interface", MISSING,
            f"required with settings.multinode.nodes = {nodes}: the private interface the "
            "nodes talk over (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME), e.g. eth1"))
    address = settings.multinode.address
    if address is None:
        problems.append(Problem(
            where, "settings.multinode.address", MISSING,
            f"required on every node of {span.label}: this host's IPv4 address on "
            f"settings.multinode.interface (in [groups.{span.group}.hosts.{spec.name}."
            "settings.multinode])"))
    else:
        same = [n.name for n in span.nodes if n.address == address and n.name != spec.name]
        if same:
            problems.append(Problem(
                where, "settings.multinode.address", address,
                f"also the address of {', '.join(same)}: each node needs its own"))
    if settings.role != "gpu" or not settings.inference.enabled:
        problems.append(Problem(
            where, "settings.multinode.nodes", nodes,
            "a replica across hosts serves a model: it needs role = 'gpu' and "
            "settings.inference.enabled = true"))
    if settings.inference.replicas not in (None, 1):
        problems.append(Problem(
            where, "settings.inference.replicas", settings.inference.replicas,
            f"a replica spans {nodes} hosts with settings.multinode.nodes = {nodes}: there is "
            "one replica per set of hosts; unset it (or 1)"))
    count = settings.gpus.count
    if count is None:
        problems.append(Problem(
            where, "settings.gpus.count", MISSING,
            f"required with settings.multinode.nodes = {nodes}: the GPUs of each node, which "
            "the layout of the replica across its nodes is made from"))
        return problems
    layout = replica_layout(spec, count)
    if layout.tp * layout.pp != layout.total:
        problems.append(Problem(
            where, "settings.tensor_parallel", settings.tensor_parallel,
            f"tensor_parallel x pipeline_parallel = {layout.tp} x {layout.pp} = "
            f"{layout.tp * layout.pp}, but the replica has {nodes} x {count} = {layout.total} "
            "GPUs: a replica across hosts uses all of them (or unset tensor_parallel for "
            "the engine's layout)"))
    elif settings.tensor_parallel is None and layout.tp not in tensor_parallel_sizes(spec.model):
        problems.append(Problem(
            where, "settings.multinode.nodes", nodes,
            f"the layout across {nodes} x {count} GPUs is tensor parallel {layout.tp}, which "
            f"{spec.model.id}'s {spec.model.attention_heads} attention heads do not divide "
            "evenly; set tensor_parallel and pipeline_parallel"))
    port = rendezvous_port(spec)
    if settings.inference.engine == "vllm" and ray_ports(spec).taken_besides_gcs(port):
        problems.append(Problem(
            where, "settings.multinode.port", port,
            "is one of the other ports gpufleet gives Ray (node manager, object manager, "
            "agents, client server, workers: rules/multinode.py); pick another, e.g. 6379"))
    if settings.inference.engine == "sglang" and layout.pp > 1:
        problems.append(Problem(
            where, "settings.pipeline_parallel", layout.pp,
            "gpufleet runs SGLang across nodes with tensor parallel over every GPU "
            "(--tp, --nnodes); set pipeline_parallel = 1"))
    return problems


@dataclass(frozen=True)
class SpanPlan:
    """What one node renders: its place in the replica and how the nodes meet."""

    rank: int
    nodes: tuple[tuple[str, str], ...]  # (fleet name, inter-node address), the head first
    interface: str
    port: int
    join_timeout: int
    infiniband_hca: str | None

    @property
    def is_head(self) -> bool:
        return self.rank == 0

    @property
    def head_address(self) -> str:
        return self.nodes[0][1]

    @property
    def address(self) -> str:
        return self.nodes[self.rank][1]

    @property
    def rendezvous(self) -> str:
        return f"{self.head_address}:{self.port}"


def span_plan(spec: HostSpec) -> SpanPlan | None:
    """None for a host that serves on its own (or whose file checks failed)."""
    span, cfg = spec.replica, spec.settings.multinode
    if span is None or cfg.interface is None or any(n.address is None for n in span.nodes):
        return None
    return SpanPlan(rank=span.rank, nodes=tuple((n.name, str(n.address)) for n in span.nodes),
                    interface=cfg.interface, port=rendezvous_port(spec),
                    join_timeout=cfg.join_timeout_seconds, infiniband_hca=cfg.infiniband_hca)


# --- what each node sees -------------------------------------------------------------------
@dataclass(frozen=True)
class NodeCheck:
    """What a node's probe is asked to read of the network (facts.node_network's spec): the
    other nodes of the replica (the head first), each with the ports this node's engine
    connects to there, by name."""

    interface: str
    peers: tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...]  # (name, address, ports)
    infiniband: bool

    def spec(self) -> str:
        return json.dumps({"interface": self.interface, "infiniband": self.infiniband,
                           "peers": [[address, [port for _, port in ports]]
                                     for _, address, ports in self.peers]}, sort_keys=True)


def peer_ports(spec: HostSpec, head: bool) -> tuple[tuple[str, int], ...]:
    """The ports the other nodes connect to on a node: every Ray port between nodes for
    vLLM; SGLang's rendezvous on its head only (torch.distributed's own ports are not fixed
    by any flag of the pinned release)."""
    if spec.settings.inference.engine == "vllm":
        return tuple(ray_ports(spec).between_nodes(head).items())
    return (("rendezvous", rendezvous_port(spec)),) if head else ()


def node_check(spec: HostSpec) -> NodeCheck | None:
    span, cfg = spec.replica, spec.settings.multinode
    if span is None or cfg.interface is None:
        return None
    peers = tuple((node.name, str(node.address), peer_ports(spec, node.name == span.head.name))
                  for node in span.nodes
                  if node.name != spec.name and node.address is not None)
    return NodeCheck(interface=cfg.interface, peers=tuple(p for p in peers if p[2]),
                     infiniband=cfg.infiniband_hca is not None)


def node_network_findings(spec: HostSpec, seen: NodeNetworkResult | None) -> list[Finding]:
    """The network between the nodes as this node sees it. Pure."""
    check, span = node_check(spec), spec.replica
    if check is None or span is None:
        return []
    if seen is None or seen.interface_exists is None:
        return [Finding("error", "multinode-network-unread",
                        "the inter-node network could not be read on this node", "no answer",
                        "ip (iproute2) on the host", "install iproute2, then run again")]
    iface, me = check.interface, span.me.address
    if not seen.interface_exists:
        return [Finding(
            "error", "multinode-interface-missing",
            f"the inter-node interface {iface} does not exist on {spec.name}",
            "interfaces: " + (", ".join(seen.interfaces) or "none read"), iface,
            "set settings.multinode.interface to the private interface the nodes share "
            "(`ip -br addr` on each node), or bring it up")]
    found: list[Finding] = []
    if me not in seen.addresses:
        found.append(Finding(
            "error", "multinode-address-missing",
            f"{iface} on {spec.name} does not have the address the fleet file gives it",
            f"{iface}: " + (", ".join(seen.addresses) or "no IPv4 address"), str(me),
            "correct settings.multinode.address for this host, or configure the address"))
    for name, address, ports in check.peers:
        role = "the head " if name == span.head.name else ""
        device = seen.routes.get(address)
        if device is not None and device != iface:
            found.append(Finding(
                "error", "multinode-route",
                f"traffic to {role}{name} ({address}) leaves {spec.name} through {device}, "
                f"not {iface}",
                f"ip route get {address}: dev {device}", f"dev {iface}",
                f"{name}'s address must be on the inter-node network: correct its "
                "settings.multinode.address, or the routes"))
        closed = [(what, port, seen.connects.get(f"{address}:{port}", "not read"))
                  for what, port in ports]
        closed = [c for c in closed if c[2] not in ("open", "refused")]
        if closed:
            found.append(Finding(
                "error", "multinode-head-unreachable" if role else "multinode-peer-unreachable",
                f"{spec.name} cannot reach {role}{name} ({address}) on "
                + ", ".join(f"{port} ({what})" for what, port, _ in closed),
                "TCP connect: " + ", ".join(f"{port} {verdict}" for _, port, verdict in closed),
                "connected, or refused (nothing listening yet)",
                "open these ports between the nodes (only between them: the engines' traffic "
                "is unauthenticated), or correct the address"))
    if check.infiniband and not seen.infiniband:
        found.append(Finding(
            "error", "multinode-no-infiniband",
            f"settings.multinode.infiniband_hca is set but {spec.name} has no /dev/infiniband",
            "no /dev/infiniband devices", "the InfiniBand devices (MLNX_OFED / rdma-core)",
            "install the InfiniBand drivers, or unset infiniband_hca to use sockets"))
    return found


def peer_findings(span: ReplicaSpan, refused: dict[str, list[Finding]],
                  unread: Iterable[str] = ()) -> list[Finding]:
    """The other nodes of the replica, as this node sees them: a node that cannot take part
    (its own network findings, ``refused``) or could not be read stops the whole replica,
    before anything changes on any of its nodes. Pure."""
    found: list[Finding] = []
    for name in unread:
        found.append(Finding(
            "error", "multinode-node-unread", f"node {name} of {span.label} could not be read",
            "its probe failed", "every node of the replica reachable",
            f"bring {name} back (or fix its connection), then run again"))
    for name, findings in refused.items():
        errors = [f for f in findings if f.severity == "error"]
        if errors:
            found.append(Finding(
                "error", "multinode-node-refused",
                f"node {name} of {span.label} cannot take part: the replica is refused",
                "; ".join(f"[{f.code}] {f.what}" for f in errors),
                "every node passes its own network checks",
                f"see {name}'s report; nothing changes on any node of the replica until then"))
    return found


def manifest_digest(manifest: dict[str, Any] | None) -> str | None:
    """What identifies a weights manifest (its model and files; not where it came from), for
    comparing the nodes' copies."""
    if manifest is None:
        return None
    identity = {k: manifest.get(k) for k in ("model", "files")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def weights_agreement_findings(span: ReplicaSpan, manifests: dict[str, str | None]
                               ) -> list[Finding]:
    """The weights found on the nodes (name -> manifest digest, None: none yet) must be the
    same: every node loads the full weights from the same path. Pure."""
    found: list[Finding] = []
    present = {name: digest for name, digest in manifests.items() if digest is not None}
    head = present.get(span.head.name)
    reference = head if head is not None else next(iter(present.values()), None)
    differing = sorted(name for name, digest in present.items() if digest != reference)
    if differing:
        found.append(Finding(
            "error", "multinode-weights-differ",
            f"the weights differ between the nodes of {span.label}",
            "manifest differs on " + ", ".join(differing),
            "the same weights manifest on every node",
            "make settings.weights the same on every node (the engines load the full weights "
            "on each node), or remove the wrong copy and run again"))
    return found
