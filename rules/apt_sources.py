"""Where NVIDIA's apt repositories live for a host, and how apt is told about them.

Defaults are NVIDIA's official repositories; a fleet can point either at a mirror (with its
own key) for proxied or air-gapped sites.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from facts.host_state import KEYRING_DIR  # where the one state read lists keyrings
from inventory.schema import AptRepo
from rules.compat import NVIDIA_REPO_ARCHES, nvidia_repo_distro

# NVIDIA's CUDA repository: one flat repo per <distro><version>/<arch> folder.
CUDA_REPO_URL = "https://developer.download.nvidia.com/compute/cuda/repos/{distro}/{arch}"
CUDA_KEY_FILE = "3bf863cc.pub"
CUDA_KEY_FINGERPRINT = "EB693B3035CD5710E231E123A4B469963BF863CC"

# NVIDIA's container toolkit repository: one flat repo per Debian architecture.
TOOLKIT_REPO_URL = "https://nvidia.github.io/libnvidia-container/stable/deb/{arch}"
TOOLKIT_KEY_URL = "https://nvidia.github.io/libnvidia-container/gpgkey"
TOOLKIT_KEY_FINGERPRINT = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"

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


# --- what else on the host points at the same repositories ---------------------------------------
SOURCES_LIST = "/etc/apt/sources.list"
REPLACED_SOURCES_DIR = "/var/backups/gpufleet/apt-sources"


@dataclass(frozen=True)
class ForeignSource:
    """A source file, not gpufleet's, that names one of gpufleet's repositories.

    apt refuses every source when one repository is configured twice with different keyrings
    ("Conflicting values set for option Signed-By"), which is what a host set up by NVIDIA's
    install guides carries (cuda-<distro>-<arch>.list, nvidia-container-toolkit.list).
    ``content`` is None when the whole file goes (moved aside, kept); otherwise it is the file
    with the conflicting entries commented out.
    """

    path: str
    urls: tuple[str, ...]
    content: str | None


def _norm(url: str) -> str:
    return url.strip().rstrip("/")


def _one_line_uri(line: str) -> str | None:
    """The URI of a one-line-style entry ("deb [opts] URI suite ..."), or None."""
    words = line.split("#", 1)[0].split()
    if not words or words[0] not in ("deb", "deb-src"):
        return None
    rest = words[1:]
    if rest and rest[0].startswith("["):
        while rest and not rest[0].endswith("]"):
            rest = rest[1:]
        rest = rest[1:]
    return rest[0] if rest else None


def _deb822_uris(stanza: list[str]) -> list[str]:
    uris: list[str] = []
    enabled = True
    for line in stanza:
        key, _, value = line.partition(":")
        if key.strip().lower() == "uris":
            uris += value.split()
        elif key.strip().lower() == "enabled" and value.strip().lower() == "no":
            enabled = False
    return uris if enabled else []


def _foreign_in_file(path: str, text: str, ours: set[str]) -> ForeignSource | None:
    lines = text.splitlines()
    hits: list[str] = []
    if path.endswith(".sources"):
        stanzas: list[list[int]] = [[]]
        for index, line in enumerate(lines):
            if line.strip():
                stanzas[-1].append(index)
            elif stanzas[-1]:
                stanzas.append([])
        out = list(lines)
        whole = True
        for stanza in stanzas:
            uris = _deb822_uris([lines[i] for i in stanza if not lines[i].lstrip().startswith("#")])
            mine = [u for u in uris if _norm(u) in ours]
            if not mine:
                whole = whole and not uris
                continue
            hits += mine
            whole = whole and len(mine) == len(uris)
            for i in stanza:
                out[i] = "# disabled by gpufleet (same repository as its own source): " + out[i]
        if not hits:
            return None
        return ForeignSource(path, tuple(dict.fromkeys(hits)),
                             None if whole else "\n".join(out) + "\n")
    out = []
    others = 0
    for line in lines:
        uri = _one_line_uri(line)
        if uri is not None and _norm(uri) in ours:
            hits.append(uri)
            out.append("# disabled by gpufleet (same repository as its own source): " + line)
        else:
            others += uri is not None
            out.append(line)
    if not hits:
        return None
    whole = others == 0 and path != SOURCES_LIST
    return ForeignSource(path, tuple(dict.fromkeys(hits)), None if whole else "\n".join(out) + "\n")


def foreign_sources(files: dict[str, str | None], ours: list[AptSource]) -> list[ForeignSource]:
    """Source files other than gpufleet's that configure one of ``ours``. Pure.

    ``files``: path -> content of /etc/apt/sources.list and the files of sources.list.d.
    """
    urls = {_norm(source.url) for source in ours}
    own = {source.sources_path for source in ours}
    found = []
    for path, text in sorted(files.items()):
        if path in own or text is None:
            continue
        if path != SOURCES_LIST and not (path.startswith(SOURCES_DIR + "/")
                                         and path.endswith((".list", ".sources"))):
            continue
        hit = _foreign_in_file(path, text, urls)
        if hit:
            found.append(hit)
    return found


def lists_digest(sources: list[AptSource], pinned: dict[str, str]) -> str:
    """What apt's package lists must answer for: the sources, their keys and the pins."""
    data = {
        "sources": [[s.deb822(), s.key_fingerprint] for s in sources],
        "pins": sorted(pinned.items()),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
