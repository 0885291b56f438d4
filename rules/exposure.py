"""What listens where on a host gpufleet sets up, who can reach it, and how to lock it down.

One list, read from the same settings and constants the renderers use (rules/serving.py,
rules/monitoring.py, rules/gateway.py, rules/multinode.py), serves the preflight warning and
the tests that keep docs/serving.md's "What listens where" table honest. gpufleet configures no
firewall and has no firewall setting: a service that listens beyond loopback is reachable by
whatever the network lets through, so preflight warns whenever one does without a key in front.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from inventory.fleet import HostSpec
from rules.findings import Finding
from rules.gateway import STATUS_PORT, behind_gateway
from rules.monitoring import (
    ALERTMANAGER_PORT,
    NGINX_EXPORTER_PORT,
    PROMETHEUS_PORT,
    fleet_replicas,
    is_monitor,
    is_monitored,
)
from rules.multinode import DEFAULT_PORT

EVERY_ADDRESS = "0.0.0.0"
# Ports Ray opens besides its GCS port (`ray start` defaults): the client server (head), the
# dashboard agent; the node and object managers, metrics and workers take ports Ray picks.
RAY_OTHER_PORTS = "10001 (client server, head), 52365 (dashboard agent), and ports Ray picks"
NGINX_DEFAULT_SITE_PORT = 80  # Debian's nginx package enables its default site


@dataclass(frozen=True)
class Listener:
    """One service's listening socket(s) on a host."""

    service: str
    address: str  # the bind address ("0.0.0.0": every address of the host)
    ports: str  # "8000", "8000-8007", "6379 + ports Ray picks"
    guard: str | None  # what a client must present ("the API key"); None: nothing
    lock_down: str  # the setting (or measure) that keeps it private

    @property
    def beyond_loopback(self) -> bool:
        return not ipaddress.ip_address(self.address).is_loopback

    @property
    def open(self) -> bool:
        """Reachable from other machines with nothing to present."""
        return self.beyond_loopback and self.guard is None

    def describe(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.service} on {host}:{self.ports}"


def _ports(first: int, count: int | None) -> str:
    if count is None:
        return f"{first} + N (one port per replica)"
    return str(first) if count == 1 else f"{first}-{first + count - 1}"


def _key_guard(spec: HostSpec) -> str | None:
    return "the API key (settings.inference.api_key_file)" \
        if spec.settings.inference.api_key_file else None


def gpu_host_listeners(spec: HostSpec, monitored: bool) -> list[Listener]:
    """The engine's API (each replica's port), the engines' inter-node ports of a replica
    across hosts, and, when a monitoring host scrapes this one, its exporters."""
    settings = spec.settings
    cfg = settings.inference
    found: list[Listener] = []
    replicas = fleet_replicas(spec)
    if cfg.enabled and replicas != 0:
        found.append(Listener(
            f"{cfg.engine} API", cfg.bind, _ports(cfg.port, replicas), _key_guard(spec),
            "settings.inference.bind = \"127.0.0.1\" (the default), or an api_key_file"))
    if cfg.enabled and settings.multinode.nodes > 1:
        port = settings.multinode.port or DEFAULT_PORT[cfg.engine]
        service, ports = (("Ray (vLLM across nodes)", f"{port} (GCS, head), {RAY_OTHER_PORTS}")
                          if cfg.engine == "vllm" else
                          ("torch.distributed (SGLang across nodes)",
                           f"{port} (rendezvous, head), and ports NCCL picks"))
        found.append(Listener(
            service, EVERY_ADDRESS, ports, None,
            "no setting: a firewall, or a network of the replica's nodes only "
            "(settings.multinode.interface)"))
    if monitored:
        mon = settings.monitoring
        lock = "settings.monitoring.bind = the host's address on a monitoring network, and a " \
               "firewall that lets only the monitoring host in"
        found.append(Listener("node_exporter", mon.bind, str(mon.node_exporter_port), None, lock))
        found.append(Listener("DCGM exporter", mon.bind, str(mon.dcgm_exporter_port), None,
                              lock))
    return found


def monitor_listeners(spec: HostSpec, fleet: list[HostSpec]) -> list[Listener]:
    """Prometheus, Alertmanager and, with the gateway, nginx and its exporter."""
    mon, gateway = spec.settings.monitoring, spec.settings.gateway
    lock = "settings.monitoring.listen = \"127.0.0.1\" (the default)"
    found = [Listener("Prometheus", mon.listen, str(PROMETHEUS_PORT), None, lock),
             Listener("Alertmanager", mon.listen, str(ALERTMANAGER_PORT), None, lock)]
    if gateway.enabled:
        behind = behind_gateway(spec, fleet)
        keyed = bool(behind) and all(_key_guard(s) for s in behind)
        found += [
            Listener("gateway (nginx)", gateway.bind, str(gateway.port),
                     "the engines' API key (passed through)" if keyed else None,
                     "settings.gateway.bind = \"127.0.0.1\" (the default), or an "
                     "api_key_file on every GPU host behind it"),
            Listener("nginx default site (Debian's package: a static page)", EVERY_ADDRESS,
                     str(NGINX_DEFAULT_SITE_PORT), "nothing behind it (a static page)",
                     "remove /etc/nginx/sites-enabled/default"),
            Listener("nginx status (stub_status)", "127.0.0.1", str(STATUS_PORT), None,
                     "fixed to loopback"),
            Listener("nginx exporter", "127.0.0.1", str(NGINX_EXPORTER_PORT), None,
                     "fixed to loopback"),
        ]
    return found


def listeners(spec: HostSpec, fleet: list[HostSpec]) -> list[Listener]:
    """Everything gpufleet makes this host listen on."""
    if is_monitor(spec):
        return monitor_listeners(spec, fleet)
    return gpu_host_listeners(spec, is_monitored(spec, fleet))


def exposure_findings(spec: HostSpec, fleet: list[HostSpec]) -> list[Finding]:
    """A warning naming every service reachable from other machines with no key to present.
    gpufleet has no firewall setting, so a listener beyond loopback without a key is one."""
    open_ = [item for item in listeners(spec, fleet) if item.open]
    if not open_:
        return []
    return [Finding(
        "warning", "listening-without-key",
        "reachable from other machines with no key to present (gpufleet sets up no firewall "
        "and has no firewall setting): " + "; ".join(item.describe() for item in open_),
        ", ".join(sorted({f"{item.address}" for item in open_})) + " (beyond loopback)",
        "loopback, an API key, or a firewall you keep in front of these ports",
        "; ".join(dict.fromkeys(f"{item.service}: {item.lock_down}" for item in open_))
        + " (docs/serving.md: What listens where)",
    )]
