"""The DCGM exporter as a component (rules/component.py): the record the runner's entries name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from components.dcgm_exporter.decisions import (
    DcgmExporter,
    compose_services,
    dcgm_exporter,
    exporter_pin_findings,
)
from components.dcgm_exporter.deploy import exporter_image
from facts.coverage import Manages, declared
from facts.probe import HostProbe
from inventory.fleet import HostSpec
from inventory.schema import MonitoringSettings
from rules.findings import Finding
from rules.monitoring import is_monitored


@dataclass(frozen=True)
class DcgmExporterComponent:
    name: str = "dcgm_exporter"
    settings: type[BaseModel] = MonitoringSettings
    reads: tuple[str, ...] = ("enabled", "bind", "dcgm_exporter_port", "dcgm_registry",
                              "image_archives")
    manages: Manages = field(default_factory=lambda: declared()["dcgm_exporter"])
    depends_on: tuple[str, ...] = ()

    def wanted(self, spec: HostSpec, fleet: Sequence[HostSpec]) -> bool:
        return is_monitored(spec, fleet)

    def checks(self, spec: HostSpec, probe: HostProbe) -> list[Finding]:
        return exporter_pin_findings(spec)

    def plan(self, spec: HostSpec, probe: HostProbe) -> DcgmExporter:
        return dcgm_exporter(spec)

    def compose_services(self, plan: DcgmExporter) -> Mapping[str, Any]:
        return compose_services(plan)

    def deploy(self, spec: HostSpec, plan: DcgmExporter) -> None:
        exporter_image(spec, plan)


DCGM_EXPORTER = DcgmExporterComponent()
