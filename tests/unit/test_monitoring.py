"""Monitoring configuration, checked by Prometheus' and Alertmanager's own tools.

`promtool test rules` drives every alert: it fires above its threshold once its `for` window
passed, and stays quiet below the threshold and with no traffic. promtool and amtool come
from Debian's packages (tools/ensure-validators.sh, run by `make unit` / `make test`).
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from facts.histogram import histogram_quantile
from facts.host_state import SCRAPE_KEY_PATH
from inventory.fleet import load_fleet
from inventory.schema import AlertSettings
from rules.canary_verdict import canary_queries
from rules.fleet_checks import fleet_problems
from rules.monitoring import (
    DASHBOARDS,
    DATASOURCE_UID,
    TTFT_P99,
    alert_rules,
    fleet_targets,
    is_monitor,
    node_exporter_args,
    render_alertmanager,
    render_dashboard,
    render_grafana_datasource,
    render_prometheus_config,
    render_rules,
    scrape_key,
)

TOOLS = Path(__file__).resolve().parents[2] / ".tools" / "bin"
PROMTOOL, AMTOOL = TOOLS / "promtool", TOOLS / "amtool"

FLEET = """
[settings]
model = "deepseek-r1-distill-qwen-7b"
weights_path = "/srv/models/m"
tensor_parallel = 1
[settings.inference]
bind = "0.0.0.0"
[settings.monitoring]
bind = "0.0.0.0"

[groups.hgx]
settings = { gpus = { count = 8, model = "H100 80GB HBM3" }, monitoring = { dcgm_registry = "mirror.example.internal" } }
[groups.hgx.hosts.gpu-01]
target = "10.0.0.11"

[groups.canary]
settings = { gpus = { count = 2, model = "A100-PCIE-40GB" }, inference = { variant = "canary" }, monitoring = { dcgm_registry = "mirror.example.internal" } }
[groups.canary.hosts.gpu-02]
target = "gpu-02.example.internal"

[groups.monitor]
settings = { role = "monitor" }
[groups.monitor.hosts.mon-01]
target = "10.0.0.5"
"""


def fleet(tmp_path: Path, text: str = FLEET) -> Any:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return load_fleet(path, checks=fleet_problems)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL.exists() and AMTOOL.exists(), "run tools/ensure-validators.sh (make unit)"
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


# --- the fleet file decides the targets -------------------------------------------------------
def test_targets_come_from_the_fleet_file_with_their_labels(tmp_path: Path) -> None:
    loaded = fleet(tmp_path)
    monitor = next(s for s in loaded.hosts if is_monitor(s))
    targets = fleet_targets(monitor, loaded.hosts)
    engines = [t for t in targets if t.job == "engine"]
    assert [t.address for t in engines] == [f"10.0.0.11:{8000 + i}" for i in range(8)] + [
        "gpu-02.example.internal:8000", "gpu-02.example.internal:8001"]
    assert engines[0].labels == {"host": "gpu-01", "group": "hgx",
                                 "model": "deepseek-r1-distill-qwen-7b", "replica": "0",
                                 "variant": "stable", "engine": "vllm"}
    assert {t.labels["variant"] for t in engines[8:]} == {"canary"}
    assert sorted(t.address for t in targets if t.job in ("node", "dcgm")) == [
        "10.0.0.11:9100", "10.0.0.11:9400", "gpu-02.example.internal:9100",
        "gpu-02.example.internal:9400"]
    assert {t.job for t in targets} == {"engine", "node", "dcgm", "gateway", "prometheus",
                                        "alertmanager"}


def test_a_host_that_serves_nothing_is_scraped_for_node_only(tmp_path: Path) -> None:
    """The DCGM exporter runs in the engine's compose project: a host with the inference
    step off has no engine and no DCGM exporter to scrape (a target only ever down)."""
    loaded = fleet(tmp_path, FLEET.replace('inference = { variant = "canary" }',
                                           "inference = { enabled = false }"))
    monitor = next(s for s in loaded.hosts if is_monitor(s))
    spare = [(t.job, t.address) for t in fleet_targets(monitor, loaded.hosts)
             if t.labels.get("host") == "gpu-02"]
    assert spare == [("node", "gpu-02.example.internal:9100")]


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    loaded = fleet(tmp_path)
    monitor = next(s for s in loaded.hosts if is_monitor(s))
    config = tmp_path / "prometheus.yml"
    config.write_text(render_prometheus_config(monitor, loaded.hosts))
    # --syntax-only: the rule file it names lives on the monitoring host (checked below alone)
    result = run(PROMTOOL, "check", "config", "--syntax-only", config)
    assert result.returncode == 0, result.stdout + result.stderr
    data = yaml.safe_load(config.read_text())
    assert data["global"]["scrape_interval"] == "15s"
    assert data["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:9093"]


SGLANG_CANARY = FLEET.replace('inference = { variant = "canary" }',
                             'inference = { variant = "canary", engine = "sglang" }')


def test_prometheus_sends_the_key_to_engines_that_guard_their_metrics(tmp_path: Path) -> None:
    """SGLang answers 401 on /metrics without its key (its key middleware guards every path
    but /health; vLLM's only /v1): its replicas are scraped with the key, still as job=engine."""
    loaded = fleet(tmp_path, SGLANG_CANARY)
    monitor = next(s for s in loaded.hosts if is_monitor(s))
    canary = next(s for s in loaded.hosts if s.name == "gpu-02")
    assert canary.settings.inference.api_key_file is not None  # generated: bound beyond loopback
    assert scrape_key(monitor, loaded.hosts) == str(
        canary.controller_path(canary.settings.inference.api_key_file))
    config = tmp_path / "prometheus.yml"
    config.write_text(render_prometheus_config(monitor, loaded.hosts))
    result = run(PROMTOOL, "check", "config", "--syntax-only", config)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert "authorization" not in jobs["engine"]  # vLLM's /metrics is open
    assert [t["targets"] for t in jobs["engine"]["static_configs"]] == [
        [f"10.0.0.11:{8000 + i}"] for i in range(8)]
    keyed = jobs["engine-with-key"]
    assert keyed["authorization"] == {"type": "Bearer", "credentials_file": SCRAPE_KEY_PATH}
    assert keyed["relabel_configs"] == [{"target_label": "job", "replacement": "engine"}]
    assert [t["targets"] for t in keyed["static_configs"]] == [
        ["gpu-02.example.internal:8000"], ["gpu-02.example.internal:8001"]]
    # an all-vLLM fleet: no key for Prometheus
    loaded = fleet(tmp_path)
    assert scrape_key(next(s for s in loaded.hosts if is_monitor(s)), loaded.hosts) is None


def test_guarded_engines_with_different_keys_are_refused(tmp_path: Path) -> None:
    from inventory.fleet import FleetError
    for name in ("a.key", "b.key"):
        (tmp_path / name).write_text(name[0] * 40 + "\n")
        (tmp_path / name).chmod(0o600)
    text = SGLANG_CANARY.replace('[settings.inference]\n', '[settings.inference]\n'
                                 'engine = "sglang"\napi_key_file = "a.key"\n').replace(
        'engine = "sglang" }', 'engine = "sglang", api_key_file = "b.key" }')
    with pytest.raises(FleetError) as err:
        fleet(tmp_path, text)
    lines = [line for line in err.value.lines if "api_key_file" in line]
    assert lines and "the same api_key_file" in lines[0], err.value.lines


def test_a_broken_config_is_refused_by_promtool(tmp_path: Path) -> None:
    """The validator the deploy relies on does refuse: a bad scrape interval."""
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: fifteen\n")
    assert run(PROMTOOL, "check", "config", "--syntax-only", config).returncode != 0


@pytest.mark.parametrize("text,field", [
    (FLEET.replace('[settings.monitoring]\nbind = "0.0.0.0"', ""), "settings.monitoring.bind"),
    (FLEET.replace('[settings.inference]\nbind = "0.0.0.0"', ""), "settings.inference.bind"),
    (FLEET.replace("tensor_parallel = 1\n", ""), "settings.inference.replicas"),
    (FLEET.replace('bind = "0.0.0.0"\n\n[groups.hgx]',
                   'bind = "0.0.0.0"\nalerts = { gpu_memory_percent = 90.0 }\n\n[groups.hgx]'),
     "settings.monitoring.alerts.gpu_memory_percent"),
])
def test_fleet_mistakes_that_blind_the_monitoring_host_are_refused(tmp_path: Path, text: str,
                                                                   field: str) -> None:
    from inventory.fleet import FleetError
    with pytest.raises(FleetError) as err:
        fleet(tmp_path, text)
    lines = [line for line in err.value.lines if field in line]
    assert lines, err.value.lines
    assert "host gpu-01 (group hgx)" in lines[0]


def test_a_fleet_without_monitoring_host_needs_none_of_it(tmp_path: Path) -> None:
    text = FLEET.split("[groups.monitor]")[0].replace('bind = "0.0.0.0"', 'bind = "127.0.0.1"')
    assert len(fleet(tmp_path, text.replace("tensor_parallel = 1\n", "")).hosts) == 2


def test_node_exporter_args_bind_and_watch_the_nvidia_daemons(tmp_path: Path) -> None:
    spec = fleet(tmp_path).hosts[0]
    text = node_exporter_args(spec.settings.monitoring)
    assert '--web.listen-address=0.0.0.0:9100' in text
    assert "(nvidia-fabricmanager|nvidia-persistenced|docker|gpufleet-inference)[.]service" in text


# --- rules: promtool check + promtool test on every alert -------------------------------------
def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(AlertSettings()))
    result = run(PROMTOOL, "check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout


LABELS = 'host="gpu-01",group="hgx",model="m",variant="canary",replica="0"'
RULE_LABELS = {"host": "gpu-01", "group": "hgx", "model": "m", "variant": "canary",
               "replica": "0"}


def ttft_series(bucket: str, engine: str = "vllm") -> list[dict[str, str]]:
    """TTFT histogram whose every observation (10 per minute) falls in ``bucket`` (or none
    at all: "none"), under ``engine``'s metric name (both have 0.25/0.5/0.75/1 buckets)."""
    series = []
    for le in ("0.25", "0.5", "0.75", "1", "+Inf"):
        grows = bucket != "none" and (le == "+Inf" or float(le) >= float(bucket))
        series.append({"series": f'{engine}:time_to_first_token_seconds_bucket'
                                 f'{{le="{le}",{LABELS},engine="{engine}"}}',
                       "values": "0+10x20" if grows else "0x20"})
    return series


DESCRIPTIONS = {r["alert"]: r["annotations"]["description"] for r in alert_rules(AlertSettings())}


def case(alert: str, series: list[dict[str, str]], at: str,
         fires: list[dict[str, str]] | None, summary: str = "") -> dict[str, Any]:
    """One promtool test: ``fires`` the labels of the alerts expected at ``at`` (None: quiet),
    with the summary as the operator reads it."""
    expected = [{"exp_labels": labels,
                 "exp_annotations": {"summary": summary, "description": DESCRIPTIONS[alert]}}
                for labels in fires or []]
    return {"interval": "1m", "input_series": series,
            "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}]}


def sev(level: str, **labels: str) -> dict[str, str]:
    return {"severity": level, **labels}


GPU = 'host="gpu-01",group="hgx",gpu="0",UUID="GPU-1",modelName="NVIDIA H100 80GB HBM3"'
GPU_LABELS = {"host": "gpu-01", "group": "hgx", "gpu": "0", "UUID": "GPU-1",
              "modelName": "NVIDIA H100 80GB HBM3"}
ENGINE = 'host="gpu-01",group="hgx",replica="0",job="engine",instance="10.0.0.11:8000"'
ENGINE_LABELS = {"host": "gpu-01", "group": "hgx", "replica": "0", "job": "engine",
                 "instance": "10.0.0.11:8000"}
# An engine replica's own series, with its target's labels (the engine it runs among them).
VLLM = 'host="gpu-01",model_name="m",job="engine",instance="10.0.0.11:8000",engine="vllm"'
VLLM_LABELS = {"host": "gpu-01", "model_name": "m", "job": "engine", "instance": "10.0.0.11:8000",
               "engine": "vllm"}
SGLANG = VLLM.replace('engine="vllm"', 'engine="sglang"')
SGLANG_LABELS = {**VLLM_LABELS, "engine": "sglang"}
FM = 'host="gpu-01",name="nvidia-fabricmanager.service",state="active",job="node"'
FM_LABELS = {"host": "gpu-01", "name": "nvidia-fabricmanager.service", "state": "active",
             "job": "node"}


def fb(used: int, free: int) -> list[dict[str, str]]:
    return [{"series": f"DCGM_FI_DEV_FB_USED{{{GPU}}}", "values": f"{used}x20"},
            {"series": f"DCGM_FI_DEV_FB_FREE{{{GPU}}}", "values": f"{free}x20"}]


# Per alert: (fires above the threshold, quiet below it, quiet with no traffic/signal).
CASES: dict[str, list[dict[str, Any]]] = {
    "GpufleetTimeToFirstTokenHigh": [
        case("GpufleetTimeToFirstTokenHigh", ttft_series("0.75"), "15m",
             [sev("warning", **RULE_LABELS)],
             "gpu-01 replica 0 (canary): P99 time to first token 747.5ms"),
        case("GpufleetTimeToFirstTokenHigh", ttft_series("0.75"), "2m", None),  # within `for`
        case("GpufleetTimeToFirstTokenHigh", ttft_series("0.25"), "15m", None),
        case("GpufleetTimeToFirstTokenHigh", ttft_series("none"), "15m", None),
        # SGLang's own histogram feeds the same rule (rules/engine_metrics.py).
        case("GpufleetTimeToFirstTokenHigh", ttft_series("0.75", "sglang"), "15m",
             [sev("warning", **RULE_LABELS)],
             "gpu-01 replica 0 (canary): P99 time to first token 747.5ms"),
        case("GpufleetTimeToFirstTokenHigh", ttft_series("0.25", "sglang"), "15m", None),
    ],
    "GpufleetEngineDown": [
        case("GpufleetEngineDown", [{"series": f"up{{{ENGINE}}}", "values": "0x10"}], "5m",
             [sev("critical", **ENGINE_LABELS)], "gpu-01 replica 0 does not answer /metrics"),
        case("GpufleetEngineDown", [{"series": f"up{{{ENGINE}}}", "values": "1x10"}], "5m", None),
    ],
    "GpufleetExporterDown": [
        case("GpufleetExporterDown",
             [{"series": 'up{job="dcgm",host="gpu-01",instance="10.0.0.11:9400"}',
               "values": "0x10"}], "8m",
             [sev("warning", job="dcgm", host="gpu-01", instance="10.0.0.11:9400")],
             "dcgm exporter on gpu-01 is down"),
        case("GpufleetExporterDown",
             [{"series": 'up{job="node",host="gpu-01",instance="10.0.0.11:9100"}',
               "values": "1x10"}], "8m", None),
    ],
    "GpufleetGpuMemoryHigh": [
        case("GpufleetGpuMemoryHigh", fb(79000, 1000), "10m", [sev("warning", **GPU_LABELS)],
             "gpu-01 GPU 0: memory 98.8 %"),
        case("GpufleetGpuMemoryHigh", fb(72000, 8000), "10m", None),  # the engine's 90 %
        case("GpufleetGpuMemoryHigh", fb(0, 80000), "10m", None),
    ],
    "GpufleetKvCacheFull": [
        case("GpufleetKvCacheFull", [{"series": f"vllm:gpu_cache_usage_perc{{{VLLM}}}",
                                      "values": "0.95x20"}], "15m",
             [sev("warning", **VLLM_LABELS)], "gpu-01: KV cache 95 % used"),
        case("GpufleetKvCacheFull", [{"series": f"vllm:gpu_cache_usage_perc{{{VLLM}}}",
                                      "values": "0.95x20"}], "5m", None),  # not yet sustained
        case("GpufleetKvCacheFull", [{"series": f"vllm:gpu_cache_usage_perc{{{VLLM}}}",
                                      "values": "0.5x20"}], "15m", None),
        case("GpufleetKvCacheFull", [{"series": f"vllm:gpu_cache_usage_perc{{{VLLM}}}",
                                      "values": "0x20"}], "15m", None),
        case("GpufleetKvCacheFull", [{"series": f"sglang:token_usage{{{SGLANG}}}",
                                      "values": "0.95x20"}], "15m",
             [sev("warning", **SGLANG_LABELS)], "gpu-01: KV cache 95 % used"),
    ],
    "GpufleetRequestsWaiting": [
        case("GpufleetRequestsWaiting", [{"series": f"vllm:num_requests_waiting{{{VLLM}}}",
                                          "values": "40x20"}], "10m",
             [sev("warning", **VLLM_LABELS)], "gpu-01: 40 requests waiting"),
        case("GpufleetRequestsWaiting", [{"series": f"vllm:num_requests_waiting{{{VLLM}}}",
                                          "values": "10x20"}], "10m", None),
        case("GpufleetRequestsWaiting", [{"series": f"vllm:num_requests_waiting{{{VLLM}}}",
                                          "values": "0x20"}], "10m", None),
        case("GpufleetRequestsWaiting", [{"series": f"sglang:num_queue_reqs{{{SGLANG}}}",
                                          "values": "40x20"}], "10m",
             [sev("warning", **SGLANG_LABELS)], "gpu-01: 40 requests waiting"),
    ],
    "GpufleetXidError": [
        case("GpufleetXidError", [{"series": f"DCGM_FI_DEV_XID_ERRORS{{{GPU}}}",
                                   "values": "0 0 0 79 79 79 79 79 79 79"}], "5m",
             [sev("critical", **GPU_LABELS)], "gpu-01 GPU 0: Xid 79"),
        case("GpufleetXidError", [{"series": f"DCGM_FI_DEV_XID_ERRORS{{{GPU}}}",
                                   "values": "0x20"}], "15m", None),
        # an old Xid, unchanged for longer than the window: not new
        case("GpufleetXidError", [{"series": f"DCGM_FI_DEV_XID_ERRORS{{{GPU}}}",
                                   "values": "79x20"}], "15m", None),
    ],
    "GpufleetNvidiaDaemonDown": [
        case("GpufleetNvidiaDaemonDown", [{"series": f"node_systemd_unit_state{{{FM}}}",
                                           "values": "1 1 0 0 0 0 0 0 0 0"}], "6m",
             [sev("critical", **FM_LABELS)], "gpu-01: nvidia-fabricmanager.service is not active"),
        case("GpufleetNvidiaDaemonDown", [{"series": f"node_systemd_unit_state{{{FM}}}",
                                           "values": "1x10"}], "6m", None),
    ],
}


# --- an engine switch: the old engine answers once under the new engine's target -------------
# A host moved from vLLM to SGLang (or back): Prometheus may be reconfigured before the host's
# old engine stops, and scrapes it under the new target labels (engine="sglang"), so the
# replica exports both engines' histograms within the rate windows. The buckets come from the
# pinned releases (the stand-in's data, tests/conformance): vLLM 0.4.2 and SGLang 0.4.1.post7
# share only some bounds, and a bucket-by-bucket `or` of the two is no histogram.
RELEASED = Path(__file__).resolve().parents[1] / "sim" / "images" / "engine" / "released"


def ttft_buckets(engine: str) -> list[float]:
    release = {"vllm": "vllm-0.4.2", "sglang": "sglang-0.4.1.post7"}[engine]
    data = json.loads((RELEASED / f"{release}.json").read_text())
    return [float(b) for b in data["metrics"][f"{engine}:time_to_first_token_seconds"]["buckets"]]


def fast_ttft(engine: str, target_engine: str, values: str) -> list[dict[str, str]]:
    """``engine``'s TTFT histogram scraped from a target labelled ``target_engine``, every
    observation in its first bucket (so each bucket's series has the same ``values``)."""
    labels = f'{LABELS},engine="{target_engine}"'
    return [{"series": f'{engine}:time_to_first_token_seconds_bucket{{le="{le}",{labels}}}',
             "values": values} for le in [*map(str, ttft_buckets(engine)), "+Inf"]]


# The old vLLM answered three scrapes (no requests) under the SGLang target, then the new
# SGLang replica serves 20 fast requests a minute.
SWITCH = [*fast_ttft("vllm", "sglang", "0x3"), *fast_ttft("sglang", "sglang", "_x3 0+20x8")]


def test_an_engine_switch_does_not_fire_the_latency_alert(tmp_path: Path) -> None:
    """Every request answered fast: the alert stays quiet while the old engine's series are
    still in the 5-minute window (a bucket-by-bucket mix of the two layouts read ~2 s)."""
    (tmp_path / "rules.yml").write_text(render_rules(AlertSettings()))
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [
        case("GpufleetTimeToFirstTokenHigh", SWITCH, "7m", None),
        {"interval": "1m", "input_series": SWITCH, "promql_expr_test": [
            {"expr": f"round({TTFT_P99}, 0.001)", "eval_time": "7m", "exp_samples": [
                {"labels": f"{{{LABELS}}}", "value": 0.099}]}]},
    ]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run(PROMTOOL, "test", "rules", tmp_path / "tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_engine_switch_leaves_the_canary_verdicts_ttft_to_the_new_engine(
        tmp_path: Path) -> None:
    """The canary verdict's buckets over its window, just after the switch: the new engine's
    only (their P99 taken as Prometheus would: facts/histogram.py, checked below)."""
    query = f'histogram_quantile(0.99, {canary_queries("m", "5m")["ttft_buckets"]})'
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "none", "rules": [
        {"record": "unused", "expr": "vector(1)"}]}]}))
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": SWITCH, "promql_expr_test": [
            {"expr": f"round({query}, 0.001)", "eval_time": "7m", "exp_samples": [
                {"labels": '{engine="sglang",variant="canary"}', "value": 0.099}]}]}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run(PROMTOOL, "test", "rules", tmp_path / "tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# Cumulative observations a minute at each bound, for histograms of either released layout:
# spread over several buckets, all in the first, all beyond the last finite bound.
QUANTILE_CASES = {
    "spread": ("vllm", {0.01: 1, 0.02: 6, 0.04: 60, 0.1: 90, 0.75: 97, math.inf: 100}),
    "first": ("sglang", {0.1: 20, math.inf: 20}),
    "beyond": ("sglang", {10: 1, math.inf: 50}),
    "tail": ("vllm", {0.25: 5, 2.5: 99, 7.5: 100, math.inf: 100}),
}


def cumulative(engine: str, counts: Mapping[float, float]) -> dict[float, float]:
    """Every bound of the release's layout, read as the last count given at or below it."""
    return {bound: max((c for b, c in counts.items() if b <= bound), default=0)
            for bound in [*ttft_buckets(engine), math.inf]}


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_the_canary_verdicts_quantile_is_prometheus_own(tmp_path: Path, q: float) -> None:
    """facts/histogram.py against promtool's histogram_quantile, on the same rates."""
    series, samples = [], []
    for name, (engine, counts) in QUANTILE_CASES.items():
        buckets = cumulative(engine, counts)
        for bound, count in buckets.items():
            le = "+Inf" if bound == math.inf else str(bound)
            series.append({"series": f'h_bucket{{case="{name}",le="{le}"}}',
                           "values": f"0+{count}x10"})
        expected = histogram_quantile(q, buckets)
        assert expected is not None
        samples.append({"labels": f'{{case="{name}"}}',
                        "value": math.floor(expected * 10000 + 0.5) / 10000})
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "none", "rules": [
        {"record": "unused", "expr": "vector(1)"}]}]}))
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series, "promql_expr_test": [
            {"expr": f"round(histogram_quantile({q}, rate(h_bucket[5m])), 0.0001)",
             "eval_time": "10m", "exp_samples": samples}]}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run(PROMTOOL, "test", "rules", tmp_path / "tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_quantile_without_observations_or_an_inf_bucket_is_no_figure() -> None:
    assert histogram_quantile(0.99, {0.1: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {0.1: 3.0, 0.2: 5.0}) is None
    assert histogram_quantile(0.99, {math.inf: 5.0}) is None


def test_every_alert_has_promtool_tests() -> None:
    assert sorted(CASES) == sorted(r["alert"] for r in alert_rules(AlertSettings()))


def test_every_alert_fires_above_and_stays_quiet_below_its_threshold(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(render_rules(AlertSettings()))
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m",
             "tests": [c for cases in CASES.values() for c in cases]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run(PROMTOOL, "test", "rules", tmp_path / "tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_does_fail_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness is not vacuous: an alert expected where it cannot fire fails the run."""
    (tmp_path / "rules.yml").write_text(render_rules(AlertSettings()))
    wrong = case("GpufleetKvCacheFull", [{"series": f"vllm:gpu_cache_usage_perc{{{VLLM}}}",
                                          "values": "0.5x20"}], "15m",
                 [sev("warning", **VLLM_LABELS)])
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [wrong]}))
    assert run(PROMTOOL, "test", "rules", tmp_path / "tests.yml").returncode != 0


def test_thresholds_come_from_the_fleet_file(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(render_rules(AlertSettings(requests_waiting=50)))
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [
        case("GpufleetRequestsWaiting", [{"series": f"vllm:num_requests_waiting{{{VLLM}}}",
                                          "values": "40x20"}], "10m", None)]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = run(PROMTOOL, "test", "rules", tmp_path / "tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# --- Alertmanager and Grafana -----------------------------------------------------------------
@pytest.mark.parametrize("webhook", [None, "http://alerts.example.internal:9000/hook"])
def test_alertmanager_config_passes_amtool(tmp_path: Path, webhook: str | None) -> None:
    alerts = AlertSettings.model_validate({"webhook_url": webhook} if webhook else {},
                                          strict=False)
    path = tmp_path / "alertmanager.yml"
    path.write_text(render_alertmanager(alerts))
    result = run(AMTOOL, "check-config", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("webhook" in path.read_text()) == bool(webhook)


def test_dashboards_are_file_provisionable_and_every_panel_query_parses(tmp_path: Path) -> None:
    loaded = fleet(tmp_path)
    monitor = next(s for s in loaded.hosts if is_monitor(s))
    assert DATASOURCE_UID in render_grafana_datasource(monitor)
    exprs = []
    for uid in DASHBOARDS:
        text = render_dashboard(uid)
        assert "${DS_" not in text and "__inputs" not in text
        board = json.loads(text)
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
            exprs.append(panel["targets"][0]["expr"])
    # promtool parses each query as a recording rule's expression
    rules = tmp_path / "panels.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": [
        {"record": f"panel:{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    result = run(PROMTOOL, "check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr
