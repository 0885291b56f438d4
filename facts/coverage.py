"""What the one state read and the one probe cover: the union of what every part declares.

A part of gpufleet that writes files or runs services on a host declares them (``Manages``),
and the state read (``facts.host_state``: ``WATCHED_DIRS``, ``WATCHED_FILES``,
``WATCHED_SERVICES``) and the probe (``facts.probe``: the sections it runs) cover exactly the
union of those declarations. Nothing else lists them.

Two kinds of part declare:

- ``CORE``: the steps that have no folder of their own yet (the GPU stack, the Python
  environment, serving, the exporters, the monitoring host, the network, the manifest);
- each component under ``components/<name>/``: its ``manages.py`` is plain data, the four
  tuples ``DIRS``, ``FILES``, ``SERVICES`` and ``SECTIONS`` (any left out: none), and imports
  nothing (``tests/unit/test_layout.py``), which is why the facts layer may load it. The
  components are found by their folders, sorted by name, so adding one touches its own
  folder only.

The union keeps the first place of each entry (``CORE``'s order first): the state read's
command is the same text whenever a component declares nothing new.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

COMPONENTS_DIR = Path(__file__).resolve().parents[1] / "components"


@dataclass(frozen=True)
class Manages:
    """What a part's operations touch on a host, which the one state read must cover, and the
    probe sections its checks and plan read."""

    dirs: tuple[str, ...] = ()  # folders whose regular files (not recursively) it writes
    files: tuple[str, ...] = ()  # single files outside those folders
    services: tuple[str, ...] = ()  # systemd unit patterns, without ".service"
    sections: tuple[str, ...] = ()  # facts.probe.SECTIONS it reads


# The parts without a folder of their own (see the module's docstring), in the order the state
# read has always listed them.
CORE = Manages(
    dirs=(
        "/etc/apt/sources.list.d",
        "/etc/apt/preferences.d",
        "/etc/apt/keyrings",
        "/etc/apt/apt.conf.d",
        "/etc/modprobe.d",
        "/etc/profile.d",
        "/etc/docker",
        "/etc/cdi",
        "/etc/gpufleet",
        "/etc/gpufleet/inference",
        "/etc/gpufleet/monitoring",
        "/etc/gpufleet/grafana/provisioning/datasources",
        "/etc/gpufleet/grafana/provisioning/dashboards",
        "/etc/gpufleet/grafana/dashboards",
        "/etc/nginx/conf.d",
        "/etc/default",  # Debian services' command lines (ARGS="..."): the exporters, Prometheus
        "/etc/systemd/system",
        "/var/lib/gpufleet",
        "/usr/local/share/ca-certificates",
    ),
    files=("/etc/apt/sources.list",),
    # Naming them keeps the read cheap: `systemctl list-unit-files` with no pattern weighs
    # every unit file on the host (0.4 s of a 0.5 s state read on the simulated hosts).
    services=("docker", "containerd", "nvidia-*", "gpufleet-*", "prometheus*", "nginx",
              "unattended-upgrades"),
    sections=("nvidia_smi", "pci", "secure_boot", "nvcc", "python", "storage", "free_space",
              "nvidia_ctk", "weights", "state"),
)


def union(parts: Iterable[Manages]) -> Manages:
    """Every entry any part declares, each once, in the order first declared."""
    listed = list(parts)

    def merged(field: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(entry for part in listed for entry in getattr(part, field)))

    return Manages(dirs=merged("dirs"), files=merged("files"), services=merged("services"),
                   sections=merged("sections"))


def component_names(folder: Path = COMPONENTS_DIR) -> list[str]:
    """The components, by folder (one with a ``manages.py``), sorted."""
    if not folder.is_dir():
        return []
    return sorted(path.parent.name for path in folder.glob("*/manages.py"))


def declared(folder: Path = COMPONENTS_DIR) -> dict[str, Manages]:
    """Each component's declaration, by name. A ``manages.py`` is loaded from its file, so
    the declarations do not depend on the import path (a tool run from elsewhere, an
    installed copy that predates the folder)."""
    found: dict[str, Manages] = {}
    for name in component_names(folder):
        spec = importlib.util.spec_from_file_location(f"_gpufleet_manages_{name}",
                                                      folder / name / "manages.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found[name] = Manages(**{field: tuple(getattr(module, field.upper(), ()))
                                 for field in ("dirs", "files", "services", "sections")})
    return found


COVERED = union([CORE, *declared().values()])
