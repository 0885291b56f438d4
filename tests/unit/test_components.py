"""The component protocol (rules/component.py): what a component declares is what the runner,
the state read and the probe take, so adding one touches its own folder and one line per entry
that runs it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from components.dcgm_exporter.component import DCGM_EXPORTER
from components.dcgm_exporter.decisions import compose_services, dcgm_exporter
from deploys.runner import GPU_HOST, SERVE, STEPS
from facts import probe
from facts.coverage import component_names, declared
from facts.host_state import (
    WATCHED_DIRS,
    WATCHED_FILES,
    WATCHED_SERVICES,
)
from inventory.fleet import HostSpec
from rules.component import Component, beside_engine
from rules.monitoring import is_monitored
from rules.serving import EnginePlan, plan_engine, render_compose
from tests.unit.test_exposure import fleet, host

REPO = Path(__file__).resolve().parents[2]
COMPONENTS: list[Component[Any]] = [part for part in STEPS if not isinstance(part, str)]
README_HEADINGS = ["## Requirements", "## Settings", "## Depends on", "## How it is verified"]


def test_every_component_folder_is_a_part_of_the_main_entry() -> None:
    assert [c.name for c in COMPONENTS] == component_names() == ["dcgm_exporter"]
    for name in component_names():
        folder = REPO / "components" / name
        assert {"README.md", "manages.py", "component.py"} <= {p.name for p in folder.iterdir()}


def test_an_entry_names_each_of_its_components_on_a_line_of_its_own() -> None:
    """Registering a component is one line per entry that runs it."""
    source = (REPO / "deploys" / "runner.py").read_text()
    for entry in ("GPU_HOST", "SERVE"):
        body = source.split(f"\n{entry}: tuple[Part, ...] = (\n", 1)[1].split("\n)", 1)[0]
        assert "    DCGM_EXPORTER," in body.splitlines(), entry
    # serve.py keeps the exporter beside the engine (Compose's --remove-orphans would drop it)
    assert DCGM_EXPORTER in SERVE and DCGM_EXPORTER in GPU_HOST
    assert GPU_HOST.index(DCGM_EXPORTER) < GPU_HOST.index("inference")


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.name)
def test_a_component_reads_only_documented_settings_of_its_section(
        component: Component[Any]) -> None:
    fields = component.settings.model_fields
    assert set(component.reads) <= set(fields)
    assert all(fields[name].description for name in component.reads)
    readme = (REPO / "components" / component.name / "README.md").read_text()
    assert [h for h in README_HEADINGS if h in readme.splitlines()] == README_HEADINGS
    documented = set(re.findall(r"^\| `(\w+)` \|", readme, flags=re.MULTILINE))
    assert documented == set(component.reads)


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.name)
def test_what_a_component_manages_is_what_the_state_read_and_probe_cover(
        component: Component[Any]) -> None:
    assert component.manages == declared()[component.name]
    assert set(component.manages.dirs) <= set(WATCHED_DIRS)
    assert set(component.manages.files) <= set(WATCHED_FILES)
    assert set(component.manages.services) <= set(WATCHED_SERVICES)
    assert set(component.manages.sections) <= set(probe.SECTIONS)


def _monitored_fleet(tmp_path: Path) -> list[HostSpec]:
    return fleet(tmp_path, settings='[settings.monitoring]\nbind = "10.0.0.11"\n'
                                    'dcgm_exporter_port = 9401\n',
                 monitor='settings = { monitoring = { listen = "10.0.0.5" } }')


def test_the_exporter_runs_on_the_gpu_hosts_of_a_monitored_fleet_only(tmp_path: Path) -> None:
    specs = _monitored_fleet(tmp_path)
    gpu, mon = host(specs, "gpu-01"), host(specs, "mon-01")
    assert DCGM_EXPORTER.wanted(gpu, specs) and is_monitored(gpu, specs)
    assert not DCGM_EXPORTER.wanted(mon, specs)
    assert not DCGM_EXPORTER.wanted(gpu, [gpu])  # no monitoring host: nothing scrapes it
    off = gpu.model_copy(update={"settings": gpu.settings.model_copy(update={
        "monitoring": gpu.settings.monitoring.model_copy(update={"enabled": False})})})
    assert not DCGM_EXPORTER.wanted(off, specs)


def test_the_exporter_is_a_service_after_the_engines_in_their_compose_file(
        tmp_path: Path) -> None:
    specs = _monitored_fleet(tmp_path)
    gpu = host(specs, "gpu-01")
    plan = plan_engine(gpu, 2, 1, 8192, 8, None)
    assert isinstance(plan, EnginePlan)
    exporter = dcgm_exporter(gpu)
    beside = beside_engine(DCGM_EXPORTER, gpu, DCGM_EXPORTER.plan(gpu, probe.parse_host_probe([])))
    assert beside.services == compose_services(exporter)
    text = render_compose(plan, beside.services)
    engines, exporter_block = text.split("  dcgm-exporter:\n")
    assert engines == render_compose(plan)  # the engines' services as without it, then it
    assert "  engine-1:\n" in engines and "dcgm" not in engines
    assert "10.0.0.11:9401:9400" in exporter_block
    assert "org.gpufleet.role: dcgm-exporter" in exporter_block
