"""The CUDA toolkit (cuda-toolkit-X-Y only: cuda-X-Y would pull its own driver) at the pinned
version, pinned and held, on PATH and LD_LIBRARY_PATH for login shells.

Refused before installing when the driver is older than the release needs, or when NVIDIA's
repository for this distro does not carry the release and no mirror is configured.
"""

from __future__ import annotations

from pyinfra.api import deploy

from deploys.common import stop_host
from deploys.host_network import proxy_env
from deploys.plan import HostPlan
from facts.host_state import StackQuery, stack_state
from facts.probe import HostProbe
from inventory import compat
from inventory.findings import Finding
from inventory.fleet import HostSpec
from inventory.nvidia_stack import (
    CUDA_PROFILE_PATH,
    blocking,
    preferences_path,
    refusal_message,
    render_cuda_profile,
)
from operations.apt_pins import apt_hold, apt_preferences, exact_versions
from operations.host_files import managed_file
from operations.stack_checks import check


def cuda_findings(spec: HostSpec, os_id: str, version_id: str) -> list[Finding]:
    """The pinned driver against the release's minimum, and the distro's repository span."""
    release = spec.pins.cuda.release
    return [
        *compat.check_driver_for_cuda(spec.pins.driver.upstream, release),
        *compat.check_distro_for_cuda(
            os_id, version_id, release, mirror_provides=spec.settings.repos.cuda.url is not None
        ),
    ]


def cuda_refusal(spec: HostSpec, os_id: str, version_id: str) -> str | None:
    stop = blocking(cuda_findings(spec, os_id, version_id),
                    spec.settings.preflight.downgrade_errors)
    if not stop:
        return None
    return refusal_message(
        f"CUDA {spec.pins.cuda.release} cannot be installed on this host (nothing was "
        "installed for it). Alternatives: a driver branch that supports it, a distro whose "
        "NVIDIA repository carries it (ubuntu 22.04 for 12.1), or settings.repos.cuda.url "
        "pointing at a mirror that offers it:",
        stop,
    )


def installed_driver_refusal(installed: dict[str, str], spec: HostSpec) -> str | None:
    """At execution time: the driver actually installed must support the release."""
    package = f"nvidia-utils-{spec.pins.driver.branch}"
    version = installed.get(package)
    if version is None:
        return f"no NVIDIA driver is installed ({package}): CUDA {spec.pins.cuda.release} " \
               "needs one"
    stop = compat.check_driver_for_cuda(version.split("-", 1)[0], spec.pins.cuda.release)
    return refusal_message("the installed driver is too old for the CUDA toolkit:", stop) \
        if stop else None


@deploy("CUDA toolkit")
def cuda_toolkit(spec: HostSpec, probe: HostProbe, plan: HostPlan, query: StackQuery) -> bool:
    """Returns False when the host was stopped."""
    cuda = spec.pins.cuda
    os_release = probe.system.os
    refusal = cuda_refusal(spec, os_release.id or "", os_release.version_id or "") \
        if os_release else "cannot tell which distro this is (no /etc/os-release)"
    if refusal:
        stop_host(name=f"Refuse: CUDA {cuda.release} cannot be installed here", message=refusal)
        return False

    def driver_verdict() -> tuple[str | None, str]:
        message = installed_driver_refusal(stack_state(query).installed, spec)
        return message, f"the installed driver supports CUDA {cuda.release}"

    check(name=f"Ensure the installed driver supports CUDA {cuda.release}",
          verdict=driver_verdict)

    packages = plan.pinned.cuda
    apt_preferences(
        name=f"Ensure apt prefers exactly {cuda.toolkit_package} {cuda.version}",
        path=preferences_path("cuda-toolkit"), packages=packages, query=query,
        component="cuda-toolkit", pin_set=spec.pin_set_name,
    )
    exact_versions(name=f"Ensure {cuda.toolkit_package} {cuda.version} is installed",
                   packages=packages, query=query, env=proxy_env(spec))
    apt_hold(name="Ensure the CUDA toolkit is held", packages=sorted(packages), query=query)
    managed_file(
        name=f"Ensure login shells find CUDA {cuda.release} (PATH, LD_LIBRARY_PATH)",
        path=CUDA_PROFILE_PATH, content=render_cuda_profile(cuda.release), query=query,
    )
    return True
