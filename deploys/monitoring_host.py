"""The monitoring host: Prometheus, Alertmanager, Grafana's provisioning and the gateway.

Debian's own packages (prometheus, prometheus-alertmanager, nginx, prometheus-nginx-exporter),
each started with the command line gpufleet writes to /etc/default/ *before* the package is
installed, so no service ever listens with the package's defaults (all addresses). Every
configuration is generated from the fleet file (rules/monitoring.py, rules/gateway.py) and
checked by its own tool (promtool, amtool, nginx -t) before it replaces the working one; a
change reloads the service (graceful: nginx's old workers finish their requests). The
user's own /etc/prometheus/prometheus.yml is left alone: Prometheus is pointed at gpufleet's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from facts.host_state import SCRAPE_KEY_PATH
from facts.name_resolution import NameLookup, ResolvedNames
from inventory.fleet import HostSpec
from inventory.key_files import read_key_file
from operations.apt_pins import packages_present
from operations.checks import refuse_host
from operations.host_files import managed_file, validated_file
from operations.host_reading import host_state
from operations.services import reloaded_after, restarted_after, service
from rules.gateway import (
    APPLY_PENDING_DATA,
    CANARY_STATE,
    DRAIN_STATE,
    GATEWAY_CONF,
    GATEWAY_PENDING,
    NGINX_CHECK,
    STATUS_PORT,
    Drainer,
    GatewayState,
    Phase,
    Routing,
    drain_report,
    lookup_names,
    parse_canary_state,
    parse_drained,
    parse_pending,
    pending_report,
    render_canary_state,
    render_drained,
    render_gateway,
    render_pending,
    resolver_trouble,
    routing,
    unresolved_report,
    upstreams,
)
from rules.monitoring import (
    ALERTMANAGER_CONFIG,
    ARGS_FILES,
    DASHBOARDS,
    GRAFANA_DASHBOARDS,
    GRAFANA_DATASOURCE,
    GRAFANA_PROVIDER,
    PROMETHEUS_CONFIG,
    RULES_PATH,
    alertmanager_args,
    nginx_exporter_args,
    prometheus_args,
    render_alertmanager,
    render_dashboard,
    render_grafana_datasource,
    render_grafana_provider,
    render_prometheus_config,
    render_rules,
    scrape_key,
)
from rules.network import apt_context

logger = logging.getLogger("gpufleet")
MONITOR_PACKAGES = ("prometheus", "prometheus-alertmanager")
GATEWAY_PACKAGES = ("nginx", "prometheus-nginx-exporter")


def recorded_phase() -> Phase:
    """The canary phase the gateway host records (the canary actions write it)."""
    return parse_canary_state(host_state().content(CANARY_STATE))


def recorded_drain() -> dict[str, Drainer]:
    """The hosts out of the gateway, and who drained each (deploys/drain.py by hand, or
    tools/rollout.py's batch)."""
    return parse_drained(host_state().content(DRAIN_STATE))


def recorded_pending() -> GatewayState | None:
    """A gateway change recorded but never applied (cut before nginx reloaded), if any."""
    return parse_pending(host_state().content(GATEWAY_PENDING))


def applied_gateway() -> GatewayState:
    """The routing the gateway host records as applied."""
    return GatewayState.of(recorded_phase(), recorded_drain())


def warn_pending() -> GatewayState | None:
    """Say (preview and run) what a pending gateway change would do; return it."""
    pending = recorded_pending()
    if pending is not None:
        host.log_styled(pending_report(pending, applied_gateway()), fg="yellow",
                        log_func=logger.warning)
    return pending


def gateway_change(spec: HostSpec, fleet: list[HostSpec], phase: Phase,
                   drained: Mapping[str, Drainer], **gate: Any) -> None:
    """Route by ``phase`` without the ``drained`` hosts: recorded as pending first, as
    applied (CANARY_STATE, DRAIN_STATE) only after nginx -t passed and nginx reloaded, then
    the pending record cleared. Cut in between, the change stays pending; nothing unchanged
    is written (a re-run changes nothing)."""
    intended, applied = GatewayState.of(phase, drained), applied_gateway()
    pending = recorded_pending()
    record = None
    if intended != applied:
        record = managed_file(name="Record the gateway change as pending (applied once nginx "
                                   "reloaded)", path=GATEWAY_PENDING,
                              content=render_pending(intended), record=False, **gate)
    gateway(spec, fleet, phase, drained=frozenset(drained), **gate)
    if phase != applied.phase:
        # Routing state, not configuration: canary and drain actions change it between
        # converges, so no manifest records it (a converge that changed it would, the next
        # one would not, and the manifest would change on a run that changes nothing).
        managed_file(name=f"Record the canary phase as applied: {phase}", path=CANARY_STATE,
                     content=render_canary_state(phase), record=False, **gate)
    if intended.drained != applied.drained:
        managed_file(name="Record the drained hosts as applied: " + drain_report(drained),
                     path=DRAIN_STATE, content=render_drained(drained) if drained else None,
                     record=False, **gate)
    if record is not None or pending is not None:
        ready = gate.get("_if")
        server.shell(name="Clear the pending gateway change (applied)",
                     commands=[f"rm -f {GATEWAY_PENDING}"],
                     _if=lambda: (ready is None or ready()) and (
                         pending is not None or (record is not None and record.did_change())))


def resolved_names(route: Routing) -> dict[str, NameLookup]:
    """What the replicas' host names resolve to on this (the gateway) host: one read-only
    command, none when every replica is addressed by IP."""
    names = lookup_names(route)
    return host.get_fact(ResolvedNames, names=names) if names else {}


def gateway(spec: HostSpec, fleet: list[HostSpec], phase: Phase,
            drained: frozenset[str] | None = None, **gate: Any) -> None:
    """nginx in front of every replica serving the gateway's model, split by canary phase,
    without the drained hosts' (None: those recorded on the host).

    ``gate``: pyinfra global arguments (``_if``) for the routing change (the canary actions
    change it only when every canary host passed)."""
    if drained is None:
        recorded = recorded_drain()
        drained = frozenset(recorded)
        if recorded:  # every deploy says which hosts stay out of rotation, and who took them out
            host.log_styled(drain_report(recorded), log_func=logger.warning)
    route = routing(spec, fleet, phase, drained)
    lookups = resolved_names(route)
    found = upstreams(route, lookups)
    trouble = resolver_trouble(spec, route, lookups, found)
    if trouble:  # stops this host here: nothing of the gateway changes, the pending stays
        refuse_host(name="Refuse: the gateway keeps its routing (its replicas' names did not "
                         "resolve on this host)", message=trouble)
        return
    if found.left_out:  # the gateway runs without them: said on every deploy until fixed
        host.log_styled(unresolved_report(spec, found), fg="red", bold=True,
                        log_func=logger.warning)
    conf = validated_file(
        name=f"Ensure the gateway routes {found.weight} % to the canary (phase {route.phase}; "
             "checked by nginx -t)",
        path=GATEWAY_CONF, content=render_gateway(spec, route, found), check=NGINX_CHECK,
        **gate,
    )
    service(name="Ensure nginx runs", unit="nginx")
    reloaded_after("nginx", conf)
    args = managed_file(name="Ensure the nginx exporter reads the gateway's counters",
                        path=ARGS_FILES["prometheus-nginx-exporter"],
                        content=nginx_exporter_args(STATUS_PORT))
    service(name="Ensure the nginx exporter runs", unit="prometheus-nginx-exporter")
    restarted_after("prometheus-nginx-exporter", args)


@deploy("Monitoring host")
def monitoring_host(spec: HostSpec, fleet: list[HostSpec]) -> None:
    apt = apt_context(spec.settings)
    alerts = spec.settings.monitoring.alerts
    # Command lines first: the services start with them when their packages are installed.
    prom_args = managed_file(name="Ensure Prometheus' command line (gpufleet's configuration, "
                                  "listen address, retention)",
                             path=ARGS_FILES["prometheus"], content=prometheus_args(spec))
    am_args = managed_file(name="Ensure Alertmanager's command line (listen address, no "
                                "cluster port)",
                           path=ARGS_FILES["prometheus-alertmanager"],
                           content=alertmanager_args(spec))
    packages = MONITOR_PACKAGES + (GATEWAY_PACKAGES if spec.settings.gateway.enabled else ())
    packages_present(name="Ensure Prometheus, Alertmanager" + (" and nginx" if spec.settings
                                                               .gateway.enabled else "")
                     + " are installed (Debian packages)",
                     packages=list(packages), **apt.install, start_services=False)

    rules = validated_file(name="Ensure the recording and alerting rules (promtool check rules)",
                           path=RULES_PATH, content=render_rules(alerts),
                           check="promtool check rules {}")
    # SGLang asks for its API key on /metrics too: Prometheus reads it from this file.
    key_file = scrape_key(spec, fleet)
    managed_file(name="Ensure Prometheus has the API key the engines ask for on /metrics "
                      "(readable by prometheus only)" if key_file
                 else "Ensure no engine API key is left for Prometheus",
                 path=SCRAPE_KEY_PATH, mode="640", owner="root:prometheus", secret=True,
                 content=read_key_file(Path(key_file)) + "\n" if key_file else None)
    config = validated_file(name="Ensure Prometheus scrapes every replica, exporter and gateway "
                                 "(promtool check config)",
                            path=PROMETHEUS_CONFIG,
                            content=render_prometheus_config(spec, fleet),
                            check="promtool check config {}")
    am_config = validated_file(name="Ensure Alertmanager's routing (amtool check-config)",
                               path=ALERTMANAGER_CONFIG, content=render_alertmanager(alerts),
                               check="amtool check-config {}")
    for path, content, what in (
        (GRAFANA_DATASOURCE, render_grafana_datasource(spec), "datasource"),
        (GRAFANA_PROVIDER, render_grafana_provider(), "dashboard provider"),
        *((f"{GRAFANA_DASHBOARDS}/{uid}.json", render_dashboard(uid), f"dashboard {uid}")
          for uid in DASHBOARDS),
    ):
        managed_file(name=f"Ensure Grafana's {what} is provisioned from files", path=path,
                     content=content)

    for unit in ("prometheus", "prometheus-alertmanager"):
        service(name=f"Ensure {unit} runs", unit=unit)
    restarted_after("prometheus", prom_args)
    restarted_after("prometheus-alertmanager", am_args)
    reloaded_after("prometheus", rules, config)
    reloaded_after("prometheus-alertmanager", am_config)

    if spec.settings.gateway.enabled:
        # The applied routing; a pending change (an interrupted canary action or drain) is
        # said, and applied only when asked.
        pending, asked = warn_pending(), host.data.get(APPLY_PENDING_DATA)
        if asked not in (None, "apply"):
            refuse_host(name="Refuse: what to do with a pending gateway change?",
                        message=f"--data {APPLY_PENDING_DATA}={asked}: allowed: apply")
        elif pending is not None and asked == "apply":
            gateway_change(spec, fleet, pending.phase, pending.drained_hosts)
        else:
            gateway(spec, fleet, recorded_phase())
    else:
        host.noop("settings.gateway.enabled = false: no gateway on this host")
