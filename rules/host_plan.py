"""What a host needs, decided from its spec and probe before any operation: the repositories
to use, the exact packages to install and the Compose to call. A host that cannot be planned
gets findings instead (preflight reports them with the rest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from facts.probe import HostProbe
from inventory.fleet import HostSpec
from rules.apt_sources import (
    AptSource,
    UnsupportedPlatform,
    container_toolkit_source,
    cuda_source,
)
from rules.compat import nvidia_repo_distro
from rules.container_runtime import COMPOSE_BY_DISTRO, Compose, compose_findings
from rules.findings import Finding
from rules.packages import PinnedPackages, docker_packages, pinned_packages

if TYPE_CHECKING:
    from rules.serving import EnginePlan

SUPPORTED = "Ubuntu 20.04/22.04/24.04 and Debian 11/12 on amd64 or arm64"


@dataclass(frozen=True)
class HostPlan:
    distro: str  # NVIDIA's folder name: ubuntu2204, debian12, ...
    sources: list[AptSource]
    pinned: PinnedPackages
    docker_packages: dict[str, str]
    compose: Compose
    nvswitch: bool
    engine: EnginePlan | None = None  # what the inference step serves (preflight decides)

    def all_pinned(self) -> dict[str, str]:
        """Every package the stack installs at an exact version."""
        return {**self.pinned.all(), **self.docker_packages}


def plan_host(spec: HostSpec, probe: HostProbe) -> HostPlan | list[Finding]:
    os_release = probe.system.os
    if os_release is None or not (os_release.id and os_release.version_id):
        reason = probe.system.reason or "no /etc/os-release"
        return [Finding("error", "distro-unknown", "cannot tell which distro this is",
                        reason, SUPPORTED, "check /etc/os-release on the host")]
    os_id, version_id = os_release.id, os_release.version_id
    arch = probe.system.dpkg_architecture or "unknown"
    repos = spec.settings.repos
    try:
        sources = [
            cuda_source(repos.cuda, os_id, version_id, arch),
            container_toolkit_source(repos.container_toolkit, os_id, version_id, arch),
        ]
    except UnsupportedPlatform as exc:
        return [Finding("error", "unsupported-platform", str(exc), f"{os_id} {version_id} {arch}",
                        SUPPORTED, "run the host on a supported release")]
    distro = nvidia_repo_distro(os_id, version_id)
    assert distro is not None  # cuda_source() refused unknown distros above
    found = compose_findings(distro.repo_path)
    docker = docker_packages(spec.pins, distro.repo_path)
    if docker is None:
        found.append(Finding(
            "error", "docker-not-pinned",
            f"pin set {spec.pin_set_name} has no Docker engine version for {distro.repo_path}",
            distro.repo_path, f"[sets.{spec.pin_set_name}.docker.versions] {distro.repo_path}",
            "add one to inventory/pins.toml (`apt-cache madison docker.io` on the host lists "
            "what the distro offers)",
        ))
    if found or docker is None:
        return found
    nvswitch = probe.pci.has_nvswitch
    return HostPlan(
        distro=distro.repo_path,
        sources=sources,
        pinned=pinned_packages(spec.pins, nvswitch=nvswitch),
        docker_packages=docker,
        compose=COMPOSE_BY_DISTRO[distro.repo_path],
        nvswitch=nvswitch,
    )
