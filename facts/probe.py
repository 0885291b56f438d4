"""``GpuHostProbe``: every read-only probe of a GPU host in one remote command.

pyinfra does not cache facts and each fact is a round trip, so preflight and doctor ask for this
one fact per host per run. It also carries the state the operations compare against
(facts.host_state), so the change-detection pass costs no command of its own. It runs the
same shell snippets as the single facts, each as a named section with its own exit status and
stderr folded in, and hands each section to the same parse function the single fact uses
(there is one parser per tool, not two).

The storage read-speed measurement is left out on purpose: it reads gigabytes. Use
``facts.storage.ReadSpeed`` when the user asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pyinfra.api import FactBase

from facts import docker as docker_facts
from facts import node_network as node_facts
from facts import nvidia as nvidia_facts
from facts import storage as storage_facts
from facts import system as system_facts
from facts import weights_files as weights_facts
from facts._shell import CommandResult, section_script, split_sections
from facts.coverage import COVERED
from facts.host_state import HostStateResult, host_state_script, parse_host_state

T = TypeVar("T")


@dataclass(frozen=True)
class HostProbe:
    """One parsed result per probe; each carries its own status, reason and raw output."""

    gpus: nvidia_facts.GpuQuery
    pci: nvidia_facts.NvidiaPci
    kernel_module: nvidia_facts.KernelModuleState
    secure_boot: nvidia_facts.SecureBootState
    system: system_facts.SystemInfoResult
    cuda: system_facts.CudaToolkitResult
    python: system_facts.PythonInterpretersResult
    weights_location: storage_facts.StorageLocationResult
    weights_free_space: storage_facts.FreeSpaceResult
    docker: docker_facts.DockerInfoResult
    container_toolkit: docker_facts.ContainerToolkitResult
    weights: weights_facts.WeightsListing
    state: HostStateResult  # what the operations compare against (facts.host_state)
    # The inter-node network, on the nodes of a replica spanning hosts (else None).
    node_network: node_facts.NodeNetworkResult | None = None


# name -> (script builder taking the weights path, parser). Order is the run order. The probe
# runs those gpufleet's parts declare they read (facts.coverage: today every one).
_Section = tuple[Callable[[str], str], Callable[[str, int | None], object]]
# The OS, the loaded kernel module and Docker come from the state read's own parts (read
# once, not twice: `docker info` alone is 50 ms of the probe on a simulated host).
SECTIONS: dict[str, _Section] = {
    "nvidia_smi": (lambda _: nvidia_facts.NVIDIA_SMI_SCRIPT, nvidia_facts.parse_nvidia_smi_query),
    "pci": (lambda _: nvidia_facts.PCI_SCRIPT, nvidia_facts.parse_pci_probe),
    "secure_boot": (
        lambda _: nvidia_facts.SECURE_BOOT_SCRIPT,
        nvidia_facts.parse_secure_boot_probe,
    ),
    "nvcc": (lambda _: system_facts.NVCC_SCRIPT, system_facts.parse_nvcc_version),
    "python": (lambda _: system_facts.PYTHON_SCRIPT, system_facts.parse_python_interpreters),
    "storage": (storage_facts.storage_location_script, storage_facts.parse_storage_location),
    "free_space": (storage_facts.free_space_script, storage_facts.parse_df),
    "nvidia_ctk": (lambda _: docker_facts.NVIDIA_CTK_SCRIPT, docker_facts.parse_nvidia_ctk_version),
    "weights": (weights_facts.weights_script, weights_facts.parse_weights),
    "state": (lambda _: host_state_script(),
              lambda text, _: parse_host_state(text.splitlines())),
}


def probe_script(weights_path: str, node: str = "") -> str:
    """The whole probe as one POSIX sh script. ``node``: the NodeNetwork spec (JSON) on the
    nodes of a replica spanning hosts, else empty."""
    sections = [section_script(name, build(weights_path)) for name, (build, _) in SECTIONS.items()
                if name in COVERED.sections]
    if node:
        sections.append(section_script("node_network", node_facts.node_network_script(node)))
    return "\n".join(sections)


# An absent section (output cut short) parses as empty text: every parser answers "unknown" for
# that, never a made-up healthy value.
_MISSING = CommandResult(text="", exit_code=None)


def parse_host_probe(lines: list[str]) -> HostProbe:
    """Parse the output of ``probe_script`` (as lines). Never raises."""
    sections = split_sections(lines)

    def run(name: str, parser: Callable[[str, int | None], T]) -> T:
        result = sections.get(name) or _MISSING
        return parser(result.text, result.exit_code)

    state = run("state", lambda text, _: parse_host_state(text.splitlines()))
    return HostProbe(
        gpus=run("nvidia_smi", nvidia_facts.parse_nvidia_smi_query),
        pci=run("pci", nvidia_facts.parse_pci_probe),
        kernel_module=state.kernel_module,
        secure_boot=run("secure_boot", nvidia_facts.parse_secure_boot_probe),
        system=state.system,
        cuda=run("nvcc", system_facts.parse_nvcc_version),
        python=run("python", system_facts.parse_python_interpreters),
        weights_location=run("storage", storage_facts.parse_storage_location),
        weights_free_space=run("free_space", storage_facts.parse_df),
        docker=state.docker,
        container_toolkit=run("nvidia_ctk", docker_facts.parse_nvidia_ctk_version),
        weights=run("weights", weights_facts.parse_weights),
        state=state,
        node_network=(run("node_network", node_facts.parse_node_network)
                      if "node_network" in sections else None),
    )


class GpuHostProbe(FactBase[HostProbe]):
    """All read-only GPU host probes in one round trip (see ``HostProbe``).

    + weights_path: where the model weights live or will live (storage kind and free space)
    + node: on a node of a replica spanning hosts, the inter-node network to read (JSON, see
      ``facts.node_network``); empty elsewhere

    .. code:: python

        HostProbe(gpus=GpuQuery(status="ok", gpus=(...)), pci=NvidiaPci(...),
                  kernel_module=KernelModuleState(...), secure_boot=SecureBootState(...),
                  system=SystemInfoResult(...), cuda=CudaToolkitResult(...),
                  python=PythonInterpretersResult(...),
                  weights_location=StorageLocationResult(kind="nvme", ...),
                  weights_free_space=FreeSpaceResult(...), docker=DockerInfoResult(...),
                  container_toolkit=ContainerToolkitResult(...))
    """

    def command(self, weights_path: str, node: str = "") -> str:
        return probe_script(weights_path, node)

    @staticmethod
    def default() -> HostProbe:
        return parse_host_probe([])

    def process(self, output: list[str]) -> HostProbe:
        return parse_host_probe(output)


__all__ = ["SECTIONS", "GpuHostProbe", "HostProbe", "parse_host_probe", "probe_script"]
