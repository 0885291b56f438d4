"""Turn a bare Linux GPU server into an LLM inference host.

    pyinfra inventory.py deploys/gpu_host.py

Steps run in order; each is one module under deploys/. A host that cannot be served is
stopped with a report before anything on it changes.
"""

from pyinfra import host

from deploys.apt_repos import nvidia_repositories
from deploys.common import host_spec, stop_host
from deploys.host_network import host_network
from facts.nvidia import NvidiaPciDevices
from facts.system import SystemInfo
from inventory.compat import nvidia_repo_distro
from inventory.packages import docker_packages, pinned_packages
from inventory.repos import UnsupportedPlatform, container_toolkit_source, cuda_source

spec = host_spec()
system = host.get_fact(SystemInfo)
pci = host.get_fact(NvidiaPciDevices)


def _plan() -> str | None:
    """Everything decided from facts before any change; a message when the host must stop."""
    os_release = system.os
    if os_release is None or not (os_release.id and os_release.version_id):
        return f"cannot tell which distro this is: {system.reason or 'no /etc/os-release'}"
    arch = system.dpkg_architecture or "unknown"
    repos = spec.settings.repos
    try:
        sources = [
            cuda_source(repos.cuda, os_release.id, os_release.version_id, arch),
            container_toolkit_source(repos.container_toolkit, os_release.id,
                                     os_release.version_id, arch),
        ]
    except UnsupportedPlatform as exc:
        return f"{exc}. Supported: Ubuntu 20.04/22.04/24.04 and Debian 11/12 on amd64 or arm64."
    distro = nvidia_repo_distro(os_release.id, os_release.version_id)
    assert distro is not None  # cuda_source() refused unknown distros above
    docker = docker_packages(spec.pins, distro.repo_path)
    if docker is None:
        return (f"pin set {spec.pin_set_name} has no Docker engine version for {distro.repo_path}; "
                f"add one under [sets.{spec.pin_set_name}.docker.versions] in inventory/pins.toml "
                f"(`apt-cache madison docker.io` on the host lists what the distro offers)")
    host_network(spec=spec)
    nvidia_repositories(
        spec=spec,
        sources=sources,
        pinned=pinned_packages(spec.pins, nvswitch=pci.has_nvswitch),
        docker_packages=docker,
    )
    return None


refusal = _plan()
if refusal:
    stop_host(name="Refuse: this host cannot be provisioned as configured", message=refusal)
