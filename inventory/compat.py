"""The compatibility matrix: which versions of what work together.

Every version rule gpufleet enforces lives here, once. Preflight, the doctor and the
deploys import from this module; nothing else re-types these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NvidiaRepoDistro:
    """A distro release as NVIDIA's CUDA apt repository names it."""

    repo_path: str  # folder under .../compute/cuda/repos/, e.g. "ubuntu2204"
    first_cuda: str  # oldest CUDA release the official repo carries for it
    last_cuda: str | None = None  # newest, when NVIDIA stopped publishing for it


# (os-release ID, VERSION_ID) -> NVIDIA's repo folder and the CUDA releases it carries.
# Source: the folder listings under developer.download.nvidia.com/compute/cuda/repos/.
NVIDIA_REPO_DISTROS: dict[tuple[str, str], NvidiaRepoDistro] = {
    ("ubuntu", "20.04"): NvidiaRepoDistro("ubuntu2004", "11.0", "12.8"),
    ("ubuntu", "22.04"): NvidiaRepoDistro("ubuntu2204", "11.7"),
    ("ubuntu", "24.04"): NvidiaRepoDistro("ubuntu2404", "12.5"),
    ("debian", "11"): NvidiaRepoDistro("debian11", "11.7", "12.8"),
    ("debian", "12"): NvidiaRepoDistro("debian12", "12.3"),
}

# Debian architecture (dpkg --print-architecture) -> NVIDIA's folder name.
NVIDIA_REPO_ARCHES: dict[str, str] = {"amd64": "x86_64", "arm64": "sbsa"}


def nvidia_repo_distro(os_id: str, version_id: str) -> NvidiaRepoDistro | None:
    """NVIDIA's name for this distro release, or None when NVIDIA publishes no repo for it."""
    return NVIDIA_REPO_DISTROS.get((os_id.lower(), version_id))
