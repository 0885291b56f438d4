"""The NVIDIA container toolkit (all four packages at one pinned version) and Docker's
daemon.json merged for it: the nvidia runtime, an optional default runtime, registry mirrors
and protection against GPU containers losing their devices on `systemctl daemon-reload`.
Docker restarts only when its configuration changed (or the toolkit's hook just appeared);
the CDI specification is generated again whenever it no longer matches the pinned driver.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server

from inventory.fleet import HostSpec
from operations.apt_pins import apt_hold, apt_preferences, exact_versions
from operations.conditions import after_change
from operations.docker_config import daemon_json
from operations.host_reading import host_state
from rules.container_runtime import (
    CDI_SPEC_PATH,
    DAEMON_JSON_CLAIMS_PATH,
    DAEMON_JSON_PATH,
    cdi_spec_stale,
    wanted_daemon_json,
)
from rules.host_plan import HostPlan
from rules.network import apt_context
from rules.packages import preferences_path


@deploy("NVIDIA container toolkit")
def container_toolkit(spec: HostSpec, plan: HostPlan, driver_install: OperationMeta) -> None:
    """``driver_install``: the driver step's install, which makes a CDI spec stale."""
    apt = apt_context(spec.settings)
    state = host_state()
    packages = plan.pinned.container_toolkit
    version = spec.pins.container_toolkit.version
    apt_preferences(
        name="Ensure apt prefers exactly the pinned container toolkit",
        path=preferences_path("nvidia-container-toolkit"), packages=packages,
        component="nvidia-container-toolkit", pin_set=spec.pin_set_name,
    )
    install = exact_versions(
        name=f"Ensure the container toolkit {version} is installed (all four packages)",
        packages=packages, **apt.install,
    )
    apt_hold(name="Ensure the container toolkit is held", packages=sorted(packages),
             **apt.locking)

    config = daemon_json(
        name="Ensure daemon.json has the nvidia runtime (user keys kept)",
        path=DAEMON_JSON_PATH, record=DAEMON_JSON_CLAIMS_PATH,
        wanted=wanted_daemon_json(spec.settings.docker),
    )

    if spec.settings.docker.gpu_device_protection == "cdi":
        stale = cdi_spec_stale(state.content(CDI_SPEC_PATH), spec.pins.driver.upstream)
        generate = [f"nvidia-ctk cdi generate --output={CDI_SPEC_PATH}"]
        if stale:
            server.shell(name=f"Generate the CDI specification of the GPUs ({stale})",
                         commands=generate)
        elif (again := after_change(driver_install, install)) is not None:
            server.shell(
                name="Generate the CDI specification again if the driver or toolkit changed",
                commands=generate, **again,
            )

    # dockerd looks for nvidia-container-runtime-hook (`--gpus`) when it starts: a freshly
    # installed toolkit needs a restart even if daemon.json were already right.
    causes = [config] if "nvidia-container-toolkit" in state.installed else [config, install]
    restart = after_change(*causes)
    if restart is not None:
        server.shell(name="Restart Docker to apply its new configuration",
                     commands=["systemctl restart docker"], **restart)
