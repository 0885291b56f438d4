"""What one node of a replica spanning hosts sees of the network between them.

A section of the probe (facts.probe: no command of its own) on the hosts of
settings.multinode: the inter-node interface and its IPv4 addresses; on a worker, the route to
the head and a TCP connect to the head's rendezvous port (refused is fine: nothing listens
there before the head runs; a timeout is a firewall or a wrong address); /dev/infiniband when
InfiniBand is configured. Read-only: the connect sends no byte.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from facts._shell import quote

_PART = "__gpufleet_part="
_PART_RC = "__gpufleet_part_rc="
CONNECT_TIMEOUT_SECONDS = 4


@dataclass(frozen=True)
class NodeNetworkResult:
    """What one node sees of the network between the nodes.

    + interface_exists: the configured interface exists (None when unread)
    + addresses: the IPv4 addresses on that interface
    + interfaces: every interface the host has
    + route_device: the device traffic to the head leaves by (None: not asked, or no route)
    + head: the TCP connect to the head's port: "open", "refused", "timeout", "unreachable",
      "error: ..." (None: not asked, on the head itself)
    + infiniband: whether /dev/infiniband has devices (None: not asked)
    """

    interface_exists: bool | None
    addresses: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()
    route_device: str | None = None
    head: str | None = None
    infiniband: bool | None = None
    raw: dict[str, str] = field(default_factory=dict)


def node_network_script(spec: str) -> str:
    """``spec``: JSON {"interface", "head" (None on the head), "port", "infiniband"}."""
    cfg = json.loads(spec)
    iface = quote(cfg["interface"])

    def part(name: str, body: str) -> str:
        return f"echo '{_PART}{name}'; {{ {body}; }} 2>&1; echo \"{_PART_RC}$?\""

    parts = [
        part("interfaces", "ls /sys/class/net"),
        part("link", f"ip -o link show dev {iface}"),
        part("addr", f"ip -o -4 addr show dev {iface}"),
    ]
    if cfg.get("head"):
        head, port = quote(cfg["head"]), int(cfg["port"])
        parts.append(part("route", f"ip -o route get {head}"))
        # bash's /dev/tcp opens the connection and closes it: no byte is sent.
        parts.append(part("connect", f"timeout {CONNECT_TIMEOUT_SECONDS} bash -c "
                                     f"'exec 3<>/dev/tcp/'{head}'/{port}'"))
    if cfg.get("infiniband"):
        parts.append(part("infiniband", "ls /dev/infiniband"))
    return "\n".join(parts)


def _parts(text: str) -> dict[str, tuple[str, int | None]]:
    found: dict[str, tuple[str, int | None]] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith(_PART):
            name, lines = line[len(_PART):].strip(), []
        elif line.startswith(_PART_RC) and name is not None:
            try:
                rc: int | None = int(line[len(_PART_RC):])
            except ValueError:
                rc = None
            found[name] = ("\n".join(lines), rc)
            name = None
        elif name is not None:
            lines.append(line)
    return found


_ADDRESS = re.compile(r"\binet (\d{1,3}(?:\.\d{1,3}){3})/\d+")
_ROUTE_DEV = re.compile(r"\bdev (\S+)")


def _connect_verdict(text: str, rc: int | None) -> str:
    if rc == 0:
        return "open"
    if rc == 124:
        return "timeout"
    lowered = text.lower()
    if "connection refused" in lowered:
        return "refused"
    if "no route to host" in lowered or "network is unreachable" in lowered:
        return "unreachable"
    return "error: " + (text.strip().splitlines() or [f"exit status {rc}"])[-1][:200]


def parse_node_network(text: str, exit_code: int | None) -> NodeNetworkResult:
    """Parse ``node_network_script``'s output. Never raises; an unread part stays None."""
    parts = _parts(text)
    raw = {name: body for name, (body, _) in parts.items()}
    interfaces = tuple(parts.get("interfaces", ("", None))[0].split())
    link = parts.get("link")
    exists = None if link is None else link[1] == 0
    addresses = tuple(_ADDRESS.findall(parts["addr"][0])) if "addr" in parts else ()
    route = parts.get("route")
    route_device = None
    if route is not None and route[1] == 0:
        match = _ROUTE_DEV.search(route[0])
        route_device = match.group(1) if match else None
    connect = parts.get("connect")
    head = _connect_verdict(*connect) if connect is not None else None
    ib = parts.get("infiniband")
    infiniband = None if ib is None else (ib[1] == 0 and bool(ib[0].split()))
    return NodeNetworkResult(interface_exists=exists, addresses=addresses,
                             interfaces=interfaces, route_device=route_device, head=head,
                             infiniband=infiniband, raw=raw)
