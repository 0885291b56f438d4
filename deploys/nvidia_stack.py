"""The NVIDIA host stack, in order: driver, CUDA toolkit, Docker engine, container toolkit,
verification. One state read (facts.host_state.StackState) serves all of it: a no-op run of
the stack costs two remote commands per host (the state and the verification).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from deploys.container_toolkit import container_toolkit
from deploys.cuda_toolkit import cuda_toolkit
from deploys.docker_engine import DOCKER_CE_PACKAGES, compose_for, docker_engine
from deploys.driver import DriverOutcome, headers_package, nvidia_driver
from deploys.plan import HostPlan
from deploys.verify_stack import verify_stack
from facts.host_state import StackQuery
from facts.probe import HostProbe
from inventory.fleet import HostSpec
from inventory.nvidia_stack import (
    CDI_SPEC_PATH,
    CUDA_PROFILE_PATH,
    DAEMON_JSON_PATH,
    DOCKER_SERVICE,
    FABRICMANAGER_SERVICE,
    NOUVEAU_BLACKLIST_PATH,
    PERSISTENCED_SERVICE,
    Compose,
    preferences_path,
)

PREFERENCE_COMPONENTS = ("nvidia-driver", "cuda-toolkit", "docker", "nvidia-container-toolkit")


@dataclass(frozen=True)
class StackResult:
    """What later steps need to know: how to call Compose on this host."""

    compose: Compose


def stack_query(spec: HostSpec, probe: HostProbe, plan: HostPlan) -> StackQuery:
    """Everything the stack's operations read, for the one StackState command."""
    headers = headers_package(spec, probe)
    compose = compose_for(plan)
    packages = [
        *plan.pinned.driver, *plan.pinned.cuda, *plan.docker_packages,
        *plan.pinned.container_toolkit, *DOCKER_CE_PACKAGES,
        *([compose.package] if compose else []), *([headers] if headers else []),
    ]
    return StackQuery(
        packages=tuple(dict.fromkeys(packages)),
        files=(*(preferences_path(c) for c in PREFERENCE_COMPONENTS), NOUVEAU_BLACKLIST_PATH,
               CUDA_PROFILE_PATH, DAEMON_JSON_PATH, CDI_SPEC_PATH),
        services=(PERSISTENCED_SERVICE, FABRICMANAGER_SERVICE, DOCKER_SERVICE),
        offered=(headers,) if headers else (),
        images=(spec.settings.verify.gpu_test_image,),
    )


def nvidia_stack(spec: HostSpec, probe: HostProbe, plan: HostPlan) -> StackResult | None:
    """Add the stack's operations for this host; None when a step stopped the host."""
    query = stack_query(spec, probe, plan)
    outcome = DriverOutcome()
    # @deploy functions pass their return value through; pyinfra's typing says OperationMeta.
    if not cast(bool, nvidia_driver(spec=spec, probe=probe, plan=plan, query=query,
                                    outcome=outcome)):
        return None
    if not cast(bool, cuda_toolkit(spec=spec, probe=probe, plan=plan, query=query)):
        return None
    compose = cast("Compose | None", docker_engine(spec=spec, plan=plan, query=query))
    if compose is None:
        return None
    if not cast(bool, container_toolkit(spec=spec, probe=probe, plan=plan, query=query)):
        return None
    verify_stack(spec=spec, plan=plan, query=query, outcome=outcome)
    return StackResult(compose=compose)
