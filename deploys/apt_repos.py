"""NVIDIA's apt repositories (CUDA and container toolkit), signed, and a check that they offer
every version the pin set asks for — before any of it is installed.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import apt

from deploys.host_network import FILES as NETWORK_FILES
from deploys.host_network import proxy_env
from deploys.plan import HostPlan
from facts.host_state import StackQuery
from inventory.fleet import HostSpec
from operations.apt import keyring, packages_present, versions_offered
from operations.host_files import managed_file

# What the key download and checks need on the host.
PREREQUISITES = ("ca-certificates", "curl", "gnupg")


def repo_query(plan: HostPlan) -> StackQuery:
    """Everything the network and repository steps read, for one state read per host."""
    pinned = {**plan.pinned.all(), **plan.docker_packages}
    return StackQuery(
        packages=(*PREREQUISITES, *pinned),
        offered=tuple(pinned),
        files=(*NETWORK_FILES, *(source.sources_path for source in plan.sources)),
        keyrings=tuple(source.keyring_path for source in plan.sources),
    )


@deploy("NVIDIA apt repositories")
def nvidia_repositories(spec: HostSpec, plan: HostPlan, query: StackQuery) -> None:
    env = proxy_env(spec)
    packages_present(
        name="Ensure the tools to fetch and check repository keys are installed",
        packages=PREREQUISITES, query=query, env=env,
    )
    changed = []
    for source in plan.sources:
        changed.append(keyring(
            name=f"Ensure the signing key of {source.url} is trusted",
            path=source.keyring_path, url=source.key_url,
            fingerprint=source.key_fingerprint, query=query, env=env,
        ))
        changed.append(managed_file(
            name=f"Ensure apt knows {source.url}",
            path=source.sources_path, content=source.deb822(), query=query,
        ))
    apt.update(
        name="Refresh apt's package lists after a repository change",
        _if=lambda: any(op.did_change() for op in changed),
    )
    versions_offered(
        name="Ensure the repositories offer every pinned version",
        packages={**plan.pinned.all(), **plan.docker_packages},
        query=query,
        repositories="the configured repositories ("
        + ", ".join(s.url for s in plan.sources) + ")",
    )
