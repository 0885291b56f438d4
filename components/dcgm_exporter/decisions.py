"""The DCGM exporter's decisions, as pure functions: its image, where it listens, the compose
service it runs as beside the engine, and its preflight findings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inventory.fleet import HostSpec
from rules.assessment import unpinned_image
from rules.findings import Finding
from rules.serving import COMPOSE_PROJECT, port_binding


@dataclass(frozen=True)
class DcgmExporter:
    """NVIDIA's DCGM exporter beside the engine: GPU metrics for the monitoring host."""

    image: str
    bind: str
    port: int
    service: str = "dcgm-exporter"
    container: str = f"{COMPOSE_PROJECT}-dcgm-exporter"
    container_port: int = 9400


def dcgm_exporter(spec: HostSpec) -> DcgmExporter:
    cfg = spec.settings.monitoring
    image = spec.pins.monitoring.dcgm_exporter.reference(cfg.dcgm_registry)
    return DcgmExporter(image=image, bind=cfg.bind, port=cfg.dcgm_exporter_port)


def compose_services(exporter: DcgmExporter) -> dict[str, Any]:
    """Its service in the engine's compose file (after the engine's own)."""
    return {exporter.service: {
        "image": exporter.image,
        "container_name": exporter.container,
        "ports": [port_binding(exporter.bind, exporter.port, exporter.container_port)],
        # DCGM's profiling metrics (DCGM_FI_PROF_*) need it (NVIDIA's README).
        "cap_add": ["SYS_ADMIN"],
        "restart": "unless-stopped",
        "deploy": {"resources": {"reservations": {"devices": [{
            "driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}},
        "labels": {"org.gpufleet.role": "dcgm-exporter"},
    }}


def exporter_pin_findings(spec: HostSpec) -> list[Finding]:
    """The DCGM exporter's image, on a host of a monitored fleet (it runs beside the engine)."""
    return unpinned_image("the DCGM exporter image", dcgm_exporter(spec).image, None)
