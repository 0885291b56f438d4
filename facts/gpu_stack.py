"""``StackVerification``: the GPU stack as it runs — nvidia-smi on the host, nvcc, and
nvidia-smi inside a container started with GPUs.

Starting a container is why this is read only at execution time, by a check (never in the
change-detection pass): the preview starts nothing on a host.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import FactBase

from facts import nvidia as nvidia_facts
from facts import system as system_facts
from facts._shell import CommandResult, clip, quote, section_script, split_sections

_MISSING = CommandResult(text="", exit_code=None)


@dataclass(frozen=True)
class StackVerificationResult:
    gpus: nvidia_facts.GpuQuery
    cuda: system_facts.CudaToolkitResult
    container_exit: int | None  # None: not run
    container_output: str = ""


def verification_script(image: str, runtime_flags: str = "--gpus all") -> str:
    container = (f"docker run --rm {runtime_flags} {quote(image)} "
                 f"{nvidia_facts.NVIDIA_SMI_QUERY}")
    return "\n".join([
        section_script("nvidia_smi", nvidia_facts.NVIDIA_SMI_SCRIPT),
        section_script("nvcc", system_facts.NVCC_SCRIPT),
        section_script("container", f"timeout 300 {container}"),
    ])


def parse_verification(lines: list[str]) -> StackVerificationResult:
    sections = split_sections(lines)
    smi = sections.get("nvidia_smi") or _MISSING
    nvcc = sections.get("nvcc") or _MISSING
    container = sections.get("container") or _MISSING
    return StackVerificationResult(
        gpus=nvidia_facts.parse_nvidia_smi_query(smi.text, smi.exit_code),
        cuda=system_facts.parse_nvcc_version(nvcc.text, nvcc.exit_code),
        container_exit=container.exit_code,
        container_output=clip(container.text, 2000),
    )


class StackVerification(FactBase[StackVerificationResult]):
    """
    nvidia-smi on the host, nvcc --version, and nvidia-smi inside a GPU container.

    + image: the image to start with GPUs (settings.verify.gpu_test_image)

    .. code:: python

        StackVerificationResult(gpus=GpuQuery(status="ok", gpus=(...)),
                                cuda=CudaToolkitResult(status="ok", version="12.1", ...),
                                container_exit=0, container_output="0, NVIDIA H100 ...")
    """

    @staticmethod
    def default() -> StackVerificationResult:
        return parse_verification([])

    def command(self, image: str) -> str:
        return verification_script(image)

    def process(self, output: list[str]) -> StackVerificationResult:
        return parse_verification(output)
