"""Which apt packages, at which exact versions, a pin set means for a host.

The NVIDIA stack deploys install these, hold them and write apt preferences for them; the
repository check verifies each one is offered before anything is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from inventory.pins import PinSet

PREFERENCES_DIR = "/etc/apt/preferences.d"
# Above 1000 apt keeps the pinned version even when it means a downgrade, so a pin change in
# pins.toml moves hosts in either direction.
PIN_PRIORITY = 1001

CONTAINER_TOOLKIT_PACKAGES: tuple[str, ...] = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)


# After Debian's and Ubuntu's 50unattended-upgrades: apt configuration lists add up.
UNATTENDED_UPGRADES_PATH = "/etc/apt/apt.conf.d/51gpufleet-unattended-upgrades"


def unattended_upgrades_blacklist(pinned: PinnedPackages) -> tuple[str, ...]:
    """The name prefixes of the pinned NVIDIA packages ("nvidia-", "libnvidia-", "cuda-"),
    as unattended-upgrades' Package-Blacklist regular expressions: every package of the same
    family, the CUDA components the toolkit pulls in included, is left alone."""
    return tuple(sorted({name.split("-", 1)[0] + "-" for name in pinned.all()}))


def preferences_path(component: str) -> str:
    """The apt preferences file of one component of the stack."""
    return f"{PREFERENCES_DIR}/gpufleet-{component}.pref"


@dataclass(frozen=True)
class PinnedPackages:
    """Exact versions by component: package name -> apt version."""

    driver: dict[str, str]
    cuda: dict[str, str]
    container_toolkit: dict[str, str]

    def all(self) -> dict[str, str]:
        return {**self.driver, **self.cuda, **self.container_toolkit}


def driver_packages(pins: PinSet, *, nvswitch: bool) -> dict[str, str]:
    """The driver branch's packages as NVIDIA's CUDA repository names them.

    cuda-drivers-<branch> is the entry point NVIDIA documents; naming its parts too lets apt
    preferences and holds cover every package that carries the driver's version.
    """
    branch, version = pins.driver.branch, pins.driver.version
    names = [
        f"cuda-drivers-{branch}",
        f"nvidia-driver-{branch}",
        f"nvidia-utils-{branch}",
        f"libnvidia-compute-{branch}",
        f"nvidia-compute-utils-{branch}",
    ]
    if pins.driver.flavour == "dkms":
        names.append(f"nvidia-dkms-{branch}")
    elif pins.driver.flavour == "open-dkms":
        names.append(f"nvidia-dkms-{branch}-open")
    if nvswitch:
        # NVSwitch systems (HGX) need Fabric Manager at exactly the driver's version.
        names.append(f"nvidia-fabricmanager-{branch}")
    return dict.fromkeys(names, version)


def pinned_packages(pins: PinSet, *, nvswitch: bool) -> PinnedPackages:
    return PinnedPackages(
        driver=driver_packages(pins, nvswitch=nvswitch),
        cuda={pins.cuda.toolkit_package: pins.cuda.version},
        container_toolkit=dict.fromkeys(CONTAINER_TOOLKIT_PACKAGES, pins.container_toolkit.version),
    )


def docker_packages(pins: PinSet, distro_folder: str) -> dict[str, str] | None:
    """The distro's Docker engine at the pinned version, or None when the pin set has none
    for this distro release."""
    version = pins.docker.versions.get(distro_folder)
    return None if version is None else {"docker.io": version}
