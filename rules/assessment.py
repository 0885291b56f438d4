"""Preflight's verdict on a host, as a pure function of its spec and one probe.

`assess()` runs every check that can be made before anything changes — GPUs against the model
(sizing), the pin set against the host (driver, CUDA, torch, Python, compute capability,
Secure Boot, the distro's repositories, Docker), storage of the weights — and returns findings
the deploy, the doctor and the tests all read the same way. Every check comes from
`rules.compat`, `rules.sizing` and the step rules; nothing is re-typed here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from facts.probe import HostProbe
from facts.storage import StorageLocationResult
from inventory.catalog import Precision, catalog_gpus
from inventory.fleet import HostSpec
from rules import compat
from rules.checkpoint import config_findings
from rules.container_runtime import DAEMON_JSON_PATH, cdi_findings, docker_ce_findings
from rules.daemon_json import DaemonJsonError, parse_daemon_json
from rules.driver_state import precompiled_findings
from rules.findings import Finding, Findings, accept
from rules.gpu_inventory import (
    GpuView,
    engine_devices,
    expected_gpu_findings,
    gpus_of,
    mig_enabled,
    no_gpu_finding,
    render_gpus,
)
from rules.host_plan import HostPlan, plan_host
from rules.multinode import node_network_findings, replica_layout
from rules.serving import EnginePlan, memory_fraction, plan_engine
from rules.serving import image_reference as serving_image
from rules.sizing import (
    DEFAULT_ENGINE,
    EngineProfile,
    SizingInputError,
    SizingRequest,
    SizingResult,
    engine_profile,
    kernel_problem,
    kv_layout,
    render_model_needs,
    serving_configurations,
    size,
    tp_candidates,
)

GIB = 2**30
# Without a context length in the fleet file, size for the model's maximum up to this; the
# full 128K context of the distills would make every small host look hopeless.
DEFAULT_CONTEXT_CAP = 32768


@dataclass
class Assessment:
    host: str
    findings: Findings
    gpus: list[GpuView] = field(default_factory=list)
    sizing: SizingResult | None = None
    context: int = 0
    plan: HostPlan | None = None  # None when the host cannot be planned
    expected_because: str = "in this fleet"  # settings.preflight.expected_because

    @property
    def refused(self) -> bool:
        return not self.findings.ok


def effective_context(spec: HostSpec) -> int:
    return spec.settings.context_length or min(spec.model.max_context, DEFAULT_CONTEXT_CAP)


# --- sizing ----------------------------------------------------------------------------------
def _sizing(spec: HostSpec, gpus: list[GpuView], context: int) -> tuple[SizingResult | None,
                                                                          list[Finding]]:
    settings = spec.settings
    if not gpus:
        return None, []  # the no-gpu finding says it
    devices = engine_devices(gpus)
    if not devices:
        return None, [Finding(
            "warning", "cannot-size",
            "cannot size: GPU memory unknown",
            "; ".join(sorted({f"{g.name}: no memory figure ({g.source})" for g in gpus})),
            "the memory of each GPU (nvidia-smi, or the catalog by PCI id)",
            "the sizing runs once the driver reports the memory; or add the GPU to "
            "inventory/catalog/gpus.toml",
        )]
    mig = mig_enabled(gpus)
    if mig and (settings.tensor_parallel or 1) > 1:
        return None, [Finding(
            "error", "mig-tensor-parallel",
            "tensor parallelism across MIG devices is not possible (NCCL does not run over "
            "MIG devices)",
            f"tensor_parallel = {settings.tensor_parallel} on MIG devices",
            "tensor_parallel = 1 per MIG device, or MIG off",
            "disable MIG (`nvidia-smi -i <gpu> -mig 0`, then reset), or set tensor_parallel = 1",
        )]
    gpu_count, tp, pp = len(devices), settings.tensor_parallel, settings.pipeline_parallel
    if settings.multinode.nodes > 1:
        # One replica over every node's GPUs (the nodes agree on gpus.count and model; the
        # doctor's `--data nodes=N` sizes N nodes like this one).
        layout = replica_layout(spec, len(devices))
        gpu_count, tp, pp = layout.total, layout.tp, layout.pp
    def fraction(tp: int) -> float:
        return memory_fraction(settings.inference.engine, tp, settings.gpu_memory_utilization)

    request = SizingRequest(
        model=spec.model,
        precision=settings.precision,
        gpu_memory_bytes=min(d.memory_bytes for d in devices),
        gpu_count=gpu_count,
        context=context,
        concurrency=settings.concurrency,
        tp=1 if mig else tp,
        pp=pp,
        gpu_memory_utilization=fraction(1 if mig else tp or 1),
        gpu_label=min(devices, key=lambda d: d.memory_bytes).name,
        engine=sizing_engine(spec),
        # what the serving plan passes as --max-num-seqs
        max_num_seqs=settings.inference.max_num_seqs or settings.concurrency,
        compute_capability=min((g.compute_capability for g in gpus if g.compute_capability),
                               key=lambda cc: tuple(int(p) for p in cc.split(".")),
                               default=None),
    )
    kernels = _kernel_findings(spec, request)
    if kernels:
        return None, kernels
    try:
        result = (_smallest_fitting_tp(request, fraction) if request.tp is None
                  else size(request))
    except SizingInputError as exc:
        return None, [Finding("error", "sizing-input", str(exc), "", "",
                              "correct tensor_parallel / pipeline_parallel / context_length "
                              "in the fleet file")]
    across = (f" x pipeline parallel {result.pp} over {settings.multinode.nodes} nodes of "
              f"{len(devices)} GPU(s)" if settings.multinode.nodes > 1 else "")
    if result.fits:
        return result, [Finding(
            "info", "model-fits",
            f"{spec.model.id} at {settings.precision} fits with tensor parallel {result.tp}"
            + across,
            f"{result.needed_per_gpu / GIB:.1f} GiB needed per GPU",
            f"{result.usable_per_gpu / GIB:.1f} GiB usable per GPU",
            f"up to {result.max_concurrency} concurrent sequences at {context} tokens "
            f"({result.kv_tokens:,} KV tokens: {kv_layout(spec.model, request.engine)})",
        )]
    ways = "; ".join(alt.change for alt in result.alternatives[:4]) or "a larger GPU"
    if mig:
        ways = (f"MIG is on: the engine sees slices of {request.gpu_memory_bytes / GIB:.1f} "
                "GiB; disable MIG or size for a slice (" + ways + ")")
    return result, [Finding(
        "error", "model-does-not-fit",
        f"{spec.model.id} at {settings.precision} does not fit on "
        f"{gpu_count} x {request.gpu_label}" + across,
        f"{result.needed_per_gpu / GIB:.1f} GiB needed per GPU "
        f"(short by {result.shortfall_per_gpu / GIB:.1f} GiB)",
        f"{result.usable_per_gpu / GIB:.1f} GiB usable per GPU "
        f"({fraction(result.tp):.0%} of memory)",
        f"what would fit: {ways}",
    )]


def model_needs(spec: HostSpec, context: int) -> str:
    """Without a GPU to size against: what the model needs and which catalog GPUs serve it."""
    settings = spec.settings
    base = SizingRequest(
        model=spec.model, precision=settings.precision, gpu_memory_bytes=1, gpu_count=1,
        context=context, concurrency=settings.concurrency, pp=settings.pipeline_parallel,
        gpu_memory_utilization=memory_fraction(settings.inference.engine, 1,
                                               settings.gpu_memory_utilization),
        engine=sizing_engine(spec),
        max_num_seqs=settings.inference.max_num_seqs or settings.concurrency,
    )
    gpus = {gpu.names[0]: (gpu.memory_bytes, gpu.compute_capability)
            for gpu in catalog_gpus().values()}
    return render_model_needs(base, serving_configurations(base, gpus))


def sizing_engine(spec: HostSpec) -> EngineProfile:
    """How the pinned engine caches the model and budgets memory (SGLang's budget is sized
    as the pinned vLLM's would be; its MLA cache and kernels are its own)."""
    vllm = spec.pins.inference.engine("vllm")
    engine = spec.settings.inference.engine
    pinned = spec.pins.inference.engine(engine)
    if engine != "vllm" and pinned is not None:
        return engine_profile(pinned.version, engine, vllm.version if vllm else None)
    return engine_profile(vllm.version) if vllm else DEFAULT_ENGINE


def _kernel_findings(spec: HostSpec, request: SizingRequest) -> list[Finding]:
    """The engine release must have kernels for the weights on these GPUs: a block-wise FP8
    checkpoint (DeepSeek-V3/R1) needs FP8 tensor cores, with no Marlin fallback."""
    engine, model, precision = request.engine, request.model, request.precision
    capability = request.compute_capability
    problem = kernel_problem(engine, model, precision, capability)
    if problem is None:
        return []
    able = sorted({gpu.names[0] for gpu in catalog_gpus().values()
                   if kernel_problem(engine, model, precision, gpu.compute_capability) is None})
    ways = [f"GPUs it runs on ({', '.join(able)})"] if able else []
    others: tuple[Precision, ...] = ("int4", "bf16")
    for other in others:
        if kernel_problem(engine, model, other, capability) is None:
            checkpoint = ("an AWQ/GPTQ int4 checkpoint" if other == "int4" else
                          "the checkpoint converted to bf16")
            ways.append(f"precision = '{other}' ({checkpoint}; the sizing then says how many "
                        "GPUs it needs)")
    return [Finding(
        "error", "precision-not-supported-on-gpu", f"{problem} ({request.gpu_label})",
        f"settings.precision = '{precision}' on compute capability {capability}",
        "an engine release with kernels for it on these GPUs",
        "; or ".join(ways) or "another precision or GPU",
    )]


def _smallest_fitting_tp(request: SizingRequest,
                         fraction: Callable[[int], float]) -> SizingResult:
    """Unset tensor_parallel: the fewest GPUs per replica that fit, else the most we have.
    ``fraction``: the engine's memory share at a tensor parallel size (SGLang's varies)."""
    usable = [tp for tp in tp_candidates(request.model)
              if tp * request.pp <= request.gpu_count]
    if not usable:
        return size(request)  # reports why no tensor-parallel size works
    result = size(replace(request, tp=usable[0], gpu_memory_utilization=fraction(usable[0])))
    for tp in usable[1:]:
        if result.fits:
            break
        result = size(replace(request, tp=tp, gpu_memory_utilization=fraction(tp)))
    return result


# --- storage ---------------------------------------------------------------------------------
def storage_class(location: StorageLocationResult) -> str:
    """The fact's storage kind in the vocabulary of the compatibility checks."""
    if location.kind == "ssd":
        transports = {leaf.transport for leaf in location.leaves}
        if "usb" in transports:
            return "usb"
        return "sas-ssd" if "sas" in transports else "sata-ssd"
    return location.kind


def _storage(spec: HostSpec, probe: HostProbe, read_bytes_per_s: int | None) -> list[Finding]:
    settings = spec.settings.storage
    weights = spec.model.weights_bytes
    found: list[Finding] = []
    if settings.policy != "off":
        location = probe.weights_location
        found += compat.check_storage(storage_class(location), weights, settings.policy,
                                      read_bytes_per_s)
    free = probe.weights_free_space.available_bytes
    if free is not None:
        # Weights already in place count as room: they are replaced file by file, and a
        # converged host must not be refused for the space its own weights take.
        present = sum(size for size, _ in probe.weights.files.values())
        found += compat.check_free_space(free + present, weights, settings.free_space_margin)
    return found


# --- the assessment --------------------------------------------------------------------------
def _python_version(probe: HostProbe) -> str | None:
    """The interpreter the Python environment step would use: the newest 3.x on the host."""
    versions = [v for v in probe.python.interpreters.values() if v]
    return max(versions, key=lambda v: tuple(int(p) for p in v.split(".")[:2] if p.isdigit()),
               default=None)


@dataclass(frozen=True)
class Seen:
    """What the checks after the GPUs and the sizing read: the spec, the probe, and what the
    core decided from them (the GPUs, the host plan, the engine)."""

    spec: HostSpec
    probe: HostProbe
    gpus: list[GpuView]
    read_bytes_per_s: int | None
    planned: HostPlan | list[Finding]  # rules.host_plan.plan_host: a plan, or why not
    engine: tuple[EnginePlan | None, list[Finding]] | None  # None: serving is off


Check = Callable[[Seen], Iterable[Finding]]


def assess(spec: HostSpec, probe: HostProbe, read_bytes_per_s: int | None = None,
           extra: Iterable[Finding] = ()) -> Assessment:
    """Every check for one host, from its spec and one probe (plus findings of the steps'
    own questions, ``extra``). Pure: no host is touched.

    The core first: the GPUs and the sizing, then the host plan and the engine (whose
    findings come in their place in ``CHECKS``); then one loop over ``CHECKS``, in report
    order; then ``extra``."""
    settings = spec.settings
    findings = Findings()
    gpus, gpu_findings = gpus_of(probe)
    findings.extend(gpu_findings)
    if not gpus:
        findings.add(no_gpu_finding(spec.model.id, probe.pci))
    findings.extend(expected_gpu_findings(spec, gpus))
    context = effective_context(spec)
    sizing, sizing_findings = _sizing(spec, gpus, context)
    findings.extend(sizing_findings)

    planned = plan_host(spec, probe)
    engine = (_engine(spec, probe, gpus, sizing, context, read_bytes_per_s)
              if settings.inference.enabled else None)
    seen = Seen(spec, probe, gpus, read_bytes_per_s, planned, engine)
    for check in CHECKS:
        findings.extend(check(seen))
    findings.extend(extra)

    plan = None if isinstance(planned, list) else planned
    if plan is not None and engine is not None and engine[0] is not None:
        plan = replace(plan, engine=engine[0])
    return Assessment(spec.name, accept(findings, settings.preflight.downgrade_errors,
                                        settings.preflight.expected_warnings),
                      gpus, sizing, context, plan, settings.preflight.expected_because)


def _torch_build(spec: HostSpec) -> str:
    return f"{spec.pins.python.torch}+cu{spec.pins.cuda.release.replace('.', '')}"


def _compute_capability(seen: Seen) -> Iterable[Finding]:
    for capability, names in _by_capability(seen.gpus).items():
        yield from compat.check_compute_capability(capability, _torch_build(seen.spec), names)


def _python(seen: Seen) -> list[Finding]:
    if not seen.spec.settings.python_env.enabled:
        return []
    python = _python_version(seen.probe)
    if python is None:
        return [Finding(
            "error", "no-python", "no Python 3 interpreter on the host",
            "python3 not found", "Python 3.8-3.11 for torch " + seen.spec.pins.python.torch,
            "install python3 (apt-get install python3 python3-venv)",
        )]
    return compat.check_python_for_torch(python, _torch_build(seen.spec))


def _driver_for_cuda(seen: Seen) -> list[Finding]:
    """The pin set must be coherent before any of it is installed."""
    pins = seen.spec.pins
    return compat.check_driver_for_cuda(pins.driver.upstream, pins.cuda.release)


def _distro(seen: Seen) -> list[Finding]:
    os_release = seen.probe.system.os
    if not (os_release and os_release.id and os_release.version_id):
        return []
    return compat.check_distro_for_cuda(
        os_release.id, os_release.version_id, seen.spec.pins.cuda.release,
        mirror_provides=seen.spec.settings.repos.cuda.url is not None)


def _secure_boot(seen: Seen) -> list[Finding]:
    return compat.check_secure_boot(seen.probe.secure_boot.enforcing,
                                    seen.spec.pins.driver.flavour,
                                    seen.probe.secure_boot.reason)


def _sampling(seen: Seen) -> list[Finding]:
    sampling = seen.spec.settings.sampling
    return compat.check_sampling(sampling.temperature, sampling.top_p, seen.spec.model)


def _host_plan(seen: Seen) -> list[Finding]:
    """What the stack would run into on this host, before any of it is installed."""
    if isinstance(seen.planned, list):
        return seen.planned
    return cdi_findings(seen.spec.settings.docker.gpu_device_protection,
                        seen.planned.docker_packages["docker.io"], seen.planned.distro)


def _gpu_test_image(seen: Seen) -> list[Finding]:
    return unpinned_image("the GPU test image", seen.spec.settings.verify.gpu_test_image,
                          "settings.verify.gpu_test_image")


def _precompiled(seen: Seen) -> list[Finding]:
    os_release = seen.probe.system.os
    os_id = os_release.id if os_release and os_release.id else "unknown"
    return precompiled_findings(seen.spec.pins.driver.flavour, os_id)


# Every check after the core (the GPUs and the sizing), in report order. Each is a function of
# what the core saw, named for the part of the host it belongs to, so a part that becomes a
# component (rules/component.py) takes its checks along.
CHECKS: tuple[Check, ...] = (
    _compute_capability,  # the GPU stack (torch's build against the GPUs)
    _python,  # the Python environment
    _driver_for_cuda,  # the GPU stack (the pin set)
    lambda seen: _transformers(seen.spec),  # serving (the model's transformers)
    _distro,  # the GPU stack (NVIDIA's repositories)
    _secure_boot,  # the GPU stack (the driver)
    _sampling,  # serving
    lambda seen: _storage(seen.spec, seen.probe, seen.read_bytes_per_s),  # the weights
    lambda seen: node_network_findings(seen.spec, seen.probe.node_network),  # multi-node
    _host_plan,  # the GPU stack and Docker (the packages, Compose, CDI)
    lambda seen: seen.engine[1] if seen.engine else [],  # serving (image, weights, replicas)
    _gpu_test_image,  # the stack's verification
    _precompiled,  # the GPU stack (the driver's flavour)
    lambda seen: docker_ce_findings(seen.probe.state.installed),  # Docker
    lambda seen: _daemon_json(seen.probe),  # Docker
    lambda seen: unchecked_daemon_json(seen.spec),  # Docker
)


def _transformers(spec: HostSpec) -> list[Finding]:
    """The model loads with the transformers of the engine image that serves it; only a host
    that serves nothing is judged by its tooling environment's."""
    cfg = spec.settings.inference
    pinned = spec.pins.inference.engine(cfg.engine) if cfg.enabled else None
    if pinned is None:
        return compat.check_transformers_for_model(spec.pins.python.transformers, spec.model)
    return compat.check_transformers_for_model(
        pinned.transformers, spec.model, cfg.trust_remote_code,
        where=f"the {cfg.engine} {pinned.version} image {pinned.image}")


def unpinned_image(what: str, reference: str, setting: str | None) -> list[Finding]:
    """The one `image-not-pinned` rule, for every image the fleet pulls: a reference without
    a digest can change under the same tag from one pull to the next."""
    if "@sha256:" in reference:
        return []
    return [Finding(
        "warning", "image-not-pinned", f"{what} {reference} is pinned by tag only",
        "no digest", "image@sha256:<digest>",
        "record the digest with tools/pin_image.py on a machine that reaches the registry"
        + (f", or give {setting} as name@sha256:<digest>" if setting else ""),
    )]


def _forward_compatible(gpus: list[GpuView]) -> dict[str, bool | None]:
    """GPU name -> whether NVIDIA supports CUDA forward compatibility on it (None: unknown)."""
    catalog = {name: gpu.forward_compatible
               for gpu in catalog_gpus().values() for name in gpu.names}
    return {gpu.name: catalog.get(gpu.name) for gpu in gpus}


def _engine(spec: HostSpec, probe: HostProbe, gpus: list[GpuView], sizing: SizingResult | None,
            context: int, read_bytes_per_s: int | None
            ) -> tuple[EnginePlan | None, list[Finding]]:
    """What the inference step will serve, and what stops it before anything changes."""
    settings = spec.settings
    cfg = settings.inference
    found: list[Finding] = []
    pinned = spec.pins.inference.engine(cfg.engine)
    if pinned is not None:
        found += compat.check_image_cuda(spec.pins.driver.upstream, pinned.image, pinned.cuda,
                                         _forward_compatible(gpus))
        found += compat.check_engine_for_model(cfg.engine, pinned.version, spec.model)
        found += unpinned_image("the serving image", serving_image(pinned, cfg.image),
                                "settings.inference.image")
    found += _weights(spec, probe)
    if not gpus:
        return None, found
    if mig_enabled(gpus):
        return None, [*found, Finding(
            "error", "mig-serving-unsupported",
            "MIG is on: gpufleet's serving plan gives each replica whole GPUs",
            "MIG devices on this host", "MIG off on the GPUs that serve",
            "disable MIG (`nvidia-smi -i <gpu> -mig 0`, then reset the GPU or reboot), or set "
            "settings.inference.enabled = false to provision without serving",
        )]
    if settings.multinode.nodes > 1 and spec.replica is None:
        return None, found  # the doctor sizing nodes it is not part of: nothing to serve here
    tp = sizing.tp if sizing else (settings.tensor_parallel or 1)
    # The concurrency the sizing checked the KV cache holds: stable from one run to the next
    # (the KV-derived maximum moves when nvidia-smi replaces the catalog's memory figure).
    seqs = settings.concurrency
    speed = read_bytes_per_s or compat.TYPICAL_READ_BYTES_PER_S.get(
        storage_class(probe.weights_location), (0, 0))[0]
    load = compat.estimated_load_seconds(spec.model.weights_bytes, speed) if speed else None
    pp = sizing.pp if sizing else settings.pipeline_parallel
    engine = plan_engine(spec, len(gpus), tp, context, max(1, seqs), load, pp=pp)
    if isinstance(engine, list):
        return None, found + engine
    return engine, found


def _weights(spec: HostSpec, probe: HostProbe) -> list[Finding]:
    """The checkpoint must be the model the fleet names (the brief's strict-loading trap)."""
    cfg = spec.settings.weights
    where = spec.settings.weights_path
    if cfg.source == "present":
        listing = probe.weights
        if listing.status == "absent":
            return [Finding(
                "error", "weights-missing", f"no weights at {where}", "no such folder",
                f"the checkpoint of {spec.model.id}",
                "copy the model there, or set settings.weights.source = 'controller' / 'hub'",
            )]
        return config_findings(listing.config, spec.model, where) if listing.status == "ok" \
            else []
    if cfg.source == "controller" and cfg.controller_path:
        folder = spec.controller_path(cfg.controller_path)
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            config = None
        return config_findings(config if isinstance(config, dict) else None, spec.model,
                               f"{folder} (on this machine)")
    endpoint = cfg.hub_endpoint
    if cfg.source == "hub" and endpoint is not None and endpoint.scheme != "https":
        return [Finding(  # allowed by settings.weights.allow_plain_http (rules.fleet_checks)
            "warning", "weights-plain-http",
            f"the weights and the hub token travel over plain http from {endpoint}",
            "settings.weights.allow_plain_http = true", "an https:// hub_endpoint",
            "serve the mirror over https, then drop allow_plain_http",
        )]
    return []  # hub: checked by the download against the hub's own hashes


def unchecked_daemon_json(spec: HostSpec) -> list[Finding]:
    """A warning per guarded daemon_json key the fleet takes responsibility for
    (settings.docker.daemon_json_unchecked), at every preflight."""
    docker = spec.settings.docker
    return [Finding(
        "warning", "daemon-json-unchecked",
        f"settings.docker.daemon_json sets {key!r}, accepted unchecked: {why}",
        f"{key} = {json.dumps(value)[:200]}", "no such key in daemon_json",
        "remove it from daemon_json, or keep it knowingly (settings.docker."
        "daemon_json_unchecked names it)",
    ) for key, value, why in docker.daemon_json_problems()
        if key in docker.daemon_json_unchecked]


def _daemon_json(probe: HostProbe) -> list[Finding]:
    """A daemon.json gpufleet cannot merge into: refused now, not halfway through the stack."""
    try:
        parse_daemon_json(probe.state.content(DAEMON_JSON_PATH))
    except DaemonJsonError as exc:
        return [Finding(
            "error", "daemon-json-unreadable", f"{DAEMON_JSON_PATH} cannot be merged: {exc}",
            "not a JSON object", "a JSON object (or no file)",
            "fix the file by hand (gpufleet leaves it untouched), then re-run the deploy",
        )]
    return []


def _by_capability(gpus: list[GpuView]) -> dict[str, str]:
    names: dict[str, list[str]] = {}
    for gpu in gpus:
        if gpu.compute_capability:
            names.setdefault(gpu.compute_capability, []).append(gpu.name)
    return {cc: ", ".join(sorted(set(n))) for cc, n in names.items()}


def render(assessment: Assessment) -> str:
    lines = [f"gpufleet preflight for {assessment.host}:"]
    if assessment.gpus:
        lines.append("  GPUs: " + render_gpus(assessment.gpus))
    lines += ["  " + line for line in assessment.findings.render(
        expected_because=assessment.expected_because).splitlines()]
    return "\n".join(lines)


