"""What listens where (rules/exposure.py): the list agrees with what the renderers write, and
preflight warns when a service is reachable from other machines with no key to present."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from inventory.fleet import HostSpec, load_fleet
from rules.exposure import Listener, exposure_findings, listeners
from rules.gateway import render_gateway, routing
from rules.monitoring import alertmanager_args, node_exporter_args, prometheus_args
from rules.serving import EnginePlan, compose_document, dcgm_exporter, plan_engine

GPU = """
[groups.gpu]
settings = {{ gpus = {{ count = 2, model = "A100-PCIE-40GB" }}, tensor_parallel = 1 }}
[groups.gpu.hosts.gpu-01]
target = "10.0.0.11"
{host}
"""
MONITOR = """
[groups.monitor]
settings = {{ role = "monitor" }}
[groups.monitor.hosts.mon-01]
target = "10.0.0.5"
{host}
"""


def fleet(tmp_path: Path, settings: str = "", gpu: str = "", monitor: str | None = None
          ) -> list[HostSpec]:
    text = textwrap.dedent("""
        [settings]
        model = "deepseek-r1-distill-qwen-7b"
        weights_path = "/srv/models/m"
    """) + textwrap.dedent(settings) + GPU.format(host=gpu)
    if monitor is not None:
        text += MONITOR.format(host=monitor)
    (tmp_path / "key").write_text("sk-0123456789abcdef\n")
    (tmp_path / "fleet.toml").write_text(text)
    return load_fleet(tmp_path / "fleet.toml").hosts


def host(specs: list[HostSpec], name: str) -> HostSpec:
    return next(s for s in specs if s.name == name)


def warning(specs: list[HostSpec], name: str) -> str:
    found = exposure_findings(host(specs, name), specs)
    assert [f.code for f in found] == ["listening-without-key"], found
    assert found[0].severity == "warning"
    return found[0].what


def by_service(items: list[Listener]) -> dict[str, tuple[str, str, bool]]:
    return {item.service: (item.address, item.ports, item.open) for item in items}


# --- the defaults: everything on loopback, nothing to warn about -------------------------------
def test_by_default_a_gpu_host_listens_on_loopback_only(tmp_path: Path) -> None:
    specs = fleet(tmp_path)
    assert by_service(listeners(specs[0], specs)) == {
        "vllm API": ("127.0.0.1", "8000-8001", False)}
    assert exposure_findings(specs[0], specs) == []


def test_by_default_a_monitoring_host_listens_on_loopback_but_for_nginx_default_site(
        tmp_path: Path) -> None:
    specs = fleet(tmp_path, settings='[settings.inference]\nbind = "10.0.0.11"\n'
                  'api_key_file = "key"\n[settings.monitoring]\nbind = "10.0.0.11"\n',
                  monitor="")
    mon = host(specs, "mon-01")
    assert by_service(listeners(mon, specs)) == {
        "Prometheus": ("127.0.0.1", "9090", False),
        "Alertmanager": ("127.0.0.1", "9093", False),
        "gateway (nginx)": ("127.0.0.1", "8080", False),
        "nginx default site (Debian's package: a static page)": ("0.0.0.0", "80", False),
        "nginx status (stub_status)": ("127.0.0.1", "8099", False),
        "nginx exporter": ("127.0.0.1", "9113", False),
    }
    assert exposure_findings(mon, specs) == []


# --- the warning --------------------------------------------------------------------------------
def test_an_api_beyond_loopback_without_a_key_is_warned_about(tmp_path: Path) -> None:
    specs = fleet(tmp_path, settings='[settings.inference]\nbind = "0.0.0.0"\n')
    what = warning(specs, "gpu-01")
    assert "vllm API on 0.0.0.0:8000-8001" in what and "no firewall setting" in what
    fix = exposure_findings(specs[0], specs)[0].fix
    assert "settings.inference.bind" in fix and "api_key_file" in fix


def test_an_api_key_quiets_the_warning_for_the_api(tmp_path: Path) -> None:
    specs = fleet(tmp_path, settings='[settings.inference]\nbind = "0.0.0.0"\n'
                                     'api_key_file = "key"\n')
    assert exposure_findings(specs[0], specs) == []


def test_exporters_have_no_key_so_a_monitored_host_is_warned_about_them(tmp_path: Path) -> None:
    specs = fleet(tmp_path, settings='[settings.inference]\nbind = "10.0.0.11"\n'
                  'api_key_file = "key"\n[settings.monitoring]\nbind = "10.0.0.11"\n',
                  monitor="")
    what = warning(specs, "gpu-01")
    assert "node_exporter on 10.0.0.11:9100" in what and "DCGM exporter on 10.0.0.11:9400" in what
    assert "API" not in what.split(":", 1)[1]  # the API has its key
    # Without a monitoring host no exporter runs, whatever monitoring.bind says.
    alone = fleet(tmp_path, settings='[settings.monitoring]\nbind = "0.0.0.0"\n')
    assert exposure_findings(alone[0], alone) == []


def test_the_monitoring_host_warns_about_prometheus_alertmanager_and_a_keyless_gateway(
        tmp_path: Path) -> None:
    settings = ('[settings.inference]\nbind = "10.0.0.11"\n[settings.monitoring]\n'
                'bind = "10.0.0.11"\n')
    monitor = 'settings = { monitoring = { listen = "0.0.0.0" }, gateway = { bind = "::" } }'
    specs = fleet(tmp_path, settings=settings, monitor=monitor)
    what = warning(specs, "mon-01")
    assert "Prometheus on 0.0.0.0:9090" in what and "Alertmanager on 0.0.0.0:9093" in what
    assert "gateway (nginx) on [::]:8080" in what
    # Every engine behind the gateway checks a key: the gateway passes it through.
    keyed = fleet(tmp_path, settings=settings.replace(
        '"10.0.0.11"\n[settings.monitoring]', '"10.0.0.11"\napi_key_file = "key"\n'
                                               '[settings.monitoring]'), monitor=monitor)
    assert "gateway" not in warning(keyed, "mon-01")


def test_ray_listens_on_every_address_of_each_node_so_a_replica_across_hosts_warns(
        tmp_path: Path) -> None:
    specs = fleet(tmp_path, settings='[settings.multinode]\nnodes = 2\ninterface = "eth1"\n',
                  gpu='settings = { multinode = { address = "10.1.0.1" } }\n'
                      '[groups.gpu.hosts.gpu-02]\ntarget = "10.0.0.12"\n'
                      'settings = { multinode = { address = "10.1.0.2" } }')
    head, worker = host(specs, "gpu-01"), host(specs, "gpu-02")
    assert "Ray (vLLM across nodes) on 0.0.0.0:6379 (GCS, head)" in warning(specs, "gpu-01")
    assert "vllm API" in by_service(listeners(head, specs))  # on loopback: not in the warning
    assert "vllm API" not in by_service(listeners(worker, specs))  # only the head serves
    assert "Ray" in warning(specs, "gpu-02")


# --- the list is what the renderers write -------------------------------------------------------
def test_every_address_and_port_is_the_one_the_renderers_write(tmp_path: Path) -> None:
    specs = fleet(
        tmp_path,
        settings='[settings.inference]\nbind = "10.0.0.11"\nport = 8100\nreplicas = 2\n'
                 '[settings.monitoring]\nbind = "10.0.0.11"\nnode_exporter_port = 9101\n'
                 'dcgm_exporter_port = 9401\n',
        monitor='settings = { monitoring = { listen = "10.0.0.5" }, '
                'gateway = { bind = "10.0.0.5", port = 8181 } }')
    gpu, mon = host(specs, "gpu-01"), host(specs, "mon-01")
    plan = plan_engine(gpu, 2, 1, 8192, 8, None)
    assert isinstance(plan, EnginePlan)
    compose = compose_document(plan, dcgm_exporter(gpu))["services"]
    published = sorted(p for s in compose.values() for p in s.get("ports", []))
    assert published == ["10.0.0.11:8100:8000", "10.0.0.11:8101:8000", "10.0.0.11:9401:9400"]
    gpu_listeners = by_service(listeners(gpu, specs))
    assert gpu_listeners["vllm API"][:2] == ("10.0.0.11", "8100-8101")
    assert gpu_listeners["DCGM exporter"][:2] == ("10.0.0.11", "9401")
    assert gpu_listeners["node_exporter"][:2] == ("10.0.0.11", "9101")
    assert "--web.listen-address=10.0.0.11:9101" in node_exporter_args(gpu.settings.monitoring)
    mon_listeners = by_service(listeners(mon, specs))
    assert mon_listeners["Prometheus"][:2] == ("10.0.0.5", "9090")
    assert "--web.listen-address=10.0.0.5:9090" in prometheus_args(mon)
    assert mon_listeners["Alertmanager"][:2] == ("10.0.0.5", "9093")
    assert "--web.listen-address=10.0.0.5:9093" in alertmanager_args(mon)
    assert mon_listeners["gateway (nginx)"][:2] == ("10.0.0.5", "8181")
    conf = render_gateway(mon, routing(mon, specs, "off"))
    assert "listen 10.0.0.5:8181;" in conf and "listen 127.0.0.1:8099;" in conf


def test_the_readme_table_shows_every_default_port(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## What listens where", 1)[1].split("\n## ", 1)[0]
    vllm = fleet(tmp_path, settings='[settings.multinode]\nnodes = 2\ninterface = "eth1"\n',
                 gpu='settings = { multinode = { address = "10.1.0.1" } }\n'
                     '[groups.gpu.hosts.gpu-02]\ntarget = "10.0.0.12"\n'
                     'settings = { multinode = { address = "10.1.0.2" } }', monitor="")
    sglang = fleet(tmp_path, settings='[settings.inference]\nengine = "sglang"\n'
                                      '[settings.multinode]\nnodes = 2\ninterface = "eth1"\n',
                   gpu='settings = { multinode = { address = "10.1.0.1" } }\n'
                       '[groups.gpu.hosts.gpu-02]\ntarget = "10.0.0.12"\n'
                       'settings = { multinode = { address = "10.1.0.2" } }')
    every = [item for specs in (vllm, sglang) for s in specs for item in listeners(s, specs)]
    for item in every:
        port = item.ports.split()[0].split("-")[0]
        assert f"{port}`" in section or f": {port}" in section, (item.service, port)
    assert {item.service.split(" (")[0] for item in every} >= {
        "vllm API", "node_exporter", "DCGM exporter", "Ray", "torch.distributed", "Prometheus",
        "Alertmanager", "gateway", "nginx default site", "nginx status", "nginx exporter"}


# --- preflight prints it ------------------------------------------------------------------------
def test_preflight_reports_the_warning_for_gpu_and_monitoring_hosts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploys import preflight as step
    from tests.unit.test_preflight import bare_host

    specs = fleet(tmp_path, settings='[settings.inference]\nbind = "0.0.0.0"\n'
                                     '[settings.monitoring]\nbind = "0.0.0.0"\n',
                  monitor='settings = { monitoring = { listen = "0.0.0.0" } }')
    reports: list[str] = []
    monkeypatch.setattr(step, "log_report", reports.append)
    monkeypatch.setattr(step, "fleet_specs", lambda: specs)
    monkeypatch.setattr(step, "refuse_host", lambda **kwargs: None)
    step.preflight(host(specs, "gpu-01"), bare_host())
    step.monitor_preflight(host(specs, "mon-01"), specs)
    assert len(reports) == 2
    assert "WARNING [listening-without-key]" in reports[0]
    assert "vllm API on 0.0.0.0:8000-8001" in reports[0] and "node_exporter" in reports[0]
    assert reports[1].startswith("gpufleet preflight for mon-01:")
    assert "Prometheus on 0.0.0.0:9090" in reports[1]
