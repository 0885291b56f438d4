"""The doctor: what this host has, what the model needs, and whether it fits. Read-only.

    pyinfra inventory.py deploys/doctor.py                      # every host of the fleet
    pyinfra @local deploys/doctor.py --data model=deepseek-r1-distill-llama-70b \
        --data precision=int8 [--data weights_path=/srv/models]  # this machine, no fleet file

It runs the same probe and checks as preflight (one remote command per host, two with
settings.storage.measure_read_speed) and adds no operation: nothing on the host changes.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from pyinfra import host

from deploys.preflight import log_report, measured_read_speed, replica_findings
from deploys.runner import Entry, EntryRun, run_entry
from deploys.spec import host_spec
from facts.probe import HostProbe
from inventory.catalog import CatalogError, find_gpu, find_model
from inventory.fleet import HostSpec
from inventory.pins import load_pins
from inventory.schema import Settings
from rules.assessment import assess, effective_context, model_needs, render
from rules.capacity import replica_summary
from rules.driver_state import FABRICMANAGER_SERVICE, PERSISTENCED_SERVICE
from rules.gpu_inventory import GpuView
from rules.sizing import SizingResult, render_sizing

# `--data` keys the doctor understands when no fleet file describes the host.
DATA_KEYS = ("model", "precision", "weights_path", "context_length", "concurrency",
             "tensor_parallel", "pin_set")
DEFAULT_WEIGHTS_PATH = "/srv/models"


def spec_from_data() -> HostSpec | str:
    """A spec from `--data key=value` (or defaults), or a message saying what is wrong."""
    values = {key: host.data.get(key) for key in DATA_KEYS if host.data.get(key) is not None}
    values.setdefault("weights_path", DEFAULT_WEIGHTS_PATH)
    if host.data.get("nodes") is not None:  # size one replica over N hosts like this one
        values["multinode"] = {"nodes": host.data.get("nodes")}
    try:
        # Values from --data are strings: the lax mode turns "8192" into a number here only.
        settings = Settings.model_validate(values, strict=False)
    except ValidationError as exc:
        return "; ".join(
            f"--data {'.'.join(str(p) for p in err['loc'])}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
    pins = load_pins().sets
    if settings.pin_set not in pins:
        return f"--data pin_set={settings.pin_set!r}: unknown; known: {', '.join(sorted(pins))}"
    try:
        model = find_model(settings.model)
    except CatalogError as exc:
        return f"--data model={settings.model!r}: {exc}"
    return HostSpec(
        name=host.name, group="doctor", target=host.name, settings=settings,
        pin_set_name=settings.pin_set, pins=pins[settings.pin_set], model=model,
        fleet_dir=Path.cwd(),
    )


def installed_report(probe: HostProbe) -> str:
    """What is installed now, in a few lines."""
    module = probe.kernel_module
    docker = probe.docker
    toolkit = probe.container_toolkit
    lines = [
        "  installed now:",
        f"    driver (loaded module): {module.loaded_version or 'none'}"
        + (f"; userspace {', '.join(module.userspace_versions)}" if module.userspace_versions
           else ""),
        f"    nouveau loaded: {module.nouveau_loaded}",
        f"    nvidia-smi: {probe.gpus.status}"
        + (f" ({probe.gpus.reason})" if probe.gpus.reason and not probe.gpus.ok else ""),
        f"    CUDA toolkit: {probe.cuda.version or probe.cuda.status}",
        f"    Docker: {docker.server_version or docker.status}"
        + (f", runtimes {', '.join(sorted(docker.runtimes))}" if docker.runtimes else ""),
        f"    container toolkit: {toolkit.version or toolkit.status}",
        f"    Secure Boot: {probe.secure_boot.status}",
        f"    kernel module: {_module_flavour(module.open_kernel_module)}",
        f"    persistence mode: {_persistence(probe)}",
        f"    NVSwitch / Fabric Manager: {_fabric(probe)}",
        f"    PCI bus read from: {probe.pci.source} (lspci: {probe.pci.lspci})",
    ]
    system = probe.system
    if system.os:
        lines.insert(1, f"    OS: {system.os.pretty_name or system.os.id} "
                        f"({system.dpkg_architecture or system.machine}), kernel {system.kernel}")
    return "\n".join(lines)


def _module_flavour(open_module: bool | None) -> str:
    if open_module is None:
        return "unknown (none loaded)"
    return "open (nvidia-open)" if open_module else "proprietary"


def _persistence(probe: HostProbe) -> str:
    modes = [gpu.persistence_mode for gpu in probe.gpus.gpus]
    daemon = probe.state.service(PERSISTENCED_SERVICE).active or "not installed"
    if not modes:
        return f"unknown (no GPU listed); {PERSISTENCED_SERVICE} {daemon}"
    return f"on for {sum(1 for m in modes if m)} of {len(modes)} GPU(s); " \
           f"{PERSISTENCED_SERVICE} {daemon}"


def _fabric(probe: HostProbe) -> str:
    switches = len(probe.pci.nvswitches)
    if not switches:
        return "no NVSwitch on the PCI bus (Fabric Manager not needed)"
    manager = probe.state.service(FABRICMANAGER_SERVICE).active or "not installed"
    return f"{switches} NVSwitch(es); {FABRICMANAGER_SERVICE} {manager}"


def _capacity(gpus: list[GpuView], sizing: SizingResult) -> str | None:
    """What one replica carries, when the catalog knows this GPU's bandwidth and compute.
    The GPU as preflight identified it: by nvidia-smi, or on the PCI bus before a driver."""
    if not gpus:
        return None
    try:
        gpu = find_gpu(gpus[0].name)
    except CatalogError:
        return None
    return replica_summary(sizing, gpu)


def spec_of_host() -> HostSpec | str:
    """The fleet file's spec, or (no fleet file: `pyinfra @local ...`) one from `--data`."""
    return host_spec() if host.data.get("gpufleet") else spec_from_data()


def doctor(run: EntryRun) -> None:
    spec, probe = run.spec, run.probe
    assert probe is not None  # DOCTOR reads every host
    # a node of a replica across hosts: also what its other nodes show (read once per run)
    assessment = assess(spec, probe, measured_read_speed(spec), replica_findings(spec, probe))
    log_report(render(assessment).replace("gpufleet preflight", "gpufleet doctor", 1))
    log_report(installed_report(probe))
    if assessment.sizing is not None:
        log_report(render_sizing(assessment.sizing))
        capacity = _capacity(assessment.gpus, assessment.sizing)
        if capacity:
            log_report(f"  {capacity}")
    else:  # no GPU (a laptop, a VM), or none that can be sized: show what the model needs
        log_report(model_needs(spec, effective_context(spec)))
    verdict = ("would be REFUSED by preflight" if assessment.refused
               else "passes preflight")
    log_report(f"  verdict: {spec.model.id} at {spec.settings.precision} {verdict}")


# Read-only: no run lock; every host is read with the probe.
DOCTOR = Entry("doctor", doctor, probes=lambda spec, fleet: True, spec=spec_of_host,
               unusable="Doctor: the input is not usable")
run_entry(DOCTOR)
