"""Apt pins that hold: exact-version installs, apt preferences and apt-mark holds.

pyinfra has no operation for apt preferences or `apt-mark hold`. These three read the stack
state (facts.host_state: one command for the whole stack), so a no-op run costs nothing more.
A pin change moves a package: preferences first, then unhold + install, then hold again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from pyinfra import host
from pyinfra.api import StringCommand, operation

from facts._shell import quote
from facts.host_state import StackQuery, stack_state
from inventory.nvidia_stack import PIN_PRIORITY, render_apt_preferences
from operations.host_files import write_file_command

logger = logging.getLogger("gpufleet")

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}
# Keep the user's edits to conffiles (e.g. nvidia-container-runtime's config.toml) on upgrade.
APT_INSTALL = (
    "apt-get install -y -q --no-install-recommends --allow-downgrades "
    "--allow-change-held-packages -o Dpkg::Options::=--force-confdef "
    "-o Dpkg::Options::=--force-confold"
)


def _check(packages: Mapping[str, str | None], query: StackQuery) -> None:
    missing = sorted(set(packages) - set(query.packages))
    if missing:
        raise ValueError(f"not in the stack query: {', '.join(missing)}")


@operation()
def apt_preferences(
    path: str,
    packages: Mapping[str, str],
    query: StackQuery,
    component: str,
    pin_set: str,
    priority: int = PIN_PRIORITY,
):
    """
    Ensure an apt preferences file pins each package to its exact version.

    + path: the file under /etc/apt/preferences.d (must be in ``query.files``)
    + packages: package -> exact apt version
    + query: the stack's StackQuery
    + component / pin_set: named in the file's header
    + priority: Pin-Priority; above 1000 apt also downgrades to the pin

    **Example:**

    .. code:: python

        apt_preferences(
            name="Ensure apt prefers exactly the pinned driver",
            path="/etc/apt/preferences.d/gpufleet-nvidia-driver.pref",
            packages={"nvidia-driver-535": "535.183.06-1"},
            query=query, component="nvidia-driver", pin_set="r535-cuda121",
        )
    """
    content = render_apt_preferences(component, pin_set, packages, priority)
    if path not in query.files:
        raise ValueError(f"{path} is not in the stack query")
    if stack_state(query).files.get(path) == content:
        host.noop(f"{path} pins {len(packages)} packages")
        return
    yield write_file_command(path, content)


@operation()
def exact_versions(
    packages: Mapping[str, str | None], query: StackQuery, env: Mapping[str, str] | None = None
):
    """
    Ensure packages are installed at exactly these versions (None: any version, installed).

    Packages that must move are taken off hold first; all of them go to one `apt-get install`
    so their exact inter-dependencies resolve together. Holding again is `apt_hold`'s job.

    + packages: package -> exact apt version, or None
    + query: the stack's StackQuery (must list every package)
    + env: extra environment (proxies)

    **Example:**

    .. code:: python

        exact_versions(
            name="Ensure the pinned CUDA toolkit is installed",
            packages={"cuda-toolkit-12-1": "12.1.1-1"},
            query=query,
        )
    """
    _check(packages, query)
    state = stack_state(query)
    moving = sorted(
        name for name, version in packages.items()
        if name not in state.installed or (version is not None and state.installed[name] != version)
    )
    if not moving:
        host.noop(f"{len(packages)} packages at their pinned versions")
        return
    wanted = " ".join(
        quote(name if version is None else f"{name}={version}")
        for name, version in sorted(packages.items())
    )
    unhold = sorted(name for name in moving if name in state.held)
    script = f"{APT_INSTALL} {wanted}"
    if unhold:
        script = f"apt-mark unhold {' '.join(quote(n) for n in unhold)} >/dev/null && {script}"
    yield StringCommand(script, _env={**APT_ENV, **(env or {})})


@operation()
def apt_hold(packages: Sequence[str], query: StackQuery, hold: bool = True):
    """
    Ensure packages are on hold (or not), so `apt-get upgrade` and unattended upgrades leave
    them alone.

    + packages: package names (must be in ``query.packages``)
    + query: the stack's StackQuery
    + hold: True to hold, False to release

    **Example:**

    .. code:: python

        apt_hold(name="Ensure the driver packages are held", packages=["nvidia-driver-535"],
                 query=query)
    """
    _check(dict.fromkeys(packages), query)
    held = stack_state(query).held
    todo = sorted(p for p in packages if (p in held) != hold)
    if not todo:
        host.noop(f"{len(packages)} packages {'held' if hold else 'not held'}")
        return
    yield f"apt-mark {'hold' if hold else 'unhold'} {' '.join(quote(p) for p in todo)}"


@operation()
def installed_if_offered(
    package: str, query: StackQuery, why: str, env: Mapping[str, str] | None = None
):
    """
    Ensure a package is installed when the repositories offer it; warn when they do not.

    For packages the host may lack for good reason (headers of a custom kernel): the step that
    needs them checks its own result later.

    + package: package name (must be in ``query.packages`` and ``query.offered``)
    + query: the stack's StackQuery
    + why: what the package is for (printed in the warning)
    + env: extra environment (proxies)

    **Example:**

    .. code:: python

        installed_if_offered(name="Ensure headers for the running kernel are installed",
                             package="linux-headers-6.1.0-18-amd64", query=query,
                             why="DKMS builds the NVIDIA module against them")
    """
    state = stack_state(query)
    if package in state.installed:
        host.noop(f"{package} is installed")
        return
    if not state.offered.get(package):
        host.log_styled(
            f"warning: {package} is not offered by any repository; {why}. "
            "Install the headers of the running kernel by hand if the module does not load.",
            fg="yellow", log_func=logger.warning)
        host.noop(f"{package} not offered")
        return
    yield StringCommand(f"{APT_INSTALL} {quote(package)}", _env={**APT_ENV, **(env or {})})
