"""The NVIDIA host stack's decisions, as pure functions: the files it renders on hosts, when a
host needs a reboot, which Compose a distro ships, and the refusals with their explanations.

No pyinfra here: the deploys (deploys/driver.py ... deploys/verify_stack.py) call these with
values read from facts, and the unit tests call them with plain values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from inventory.findings import Finding

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates" / "nvidia"

# Where the stack writes on a host (one place, so the state fact reads exactly these).
PREFERENCES_DIR = "/etc/apt/preferences.d"
NOUVEAU_BLACKLIST_PATH = "/etc/modprobe.d/gpufleet-blacklist-nouveau.conf"
CUDA_PROFILE_PATH = "/etc/profile.d/gpufleet-cuda.sh"
DAEMON_JSON_PATH = "/etc/docker/daemon.json"
CDI_SPEC_PATH = "/etc/cdi/nvidia.yaml"

# Above 1000 apt keeps the pinned version even when it means a downgrade, so a pin change in
# pins.toml moves hosts in either direction.
PIN_PRIORITY = 1001

PERSISTENCED_SERVICE = "nvidia-persistenced"
FABRICMANAGER_SERVICE = "nvidia-fabricmanager"
DOCKER_SERVICE = "docker"


def preferences_path(component: str) -> str:
    return f"{PREFERENCES_DIR}/gpufleet-{component}.pref"


@cache
def _templates() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_apt_preferences(
    component: str, pin_set: str, packages: Mapping[str, str], priority: int = PIN_PRIORITY
) -> str:
    """An apt preferences file pinning each package to its exact version."""
    if not packages:
        raise ValueError("no packages to pin")
    for name, version in packages.items():
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name) or not version or " " in version:
            raise ValueError(f"not an apt package and version: {name!r} {version!r}")
    return _templates().get_template("apt-preferences.j2").render(
        component=component, pin_set=pin_set, priority=priority,
        packages=sorted(packages.items()),
    )


def render_nouveau_blacklist() -> str:
    return _templates().get_template("blacklist-nouveau.conf.j2").render()


def cuda_home(release: str) -> str:
    """Where NVIDIA's packages put a release: cuda-toolkit-12-1 -> /usr/local/cuda-12.1."""
    return f"/usr/local/cuda-{release}"


def render_cuda_profile(release: str) -> str:
    if not re.fullmatch(r"\d+\.\d+", release):
        raise ValueError(f"CUDA release must be MAJOR.MINOR, got {release!r}")
    return _templates().get_template("cuda-profile.sh.j2").render(
        release=release, cuda_home=cuda_home(release)
    )


# --- reboots ---------------------------------------------------------------------------------
def reboot_reasons(
    *,
    driver_installed: bool,
    module_loaded: bool | None,
    loaded_version: str | None,
    pinned_upstream: str,
    nouveau_loaded: bool | None,
) -> list[str]:
    """Why this host must reboot to run the pinned driver; empty when it need not.

    A new or changed driver shows up as a loaded module of another version (or none loaded);
    nouveau holding the GPUs only goes away with a reboot after the blacklist.
    """
    reasons = []
    if nouveau_loaded:
        reasons.append("nouveau is loaded and holds the GPUs (blacklisted; takes a reboot)")
    if driver_installed:
        if not module_loaded:
            reasons.append(f"driver {pinned_upstream} is installed but no nvidia module is loaded")
        elif loaded_version != pinned_upstream:
            reasons.append(
                f"the loaded nvidia module is {loaded_version or 'of unknown version'}, the "
                f"installed driver {pinned_upstream} (Driver/library version mismatch)"
            )
    return reasons


# --- Docker and Compose ------------------------------------------------------------------------
@dataclass(frozen=True)
class Compose:
    """The Compose implementation a distro ships with its docker.io, and how to call it."""

    package: str
    kind: Literal["v1", "v2"]
    command: tuple[str, ...]


_V1 = Compose("docker-compose", "v1", ("docker-compose",))
_V2_UBUNTU = Compose("docker-compose-v2", "v2", ("docker", "compose"))
# NVIDIA repo folder -> the distro's own Compose package. Debian ships only Compose v1
# (bookworm: docker-compose 1.29.2, which knows compose-spec GPU device reservations); Ubuntu
# ships the v2 plugin as docker-compose-v2 from 22.04 on.
COMPOSE_BY_DISTRO: dict[str, Compose] = {
    "debian11": _V1,
    "debian12": _V1,
    "ubuntu2004": _V1,
    "ubuntu2204": _V2_UBUNTU,
    "ubuntu2404": _V2_UBUNTU,
}

# CDI device injection in dockerd: `"features": {"cdi": true}` from Docker 25 (experimental),
# on by default from 28. Older engines ignore the CDI spec.
CDI_MIN_DOCKER = (25, 0)


def docker_release(apt_version: str) -> tuple[int, int] | None:
    """(major, minor) of a docker.io apt version: "20.10.24+dfsg1-1+deb12u1+b6" -> (20, 10)."""
    match = re.match(r"^(?:\d+:)?(\d+)\.(\d+)", apt_version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def docker_supports_cdi(apt_version: str) -> bool:
    release = docker_release(apt_version)
    return release is not None and release >= CDI_MIN_DOCKER


# --- refusals ----------------------------------------------------------------------------------
def blocking(findings: Iterable[Finding], downgraded: Iterable[str] = ()) -> list[Finding]:
    """The errors that stop a host; codes the operator accepted (preflight.downgrade_errors)
    do not, exactly as in preflight."""
    accepted = set(downgraded)
    return [
        f for f in findings
        if f.severity == "error" and "all" not in accepted and f.code not in accepted
    ]


def refusal_message(title: str, findings: Iterable[Finding]) -> str:
    lines = [title]
    for finding in findings:
        lines += ["  " + line for line in finding.render().splitlines()]
    return "\n".join(lines)


SIGNED_MODULE_DISTROS = ("ubuntu",)


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


def module_findings(
    *,
    module_loaded: bool | None,
    loaded_version: str | None,
    pinned_upstream: str,
    nouveau_loaded: bool | None,
    secure_boot: bool | None,
) -> list[Finding]:
    """After any reboot: the pinned driver must be the one running."""
    found = []
    if nouveau_loaded:
        found.append(Finding(
            "error", "nouveau-still-loaded",
            "nouveau is still loaded after the reboot",
            "nouveau loaded", "nouveau blacklisted in /etc/modprobe.d and the initramfs",
            "check that update-initramfs ran (ls -l /boot/initrd.img-$(uname -r)) and that no "
            "kernel command line forces nouveau",
        ))
    if not module_loaded:
        why = ("Secure Boot is on: the kernel refuses unsigned modules"
               if secure_boot else "the module did not build or load")
        found.append(Finding(
            "error", "driver-module-not-loaded",
            f"the nvidia kernel module is not loaded after the reboot ({why})",
            "no /sys/module/nvidia", f"nvidia {pinned_upstream} loaded",
            "read `dmesg | grep -i nvrm` and `dkms status`; headers for the running kernel "
            "must be installed for DKMS flavours",
        ))
    elif loaded_version != pinned_upstream:
        found.append(Finding(
            "error", "driver-library-mismatch",
            "the loaded nvidia module is not the installed driver even after a reboot",
            f"loaded {loaded_version}", f"{pinned_upstream} (pins.toml)",
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
