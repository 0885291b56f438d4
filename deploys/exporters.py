"""Exporters on a GPU host: node_exporter (Debian's package) for the host and the NVIDIA
daemons' states; the DCGM exporter runs beside the engine in its compose file
(deploys/inference.py). Only in a fleet with a monitoring host: nothing else would scrape them.
"""

from __future__ import annotations

from pyinfra.api import deploy

from inventory.fleet import HostSpec
from operations.apt_pins import packages_present
from operations.host_files import managed_file
from operations.services import restarted_after, service
from rules.monitoring import ARGS_FILES, node_exporter_args
from rules.network import apt_context


@deploy("Exporters")
def exporters(spec: HostSpec) -> None:
    apt = apt_context(spec.settings)
    cfg = spec.settings.monitoring
    # Written before the package, whose service would otherwise listen on every address.
    args = managed_file(
        name=f"Ensure node_exporter listens on {cfg.bind}:{cfg.node_exporter_port} and "
             "watches the NVIDIA daemons",
        path=ARGS_FILES["prometheus-node-exporter"], content=node_exporter_args(cfg))
    packages_present(name="Ensure node_exporter is installed (Debian package)",
                     packages=["prometheus-node-exporter"],
                     **apt.install, start_services=False)
    service(name="Ensure node_exporter runs", unit="prometheus-node-exporter")
    restarted_after("prometheus-node-exporter", args)
