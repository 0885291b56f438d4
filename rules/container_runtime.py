"""The container runtime's decisions: which Compose a distro ships, whether its Docker can do
CDI, what daemon.json must hold for the fleet, when the CDI specification is stale, and which
installed packages the distribution's Docker would remove.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from facts.host_state import DAEMON_JSON_PATH as DAEMON_JSON_PATH
from inventory.schema import DockerSettings
from rules.daemon_json import DaemonJsonWanted
from rules.findings import Finding

DAEMON_JSON_CLAIMS_PATH = "/etc/gpufleet/docker-daemon-json.claims.json"
CDI_SPEC_PATH = "/etc/cdi/nvidia.yaml"
DOCKER_SERVICE = "docker"
# Docker's own packages: docker.io conflicts with them, and apt would remove them to install it.
DOCKER_CE_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io")


@dataclass(frozen=True)
class Compose:
    """The Compose implementation a distro ships with its docker.io, and how to call it."""

    package: str
    kind: Literal["v1", "v2"]
    command: tuple[str, ...]

    @property
    def path(self) -> str:
        """The command with its absolute path, as a unit's ExecStart needs it."""
        return "/usr/bin/" + " ".join(self.command)


_V1 = Compose("docker-compose", "v1", ("docker-compose",))
_V2_UBUNTU = Compose("docker-compose-v2", "v2", ("docker", "compose"))
# NVIDIA repo folder -> the distro's own Compose package. Debian ships only Compose v1
# (bookworm: docker-compose 1.29.2, which knows compose-spec GPU device reservations); Ubuntu
# ships the v2 plugin as docker-compose-v2 from 22.04 on.
COMPOSE_BY_DISTRO: dict[str, Compose] = {
    "debian11": _V1,
    "debian12": _V1,
    "ubuntu2004": _V1,
    "ubuntu2204": _V2_UBUNTU,
    "ubuntu2404": _V2_UBUNTU,
}

# CDI device injection in dockerd: `"features": {"cdi": true}` from Docker 25 (experimental),
# on by default from 28. Older engines ignore the CDI spec.
CDI_MIN_DOCKER = (25, 0)


def docker_release(apt_version: str) -> tuple[int, int] | None:
    """(major, minor) of a docker.io apt version: "20.10.24+dfsg1-1+deb12u1+b6" -> (20, 10)."""
    match = re.match(r"^(?:\d+:)?(\d+)\.(\d+)", apt_version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def docker_supports_cdi(apt_version: str) -> bool:
    release = docker_release(apt_version)
    return release is not None and release >= CDI_MIN_DOCKER




def wanted_daemon_json(docker: DockerSettings) -> DaemonJsonWanted:
    return DaemonJsonWanted(
        default_runtime_nvidia=docker.default_runtime_nvidia,
        protection=docker.gpu_device_protection,
        registry_mirrors=tuple(str(m).rstrip("/") for m in docker.registry_mirrors),
        extra=dict(docker.daemon_json),
    )


def cdi_findings(protection: str, docker_version: str, distro: str) -> list[Finding]:
    """CDI device injection needs a Docker engine that knows it."""
    if protection != "cdi" or docker_supports_cdi(docker_version):
        return []
    need = ".".join(str(p) for p in CDI_MIN_DOCKER)
    return [Finding(
        "error", "cdi-needs-newer-docker",
        f"settings.docker.gpu_device_protection = 'cdi' needs Docker >= {need}",
        f"the pin set installs docker.io {docker_version} on {distro}",
        f"Docker >= {need}",
        "use 'cgroupfs' (also keeps GPU containers attached across daemon-reload), or pin a "
        "newer Docker engine",
    )]


def compose_findings(distro: str) -> list[Finding]:
    if distro in COMPOSE_BY_DISTRO:
        return []
    return [Finding(
        "error", "no-known-compose", f"gpufleet knows no Compose package for {distro}",
        distro, "one of " + ", ".join(COMPOSE_BY_DISTRO),
        "add the distro's Compose package to rules/container_runtime.py",
    )]


def docker_ce_findings(installed: dict[str, str]) -> list[Finding]:
    found = [p for p in DOCKER_CE_PACKAGES if p in installed]
    if not found:
        return []
    return [Finding(
        "error", "docker-ce-installed",
        "Docker's own packages are installed; installing the distribution's docker.io would "
        "remove them and stop every container",
        ", ".join(found), "no docker-ce packages (or a host outside this fleet)",
        "remove them yourself after a maintenance window, or keep this host out of the fleet",
    )]


def cdi_spec_stale(spec_text: str | None, driver_upstream: str) -> str | None:
    """Why the CDI specification must be generated again, or None when it is current.

    The spec names the driver's libraries by version (libcuda.so.535.183.06): a spec written
    for another driver hands containers libraries that no longer exist.
    """
    if spec_text is None:
        return "there is no CDI specification yet"
    if driver_upstream not in spec_text:
        found = sorted(set(re.findall(r"\.so\.(\d{3}\.\d+(?:\.\d+)?)", spec_text)))
        return (f"it was generated for driver {', '.join(found) or 'unknown'}, not "
                f"{driver_upstream}")
    return None
