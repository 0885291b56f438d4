"""The end of the NVIDIA stack: prove it works, not that it was installed.

The verification runs at execution only (it starts a GPU container): the preview shows it as
a check, neither a change nor a refusal. A verified host reports no change.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from facts.gpu_stack import StackVerification
from inventory.fleet import HostSpec
from operations.checks import check
from operations.docker_config import image_from_archive
from operations.host_reading import host_state
from rules.driver_state import FABRICMANAGER_SERVICE
from rules.findings import refusal_message
from rules.host_plan import HostPlan
from rules.verification import verification_findings


@deploy("Verify the GPU stack")
def verify_stack(spec: HostSpec, plan: HostPlan) -> None:
    image = spec.settings.verify.gpu_test_image
    for archive in spec.settings.verify.image_archives:
        image_from_archive(
            name=f"Ensure the GPU test image {image} is present", image=image,
            archive=str(spec.controller_path(archive)),
        )

    def verdict() -> tuple[str | None, str]:
        fm_active = (host_state().service(FABRICMANAGER_SERVICE).is_active
                     if plan.nvswitch else None)
        result = host.get_fact(StackVerification, image=image)
        errors = [f for f in verification_findings(spec, result, fm_active)
                  if f.severity == "error"]
        if errors:
            return refusal_message("the GPU stack does not work:", errors), ""
        count = len(result.gpus.gpus)
        return None, (f"{count} x {result.gpus.gpus[0].name}, driver {spec.pins.driver.upstream}"
                      f", CUDA {result.cuda.version}, GPU container OK")

    check(name="Ensure the GPUs, CUDA and a GPU container work", verdict=verdict)
