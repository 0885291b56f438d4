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

from typing import Any

from pyinfra import host
from pyinfra.api import deploy

from facts.host_state import host_state
from inventory.fleet import HostSpec
from operations.apt_pins import packages_present
from operations.host_files import managed_file, validated_file
from operations.services import reloaded_after, restarted_after, service
from rules.gateway import (
    CANARY_STATE,
    DRAIN_STATE,
    GATEWAY_CONF,
    NGINX_CHECK,
    STATUS_PORT,
    Drainer,
    Phase,
    drain_report,
    parse_canary_state,
    parse_drained,
    render_gateway,
    routing,
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
)
from rules.network import download_env_file

MONITOR_PACKAGES = ("prometheus", "prometheus-alertmanager")
GATEWAY_PACKAGES = ("nginx", "prometheus-nginx-exporter")


def recorded_phase() -> Phase:
    """The canary phase the gateway host records (the canary actions write it)."""
    return parse_canary_state(host_state().content(CANARY_STATE))


def recorded_drain() -> dict[str, Drainer]:
    """The hosts out of the gateway, and who drained each (deploys/drain.py by hand, or
    tools/rollout.py's batch)."""
    return parse_drained(host_state().content(DRAIN_STATE))


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
            host.noop(drain_report(recorded))
    route = routing(spec, fleet, phase, drained)
    conf = validated_file(
        name=f"Ensure the gateway routes {route.weight} % to the canary (phase {route.phase}; "
             "checked by nginx -t)",
        path=GATEWAY_CONF, content=render_gateway(spec, route), check=NGINX_CHECK, **gate,
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
    env_file = download_env_file(spec.settings.network)
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
                     packages=list(packages), env_file=env_file, start_services=False,
                     lock_timeout=spec.settings.apt.lock_timeout_seconds)

    rules = validated_file(name="Ensure the recording and alerting rules (promtool check rules)",
                           path=RULES_PATH, content=render_rules(alerts),
                           check="promtool check rules {}")
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
        gateway(spec, fleet, recorded_phase())
    else:
        host.noop("settings.gateway.enabled = false: no gateway on this host")
