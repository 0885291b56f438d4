"""The serving engine's decisions, as pure functions: how many replicas a host runs and on which
GPUs, every engine flag (from the sizing, never from the engine's defaults), the Compose file
and the systemd unit that run them.

Nothing here touches a host: deploys/inference.py writes what these return, and the unit tests
validate it with the real `docker-compose config` and `systemd-analyze verify`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import yaml
from packaging.version import Version

from facts.engine_answers import EngineAnswersResult
from inventory.fleet import HostSpec
from inventory.pins import EngineImage
from rules.container_runtime import Compose
from rules.findings import Finding, explaining_lines
from rules.render import render

INFERENCE_DIR = "/etc/gpufleet/inference"
COMPOSE_PATH = f"{INFERENCE_DIR}/docker-compose.yml"
API_KEY_PATH = f"{INFERENCE_DIR}/api-key.env"
APPLIED_PATH = f"{INFERENCE_DIR}/applied.digest"  # the compose file last brought up
UNIT_NAME = "gpufleet-inference"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}.service"
COMPOSE_PROJECT = "gpufleet-inference"
MODELS_MOUNT = "/models"
# Where each engine listens inside its container, and its health path.
ENGINE_PORT = {"vllm": 8000, "sglang": 30000}
HEALTH_PATH = {"vllm": "/health", "sglang": "/health"}
ENTRYPOINT = {
    "vllm": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
    "sglang": ["python3", "-m", "sglang.launch_server"],
}
# The environment variable the engine reads its API key from.
API_KEY_VARIABLE = {"vllm": "VLLM_API_KEY", "sglang": "SGLANG_API_KEY"}
# vLLM's OpenAI server runs pipeline parallelism from 0.5.1 (vllm-project/vllm#6054).
VLLM_ONLINE_PP = Version("0.5.1")
# --disable-log-requests: vLLM 0.4 to 0.10; later request logging is off by default and the
# flag is gone (vllm-project/vllm PR #21739).
VLLM_DISABLE_LOG_REQUESTS = (Version("0.4.0"), Version("0.11.0"))
DTYPE = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Replica:
    """One engine process: its GPUs (device indexes on the host) and its port on the host."""

    index: int
    gpus: tuple[int, ...]
    port: int

    @property
    def service(self) -> str:
        return f"engine-{self.index}"

    @property
    def container(self) -> str:
        return f"{COMPOSE_PROJECT}-engine-{self.index}"


@dataclass(frozen=True)
class EnginePlan:
    """Everything the Compose file and the checks after it need, decided before execution."""

    engine: str
    version: str
    image: str  # what Compose runs: repository:tag, or repository@sha256:digest
    cuda: str
    model_id: str
    model_dir: str  # weights_path on the host
    served_name: str
    tp: int
    pp: int
    max_model_len: int
    gpu_memory_utilization: float
    max_num_seqs: int
    dtype: str | None
    quantization: str | None
    bind: str
    replicas: tuple[Replica, ...]
    start_seconds: int
    ulimits: dict[str, int] = field(default_factory=dict)
    api_key: bool = False
    temperature: float = 0.6
    top_p: float = 0.95

    @property
    def mount(self) -> str:
        """Where the weights are inside the container."""
        return f"{MODELS_MOUNT}/{PurePosixPath(self.model_dir).name or 'model'}"

    @property
    def query_address(self) -> str:
        """The address a check on the host itself reaches the API at."""
        address = ipaddress.ip_address(self.bind)
        if address.is_unspecified:
            return "127.0.0.1" if address.version == 4 else "::1"
        return self.bind


def image_reference(pinned: EngineImage, override: str | None) -> str:
    """The image Compose runs: the fleet's override, else the pin (by digest when recorded)."""
    return override or pinned.reference()


@dataclass(frozen=True)
class DcgmExporter:
    """NVIDIA's DCGM exporter beside the engine: GPU metrics for the monitoring host."""

    image: str
    bind: str
    port: int
    service: str = "dcgm-exporter"
    container: str = f"{COMPOSE_PROJECT}-dcgm-exporter"
    container_port: int = 9400


def dcgm_exporter(spec: HostSpec) -> DcgmExporter:
    cfg = spec.settings.monitoring
    image = spec.pins.monitoring.dcgm_exporter.reference(cfg.dcgm_registry)
    return DcgmExporter(image=image, bind=cfg.bind, port=cfg.dcgm_exporter_port)


def plan_replicas(gpu_count: int, tp: int, pp: int, wanted: int | None, first_port: int
                  ) -> tuple[Replica, ...] | list[Finding]:
    """Disjoint GPUs per replica, one port each. Unset ``wanted``: as many as the GPUs hold."""
    per = tp * pp
    fit = gpu_count // per if per else 0
    count = wanted if wanted is not None else fit
    if fit == 0 or count > fit:
        return [Finding(
            "error", "engine-replicas",
            f"{count or 1} replica(s) of {per} GPU(s) each do not fit {gpu_count} GPU(s)",
            f"{gpu_count} GPU(s), {per} per replica (tensor {tp} x pipeline {pp})",
            f"at most {fit} replica(s)",
            "lower settings.inference.replicas, or tensor/pipeline parallel",
        )]
    return tuple(Replica(i, tuple(range(i * per, (i + 1) * per)), first_port + i)
                 for i in range(count))


def plan_engine(
    spec: HostSpec,
    gpu_count: int,
    tp: int,
    max_model_len: int,
    max_num_seqs: int,
    load_seconds: float | None,
) -> EnginePlan | list[Finding]:
    """The engine a host runs, from its spec and the sizing. Pure."""
    settings = spec.settings
    cfg = settings.inference
    pinned = spec.pins.inference.engine(cfg.engine)
    if pinned is None:
        return [Finding(
            "error", "engine-not-pinned",
            f"pin set {spec.pin_set_name} has no {cfg.engine} image",
            cfg.engine, f"[sets.{spec.pin_set_name}.inference.{cfg.engine}] in pins.toml",
            "add one, pick another pin set, or set settings.inference.engine = 'vllm'",
        )]
    found: list[Finding] = []
    pp = settings.pipeline_parallel
    if cfg.engine == "vllm" and pp > 1 and Version(pinned.version) < VLLM_ONLINE_PP:
        found.append(Finding(
            "error", "engine-parallel",
            f"vLLM {pinned.version}'s OpenAI server cannot run pipeline parallel {pp}",
            f"vllm {pinned.version}", f"vllm >= {VLLM_ONLINE_PP} (vllm-project/vllm#6054)",
            "set pipeline_parallel = 1, or pick a pin set with a newer vLLM",
        ))
    quantization = cfg.quantization
    dtype = DTYPE.get(settings.precision)
    if settings.precision == "fp8" and quantization is None:
        quantization = "fp8"  # vLLM and SGLang quantize 16-bit weights to FP8 when loading
    if settings.precision in ("int8", "int4") and quantization is None:
        found.append(Finding(
            "error", "quantized-weights-needed",
            f"serving at {settings.precision} needs pre-quantized weights",
            f"precision {settings.precision}, no settings.inference.quantization",
            "settings.inference.quantization (awq, gptq, ...) and weights quantized that way",
            "point weights_path at an AWQ/GPTQ checkpoint and name its method, or serve at "
            "bf16/fp8",
        ))
    replicas = plan_replicas(gpu_count, tp, pp, cfg.replicas, cfg.port)
    if isinstance(replicas, list):
        found += replicas
    if found:
        return found
    assert isinstance(replicas, tuple)
    start = cfg.start_seconds or max(300, int(2 * (load_seconds or 0)) + 60)
    return EnginePlan(
        engine=cfg.engine, version=pinned.version, image=image_reference(pinned, cfg.image),
        cuda=pinned.cuda, model_id=spec.model.id, model_dir=settings.weights_path,
        served_name=cfg.served_model_name or spec.model.id, tp=tp, pp=pp,
        max_model_len=max_model_len, gpu_memory_utilization=settings.gpu_memory_utilization,
        max_num_seqs=cfg.max_num_seqs or max_num_seqs, dtype=dtype, quantization=quantization,
        bind=cfg.bind, replicas=replicas, start_seconds=start, ulimits=dict(cfg.ulimits),
        api_key=cfg.api_key_file is not None, temperature=settings.sampling.temperature,
        top_p=settings.sampling.top_p,
    )


def engine_args(plan: EnginePlan) -> list[str]:
    """The engine's command line: every value that matters set explicitly."""
    port = str(ENGINE_PORT[plan.engine])
    if plan.engine == "sglang":
        args = ["--model-path", plan.mount, "--served-model-name", plan.served_name,
                "--host", "0.0.0.0", "--port", port, "--tp", str(plan.tp),
                "--context-length", str(plan.max_model_len),
                "--mem-fraction-static", str(plan.gpu_memory_utilization),
                "--max-running-requests", str(plan.max_num_seqs), "--enable-metrics"]
        if plan.dtype:
            args += ["--dtype", plan.dtype]
        if plan.quantization:
            args += ["--quantization", plan.quantization]
        return args
    args = ["--model", plan.mount, "--served-model-name", plan.served_name,
            "--host", "0.0.0.0", "--port", port,
            "--tensor-parallel-size", str(plan.tp),
            "--max-model-len", str(plan.max_model_len),
            "--gpu-memory-utilization", str(plan.gpu_memory_utilization),
            "--max-num-seqs", str(plan.max_num_seqs)]
    if plan.pp > 1:
        args += ["--pipeline-parallel-size", str(plan.pp)]
    if plan.dtype:
        args += ["--dtype", plan.dtype]
    if plan.quantization:
        args += ["--quantization", plan.quantization]
    low, high = VLLM_DISABLE_LOG_REQUESTS
    if low <= Version(plan.version) < high:
        args.append("--disable-log-requests")
    return args


def _port_binding(bind: str, host_port: int, container_port: int) -> str:
    host = f"[{bind}]" if ipaddress.ip_address(bind).version == 6 else bind
    return f"{host}:{host_port}:{container_port}"


def compose_document(plan: EnginePlan, exporter: DcgmExporter | None = None) -> dict[str, Any]:
    """The Compose file as data: one service per replica, each on its own GPUs and port, and
    the DCGM exporter when the fleet is monitored."""
    port = ENGINE_PORT[plan.engine]
    health = (f"import urllib.request; urllib.request.urlopen("
              f"'http://127.0.0.1:{port}{HEALTH_PATH[plan.engine]}', timeout=5)")
    services: dict[str, Any] = {}
    for replica in plan.replicas:
        service: dict[str, Any] = {
            "image": plan.image,
            "container_name": replica.container,
            "entrypoint": ENTRYPOINT[plan.engine],
            "command": engine_args(plan),
            "ports": [_port_binding(plan.bind, replica.port, port)],
            "volumes": [f"{plan.model_dir}:{plan.mount}:ro"],
            # The engine never reaches a hub: the weights are all there, verified.
            "environment": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            # Tensor parallel workers share tensors through /dev/shm.
            "ipc": "host",
            "restart": "unless-stopped",
            "healthcheck": {
                "test": ["CMD", "python3", "-c", health],
                "interval": "30s", "timeout": "10s", "retries": 3,
                "start_period": f"{plan.start_seconds}s",
            },
            "deploy": {"resources": {"reservations": {"devices": [{
                "driver": "nvidia", "device_ids": [str(g) for g in replica.gpus],
                "capabilities": ["gpu"],
            }]}}},
            "labels": {
                "org.gpufleet.model": plan.model_id,
                "org.gpufleet.replica": str(replica.index),
                "org.gpufleet.gpus": ",".join(str(g) for g in replica.gpus),
            },
        }
        if plan.ulimits:
            service["ulimits"] = dict(plan.ulimits)
        if plan.api_key:
            service["env_file"] = [API_KEY_PATH]
        services[replica.service] = service
    if exporter is not None:
        services[exporter.service] = {
            "image": exporter.image,
            "container_name": exporter.container,
            "ports": [_port_binding(exporter.bind, exporter.port, exporter.container_port)],
            # DCGM's profiling metrics (DCGM_FI_PROF_*) need it (NVIDIA's README).
            "cap_add": ["SYS_ADMIN"],
            "restart": "unless-stopped",
            "deploy": {"resources": {"reservations": {"devices": [{
                "driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}},
            "labels": {"org.gpufleet.role": "dcgm-exporter"},
        }
    return {"services": services}


class _NoAliases(yaml.SafeDumper):
    """Every service spelled out in full: no &anchors / *aliases for shared values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_compose(plan: EnginePlan, exporter: DcgmExporter | None = None) -> str:
    body = yaml.dump(compose_document(plan, exporter), Dumper=_NoAliases, sort_keys=False,
                     default_flow_style=False, width=100)
    return render("inference/docker-compose.yml.j2", plan=plan, body=body)


def render_unit(plan: EnginePlan, compose: Compose) -> str:
    return render("inference/gpufleet-inference.service.j2", plan=plan, compose=compose.path,
                  compose_v2=compose.kind == "v2", project=COMPOSE_PROJECT,
                  compose_path=COMPOSE_PATH, timeout=plan.start_seconds + 300)


def render_api_key_env(engine: str, key: str) -> str:
    return f"{API_KEY_VARIABLE[engine]}={key.strip()}\n"


def compose_digest(compose_text: str) -> str:
    """What the applied-stamp records: the compose file that was brought up."""
    return hashlib.sha256(compose_text.encode()).hexdigest()


def smoke_request(plan: EnginePlan) -> str:
    """The small chat completion that proves the engine answers (JSON body)."""
    return json.dumps({
        "model": plan.served_name,
        "messages": [{"role": "user", "content": "Say hello in one word."}],
        "max_tokens": 8, "temperature": plan.temperature, "top_p": plan.top_p,
    })


def engine_findings(plan: EnginePlan, answers: EngineAnswersResult) -> list[Finding]:
    """Everything wrong with the replicas' answers; empty when each one serves. Pure."""
    if answers.errors:
        return [Finding("error", "engine-not-serving", "the engine check did not run",
                        "; ".join(answers.errors), "one answer per replica",
                        "python3 must be on the host; run the check by hand: " + answers.raw[:200])]
    found = []
    by_port = {answer.port: answer for answer in answers.replicas}
    for replica in plan.replicas:
        answer = by_port.get(replica.port)
        where = f"replica {replica.index} ({replica.container}, port {replica.port})"
        if answer is None:
            problem = "no answer at all"
        elif answer.health != "ok":
            problem = (f"not healthy after {answer.waited:.0f} s ({answer.health}); its log: "
                       + explaining_lines(answer.log, limit=3))
        elif plan.served_name not in answer.models:
            problem = f"/v1/models lists {list(answer.models)}, not {plan.served_name}"
        elif answer.error or answer.tokens < 1:
            problem = ("a chat completion returned no tokens: "
                       + (answer.error or "empty answer") + "; its log: "
                       + explaining_lines(answer.log, limit=3))
        else:
            continue
        found.append(Finding(
            "error", "engine-not-serving", f"{where} does not serve {plan.served_name}",
            problem, "healthy, listing the model, answering a chat completion",
            f"docker logs {replica.container}; journalctl -u {UNIT_NAME}",
        ))
    return found
