"""Where NVIDIA's apt repositories live for a host, and how apt is told about them.

Defaults are NVIDIA's official repositories; a fleet can point either at a mirror (with its
own key) for proxied or air-gapped sites.
"""

from __future__ import annotations

from dataclasses import dataclass

from inventory.compat import NVIDIA_REPO_ARCHES, nvidia_repo_distro
from inventory.schema import AptRepo

# NVIDIA's CUDA repository: one flat repo per <distro><version>/<arch> folder.
CUDA_REPO_URL = "https://developer.download.nvidia.com/compute/cuda/repos/{distro}/{arch}"
CUDA_KEY_FILE = "3bf863cc.pub"
CUDA_KEY_FINGERPRINT = "EB693B3035CD5710E231E123A4B469963BF863CC"

# NVIDIA's container toolkit repository: one flat repo per Debian architecture.
TOOLKIT_REPO_URL = "https://nvidia.github.io/libnvidia-container/stable/deb/{arch}"
TOOLKIT_KEY_URL = "https://nvidia.github.io/libnvidia-container/gpgkey"
TOOLKIT_KEY_FINGERPRINT = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"

KEYRING_DIR = "/etc/apt/keyrings"
SOURCES_DIR = "/etc/apt/sources.list.d"


class UnsupportedPlatform(ValueError):
    """NVIDIA publishes no repository for this distro or architecture."""


@dataclass(frozen=True)
class AptSource:
    """One flat apt repository, ready to be written as a deb822 .sources file."""

    name: str  # file stem: /etc/apt/sources.list.d/<name>.sources, keyring <name>.gpg
    url: str  # the folder holding Packages/InRelease, without trailing slash
    key_url: str
    key_fingerprint: str

    @property
    def keyring_path(self) -> str:
        return f"{KEYRING_DIR}/{self.name}.gpg"

    @property
    def sources_path(self) -> str:
        return f"{SOURCES_DIR}/{self.name}.sources"

    def deb822(self) -> str:
        # "Suites: /" with no Components is deb822 for a flat repository ("deb URL /").
        return (
            "# Managed by gpufleet: changes here are overwritten on the next deploy.\n"
            "Types: deb\n"
            f"URIs: {self.url}/\n"
            "Suites: /\n"
            f"Signed-By: {self.keyring_path}\n"
        )


def cuda_source(repo: AptRepo, os_id: str, version_id: str, dpkg_arch: str) -> AptSource:
    """The CUDA repository for a host, honouring a fleet's mirror and key overrides."""
    distro = nvidia_repo_distro(os_id, version_id)
    arch = NVIDIA_REPO_ARCHES.get(dpkg_arch)
    if distro is None or arch is None:
        raise UnsupportedPlatform(
            f"NVIDIA publishes no CUDA repository for {os_id} {version_id} on {dpkg_arch}"
        )
    url = (repo.url or CUDA_REPO_URL).format(distro=distro.repo_path, arch=arch)
    key_url = (repo.key_url or f"{url}/{CUDA_KEY_FILE}").format(distro=distro.repo_path, arch=arch)
    return AptSource("gpufleet-cuda", url, key_url, repo.key_fingerprint or CUDA_KEY_FINGERPRINT)


def container_toolkit_source(
    repo: AptRepo, os_id: str, version_id: str, dpkg_arch: str
) -> AptSource:
    """The container toolkit repository (the same for every Debian-family distro)."""
    distro = nvidia_repo_distro(os_id, version_id)
    if dpkg_arch not in NVIDIA_REPO_ARCHES:
        raise UnsupportedPlatform(f"NVIDIA publishes no container toolkit for {dpkg_arch}")
    distro_path = distro.repo_path if distro else f"{os_id}{version_id.replace('.', '')}"
    url = (repo.url or TOOLKIT_REPO_URL).format(distro=distro_path, arch=dpkg_arch)
    key_url = (repo.key_url or TOOLKIT_KEY_URL).format(distro=distro_path, arch=dpkg_arch)
    return AptSource(
        "gpufleet-nvidia-container-toolkit", url, key_url,
        repo.key_fingerprint or TOOLKIT_KEY_FINGERPRINT,
    )
