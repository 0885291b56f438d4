"""What a host needs, decided from its spec and probe before any operation: the repositories
to use and the exact packages to install. A host that cannot be planned gets a refusal."""

from __future__ import annotations

from dataclasses import dataclass

from facts.probe import HostProbe
from inventory.compat import nvidia_repo_distro
from inventory.fleet import HostSpec
from inventory.packages import PinnedPackages, docker_packages, pinned_packages
from inventory.repos import AptSource, UnsupportedPlatform, container_toolkit_source, cuda_source

SUPPORTED = "Ubuntu 20.04/22.04/24.04 and Debian 11/12 on amd64 or arm64"


@dataclass(frozen=True)
class HostPlan:
    distro: str  # NVIDIA's folder name: ubuntu2204, debian12, ...
    sources: list[AptSource]
    pinned: PinnedPackages
    docker_packages: dict[str, str]
    nvswitch: bool


@dataclass(frozen=True)
class Refusal:
    message: str


def plan_host(spec: HostSpec, probe: HostProbe) -> HostPlan | Refusal:
    os_release = probe.system.os
    if os_release is None or not (os_release.id and os_release.version_id):
        reason = probe.system.reason or "no /etc/os-release"
        return Refusal(f"cannot tell which distro this is: {reason}")
    os_id, version_id = os_release.id, os_release.version_id
    arch = probe.system.dpkg_architecture or "unknown"
    repos = spec.settings.repos
    try:
        sources = [
            cuda_source(repos.cuda, os_id, version_id, arch),
            container_toolkit_source(repos.container_toolkit, os_id, version_id, arch),
        ]
    except UnsupportedPlatform as exc:
        return Refusal(f"{exc}. Supported: {SUPPORTED}.")
    distro = nvidia_repo_distro(os_id, version_id)
    assert distro is not None  # cuda_source() refused unknown distros above
    docker = docker_packages(spec.pins, distro.repo_path)
    if docker is None:
        return Refusal(
            f"pin set {spec.pin_set_name} has no Docker engine version for {distro.repo_path}; "
            f"add one under [sets.{spec.pin_set_name}.docker.versions] in inventory/pins.toml "
            "(`apt-cache madison docker.io` on the host lists what the distro offers)"
        )
    nvswitch = probe.pci.has_nvswitch
    return HostPlan(
        distro=distro.repo_path,
        sources=sources,
        pinned=pinned_packages(spec.pins, nvswitch=nvswitch),
        docker_packages=docker,
        nvswitch=nvswitch,
    )
