"""The NVIDIA driver at exactly the pinned version, held there, running.

Pinned by apt preferences and `apt-mark hold` (branch packages otherwise move to the newest
driver of the branch), nouveau blacklisted with the initramfs refreshed, headers for DKMS
flavours, the persistence daemon, Fabric Manager on NVSwitch systems (at the driver's own
version: CUDA fails with error 802 otherwise).

Whether the host reboots is decided before execution, from the loaded module and what this
run installs, so the preview shows it: a reboot due now (nouveau loaded, a module that is not
the installed driver) is a change; one caused by the driver install is a conditional change
tied to it. Reboots go one host at a time, and end with a check that the pinned driver runs.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server

from inventory.fleet import HostSpec
from operations.apt_pins import apt_hold, apt_preferences, exact_versions, installed_if_offered
from operations.checks import check
from operations.conditions import after_change
from operations.host_files import managed_file
from operations.host_reading import host_state
from operations.reboot import rebooted
from operations.services import service
from rules.driver_state import (
    FABRICMANAGER_SERVICE,
    NOUVEAU_BLACKLIST_PATH,
    PERSISTENCED_SERVICE,
    headers_package,
    module_findings,
    reboot_pending_finding,
    reboot_plan,
)
from rules.findings import refusal_message
from rules.host_plan import HostPlan
from rules.network import apt_context
from rules.packages import preferences_path
from rules.render import render_nouveau_blacklist
from rules.rollout import ROLLOUT_BATCH_DATA


@deploy("NVIDIA driver")
def nvidia_driver(spec: HostSpec, plan: HostPlan, secure_boot: bool | None) -> OperationMeta:
    """Returns the driver install, which later steps tie their own changes to."""
    pins = spec.pins.driver
    settings = spec.settings.driver
    state = host_state()
    apt = apt_context(spec.settings)

    blacklist = managed_file(
        name="Ensure nouveau is blacklisted", path=NOUVEAU_BLACKLIST_PATH,
        content=render_nouveau_blacklist(),
    )
    initramfs = after_change(blacklist)
    if initramfs is not None:
        server.shell(name="Rebuild the initramfs so the nouveau blacklist holds at boot",
                     commands=["update-initramfs -u"], **initramfs)

    packages = plan.pinned.driver
    driver_will_change = any(state.installed.get(p) != v for p, v in packages.items())
    headers = headers_package(pins.flavour, state.system.kernel,
                              state.system.kernel_headers_installed)
    if headers and driver_will_change:  # DKMS builds the module when the driver is installed
        installed_if_offered(
            name="Ensure headers for the running kernel are installed", package=headers,
            why="DKMS builds the NVIDIA module against them", **apt.install,
        )

    apt_preferences(
        name="Ensure apt prefers exactly the pinned driver packages",
        path=preferences_path("nvidia-driver"), packages=packages,
        component="nvidia-driver", pin_set=spec.pin_set_name,
    )
    install = exact_versions(
        name=f"Ensure driver {pins.version} is installed", packages=packages, **apt.install,
    )
    apt_hold(name="Ensure the driver packages are held", packages=sorted(packages),
             **apt.locking)
    units = [PERSISTENCED_SERVICE] + ([FABRICMANAGER_SERVICE] if plan.nvswitch else [])
    for unit in units:
        service(name=f"Ensure {unit} is enabled at boot", unit=unit, running=False)

    # Decided now, from what is loaded and what this run installs (shown by the preview).
    utils = state.installed.get(f"nvidia-utils-{pins.branch}")
    reboot = reboot_plan(
        module=state.kernel_module,
        installed_driver=utils.split("-", 1)[0] if utils else None,
        pinned_upstream=pins.upstream,
        driver_will_change=driver_will_change,
    )
    rebooting = None
    # A plain run reboots one host at a time, fleet-wide; tools/rollout.py has already cut
    # the fleet into batches (drained from the gateway), so a batch reboots together.
    serial = host.data.get(ROLLOUT_BATCH_DATA) is None
    if settings.reboot == "if-needed" and reboot.now:
        reasons = [*reboot.now, *reboot.after_install]  # one reboot serves both
        rebooting = rebooted(
            name="Reboot: " + "; ".join(reasons), reasons=reasons,
            timeout=settings.reboot_timeout_seconds, _serial=serial,
        )
    elif settings.reboot == "if-needed" and reboot.after_install:
        rebooting = rebooted(
            name="Reboot if the driver install changed it: " + "; ".join(reboot.after_install),
            reasons=list(reboot.after_install), timeout=settings.reboot_timeout_seconds,
            _serial=serial, **(after_change(install) or {}),
        )

    def running_verdict() -> tuple[str | None, str]:
        module = host_state().kernel_module
        stop = module_findings(module, pins.upstream, secure_boot)
        if stop and settings.reboot == "never":
            pending = [*reboot.now, *reboot.after_install] or [f.what for f in stop]
            stop = [reboot_pending_finding(pending)]
        if stop:
            return refusal_message("the pinned driver is not running:", stop), ""
        return None, f"nvidia {module.loaded_version} loaded, as pinned"

    check(name=f"Ensure driver {pins.upstream} is the one running", verdict=running_verdict)
    # After a reboot the units started at boot (they are enabled): nothing to start then.
    only_without_reboot: dict[str, Any] = (
        {"_if": lambda: not rebooting.did_change()} if rebooting is not None else {})
    for unit in units:
        service(name=f"Ensure {unit} runs", unit=unit, **only_without_reboot)
    return install
