"""NVIDIA's apt repositories (CUDA and container toolkit), signed, and a check that they offer
every version the pin set asks for — before any of it is installed.
"""

from __future__ import annotations

from io import StringIO

from pyinfra.api import deploy
from pyinfra.operations import apt, files

from deploys.host_network import proxy_env
from inventory.fleet import HostSpec
from inventory.packages import PinnedPackages
from inventory.repos import AptSource
from operations.apt import keyring, versions_offered

# What the key download and checks need on the host.
PREREQUISITES = ["ca-certificates", "curl", "gnupg"]


@deploy("NVIDIA apt repositories")
def nvidia_repositories(
    spec: HostSpec,
    sources: list[AptSource],
    pinned: PinnedPackages,
    docker_packages: dict[str, str],
) -> None:
    apt.packages(
        name="Ensure the tools to fetch and check repository keys are installed",
        packages=PREREQUISITES,
        update=True,
        cache_time=24 * 3600,
        no_recommends=True,
    )

    changed = []
    for source in sources:
        changed.append(keyring(
            name=f"Ensure the signing key of {source.url} is trusted",
            path=source.keyring_path,
            url=source.key_url,
            fingerprint=source.key_fingerprint,
            env=proxy_env(spec),
        ))
        changed.append(files.put(
            name=f"Ensure apt knows {source.url}",
            src=StringIO(source.deb822()),
            dest=source.sources_path,
            mode="644",
        ))

    apt.update(
        name="Refresh apt's package lists after a repository change",
        _if=lambda: any(op.did_change() for op in changed),
    )

    versions_offered(
        name="Ensure the repositories offer every pinned version",
        packages={**pinned.all(), **docker_packages},
        repositories="the configured repositories (" + ", ".join(s.url for s in sources) + ")",
    )
