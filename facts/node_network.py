"""What one node of a replica spanning hosts sees of the network between them.

A section of the probe (facts.probe: no command of its own) on the hosts of
settings.multinode: the inter-node interface and its IPv4 addresses; for every other node of
the replica (its peers), the route to it and a TCP connect to each port the engine's runtime
opens there (refused is fine: nothing listens before the engines run; a timeout is a
firewall or a wrong address), the connects run at once so that a silent peer costs one
timeout, not one per port; /dev/infiniband when InfiniBand is configured. Read-only: a
connect sends no byte.
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
    + routes: peer address -> the device traffic to it leaves by (None: no route)
    + connects: "ADDRESS:PORT" -> the TCP connect's verdict: "open", "refused", "timeout",
      "unreachable", "error: ..." (only the peers' ports asked for)
    + infiniband: whether /dev/infiniband has devices (None: not asked)
    """

    interface_exists: bool | None
    addresses: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()
    routes: dict[str, str | None] = field(default_factory=dict)
    connects: dict[str, str] = field(default_factory=dict)
    infiniband: bool | None = None
    raw: dict[str, str] = field(default_factory=dict)


_CONNECT_LINE = "__gpufleet_connect="


def node_network_script(spec: str) -> str:
    """``spec``: JSON {"interface", "peers": [[address, [port, ...]], ...], "infiniband"}."""
    cfg = json.loads(spec)
    iface = quote(cfg["interface"])

    def part(name: str, body: str) -> str:
        return f"echo '{_PART}{name}'; {{ {body}; }} 2>&1; echo \"{_PART_RC}$?\""

    parts = [
        part("interfaces", "ls /sys/class/net"),
        part("link", f"ip -o link show dev {iface}"),
        part("addr", f"ip -o -4 addr show dev {iface}"),
    ]
    connects = []
    for address, ports in cfg.get("peers") or []:
        peer = quote(address)
        parts.append(part(f"route {address}", f"ip -o route get {peer}"))
        for port in ports:
            target = f"{address}:{int(port)}"
            # bash's /dev/tcp opens the connection and closes it: no byte is sent. Each
            # connect in the background, its verdict on one line (atomic: < PIPE_BUF).
            connects.append(
                f"( out=$(timeout {CONNECT_TIMEOUT_SECONDS} bash -c "
                f"'exec 3<>/dev/tcp/'{peer}'/{int(port)}' 2>&1); rc=$?; "
                f"echo \"{_CONNECT_LINE}{target} $rc $(echo \"$out\" | tail -n 1)\" ) &")
    if connects:
        parts.append(part("connects", " ".join(connects) + " wait"))
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


def _connects(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith(_CONNECT_LINE):
            continue
        target, _, rest = line[len(_CONNECT_LINE):].partition(" ")
        code, _, message = rest.partition(" ")
        try:
            rc: int | None = int(code)
        except ValueError:
            rc = None
        found[target] = _connect_verdict(message, rc)
    return found


def parse_node_network(text: str, exit_code: int | None) -> NodeNetworkResult:
    """Parse ``node_network_script``'s output. Never raises; an unread part stays None."""
    parts = _parts(text)
    raw = {name: body for name, (body, _) in parts.items()}
    interfaces = tuple(parts.get("interfaces", ("", None))[0].split())
    link = parts.get("link")
    exists = None if link is None else link[1] == 0
    addresses = tuple(_ADDRESS.findall(parts["addr"][0])) if "addr" in parts else ()
    routes: dict[str, str | None] = {}
    for name, (body, rc) in parts.items():
        if name.startswith("route "):
            match = _ROUTE_DEV.search(body) if rc == 0 else None
            routes[name[len("route "):]] = match.group(1) if match else None
    connects = _connects(parts["connects"][0]) if "connects" in parts else {}
    ib = parts.get("infiniband")
    infiniband = None if ib is None else (ib[1] == 0 and bool(ib[0].split()))
    return NodeNetworkResult(interface_exists=exists, addresses=addresses,
                             interfaces=interfaces, routes=routes, connects=connects,
                             infiniband=infiniband, raw=raw)
