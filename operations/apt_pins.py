"""Apt pins that hold: exact-version installs, apt preferences and apt-mark holds.

pyinfra has no operation for apt preferences or `apt-mark hold`. These compare with the one
state read (facts.host_state), so a no-op run costs nothing more. A pin change moves a package:
preferences first, then unhold + install, then hold again.

Commands that download take ``env_file``: a file on the host of ``VAR=value`` lines (proxies)
sourced by the command itself, so credentials never appear on a command line or in output.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

from pyinfra import host
from pyinfra.api import FunctionCommand, OperationValueError, StringCommand, operation

from facts._shell import quote
from facts.apt import AptOffered
from facts.host_state import require_watched, sha256_text
from inventory.schema import APT_LOCK_TIMEOUT_SECONDS
from operations.apt_lock import after_apt_lock, apt_get
from operations.desired import desired
from operations.host_files import file_commands, write_file_command
from operations.host_reading import host_state
from operations.messages import tell
from rules.packages import PIN_PRIORITY
from rules.render import render_apt_preferences

logger = logging.getLogger("gpufleet")

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}


def apt_install(lock_timeout: int) -> str:
    """apt-get install as gpufleet runs it. Keeps the user's edits to conffiles (e.g.
    nvidia-container-runtime's config.toml) on upgrade."""
    return (f"{apt_get(lock_timeout)} install -y -q --no-install-recommends --allow-downgrades "
            "--allow-change-held-packages -o Dpkg::Options::=--force-confdef "
            "-o Dpkg::Options::=--force-confold")

_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_VERSION = re.compile(r"[A-Za-z0-9.+~:-]+")


def with_env_file(script: str, env_file: str | None) -> str:
    """Prefix ``script`` so that it exports the variables of ``env_file`` when it exists."""
    if not env_file:
        return script
    return f"if [ -r {quote(env_file)} ]; then set -a; . {quote(env_file)}; set +a; fi; {script}"


def check_packages(packages: Mapping[str, str | None]) -> None:
    for name, version in packages.items():
        if not _PACKAGE.fullmatch(name):
            raise OperationValueError(f"not an apt package name: {name!r}")
        if version is not None and not _VERSION.fullmatch(version):
            raise OperationValueError(f"not an apt version: {name} {version!r}")


@operation()
def apt_preferences(
    path: str,
    packages: Mapping[str, str],
    component: str,
    pin_set: str,
    priority: int = PIN_PRIORITY,
):
    """
    Ensure an apt preferences file pins each package to its exact version.

    + path: the file under /etc/apt/preferences.d
    + packages: package -> exact apt version
    + component / pin_set: named in the file's header
    + priority: Pin-Priority; above 1000 apt also downgrades to the pin

    **Example:**

    .. code:: python

        apt_preferences(
            name="Ensure apt prefers exactly the pinned driver",
            path="/etc/apt/preferences.d/gpufleet-nvidia-driver.pref",
            packages={"nvidia-driver-535": "535.183.06-1"},
            component="nvidia-driver", pin_set="r535-cuda121",
        )
    """
    require_watched(path)
    if not packages:
        raise OperationValueError("no packages to pin")
    check_packages(packages)
    content = render_apt_preferences(component, pin_set, packages, priority)
    desired().file(path, sha256_text(content))
    commands = list(file_commands(path, host_state().file(path), sha256_text(content),
                                  [write_file_command(path, content)], "644", "root:root"))
    if not commands:
        host.noop(f"{path} pins {len(packages)} packages")
        return
    yield from commands


@operation()
def exact_versions(packages: Mapping[str, str | None], env_file: str | None = None,
                   lock_timeout: int = APT_LOCK_TIMEOUT_SECONDS):
    """
    Ensure packages are installed at exactly these versions (None: any version, installed).

    Packages that must move are taken off hold first; all of them go to one `apt-get install`
    so their exact inter-dependencies resolve together. Holding again is `apt_hold`'s job; if
    the install fails, the packages taken off hold are held again at once, so a failed run
    leaves every hold as it found it.

    + packages: package -> exact apt version, or None
    + env_file: a VAR=value file on the host sourced first (proxies)
    + lock_timeout: seconds to wait for another process's apt/dpkg lock

    **Example:**

    .. code:: python

        exact_versions(
            name="Ensure the pinned CUDA toolkit is installed",
            packages={"cuda-toolkit-12-1": "12.1.1-1"},
        )
    """
    check_packages(packages)
    for name, version in packages.items():
        desired().package(name, version)
    state = host_state()
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
    unhold = " ".join(quote(n) for n in sorted(name for name in moving if name in state.held))
    script = f"{apt_install(lock_timeout)} {wanted}"
    if unhold:
        script = (f"apt-mark unhold {unhold} >/dev/null && {{ {script} || {{ rc=$?; "
                  f"apt-mark hold {unhold} >/dev/null; exit $rc; }}; }}")
    yield StringCommand(with_env_file(after_apt_lock(script, lock_timeout), env_file),
                        _env=APT_ENV)


@operation()
def apt_hold(packages: Sequence[str], hold: bool = True,
             lock_timeout: int = APT_LOCK_TIMEOUT_SECONDS):
    """
    Ensure packages are on hold (or not), so `apt-get upgrade` and unattended upgrades leave
    them alone.

    + packages: package names
    + hold: True to hold, False to release
    + lock_timeout: seconds to wait for another process's apt/dpkg lock

    **Example:**

    .. code:: python

        apt_hold(name="Ensure the driver packages are held", packages=["nvidia-driver-535"])
    """
    check_packages(dict.fromkeys(packages))
    desired().hold(list(packages), hold)
    held = host_state().held
    todo = sorted(p for p in packages if (p in held) != hold)
    if not todo:
        host.noop(f"{len(packages)} packages {'held' if hold else 'not held'}")
        return
    yield StringCommand(after_apt_lock(
        f"apt-mark {'hold' if hold else 'unhold'} {' '.join(quote(p) for p in todo)}",
        lock_timeout))


@operation()
def dpkg_run_finished(lock_timeout: int = APT_LOCK_TIMEOUT_SECONDS):
    """
    Ensure no dpkg run is left half done: an interrupted one is finished with
    `dpkg --configure -a`, the command apt and dpkg themselves ask for ("dpkg was interrupted,
    you must manually run 'dpkg --configure -a' to correct the problem"); until then apt
    installs nothing. It configures what is already unpacked, removes nothing and leaves
    holds as they are. If a package's configuration fails, the host stops with dpkg's error.

    + lock_timeout: seconds to wait for another process's apt/dpkg lock (a dpkg that is
      still running is not interrupted: this waits for it instead)

    **Example:**

    .. code:: python

        dpkg_run_finished(name="Ensure no interrupted dpkg run is left")
    """
    state = host_state()
    if not state.dpkg_interrupted:
        host.noop("no interrupted dpkg run")
        return
    found = [f"{name} ({what})" for name, what in sorted(state.dpkg_unfinished.items())]
    if state.dpkg_journal:
        found.append(f"{state.dpkg_journal} unrecorded step(s) in /var/lib/dpkg/updates")
    # The probe cannot tell an interrupted run from one still going: the command waits for
    # the lock and then finishes only what is still left.
    yield FunctionCommand(tell, ("dpkg left work unfinished (" + ", ".join(found) + "): once no "
                                 "other apt or dpkg process runs, `dpkg --configure -a` "
                                 "finishes it",), {})
    yield StringCommand(after_apt_lock(
        "if [ -n \"$(dpkg --audit)\" ] || ls /var/lib/dpkg/updates | grep -q '^[0-9][0-9]*$'; "
        "then dpkg --configure -a || { rc=$?; echo 'gpufleet: dpkg --configure -a failed (see "
        "dpkg above: a package cannot be configured). Fix or remove that package, run "
        "dpkg --configure -a until it succeeds, then run gpufleet again.' >&2; exit $rc; }; "
        "else echo 'gpufleet: the other dpkg run finished its work itself' >&2; fi",
        lock_timeout), _env=APT_ENV)


# Debian's maintainer scripts ask /usr/sbin/policy-rc.d before starting a service; 101 = no.
POLICY_RC_D = "/usr/sbin/policy-rc.d"


def without_service_starts(script: str) -> str:
    """``script`` with packages' services not started on install (a policy-rc.d of the host's
    own is respected and left in place)."""
    return (f"if [ -e {POLICY_RC_D} ]; then {script}; else "
            f"trap 'rm -f {POLICY_RC_D}' EXIT && printf '#!/bin/sh\\nexit 101\\n' > "
            f"{POLICY_RC_D} && chmod 755 {POLICY_RC_D} && {script}; fi")


@operation()
def packages_present(packages: Sequence[str], env_file: str | None = None,
                     start_services: bool = True, record: bool = True,
                     lock_timeout: int = APT_LOCK_TIMEOUT_SECONDS):
    """
    Ensure packages are installed, at whatever version the distribution offers.

    For tools the deploy itself needs on a bare host (curl, gnupg): the package lists are
    refreshed first, since a fresh image may have none.

    + packages: package names
    + env_file: a VAR=value file on the host sourced first (proxies)
    + start_services: False keeps the packages' services from starting on install, for
      services that must not run before their configuration is written and checked
    + record: part of the host's manifest (False: asked for only when missing, so not on
      every run)
    + lock_timeout: seconds to wait for another process's apt/dpkg lock

    **Example:**

    .. code:: python

        packages_present(name="Ensure curl and gnupg are installed",
                         packages=["curl", "gnupg"])
    """
    check_packages(dict.fromkeys(packages))
    for name in packages if record else ():
        desired().package(name, None)
    missing = [p for p in packages if p not in host_state().installed]
    if not missing:
        host.noop(f"{len(packages)} packages installed")
        return
    script = (f"{apt_get(lock_timeout)} update -q && {apt_install(lock_timeout)} "
              f"{' '.join(quote(p) for p in missing)}")
    if not start_services:
        script = without_service_starts(script)
    yield StringCommand(with_env_file(after_apt_lock(script, lock_timeout), env_file),
                        _env=APT_ENV)


@operation()
def installed_if_offered(package: str, why: str, env_file: str | None = None,
                         lock_timeout: int = APT_LOCK_TIMEOUT_SECONDS):
    """
    Ensure a package is installed when the repositories offer it; warn when they do not.

    For packages the host may lack for good reason (headers of a custom kernel): the step that
    needs them checks its own result later. What is offered is read only when the package is
    missing.

    + package: package name
    + why: what the package is for (printed in the warning)
    + env_file: a VAR=value file on the host sourced first (proxies)
    + lock_timeout: seconds to wait for another process's apt/dpkg lock

    **Example:**

    .. code:: python

        installed_if_offered(name="Ensure headers for the running kernel are installed",
                             package="linux-headers-6.1.0-18-amd64",
                             why="DKMS builds the NVIDIA module against them")
    """
    check_packages({package: None})
    if package in host_state().installed:
        host.noop(f"{package} is installed")
        return
    if not host.get_fact(AptOffered, packages=(package,)).get(package):
        host.log_styled(
            f"warning: {package} is not offered by any repository; {why}. "
            "Install the headers of the running kernel by hand if the module does not load.",
            fg="yellow", log_func=logger.warning)
        host.noop(f"{package} not offered")
        return
    script = after_apt_lock(f"{apt_install(lock_timeout)} {quote(package)}", lock_timeout)
    yield StringCommand(with_env_file(script, env_file), _env=APT_ENV)
