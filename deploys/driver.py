"""The NVIDIA driver at exactly the pinned version, held there, running.

Pinned by apt preferences and `apt-mark hold` (branch packages otherwise move to the newest
driver of the branch), nouveau blacklisted with the initramfs refreshed, headers for DKMS
flavours, the persistence daemon, Fabric Manager on NVSwitch systems (at the driver's own
version: CUDA fails with error 802 otherwise). Reboots happen only when the running module is
not the installed driver (or nouveau holds the GPUs), one host at a time, and are followed by
a check that the pinned driver is the one loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from deploys.common import stop_host
from deploys.host_network import proxy_env
from deploys.plan import HostPlan
from facts.host_state import StackQuery, stack_state
from facts.probe import HostProbe
from inventory import compat
from inventory.fleet import HostSpec
from inventory.nvidia_stack import (
    FABRICMANAGER_SERVICE,
    NOUVEAU_BLACKLIST_PATH,
    PERSISTENCED_SERVICE,
    blocking,
    module_findings,
    precompiled_findings,
    preferences_path,
    reboot_reasons,
    refusal_message,
    render_nouveau_blacklist,
)
from operations.apt_pins import apt_hold, apt_preferences, exact_versions, installed_if_offered
from operations.host_files import managed_file
from operations.reboot import reboot_when
from operations.services import service
from operations.stack_checks import check

logger = logging.getLogger("gpufleet")

DKMS_FLAVOURS = ("dkms", "open-dkms")


@dataclass
class DriverOutcome:
    """What the driver step learnt at execution time, for the steps after it."""

    reboot_pending: list[str] = field(default_factory=list)


def headers_package(spec: HostSpec, probe: HostProbe) -> str | None:
    """The running kernel's headers, when a DKMS flavour needs them and they are missing."""
    kernel = probe.system.kernel
    if spec.pins.driver.flavour not in DKMS_FLAVOURS or not kernel:
        return None
    if probe.system.kernel_headers_installed is not False:
        return None
    return f"linux-headers-{kernel}"


def driver_refusal(spec: HostSpec, probe: HostProbe) -> str | None:
    """Why the pinned driver cannot run on this host (Secure Boot and flavour), or None."""
    flavour = spec.pins.driver.flavour
    os_id = probe.system.os.id if probe.system.os and probe.system.os.id else "unknown"
    findings = compat.check_secure_boot(probe.secure_boot.enforcing, flavour)
    findings += precompiled_findings(flavour, os_id)
    stop = blocking(findings, spec.settings.preflight.downgrade_errors)
    if not stop:
        return None
    return refusal_message(
        f"the pinned {flavour} driver cannot be used on this host (nothing was installed):",
        stop,
    )


def driver_installed(installed: dict[str, str], packages: dict[str, str]) -> bool:
    return all(installed.get(name) == version for name, version in packages.items())


@deploy("NVIDIA driver")
def nvidia_driver(
    spec: HostSpec, probe: HostProbe, plan: HostPlan, query: StackQuery, outcome: DriverOutcome
) -> bool:
    """Returns False when the host was stopped before any change."""
    pins = spec.pins.driver
    settings = spec.settings.driver
    refusal = driver_refusal(spec, probe)
    if refusal:
        stop_host(name="Refuse: the pinned driver cannot run here", message=refusal)
        return False

    blacklist = managed_file(
        name="Ensure nouveau is blacklisted", path=NOUVEAU_BLACKLIST_PATH,
        content=render_nouveau_blacklist(), query=query,
    )
    server.shell(
        name="Rebuild the initramfs so the nouveau blacklist holds at boot",
        commands=["update-initramfs -u"], _if=blacklist.did_change,
    )

    headers = headers_package(spec, probe)
    if headers:
        installed_if_offered(
            name="Ensure headers for the running kernel are installed", package=headers,
            query=query, why="DKMS builds the NVIDIA module against them", env=proxy_env(spec),
        )

    packages = plan.pinned.driver
    apt_preferences(
        name="Ensure apt prefers exactly the pinned driver packages",
        path=preferences_path("nvidia-driver"), packages=packages, query=query,
        component="nvidia-driver", pin_set=spec.pin_set_name,
    )
    exact_versions(
        name=f"Ensure driver {pins.version} is installed", packages=packages, query=query,
        env=proxy_env(spec),
    )
    apt_hold(name="Ensure the driver packages are held", packages=sorted(packages), query=query)
    service(
        name="Ensure the persistence daemon is enabled at boot", unit=PERSISTENCED_SERVICE,
        query=query, running=False,
    )
    if plan.nvswitch:
        service(
            name="Ensure Fabric Manager is enabled at boot (NVSwitch system)",
            unit=FABRICMANAGER_SERVICE, query=query, running=False,
        )

    def why_reboot() -> list[str]:
        state = stack_state(query)
        module = state.kernel_module
        reasons = reboot_reasons(
            driver_installed=driver_installed(state.installed, packages),
            module_loaded=module.status == "loaded",
            loaded_version=module.loaded_version,
            pinned_upstream=pins.upstream,
            nouveau_loaded=module.nouveau_loaded,
        )
        if reasons and settings.reboot == "never":
            outcome.reboot_pending[:] = reasons
            for reason in reasons:
                host.log_styled(f"reboot needed (settings.driver.reboot = never): {reason}",
                                fg="yellow", log_func=logger.warning)
            return []
        return reasons

    reboot_when(
        name="Reboot if the driver needs it (one host at a time)", reasons=why_reboot,
        timeout=settings.reboot_timeout_seconds, _serial=True,
    )

    def running_verdict() -> tuple[str | None, str]:
        if outcome.reboot_pending:
            return None, "not checked: reboot pending"
        module = stack_state(query).kernel_module
        stop = module_findings(
            module_loaded=module.status == "loaded", loaded_version=module.loaded_version,
            pinned_upstream=pins.upstream, nouveau_loaded=module.nouveau_loaded,
            secure_boot=probe.secure_boot.enforcing,
        )
        if stop:
            return refusal_message("the pinned driver is not running:", stop), ""
        return None, f"nvidia {module.loaded_version} loaded, as pinned"

    check(name=f"Ensure driver {pins.upstream} is the one running", verdict=running_verdict)
    service(
        name="Ensure the persistence daemon runs", unit=PERSISTENCED_SERVICE, query=query,
        _if=lambda: not outcome.reboot_pending,
    )
    if plan.nvswitch:
        service(
            name="Ensure Fabric Manager runs (NVSwitch system)", unit=FABRICMANAGER_SERVICE,
            query=query, _if=lambda: not outcome.reboot_pending,
        )
    return True
