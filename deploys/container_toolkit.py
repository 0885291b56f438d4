"""The NVIDIA container toolkit (all four packages at one pinned version) and Docker's
daemon.json merged for it: the nvidia runtime, an optional default runtime, registry mirrors
and protection against GPU containers losing their devices on `systemctl daemon-reload`.
Docker restarts only when its configuration changed (or the toolkit's hook just appeared).
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server

from deploys.common import stop_host
from deploys.host_network import proxy_env
from deploys.plan import HostPlan
from facts.host_state import StackQuery, stack_state
from facts.probe import HostProbe
from inventory.daemon_json import DaemonJsonWanted
from inventory.fleet import HostSpec
from inventory.nvidia_stack import (
    CDI_MIN_DOCKER,
    CDI_SPEC_PATH,
    DAEMON_JSON_PATH,
    docker_supports_cdi,
    preferences_path,
)
from operations.apt_pins import apt_hold, apt_preferences, exact_versions
from operations.docker_config import daemon_json


def wanted_daemon_json(spec: HostSpec) -> DaemonJsonWanted:
    docker = spec.settings.docker
    return DaemonJsonWanted(
        default_runtime_nvidia=docker.default_runtime_nvidia,
        protection=docker.gpu_device_protection,
        registry_mirrors=tuple(str(m).rstrip("/") for m in docker.registry_mirrors),
        extra=dict(docker.daemon_json),
    )


def cdi_refusal(spec: HostSpec, plan: HostPlan) -> str | None:
    if spec.settings.docker.gpu_device_protection != "cdi":
        return None
    version = plan.docker_packages.get("docker.io", "")
    if docker_supports_cdi(version):
        return None
    need = ".".join(str(p) for p in CDI_MIN_DOCKER)
    return (f"settings.docker.gpu_device_protection = 'cdi' needs Docker >= {need}; the pin set "
            f"installs docker.io {version} on {plan.distro}. Use 'cgroupfs' (also keeps GPU "
            "containers attached across daemon-reload), or pin a newer Docker engine.")


@deploy("NVIDIA container toolkit")
def container_toolkit(
    spec: HostSpec, probe: HostProbe, plan: HostPlan, query: StackQuery,
    driver_changed: OperationMeta | None = None,
) -> bool:
    """Returns False when the host was stopped."""
    refusal = cdi_refusal(spec, plan)
    if refusal:
        stop_host(name="Refuse: CDI needs a newer Docker", message=refusal)
        return False

    packages = plan.pinned.container_toolkit
    version = spec.pins.container_toolkit.version
    apt_preferences(
        name="Ensure apt prefers exactly the pinned container toolkit",
        path=preferences_path("nvidia-container-toolkit"), packages=packages, query=query,
        component="nvidia-container-toolkit", pin_set=spec.pin_set_name,
    )
    install = exact_versions(
        name=f"Ensure the container toolkit {version} is installed (all four packages)",
        packages=packages, query=query, env=proxy_env(spec),
    )
    apt_hold(name="Ensure the container toolkit is held", packages=sorted(packages), query=query)

    config = daemon_json(
        name="Ensure daemon.json has the nvidia runtime (user keys kept)",
        path=DAEMON_JSON_PATH, wanted=wanted_daemon_json(spec), query=query,
    )

    if spec.settings.docker.gpu_device_protection == "cdi":
        def cdi_stale() -> bool:
            return (stack_state(query).files.get(CDI_SPEC_PATH) is None or install.did_change()
                    or bool(driver_changed and driver_changed.did_change()))

        server.shell(
            name="Generate the CDI specification of the GPUs",
            commands=[f"nvidia-ctk cdi generate --output={CDI_SPEC_PATH}"], _if=cdi_stale,
        )

    # dockerd looks for nvidia-container-runtime-hook (`--gpus`) when it starts: a freshly
    # installed toolkit needs a restart even if daemon.json were already right.
    toolkit_was_there = probe.container_toolkit.status == "ok"
    server.shell(
        name="Restart Docker to apply its new configuration",
        commands=["systemctl restart docker"],
        _if=lambda: config.did_change() or (install.did_change() and not toolkit_was_there),
    )
    return True
