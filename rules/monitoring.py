"""Monitoring of the fleet, as pure functions: what the monitoring host scrapes (from the fleet
file), Prometheus' configuration, the recording and alerting rules, Alertmanager's
configuration, and Grafana's provisioning with its dashboards.

Every engine replica, exporter and gateway is a scrape target labelled with host, group, model
and variant (stable/canary), so dashboards, alerts and the canary verdict compare like with
like. Nothing here touches a host: deploys/monitoring.py writes what these return, after
`promtool check config`, `promtool check rules` and `amtool check-config` accepted it, and the
unit tests run `promtool test rules` on every alert.

Why time to first token and not end-to-end latency for the "P99 above 500 ms" alert: vLLM
0.4's end-to-end histogram has its first bucket at 1 s, and histogram_quantile interpolates
from 0 inside the first bucket, so an engine answering everything in 100 ms reads a P99 of
about 0.99 s: the alert would always fire. Its TTFT histogram has buckets at 0.25, 0.5 and
0.75 s, which resolve the threshold; and a reasoning model's end-to-end time is minutes by
design, so TTFT is also the latency a user feels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from facts.host_state import SCRAPE_KEY_PATH
from inventory.fleet import MISSING, HostSpec, Problem
from inventory.schema import AlertSettings, MonitoringSettings
from rules.engine_metrics import METRICS_NEED_KEY, any_engine
from rules.serving import memory_fraction

MONITORING_DIR = "/etc/gpufleet/monitoring"
PROMETHEUS_CONFIG = f"{MONITORING_DIR}/prometheus.yml"
RULES_PATH = f"{MONITORING_DIR}/gpufleet-rules.yml"
ALERTMANAGER_CONFIG = f"{MONITORING_DIR}/alertmanager.yml"
GRAFANA_DIR = "/etc/gpufleet/grafana"
GRAFANA_DATASOURCE = f"{GRAFANA_DIR}/provisioning/datasources/gpufleet.yml"
GRAFANA_PROVIDER = f"{GRAFANA_DIR}/provisioning/dashboards/gpufleet.yml"
GRAFANA_DASHBOARDS = f"{GRAFANA_DIR}/dashboards"
# Debian's units read their command lines from these files (ARGS="...").
ARGS_FILES = {
    "prometheus": "/etc/default/prometheus",
    "prometheus-alertmanager": "/etc/default/prometheus-alertmanager",
    "prometheus-node-exporter": "/etc/default/prometheus-node-exporter",
    "prometheus-nginx-exporter": "/etc/default/prometheus-nginx-exporter",
}
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
NGINX_EXPORTER_PORT = 9113
# node_exporter's systemd collector watches these units (no backslash: the ARGS line passes
# through a shell and systemd, each of which would want it doubled).
WATCHED_UNITS = ("nvidia-fabricmanager", "nvidia-persistenced", "docker", "gpufleet-inference")
DATASOURCE_UID = "gpufleet-prometheus"


@dataclass(frozen=True)
class Target:
    """One scrape target: a job, host:port, and the labels that say what it is."""

    job: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    # The controller's file with the key the target asks for on /metrics (None: open).
    key_file: str | None = None


def is_monitor(spec: HostSpec) -> bool:
    return spec.settings.role == "monitor"


def is_monitored(spec: HostSpec, fleet: Sequence[HostSpec]) -> bool:
    """Whether a GPU host is scraped: its monitoring is on and the fleet has a monitoring
    host (it then runs the exporters and the replicas the fleet file says)."""
    return (not is_monitor(spec) and spec.settings.monitoring.enabled
            and any(is_monitor(s) for s in fleet))


def monitored(specs: list[HostSpec]) -> list[HostSpec]:
    """The GPU hosts a monitoring host scrapes."""
    return [s for s in specs if s.settings.role == "gpu" and s.settings.monitoring.enabled]


def served_name(spec: HostSpec) -> str:
    return spec.settings.inference.served_model_name or spec.model.id


def scrape_address(spec: HostSpec) -> str | None:
    """How the monitoring host reaches ``spec``: the setting, a real bind address, else the
    SSH target or the container name (None for @local: nothing else can reach it)."""
    cfg = spec.settings.monitoring
    if cfg.address:
        return cfg.address
    if not _unspecified(cfg.bind) and not _loopback(cfg.bind):
        return cfg.bind
    if spec.target.startswith("@docker/"):
        return spec.target.removeprefix("@docker/")
    return None if spec.target.startswith("@") else spec.target


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def _unspecified(address: str) -> bool:
    return address in ("0.0.0.0", "::")


def local_address(listen: str) -> str:
    """Where a service listening on ``listen`` is reached from its own host."""
    return "127.0.0.1" if _unspecified(listen) else listen


def prometheus_url(monitor: HostSpec) -> str:
    """Prometheus, as the monitoring host itself reaches it."""
    local = local_address(monitor.settings.monitoring.listen)
    return f"http://{host_port(local, PROMETHEUS_PORT)}"


def fleet_replicas(spec: HostSpec) -> int | None:
    """How many engine replicas the fleet file says this host runs (None: it does not say).

    The monitoring host scrapes every replica, so the count must be knowable from the file:
    `settings.inference.replicas`, or `gpus.count` with `tensor_parallel`. The GPU host's
    preflight checks that its own plan agrees (``replicas_mismatch``)."""
    settings = spec.settings
    if spec.replica is not None:
        return 1 if spec.replica.is_head else 0  # only the head of a replica across hosts serves
    if settings.inference.replicas is not None:
        return settings.inference.replicas
    if settings.gpus.count is not None and settings.tensor_parallel is not None:
        return settings.gpus.count // (settings.tensor_parallel * settings.pipeline_parallel)
    return None


def engine_targets(spec: HostSpec) -> list[Target]:
    address, replicas = scrape_address(spec), fleet_replicas(spec)
    if not spec.settings.inference.enabled or address is None or replicas is None:
        return []
    cfg = spec.settings.inference
    return [Target("engine", host_port(address, cfg.port + i),
                   {**_host_labels(spec), "replica": str(i), "variant": cfg.variant,
                    "engine": cfg.engine}, scrape_key_file(spec))
            for i in range(replicas)]


def scrape_key_file(spec: HostSpec) -> str | None:
    """The controller's key file a monitoring host scrapes ``spec``'s engines with: its API
    key where the engine guards /metrics with it (SGLang), else None."""
    cfg = spec.settings.inference
    if not METRICS_NEED_KEY[cfg.engine] or cfg.api_key_file is None:
        return None
    return str(spec.controller_path(cfg.api_key_file))


def scrape_key(monitor: HostSpec, specs: list[HostSpec]) -> str | None:
    """The controller's key file ``monitor``'s Prometheus needs (at SCRAPE_KEY_PATH), if any
    (monitoring_problems refuses a fleet whose guarded engines have different ones)."""
    files = sorted({t.key_file for t in fleet_targets(monitor, specs) if t.key_file})
    return files[0] if files else None


def exporter_targets(spec: HostSpec) -> list[Target]:
    """node_exporter always; the DCGM exporter only where the engine runs: it is a service of
    the engine's compose project (deploys/inference.py), which a host with the inference step
    switched off does not run (a target scraped there would only ever be down)."""
    address, cfg = scrape_address(spec), spec.settings.monitoring
    if address is None:
        return []
    node = Target("node", host_port(address, cfg.node_exporter_port), _host_labels(spec))
    if not spec.settings.inference.enabled:
        return [node]
    return [node, Target("dcgm", host_port(address, cfg.dcgm_exporter_port), _host_labels(spec))]


def _host_labels(spec: HostSpec) -> dict[str, str]:
    return {"host": spec.name, "group": spec.group, "model": served_name(spec)}


def host_port(address: str, port: int) -> str:
    """address:port, an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def fleet_targets(monitor: HostSpec, specs: list[HostSpec]) -> list[Target]:
    """Everything ``monitor`` scrapes: each GPU host's replicas and exporters, its own gateway
    exporter, Prometheus and Alertmanager."""
    targets: list[Target] = []
    for spec in monitored(specs):
        targets += engine_targets(spec) + exporter_targets(spec)
    own = {"host": monitor.name, "group": monitor.group}
    if monitor.settings.gateway.enabled:
        targets.append(Target("gateway", f"127.0.0.1:{NGINX_EXPORTER_PORT}", own))
    local = local_address(monitor.settings.monitoring.listen)
    targets.append(Target("prometheus", host_port(local, PROMETHEUS_PORT), own))
    targets.append(Target("alertmanager", host_port(local, ALERTMANAGER_PORT), own))
    return targets


def monitoring_problems(specs: list[HostSpec]) -> list[Problem]:
    """What stops a monitoring host from scraping the fleet, or its gateway from reaching the
    engines, knowable from the fleet file."""
    monitors = [s for s in specs if is_monitor(s)]
    if not monitors:
        return []
    problems: list[Problem] = []
    first = scrape_key(monitors[0], specs)  # once: it reads every host's targets
    for spec in [s for s in specs if s.settings.role == "gpu"]:
        cfg, inference = spec.settings.monitoring, spec.settings.inference
        if cfg.enabled and _loopback(cfg.bind):
            problems.append(Problem(
                spec.where, "settings.monitoring.bind", cfg.bind,
                f"the monitoring host {monitors[0].name} cannot scrape exporters bound to "
                "loopback: give this host's address on the monitoring network (or 0.0.0.0 "
                "behind a firewall), or set settings.monitoring.enabled = false"))
        if cfg.enabled and cfg.dcgm_registry is None and not cfg.image_archives:
            problems.append(Problem(
                spec.where, "settings.monitoring.dcgm_registry", MISSING,
                f"required in a monitored fleet: the DCGM exporter image "
                f"{spec.pins.monitoring.dcgm_exporter.image} is published on NVIDIA's NGC "
                "container registry, not on Docker's default registry, so its bare name cannot "
                "be pulled. Set it to the NGC registry's host name (NVIDIA's DCGM exporter "
                "documentation gives it) or to your mirror of it, give settings.monitoring."
                "image_archives, or set settings.monitoring.enabled = false"))
        if inference.enabled and _loopback(inference.bind):
            problems.append(Problem(
                spec.where, "settings.inference.bind", inference.bind,
                f"the gateway and Prometheus on {monitors[0].name} cannot reach an engine "
                "bound to loopback: give this host's address (or 0.0.0.0 behind a firewall)"))
        if scrape_address(spec) is None:
            problems.append(Problem(
                spec.where, "settings.monitoring.address", MISSING,
                f"required for target {spec.target}: how the monitoring host reaches it"))
        if inference.enabled and fleet_replicas(spec) is None:
            problems.append(Problem(
                spec.where, "settings.inference.replicas", MISSING,
                "the monitoring host scrapes each replica, so the fleet file must say how many "
                "this host runs: set settings.inference.replicas, or settings.gpus.count "
                "together with settings.tensor_parallel"))
        key_file = scrape_key_file(spec)
        if cfg.enabled and key_file and first and key_file != first:
            problems.append(Problem(
                spec.where, "settings.inference.api_key_file", key_file,
                f"{inference.engine} asks for its API key on /metrics too, and Prometheus on "
                f"{monitors[0].name} scrapes with one key ({first}): give the hosts whose "
                "engine guards its metrics the same api_key_file"))
        threshold = cfg.alerts.gpu_memory_percent
        # The most the engine takes at any tensor parallel size (SGLang's default: at tp 1).
        taken = memory_fraction(inference.engine, 1, spec.settings.gpu_memory_utilization)
        if cfg.enabled and taken * 100 >= threshold - 1:
            problems.append(Problem(
                spec.where, "settings.monitoring.alerts.gpu_memory_percent", threshold,
                f"the engine takes {taken:.0%} of each GPU by "
                "design, so this alert would always fire: set it above "
                f"{taken * 100 + 1:.0f}, or lower "
                "gpu_memory_utilization"))
    return problems


# --- Prometheus ------------------------------------------------------------------------------
def render_prometheus_config(monitor: HostSpec, specs: list[HostSpec]) -> str:
    cfg = monitor.settings.monitoring
    jobs: dict[str, list[Target]] = {}
    for target in fleet_targets(monitor, specs):
        jobs.setdefault(target.job, []).append(target)
    listen = local_address(cfg.listen)
    config = {
        "global": {"scrape_interval": cfg.scrape_interval,
                   "evaluation_interval": cfg.scrape_interval,
                   "external_labels": {"fleet_monitor": monitor.name}},
        "rule_files": [RULES_PATH],
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [host_port(listen, ALERTMANAGER_PORT)]}]}]},
        "scrape_configs": [
            scrape_config(job, keyed, targets)
            for job, targets in jobs.items()
            for keyed in (False, True)
            if any((t.key_file is not None) == keyed for t in targets)
        ],
    }
    return _yaml("Prometheus: scrape targets from the fleet file", config)


def scrape_config(job: str, keyed: bool, targets: list[Target]) -> dict[str, Any]:
    """One job's scrape configuration: its targets that ask for the key (``keyed``: under a
    job of their own, sending SCRAPE_KEY_PATH's key, their series still labelled job=JOB), or
    those that do not."""
    config: dict[str, Any] = {
        "job_name": f"{job}-with-key" if keyed else job, "metrics_path": "/metrics"}
    if keyed:
        config["authorization"] = {"type": "Bearer", "credentials_file": SCRAPE_KEY_PATH}
        config["relabel_configs"] = [{"target_label": "job", "replacement": job}]
    config["static_configs"] = [
        {"targets": [t.address], "labels": t.labels}
        for t in sorted(targets, key=lambda t: t.address) if (t.key_file is not None) == keyed]
    return config


def prometheus_args(monitor: HostSpec) -> str:
    cfg = monitor.settings.monitoring
    return _args_file([
        f"--config.file={PROMETHEUS_CONFIG}",
        f"--web.listen-address={host_port(cfg.listen, PROMETHEUS_PORT)}",
        "--storage.tsdb.path=/var/lib/prometheus/metrics2/",
        f"--storage.tsdb.retention.time={cfg.retention}",
    ])


def alertmanager_args(monitor: HostSpec) -> str:
    return _args_file([
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--web.listen-address={host_port(monitor.settings.monitoring.listen, ALERTMANAGER_PORT)}",
        "--storage.path=/var/lib/prometheus/alertmanager/",
        "--cluster.listen-address=",  # one Alertmanager: no gossip port open to the network
    ])


def node_exporter_args(cfg: MonitoringSettings) -> str:
    units = "|".join(WATCHED_UNITS)
    return _args_file([
        f"--web.listen-address={host_port(cfg.bind, cfg.node_exporter_port)}",
        "--collector.systemd",
        f"--collector.systemd.unit-include=({units})[.]service",
    ])


def nginx_exporter_args(status_port: int) -> str:
    return _args_file([
        f"-nginx.scrape-uri=http://127.0.0.1:{status_port}/stub_status",
        f"-web.listen-address=127.0.0.1:{NGINX_EXPORTER_PORT}",
    ])


def _args_file(args: list[str]) -> str:
    for arg in args:
        if any(c in arg for c in "\"\\$`'\n "):
            raise ValueError(f"not a safe command-line argument: {arg!r}")
    return ("# Managed by gpufleet (rules/monitoring.py): the service's command line.\n"
            f'ARGS="{" ".join(args)}"\n')


def _yaml(title: str, data: Any) -> str:
    return (f"# Managed by gpufleet: {title}. Edits are replaced on the next run;\n"
            "# change the fleet file instead.\n"
            + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100))


# --- rules -----------------------------------------------------------------------------------
# Recording rules: the figures dashboards, alerts and the canary verdict share.
TTFT_P99 = "gpufleet:ttft_seconds:p99_5m"
E2E_P99 = "gpufleet:e2e_seconds:p99_5m"
TOKENS_RATE = "gpufleet:generation_tokens:rate5m"
GPU_MEMORY = "gpufleet:gpu_memory_used:ratio"
_BY = "host, group, model, variant, replica"
RECORDING = {
    TTFT_P99: f"histogram_quantile(0.99, sum by (le, {_BY}) "
              f"{any_engine('ttft', '_bucket', window='5m')})",
    E2E_P99: f"histogram_quantile(0.99, sum by (le, {_BY}) "
             f"{any_engine('e2e', '_bucket', window='5m')})",
    TOKENS_RATE: f"sum by ({_BY}) {any_engine('generation_tokens', window='5m')}",
    GPU_MEMORY: "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
}


def alert_rules(alerts: AlertSettings) -> list[dict[str, Any]]:
    """Every alert, thresholds from the fleet file; each has a promtool test (tests/unit)."""
    def rule(name: str, expr: str, duration: str, severity: str, summary: str,
             description: str) -> dict[str, Any]:
        return {"alert": name, "expr": expr, "for": duration,
                "labels": {"severity": severity},
                "annotations": {"summary": summary, "description": description}}

    return [
        rule("GpufleetTimeToFirstTokenHigh",
             f"{TTFT_P99} > {alerts.ttft_p99_seconds}", alerts.ttft_for, "warning",
             "{{ $labels.host }} replica {{ $labels.replica }} ({{ $labels.variant }}): "
             "P99 time to first token {{ $value | humanizeDuration }}",
             f"P99 time to first token above {alerts.ttft_p99_seconds} s over 5 minutes. "
             "Measured on TTFT because vLLM 0.4's end-to-end histogram starts at 1 s and "
             "cannot resolve 500 ms. Look at requests waiting and KV-cache usage: a full "
             "cache queues requests."),
        rule("GpufleetEngineDown", 'up{job="engine"} == 0', alerts.engine_down_for, "critical",
             "{{ $labels.host }} replica {{ $labels.replica }} does not answer /metrics",
             "The engine replica cannot be scraped: `systemctl status gpufleet-inference` and "
             "`docker logs gpufleet-inference-engine-N` on the host."),
        rule("GpufleetExporterDown", 'up{job=~"node|dcgm|gateway"} == 0', "5m", "warning",
             "{{ $labels.job }} exporter on {{ $labels.host }} is down",
             "Without it the GPU, host or gateway figures of this host are blind."),
        rule("GpufleetGpuMemoryHigh", f"{GPU_MEMORY} * 100 > {alerts.gpu_memory_percent}",
             alerts.gpu_memory_for, "warning",
             "{{ $labels.host }} GPU {{ $labels.gpu }}: memory {{ $value | printf \"%.1f\" }} %",
             f"GPU memory above {alerts.gpu_memory_percent} %: something besides the engine "
             "(which takes gpu_memory_utilization by design) holds memory; `nvidia-smi` on "
             "the host lists the processes."),
        rule("GpufleetKvCacheFull",
             f"{any_engine('kv_cache_usage')} * 100 > {alerts.kv_cache_percent}",
             alerts.kv_cache_for, "warning",
             "{{ $labels.host }}: KV cache {{ $value | printf \"%.0f\" }} % used",
             f"KV-cache usage above {alerts.kv_cache_percent} % for {alerts.kv_cache_for}: "
             "requests will queue or be preempted. Add replicas or lower context_length."),
        rule("GpufleetRequestsWaiting",
             f"{any_engine('requests_waiting')} > {alerts.requests_waiting}",
             alerts.requests_waiting_for, "warning",
             "{{ $labels.host }}: {{ $value }} requests waiting",
             f"More than {alerts.requests_waiting} requests waiting: the fleet is short of "
             "capacity for this load."),
        rule("GpufleetXidError",
             "DCGM_FI_DEV_XID_ERRORS != 0 and changes(DCGM_FI_DEV_XID_ERRORS[10m]) > 0",
             "0s", "critical",
             "{{ $labels.host }} GPU {{ $labels.gpu }}: Xid {{ $value }}",
             "A new Xid error. 79: the GPU fell off the bus (power, PCIe); 48/63/64/94/95: "
             "ECC or row-remapping trouble; 13/31/43: usually the application. `dmesg | grep "
             "Xid` on the host; a reset or reboot may be needed."),
        rule("GpufleetNvidiaDaemonDown",
             'node_systemd_unit_state{name=~"nvidia-fabricmanager.service|'
             'nvidia-persistenced.service",state="active"} == 0', "2m", "critical",
             "{{ $labels.host }}: {{ $labels.name }} is not active",
             "Without Fabric Manager, NVSwitch GPUs cannot run CUDA work; without the "
             "persistence daemon, every CUDA start re-initialises the GPUs. `systemctl status` of "
             "the unit, and its journal, on the host."),
    ]


def render_rules(alerts: AlertSettings) -> str:
    groups = [
        {"name": "gpufleet-recording", "rules": [{"record": name, "expr": expr}
                                                 for name, expr in RECORDING.items()]},
        {"name": "gpufleet-alerts", "rules": alert_rules(alerts)},
    ]
    return _yaml("recording and alerting rules", {"groups": groups})


def render_alertmanager(alerts: AlertSettings) -> str:
    receiver: dict[str, Any] = {"name": "gpufleet"}
    if alerts.webhook_url is not None:
        receiver["webhook_configs"] = [{"url": str(alerts.webhook_url),
                                        "send_resolved": True}]
    config = {
        "route": {"receiver": "gpufleet", "group_by": ["alertname", "host"],
                  "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h"},
        "receivers": [receiver],
    }
    return _yaml("Alertmanager routing", config)


# --- Grafana ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Panel:
    title: str
    expr: str
    unit: str
    legend: str


OVERVIEW = (
    Panel("GPU utilisation", 'avg by (host, gpu) (DCGM_FI_DEV_GPU_UTIL)', "percent",
          "{{host}} GPU {{gpu}}"),
    Panel("GPU memory used", f"{GPU_MEMORY}", "percentunit", "{{host}} GPU {{gpu}}"),
    Panel("KV-cache usage", any_engine("kv_cache_usage"), "percentunit",
          "{{host}}/{{replica}} {{variant}}"),
    Panel("Requests running", any_engine("requests_running"), "short",
          "{{host}}/{{replica}} {{variant}}"),
    Panel("Requests waiting", any_engine("requests_waiting"), "short",
          "{{host}}/{{replica}} {{variant}}"),
    Panel("Generated tokens/s", TOKENS_RATE, "short", "{{host}}/{{replica}} {{variant}}"),
    Panel("Time to first token P99", TTFT_P99, "s", "{{host}}/{{replica}} {{variant}}"),
    Panel("End-to-end latency P99", E2E_P99, "s", "{{host}}/{{replica}} {{variant}}"),
    Panel("Targets up", "up", "short", "{{job}} {{host}} {{replica}}"),
)
GPUS = (
    Panel("GPU utilisation", "DCGM_FI_DEV_GPU_UTIL", "percent", "{{host}} GPU {{gpu}}"),
    Panel("Framebuffer used", "DCGM_FI_DEV_FB_USED", "decmbytes", "{{host}} GPU {{gpu}}"),
    Panel("GPU temperature", "DCGM_FI_DEV_GPU_TEMP", "celsius", "{{host}} GPU {{gpu}}"),
    Panel("Power", "DCGM_FI_DEV_POWER_USAGE", "watt", "{{host}} GPU {{gpu}}"),
    Panel("SM clock", "DCGM_FI_DEV_SM_CLOCK", "hertz", "{{host}} GPU {{gpu}}"),
    Panel("Last Xid error", "DCGM_FI_DEV_XID_ERRORS", "short", "{{host}} GPU {{gpu}}"),
)
DASHBOARDS = {"gpufleet-overview": ("gpufleet: fleet overview", OVERVIEW),
              "gpufleet-gpus": ("gpufleet: GPUs (DCGM)", GPUS)}


def render_dashboard(uid: str) -> str:
    """A dashboard for file provisioning: the datasource by uid, no ${DS_...} placeholders."""
    title, panels = DASHBOARDS[uid]
    datasource = {"type": "prometheus", "uid": DATASOURCE_UID}
    body = {
        "uid": uid, "title": title, "schemaVersion": 39, "version": 1, "editable": False,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "tags": ["gpufleet"],
        "templating": {"list": []},
        "panels": [
            {"id": i + 1, "type": "timeseries", "title": p.title, "datasource": datasource,
             "gridPos": {"x": (i % 2) * 12, "y": (i // 2) * 8, "w": 12, "h": 8},
             "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
             "targets": [{"refId": "A", "datasource": datasource, "expr": p.expr,
                          "legendFormat": p.legend}]}
            for i, p in enumerate(panels)
        ],
    }
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def render_grafana_datasource(monitor: HostSpec) -> str:
    return _yaml("Grafana datasource (point Grafana's paths.provisioning at "
                 f"{GRAFANA_DIR}/provisioning)", {
                     "apiVersion": 1,
                     "datasources": [{"name": "gpufleet Prometheus", "type": "prometheus",
                                      "uid": DATASOURCE_UID, "access": "proxy",
                                      "url": prometheus_url(monitor),
                                      "isDefault": True, "editable": False}]})


def render_grafana_provider() -> str:
    return _yaml("Grafana dashboards from files", {
        "apiVersion": 1,
        "providers": [{"name": "gpufleet", "type": "file", "folder": "gpufleet",
                       "disableDeletion": True, "allowUiUpdates": False,
                       "options": {"path": GRAFANA_DASHBOARDS}}]})
