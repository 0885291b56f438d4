"""The Docker engine from the distribution (docker.io) at the pinned version, with the Compose
the distribution ships (v2 plugin or v1, `HostPlan.compose`), enabled and running.

Docker's own docker-ce packages, which docker.io would remove, were refused by preflight.
"""

from __future__ import annotations

from pyinfra.api import deploy

from inventory.fleet import HostSpec
from operations.apt_pins import apt_hold, apt_preferences, exact_versions
from operations.services import service
from rules.container_runtime import DOCKER_SERVICE
from rules.host_plan import HostPlan
from rules.network import apt_context
from rules.packages import preferences_path


@deploy("Docker engine")
def docker_engine(spec: HostSpec, plan: HostPlan) -> None:
    apt = apt_context(spec.settings)
    apt_preferences(
        name="Ensure apt prefers exactly the pinned Docker engine",
        path=preferences_path("docker"), packages=plan.docker_packages,
        component="docker", pin_set=spec.pin_set_name,
    )
    # Compose has no pin in pins.toml yet: installed at the distro's version, then held.
    packages: dict[str, str | None] = {**plan.docker_packages, plan.compose.package: None}
    exact_versions(
        name=f"Ensure docker.io {plan.docker_packages['docker.io']} and Compose "
             f"{plan.compose.kind} are installed",
        packages=packages, **apt.install,
    )
    apt_hold(name="Ensure the Docker packages are held", packages=sorted(packages),
             **apt.locking)
    service(name="Ensure Docker is enabled and running", unit=DOCKER_SERVICE)
