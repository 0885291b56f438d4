"""The NVIDIA driver's decisions, as pure functions of the pin set and what the host reports:
when a host must reboot, whether the pinned driver is the one running, which kernel headers
DKMS needs, and which driver flavours a distro can run at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from facts.nvidia import KernelModuleState
from rules.findings import Finding

NOUVEAU_BLACKLIST_PATH = "/etc/modprobe.d/gpufleet-blacklist-nouveau.conf"
PERSISTENCED_SERVICE = "nvidia-persistenced"
FABRICMANAGER_SERVICE = "nvidia-fabricmanager"
DKMS_FLAVOURS = ("dkms", "open-dkms")
SIGNED_MODULE_DISTROS = ("ubuntu",)


def headers_package(flavour: str, kernel: str | None, headers_installed: bool | None
                    ) -> str | None:
    """The running kernel's headers, when a DKMS flavour needs them and they are missing."""
    if flavour not in DKMS_FLAVOURS or not kernel or headers_installed is not False:
        return None
    return f"linux-headers-{kernel}"


@dataclass(frozen=True)
class RebootPlan:
    """Why the host reboots: ``now`` (due whatever this run installs) or ``after_install``
    (due only if the driver install changes something)."""

    now: tuple[str, ...] = ()
    after_install: tuple[str, ...] = ()


def reboot_plan(
    *,
    module: KernelModuleState,
    installed_driver: str | None,
    pinned_upstream: str,
    driver_will_change: bool,
) -> RebootPlan:
    """Why this host must reboot to run the pinned driver. Decided before execution, from the
    module that is loaded and the driver that is (or will be) installed.

    ``installed_driver``: the upstream version of the installed driver package, if any.
    """
    now = []
    if module.nouveau_loaded:
        now.append("nouveau is loaded and holds the GPUs (blacklisted; takes a reboot)")
    loaded = module.loaded_version if module.status == "loaded" else None
    if driver_will_change and loaded != pinned_upstream:
        was = f"driver {installed_driver}" if installed_driver else "no driver"
        why = (f"{was} -> {pinned_upstream} installed: the running module "
               f"({loaded or 'none loaded'}) must be replaced")
        return RebootPlan(tuple(now), (why,))
    if installed_driver == pinned_upstream and not driver_will_change:
        if loaded is None:
            now.append(f"driver {pinned_upstream} is installed but no nvidia module is loaded")
        elif loaded != pinned_upstream:
            now.append(f"the loaded nvidia module is {loaded}, the installed driver "
                       f"{pinned_upstream} (Driver/library version mismatch)")
    return RebootPlan(tuple(now))


def module_findings(module: KernelModuleState, pinned_upstream: str,
                    secure_boot: bool | None) -> list[Finding]:
    """After any reboot: the pinned driver must be the one running."""
    found = []
    if module.nouveau_loaded:
        found.append(Finding(
            "error", "nouveau-still-loaded",
            "nouveau is still loaded after the reboot",
            "nouveau loaded", "nouveau blacklisted in /etc/modprobe.d and the initramfs",
            "check that update-initramfs ran (ls -l /boot/initrd.img-$(uname -r)) and that no "
            "kernel command line forces nouveau",
        ))
    if module.status != "loaded":
        why = ("Secure Boot is on: the kernel refuses unsigned modules"
               if secure_boot else "the module did not build or load")
        found.append(Finding(
            "error", "driver-module-not-loaded",
            f"the nvidia kernel module is not loaded ({why})",
            "no /sys/module/nvidia", f"nvidia {pinned_upstream} loaded",
            "read `dmesg | grep -i nvrm` and `dkms status`; headers for the running kernel "
            "must be installed for DKMS flavours",
        ))
    elif module.loaded_version != pinned_upstream:
        found.append(Finding(
            "error", "driver-library-mismatch",
            "the loaded nvidia module is not the installed driver",
            f"loaded {module.loaded_version}", f"{pinned_upstream} (pins.toml)",
            "a module of another version is built for this kernel: check `dkms status` and "
            "remove stale nvidia modules under /lib/modules/$(uname -r)",
        ))
    return found


def reboot_pending_finding(reasons: list[str]) -> Finding:
    return Finding(
        "error", "reboot-required",
        "the host needs a reboot to run the pinned driver, and settings.driver.reboot is "
        "'never'",
        "; ".join(reasons), "the pinned driver loaded",
        "reboot the host yourself and re-run the deploy, or set settings.driver.reboot = "
        "'if-needed'",
    )


def precompiled_findings(flavour: str, os_id: str) -> list[Finding]:
    """Signed precompiled modules exist only where the distro builds them (Ubuntu)."""
    if flavour != "precompiled-signed" or os_id in SIGNED_MODULE_DISTROS:
        return []
    return [Finding(
        "error", "no-signed-precompiled-modules",
        f"{os_id} publishes no signed precompiled NVIDIA kernel modules",
        f"flavour precompiled-signed on {os_id}",
        "a distro with linux-modules-nvidia-*-server packages (Ubuntu)",
        "pick the dkms or open-dkms flavour in pins.toml; under Secure Boot enroll a MOK key "
        "that DKMS signs with (mokutil --import, reboot), or turn Secure Boot off",
    )]
