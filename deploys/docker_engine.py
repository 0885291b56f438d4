"""The Docker engine from the distribution (docker.io) at the pinned version, with the Compose
the distribution ships (v2 plugin or v1), enabled and running.

Which Compose is installed is returned (`Compose.command`): the steps that render and start
compose files call it that way.
"""

from __future__ import annotations

from pyinfra.api import deploy

from deploys.common import stop_host
from deploys.host_network import proxy_env
from deploys.plan import HostPlan
from facts.host_state import StackQuery, stack_state
from inventory.fleet import HostSpec
from inventory.nvidia_stack import (
    COMPOSE_BY_DISTRO,
    DOCKER_SERVICE,
    Compose,
    preferences_path,
)
from operations.apt_pins import apt_hold, apt_preferences, exact_versions
from operations.services import service
from operations.stack_checks import check

# Docker's own packages: docker.io conflicts with them, and apt would remove them to install it.
DOCKER_CE_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io")


def compose_for(plan: HostPlan) -> Compose | None:
    return COMPOSE_BY_DISTRO.get(plan.distro)


def docker_ce_refusal(installed: dict[str, str]) -> str | None:
    found = [p for p in DOCKER_CE_PACKAGES if p in installed]
    if not found:
        return None
    return (f"Docker's own packages are installed ({', '.join(found)}); installing the "
            "distribution's docker.io would remove them and stop every container. Remove them "
            "yourself after a maintenance window, or keep this host out of the fleet.")


@deploy("Docker engine")
def docker_engine(spec: HostSpec, plan: HostPlan, query: StackQuery) -> Compose | None:
    """Returns the Compose implementation, or None when the host was stopped."""
    compose = compose_for(plan)
    if compose is None:
        stop_host(name="Refuse: no known Compose for this distro",
                  message=f"gpufleet knows no Compose package for {plan.distro}; known: "
                          + ", ".join(COMPOSE_BY_DISTRO))
        return None

    def ce_verdict() -> tuple[str | None, str]:
        return docker_ce_refusal(stack_state(query).installed), "no docker-ce to replace"

    check(name="Ensure installing docker.io removes nothing", verdict=ce_verdict)

    apt_preferences(
        name="Ensure apt prefers exactly the pinned Docker engine",
        path=preferences_path("docker"), packages=plan.docker_packages, query=query,
        component="docker", pin_set=spec.pin_set_name,
    )
    # Compose has no pin in pins.toml yet: installed at the distro's version, then held.
    packages: dict[str, str | None] = {**plan.docker_packages, compose.package: None}
    exact_versions(
        name=f"Ensure docker.io {plan.docker_packages['docker.io']} and Compose {compose.kind} "
             "are installed",
        packages=packages, query=query, env=proxy_env(spec),
    )
    apt_hold(name="Ensure the Docker packages are held", packages=sorted(packages), query=query)
    service(name="Ensure Docker is enabled and running", unit=DOCKER_SERVICE, query=query)
    return compose
