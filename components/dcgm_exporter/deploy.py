"""The DCGM exporter's operations: its image on the host before the engine's compose file is
brought up (the compose file itself, with the exporter's service in it, is serving's:
deploys/inference.py). Operations only, with the arguments decisions.py decided."""

from __future__ import annotations

from components.dcgm_exporter.decisions import DcgmExporter
from inventory.fleet import HostSpec
from operations.docker_config import image_from_archive, image_pulled


def exporter_image(spec: HostSpec, exporter: DcgmExporter) -> None:
    """Load the image from the fleet's archives (settings.monitoring.image_archives), else pull
    it."""
    monitoring = spec.settings.monitoring
    for archive in (str(spec.controller_path(a)) for a in monitoring.image_archives):
        image_from_archive(name=f"Ensure the DCGM exporter image {exporter.image} is "
                                "present", image=exporter.image, archive=archive)
    if not monitoring.image_archives:
        image_pulled(name=f"Ensure the DCGM exporter image {exporter.image} is present",
                     image=exporter.image)
