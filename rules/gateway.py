"""The gateway in front of the fleet's replicas and the canary's routing, as pure functions.

nginx on the monitoring host sends each request to a stable or a canary replica of the same
served model name: `split_clients` on the random `$request_id` gives every request its own
draw, so the split holds for one client as for many. What share goes to the canary follows
the canary's phase, which the canary actions record on the gateway host:

    off          no canary traffic (no canary hosts yet, or `start` has not run)
    running      settings.canary.weight % to the canary        (canary start)
    promoted     everything to the canary                      (canary promote)
    rolled-back  nothing to the canary                         (canary rollback)

A change is: render, `nginx -t` on the candidate, atomic rename, graceful reload (old workers
finish the requests they hold), so no request in flight is dropped, and a candidate nginx
refuses never replaces the working file.

Intended and applied state are kept apart: a change (a canary action, a drain) records what it
intends as pending first (GATEWAY_PENDING), and the phase and the drained hosts as applied
(CANARY_STATE, DRAIN_STATE) only once nginx -t passed and nginx reloaded; then it clears the
pending record. Cut in between, the change stays pending: the routine deploy keeps routing by
the applied state, says what is pending, and applies it only when asked.

Upstream servers are IP addresses, resolved on the gateway host when the file is rendered
(facts.name_resolution): Debian 12's nginx 1.22 resolves an upstream's name once, when it
loads its configuration, and refuses to start on one it cannot resolve, so one GPU host
missing from DNS (or DNS down at boot) would take the gateway down for every replica. A
replica whose name does not resolve is left out of its pool and the deploy says so; a GPU
host's new address is picked up on the gateway host's next deploy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Literal

from facts.name_resolution import NameLookup
from inventory.fleet import HostSpec
from inventory.urls import host_problem
from rules.monitoring import engine_targets, host_port, served_name
from rules.render import render

GATEWAY_CONF = "/etc/nginx/conf.d/gpufleet-gateway.conf"
GATEWAY_LOG = "/var/log/nginx/gpufleet-gateway.log"
CANARY_STATE = "/var/lib/gpufleet/canary.json"
# A gateway change recorded before it is made: what it intends (cleared once applied).
GATEWAY_PENDING = "/var/lib/gpufleet/gateway-pending.json"
# `--data` key: the routine deploy applies a pending gateway change only when given it.
APPLY_PENDING_DATA = "gateway_pending"
# The hosts out of the gateway, and who took each out: by hand (deploys/drain.py), or a
# rollout while their batch converges. A batch puts back only what a batch drained.
DRAIN_STATE = "/var/lib/gpufleet/drained.json"
Drainer = Literal["hand", "rollout"]
HAND: Drainer = "hand"
ROLLOUT: Drainer = "rollout"
STATUS_PORT = 8099  # nginx stub_status, loopback only
Phase = Literal["off", "running", "promoted", "rolled-back"]
PHASES: tuple[Phase, ...] = ("off", "running", "promoted", "rolled-back")
# What each action does to the phase; `status` decides on its own (rules/canary.py).
ACTIONS: dict[str, Phase] = {"start": "running", "promote": "promoted",
                             "rollback": "rolled-back"}
# nginx checks a candidate on its own: the candidate wrapped in a minimal main file. (validated_file
# puts the candidate's path where {} is, so the wrapper spells its empty block "{ }".)
NGINX_CHECK = (
    "printf 'events { }\\nhttp {\\n include /etc/nginx/mime.types;\\n include %s;\\n}\\n' {}"
    " > \"$work/nginx-check.conf\" && nginx -t -q -e stderr -c \"$work/nginx-check.conf\""
)


@dataclass(frozen=True)
class Routing:
    """The gateway's upstreams and the share of requests the canary gets."""

    served_name: str
    stable: tuple[str, ...]  # host:port of every stable replica
    canary: tuple[str, ...]
    phase: Phase
    configured_weight: int = 20  # settings.canary.weight
    # host:port of a replica -> the GPU host (its name in the fleet file) that runs it
    hosts: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def weight(self) -> int:
        """Percent of requests to the canary in this phase."""
        return canary_share(self.phase, self.configured_weight)


def canary_share(phase: Phase, configured_weight: int) -> int:
    """Percent of requests the gateway sends to the canary in a phase (settings.canary.weight
    while it runs, all once promoted, none otherwise)."""
    return {"running": configured_weight, "promoted": 100}.get(phase, 0)


def replicas_of(spec: HostSpec) -> tuple[str, ...]:
    """host:port of each replica: the addresses the monitoring host scrapes them at."""
    return tuple(target.address for target in engine_targets(spec))


def routing(gateway: HostSpec, specs: list[HostSpec], phase: Phase,
            drained: frozenset[str] = frozenset()) -> Routing:
    """Every replica serving the gateway's model, by variant, but those of ``drained`` hosts
    (a rollout's batch). Hosts serving another name are not behind this gateway (one gateway
    routes one served model name)."""
    name = served_name(gateway)
    behind = [s for s in behind_gateway(gateway, specs) if s.name not in drained]
    pools: dict[str, tuple[str, ...]] = {"stable": (), "canary": ()}
    hosts: dict[str, str] = {}
    for spec in behind:
        replicas = replicas_of(spec)
        pools[spec.settings.inference.variant] += replicas
        hosts.update(dict.fromkeys(replicas, spec.name))
    if not pools["canary"]:
        phase = "off"
    return Routing(name, pools["stable"], pools["canary"], phase,
                   gateway.settings.canary.weight, hosts)


def behind_gateway(gateway: HostSpec, specs: list[HostSpec]) -> list[HostSpec]:
    """The GPU hosts serving the gateway's model name: those it routes to (one gateway routes
    one served model name)."""
    name = served_name(gateway)
    return [s for s in specs if s.settings.role == "gpu" and s.settings.inference.enabled
            and served_name(s) == name]


class GatewayConfigError(ValueError):
    """A value would not be a single token in nginx's configuration (the schema refuses it
    first: this is the renderer's own guard, so no value can add a directive)."""


# The served name appears in a comment and in a quoted string: what the schema allows for it.
_NGINX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


def nginx_server(address: str) -> str:
    """`host:port` (an IPv6 address in brackets) checked part by part: an IP address or DNS
    name and a port, nothing nginx would read as more than one token."""
    host, colon, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ok = ":" in host and host_problem(host) is None
    else:
        ok = ":" not in host and host_problem(host) is None
    if not (colon and ok and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise GatewayConfigError(f"not an nginx server address (host:port): {address!r}")
    return address


def _split_server(address: str) -> tuple[str, str]:
    """(host, port) of a checked `host:port` (an IPv6 address without its brackets)."""
    host, _, port = nginx_server(address).rpartition(":")
    return host.removeprefix("[").removesuffix("]"), port


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def lookup_names(route: Routing) -> tuple[str, ...]:
    """The host names the replicas are addressed by, for the gateway host to resolve
    (facts.name_resolution); an IP address needs no lookup."""
    hosts = (_split_server(address)[0] for address in route.stable + route.canary)
    return tuple(sorted({host for host in hosts if not _is_ip(host)}))


def preferred_address(lookup: NameLookup) -> str | None:
    """The address to route to: of the family getaddrinfo puts first (the one a client
    would connect by), the lowest, so a DNS server rotating its answers (round robin) does
    not rewrite the file on every deploy."""
    if lookup.status != "resolved" or not lookup.addresses:
        return None
    family = ip_address(lookup.addresses[0]).version
    return min((a for a in lookup.addresses if ip_address(a).version == family),
               key=ip_address)


@dataclass(frozen=True)
class Upstream:
    """One replica as nginx gets it: the address it connects to, and the replica as the fleet
    file names it (None when that is the address itself)."""

    server: str  # IP:port, an IPv6 address in brackets
    replica: str | None = None


@dataclass(frozen=True)
class Unresolved:
    """A replica left out of the gateway: its name does not resolve on the gateway host."""

    replica: str  # host:port
    host: str  # the GPU host running it (its name in the fleet file)
    variant: str
    reason: str


@dataclass(frozen=True)
class Upstreams:
    """The pools the gateway routes to, by address, and the canary's share of them."""

    phase: Phase
    stable: tuple[Upstream, ...]
    canary: tuple[Upstream, ...]
    left_out: tuple[Unresolved, ...]
    weight: int  # percent of requests to the canary

    @property
    def canary_unreachable(self) -> bool:
        """Canary replicas exist, but none resolves: the canary gets nothing."""
        return not self.canary and any(u.variant == "canary" for u in self.left_out)


def upstreams(route: Routing, lookups: Mapping[str, NameLookup]) -> Upstreams:
    """``route``'s replicas by the address their name resolves to on the gateway host
    (``lookups``: name -> its answer there; a name missing from it did not resolve)."""
    pools: dict[str, list[Upstream]] = {"stable": [], "canary": []}
    left_out: list[Unresolved] = []
    for variant, replicas in (("stable", route.stable), ("canary", route.canary)):
        for replica in replicas:
            name, port = _split_server(replica)
            if _is_ip(name):
                pools[variant].append(Upstream(replica))
                continue
            lookup = lookups.get(name, NameLookup("unknown", reason="no answer from getent"))
            address = preferred_address(lookup)
            if address is None:
                left_out.append(Unresolved(replica, route.hosts.get(replica, "?"), variant,
                                           lookup.reason or "no address"))
            else:
                pools[variant].append(Upstream(nginx_server(host_port(address, int(port))),
                                               replica))
    weight = route.weight
    if not pools["stable"]:
        weight = 100  # nothing else to route to (a promoted fleet whose stable hosts left)
    elif not pools["canary"]:
        # Canary replicas none of which resolves get nothing, whatever the phase: a share
        # sent to a pool nginx cannot reach would fail those requests.
        weight = 0
    return Upstreams(route.phase, tuple(pools["stable"]), tuple(pools["canary"]),
                     tuple(left_out), weight)


def unresolved_report(gateway: HostSpec, found: Upstreams) -> str:
    """What the deploy says when replicas were left out: which, why, and what to do."""
    lines = [f"the gateway on {gateway.name} leaves out {len(found.left_out)} replica(s) whose "
             f"host name does not resolve on {gateway.name} (nginx would refuse to start):"]
    lines += [f"  {u.replica} ({u.variant}) of GPU host {u.host}: {u.reason}"
              for u in found.left_out]
    if found.canary_unreachable:
        lines.append(f"  no canary replica resolves: the canary gets no request (phase "
                     f"{found.phase}, {found.weight} % to the canary)")
    lines.append(f"Fix the name in DNS (or /etc/hosts) on {gateway.name}, or give the GPU host "
                 "an IP address as its `target` (or settings.monitoring.address) in the fleet "
                 f"file; the next deploy of {gateway.name} routes to it again.")
    return "\n".join(lines)


def resolver_trouble(gateway: HostSpec, route: Routing, lookups: Mapping[str, NameLookup],
                     found: Upstreams) -> str | None:
    """Why the gateway's file must not change in this run, or None. A name with no answer
    (a timeout, a resolver error) says nothing about the host behind it; and a stable pool
    none of whose names resolves is a resolver in trouble far more often than every stable
    host gone, and rendering it would send every request to the canary (or none anywhere).
    The running nginx keeps the file it has: it holds addresses, it needs no resolver."""
    unanswered = sorted(name for name in lookup_names(route)
                        if lookups.get(name, NameLookup("unknown")).status == "unknown")
    problems = [f"no answer for {name}: {lookups[name].reason if name in lookups else 'none'}"
                for name in unanswered]
    if route.stable and not found.stable:
        problems.append(f"none of the {len(route.stable)} stable replicas' names resolves")
    if not problems:
        return None
    return (f"the gateway on {gateway.name} keeps its current routing file: its resolver did "
            "not give the replicas' addresses (" + "; ".join(problems) + "). Fix name "
            f"resolution on {gateway.name} (DNS, /etc/hosts), or give the GPU hosts IP "
            "addresses as their `target` in the fleet file, then run again.")


def render_gateway(gateway: HostSpec, route: Routing, found: Upstreams) -> str:
    """The gateway's nginx file, every upstream server by IP address (``found``: the route's
    replicas by the addresses their names resolve to on the gateway host, ``upstreams``)."""
    cfg = gateway.settings.gateway
    listen = nginx_server(host_port(cfg.bind, cfg.port))
    if not _NGINX_NAME.fullmatch(route.served_name):
        raise GatewayConfigError(f"not a served model name: {route.served_name!r}")
    pools = [(v, servers) for v, servers in (("stable", found.stable),
                                             ("canary", found.canary)) if servers]
    return render("gateway/gpufleet-gateway.conf.j2", served_name=route.served_name,
                  phase=route.phase, weight=found.weight, pools=pools, listen=listen,
                  left_out=found.left_out, read_timeout=cfg.read_timeout_seconds,
                  status_port=STATUS_PORT)


def render_canary_state(phase: Phase) -> str:
    return json.dumps({"phase": phase}, sort_keys=True) + "\n"


def parse_canary_state(text: str | None) -> Phase:
    """The phase recorded on the gateway host; "off" when none (or unreadable) is."""
    if not text:
        return "off"
    try:
        phase = json.loads(text).get("phase")
    except (ValueError, AttributeError):
        return "off"
    return phase if phase in PHASES else "off"


def render_drained(state: Mapping[str, Drainer]) -> str:
    """``hosts``: every drained host (what older readers read); ``by``: who drained each."""
    return json.dumps({"hosts": sorted(state), "by": dict(sorted(state.items()))}) + "\n"


def parse_drained(text: str | None) -> dict[str, Drainer]:
    """The hosts recorded as drained, with who drained each; none when nothing (or garbage)
    is recorded. A host with no (or an unknown) drainer counts as drained by hand: a rollout
    never puts it back (a file written before drainers were recorded, say)."""
    try:
        data = json.loads(text or "{}")
        hosts, by = data.get("hosts", []), data.get("by", {})
    except (ValueError, AttributeError):
        return {}
    if not isinstance(hosts, list):
        return {}
    by = by if isinstance(by, dict) else {}
    return {h: ROLLOUT if by.get(h) == ROLLOUT else HAND for h in hosts if isinstance(h, str)}


def drain_hosts(state: Mapping[str, Drainer], hosts: Iterable[str],
                by: Drainer) -> dict[str, Drainer]:
    """``state`` with ``hosts`` drained too (drains add up). A host drained by hand stays
    recorded as the hand's, whoever drains it again: a batch's restore leaves it out."""
    out = dict(state)
    for name in hosts:
        out[name] = HAND if HAND in (by, out.get(name)) else by
    return out


def restore_hosts(state: Mapping[str, Drainer], hosts: Iterable[str],
                  by: Drainer) -> dict[str, Drainer]:
    """``state`` with ``hosts`` back in rotation: by hand, any of them; by a rollout, only
    those a rollout drained (a host drained by hand stays drained)."""
    back = {name for name in hosts if by == HAND or state.get(name) == ROLLOUT}
    return {name: who for name, who in state.items() if name not in back}


def drain_report(state: Mapping[str, Drainer]) -> str:
    """One line: which hosts are out of the gateway, and who took each out."""
    if not state:
        return "no host is drained from the gateway"
    return "drained from the gateway: " + _who_drained(state)


def _who_drained(state: Mapping[str, Drainer]) -> str:
    return ", ".join(f"{name} ({'by hand' if who == HAND else 'by a rollout batch'})"
                     for name, who in sorted(state.items()))


@dataclass(frozen=True)
class GatewayState:
    """What the gateway routes by: the canary's phase and the drained hosts (with who
    drained each)."""

    phase: Phase
    drained: tuple[tuple[str, Drainer], ...] = ()

    @staticmethod
    def of(phase: Phase, drained: Mapping[str, Drainer]) -> GatewayState:
        return GatewayState(phase, tuple(sorted(drained.items())))

    @property
    def drained_hosts(self) -> dict[str, Drainer]:
        return dict(self.drained)


def render_pending(intended: GatewayState) -> str:
    """The pending change: the phase as CANARY_STATE writes it, the hosts as DRAIN_STATE."""
    hosts = intended.drained_hosts
    return json.dumps({"phase": intended.phase, "hosts": sorted(hosts),
                       "by": dict(sorted(hosts.items()))}, sort_keys=True) + "\n"


def parse_pending(text: str | None) -> GatewayState | None:
    """The pending change recorded on the gateway host; None when none (or garbage) is."""
    try:
        data = json.loads(text or "null")
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("phase") not in PHASES:
        return None
    return GatewayState.of(parse_canary_state(text), parse_drained(text))


def pending_report(pending: GatewayState, applied: GatewayState) -> str:
    """What an interrupted gateway change left: what it meant to do against what is applied,
    and how to finish it."""
    def hosts(state: GatewayState) -> str:
        return _who_drained(state.drained_hosts) or "none"
    differs = []
    if pending.phase != applied.phase:
        differs.append(f"canary phase {pending.phase} (applied: {applied.phase})")
    if pending.drained != applied.drained:
        differs.append(f"drained hosts {hosts(pending)} (applied: {hosts(applied)})")
    return ("a gateway change is pending, recorded but never applied (cut before nginx "
            "reloaded?): " + ("; ".join(differs) or "the applied routing, re-rendered")
            + ". The gateway keeps the applied routing. Apply it with --data "
            f"{APPLY_PENDING_DATA}=apply on the main deploy, or run the canary action or the "
            "drain again.")
