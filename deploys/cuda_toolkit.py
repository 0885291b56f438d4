"""The CUDA toolkit (cuda-toolkit-X-Y only: cuda-X-Y would pull its own driver) at the pinned
version, pinned and held, on PATH and LD_LIBRARY_PATH for login shells.

Whether the pinned driver supports the release and the distro's repository carries it was
decided by preflight; nvcc's answer is checked by the stack's verification.
"""

from __future__ import annotations

from pyinfra.api import deploy

from inventory.fleet import HostSpec
from operations.apt_pins import apt_hold, apt_preferences, exact_versions
from operations.host_files import managed_file
from rules.host_plan import HostPlan
from rules.network import apt_context
from rules.packages import preferences_path
from rules.render import render_cuda_profile

CUDA_PROFILE_PATH = "/etc/profile.d/gpufleet-cuda.sh"


@deploy("CUDA toolkit")
def cuda_toolkit(spec: HostSpec, plan: HostPlan) -> None:
    apt = apt_context(spec.settings)
    cuda = spec.pins.cuda
    packages = plan.pinned.cuda
    apt_preferences(
        name=f"Ensure apt prefers exactly {cuda.toolkit_package} {cuda.version}",
        path=preferences_path("cuda-toolkit"), packages=packages,
        component="cuda-toolkit", pin_set=spec.pin_set_name,
    )
    exact_versions(name=f"Ensure {cuda.toolkit_package} {cuda.version} is installed",
                   packages=packages, **apt.install)
    apt_hold(name="Ensure the CUDA toolkit is held", packages=sorted(packages),
             **apt.locking)
    managed_file(
        name=f"Ensure login shells find CUDA {cuda.release} (PATH, LD_LIBRARY_PATH)",
        path=CUDA_PROFILE_PATH, content=render_cuda_profile(cuda.release),
    )
