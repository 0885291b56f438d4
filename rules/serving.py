"""The serving engine's decisions, as pure functions: how many replicas a host runs and on which
GPUs, every engine flag (from the sizing, never from the engine's defaults), the Compose file
and the systemd unit that run them.

Nothing here touches a host: deploys/inference.py writes what these return, and the unit tests
validate it with the real `docker-compose config` and `systemd-analyze verify`.
"""

from __future__ import annotations

import ast
import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Any

import yaml
from packaging.version import Version

from facts.engine_answers import EngineAnswersResult
from facts.host_state import API_KEY_PATH as API_KEY_PATH  # a secret: the read keeps it
from inventory.fleet import HostSpec
from inventory.pins import EngineImage
from rules.container_runtime import Compose
from rules.findings import Finding, explaining_lines
from rules.multinode import (
    VLLM_EXECUTOR_BACKEND_FLAG,
    VLLM_ONLINE_PP,
    RayPorts,
    SpanPlan,
    nccl_socket_ifname,
    span_plan,
)
from rules.render import TEMPLATES_DIR, render

INFERENCE_DIR = "/etc/gpufleet/inference"
COMPOSE_PATH = f"{INFERENCE_DIR}/docker-compose.yml"
APPLIED_PATH = f"{INFERENCE_DIR}/applied.digest"  # the compose file last brought up
UNIT_NAME = "gpufleet-inference"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}.service"
COMPOSE_PROJECT = "gpufleet-inference"
# A replica spanning hosts: the vLLM head's launcher (Ray's head, then the server once every
# node joined), and the Ray worker the other nodes run.
MULTINODE_LAUNCHER = f"{INFERENCE_DIR}/multinode-launch.py"
LAUNCHER_MOUNT = "/gpufleet/multinode-launch.py"
NODE_SERVICE = "ray-node"
NODE_CONTAINER = f"{COMPOSE_PROJECT}-ray-node"
MODELS_MOUNT = "/models"
# Where each engine listens inside its container, and its health path.
ENGINE_PORT = {"vllm": 8000, "sglang": 30000}
HEALTH_PATH = {"vllm": "/health", "sglang": "/health"}
ENTRYPOINT = {
    "vllm": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
    "sglang": ["python3", "-m", "sglang.launch_server"],
}
# The environment variable api-key.env sets. vLLM reads VLLM_API_KEY itself (vllm/envs.py).
# SGLang 0.4.1.post7 reads its key from --api-key only (sglang/srt/server_args.py; no code
# reads a variable), so its container's shell expands ours into that flag (sglang_key_wrapper).
API_KEY_VARIABLE = {"vllm": "VLLM_API_KEY", "sglang": "GPUFLEET_API_KEY"}
# The engines that read API_KEY_VARIABLE themselves (tests/conformance checks each version).
ENGINE_READS_KEY_VARIABLE = {"vllm": True, "sglang": False}
# The engines' own default share of each GPU's memory for weights and KV cache when the fleet
# sets none: vLLM's --gpu-memory-utilization default, and SGLang's --mem-fraction-static by
# tensor parallel size, [(tp at least, fraction)] (ServerArgs.__post_init__, 0.4.1.post7).
VLLM_DEFAULT_MEMORY_FRACTION = 0.9
SGLANG_MEMORY_FRACTION_BY_TP = ((16, 0.79), (8, 0.81), (4, 0.85), (2, 0.87), (0, 0.88))
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
    trust_remote_code: bool = False  # settings.inference.trust_remote_code
    temperature: float = 0.6
    top_p: float = 0.95
    # Set on the nodes of a replica spanning hosts (settings.multinode).
    span: SpanPlan | None = None

    @property
    def serves_api(self) -> bool:
        """Only a replica's head serves the API; the other nodes lend it their GPUs."""
        return self.span is None or self.span.is_head

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


def memory_fraction(engine: str, tp: int, setting: float | None) -> float:
    """The share of each GPU's memory the engine takes: the fleet's gpu_memory_utilization,
    else the engine's own default (SGLang's depends on the tensor parallel size)."""
    if setting is not None:
        return setting
    if engine == "sglang":
        return next(f for least, f in SGLANG_MEMORY_FRACTION_BY_TP if tp >= least)
    return VLLM_DEFAULT_MEMORY_FRACTION


def image_reference(pinned: EngineImage, override: str | None) -> str:
    """The image Compose runs: the fleet's override, else the pin (by digest when recorded)."""
    return override or pinned.reference()


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
    pp: int | None = None,
) -> EnginePlan | list[Finding]:
    """The engine a host runs, from its spec and the sizing. Pure. ``pp``: the pipeline
    parallel size when it is not the fleet file's (a replica spanning hosts)."""
    settings = spec.settings
    cfg = settings.inference
    span = span_plan(spec)
    pinned = spec.pins.inference.engine(cfg.engine)
    if pinned is None:
        return [Finding(
            "error", "engine-not-pinned",
            f"pin set {spec.pin_set_name} has no {cfg.engine} image",
            cfg.engine, f"[sets.{spec.pin_set_name}.inference.{cfg.engine}] in pins.toml",
            "add one, pick another pin set, or set settings.inference.engine = 'vllm'",
        )]
    found: list[Finding] = []
    pp = settings.pipeline_parallel if pp is None else pp
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
    if span is not None:
        # One replica across the nodes: each lends all of its GPUs to it.
        replicas: tuple[Replica, ...] | list[Finding] = (
            Replica(0, tuple(range(gpu_count)), cfg.port),)
    else:
        replicas = plan_replicas(gpu_count, tp, pp, cfg.replicas, cfg.port)
    if isinstance(replicas, list):
        found += replicas
    if found:
        return found
    assert isinstance(replicas, tuple)
    start = cfg.start_seconds or max(300, int(2 * (load_seconds or 0)) + 60)
    if span is not None:
        start += span.join_timeout  # the head first waits for every node to join
    return EnginePlan(
        engine=cfg.engine, version=pinned.version, image=image_reference(pinned, cfg.image),
        cuda=pinned.cuda, model_id=spec.model.id, model_dir=settings.weights_path,
        served_name=cfg.served_model_name or spec.model.id, tp=tp, pp=pp,
        max_model_len=max_model_len,
        gpu_memory_utilization=memory_fraction(cfg.engine, tp, settings.gpu_memory_utilization),
        max_num_seqs=cfg.max_num_seqs or max_num_seqs, dtype=dtype, quantization=quantization,
        bind=cfg.bind, replicas=replicas, start_seconds=start, ulimits=dict(cfg.ulimits),
        api_key=cfg.api_key_file is not None, trust_remote_code=cfg.trust_remote_code,
        temperature=settings.sampling.temperature,
        top_p=settings.sampling.top_p, span=span,
    )


def engine_args(plan: EnginePlan) -> list[str]:
    """The engine's command line: every value that matters set explicitly."""
    # In its own network namespace the engine listens everywhere and Docker publishes the port
    # on plan.bind; a node of a replica spanning hosts is on the host's network and listens on
    # plan.bind itself, on the replica's port.
    host, port = "0.0.0.0", str(ENGINE_PORT[plan.engine])
    if plan.span is not None:
        host, port = plan.bind, str(plan.replicas[0].port)
    if plan.engine == "sglang":
        args = ["--model-path", plan.mount, "--served-model-name", plan.served_name,
                "--host", host, "--port", port, "--tp-size", str(plan.tp),
                "--context-length", str(plan.max_model_len),
                "--mem-fraction-static", str(plan.gpu_memory_utilization),
                "--max-running-requests", str(plan.max_num_seqs), "--enable-metrics"]
        if plan.dtype:
            args += ["--dtype", plan.dtype]
        if plan.quantization:
            args += ["--quantization", plan.quantization]
        if plan.trust_remote_code:
            args.append("--trust-remote-code")
        if plan.span is not None:
            args += ["--nnodes", str(len(plan.span.nodes)), "--node-rank", str(plan.span.rank),
                     "--dist-init-addr", plan.span.rendezvous]
        return args
    args = ["--model", plan.mount, "--served-model-name", plan.served_name,
            "--host", host, "--port", port,
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
    if plan.trust_remote_code:
        args.append("--trust-remote-code")
    low, high = VLLM_DISABLE_LOG_REQUESTS
    if low <= Version(plan.version) < high:
        args.append("--disable-log-requests")
    if plan.span is not None:
        args += (["--distributed-executor-backend", "ray"]
                 if Version(plan.version) >= VLLM_EXECUTOR_BACKEND_FLAG else ["--worker-use-ray"])
    return args


def port_binding(bind: str, host_port: int, container_port: int) -> str:
    """A published port in Compose's short syntax (an IPv6 address in brackets)."""
    host = f"[{bind}]" if ipaddress.ip_address(bind).version == 6 else bind
    return f"{host}:{host_port}:{container_port}"


def _bind(source: str, target: str) -> dict[str, Any]:
    """A read-only bind mount in Compose's long syntax: a path holding ':' or ',' stays one
    path (the short syntax splits `source:target:mode` at every ':')."""
    return {"type": "bind", "source": source, "target": target, "read_only": True}


def _literal(value: Any) -> Any:
    """Every string of a Compose document with '$' written '$$': Compose would otherwise
    substitute ${VAR} from the environment of whoever runs it (a value from the fleet file
    must reach the container as written)."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_literal(item) for item in value]
    if isinstance(value, dict):
        return {key: _literal(item) for key, item in value.items()}
    return value


def _health_test(url: str) -> list[str]:
    return ["CMD", "python3", "-c",
            f"import urllib.request; urllib.request.urlopen('{url}', timeout=5)"]


def _gpu_devices(gpus: tuple[int, ...]) -> dict[str, Any]:
    return {"resources": {"reservations": {"devices": [{
        "driver": "nvidia", "device_ids": [str(g) for g in gpus], "capabilities": ["gpu"]}]}}}


def sglang_key_wrapper(entrypoint: list[str]) -> list[str]:
    """SGLang takes its key only as --api-key: the container's shell appends it from the
    variable api-key.env sets, then execs the engine (the document's escaping writes each `$`
    as `$$`, and Compose hands the shell one). The key stays out of the compose file, but is
    in the engine process's arguments, which the host's process list shows (docs/serving.md: the API
    key)."""
    variable = API_KEY_VARIABLE["sglang"]
    return ["sh", "-c", f'exec "$@" --api-key "${variable}"', "sglang", *entrypoint]


def server_entrypoint(plan: EnginePlan, with_key: bool) -> list[str]:
    """The engine's entrypoint; for SGLang with a key, wrapped to pass it as --api-key."""
    entrypoint = ENTRYPOINT[plan.engine]
    if with_key and not ENGINE_READS_KEY_VARIABLE[plan.engine]:
        return sglang_key_wrapper(entrypoint)
    return list(entrypoint)


def runs_server(plan: EnginePlan) -> bool:
    """Across hosts, SGLang runs its server on every node (rank 0 serves HTTP); vLLM only on
    the head, the other nodes being Ray workers."""
    return plan.engine == "sglang" or plan.serves_api


def node_service(plan: EnginePlan) -> dict[str, Any]:
    """A node of a replica spanning hosts: on the host's network (the engines' runtimes open
    ports of their own between the nodes), told which interface and address are the
    inter-node ones, and holding all of the node's GPUs and the same weights at the same path.
    """
    span = plan.span
    assert span is not None
    replica = plan.replicas[0]
    environment = {
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        # NCCL and Gloo pick the first interface they like otherwise (vllm-project/vllm#6803).
        # NCCL's is exact only with '=' (a bare eth1 also matches eth10); Gloo's is a name.
        "NCCL_SOCKET_IFNAME": nccl_socket_ifname(span.interface),
        "GLOO_SOCKET_IFNAME": span.interface,
    }
    if plan.engine == "vllm":
        environment["VLLM_HOST_IP"] = span.address  # one of several addresses (#7815)
    service: dict[str, Any] = {
        "image": plan.image,
        "network_mode": "host",
        "ipc": "host",
        "volumes": [_bind(plan.model_dir, plan.mount)],
        "environment": environment,
        "restart": "unless-stopped",
        "deploy": _gpu_devices(replica.gpus),
        "labels": {"org.gpufleet.model": plan.model_id, "org.gpufleet.replica": "0",
                   "org.gpufleet.gpus": ",".join(str(g) for g in replica.gpus),
                   "org.gpufleet.node-rank": str(span.rank)},
    }
    if plan.engine == "vllm":
        # Ray's daemons (raylet, GCS, workers) outlive the processes that started them, and
        # those started them as PID 1 (the launcher, `ray start --block`), which reap nothing:
        # Docker's init is PID 1 instead and reaps them. SGLang's ranks wait for their own.
        service["init"] = True
    if span.infiniband_hca is not None:
        environment["NCCL_IB_HCA"] = span.infiniband_hca
        service["devices"] = ["/dev/infiniband:/dev/infiniband"]
        service["cap_add"] = ["IPC_LOCK"]  # RDMA registers (pins) memory
    health_url = f"http://{plan.query_address}:{replica.port}{HEALTH_PATH[plan.engine]}"
    if runs_server(plan):
        service["container_name"] = replica.container
        server = [*ENTRYPOINT[plan.engine], *engine_args(plan)]
        if plan.engine == "vllm":
            # Ray's head, then the API server once every node joined (templates/inference).
            service["volumes"].append(_bind(MULTINODE_LAUNCHER, LAUNCHER_MOUNT))
            nodes = [f"--node={name}={address}" for name, address in span.nodes]
            service["entrypoint"] = ["python3", LAUNCHER_MOUNT]
            ray = [f"--ray={flag}" for flag in RayPorts(span.port).start_flags(head=True)
                   if not flag.startswith("--port=")]
            service["command"] = [
                f"--address={span.address}", f"--port={span.port}",
                f"--gpus={len(replica.gpus)}", f"--timeout={span.join_timeout}",
                *ray, *nodes, "--", *server]
        else:
            service["entrypoint"] = server_entrypoint(plan, plan.api_key and span.is_head)
            service["command"] = server[len(ENTRYPOINT[plan.engine]):]
    else:
        service["container_name"] = NODE_CONTAINER
        service["entrypoint"] = ["ray", "start", "--block", f"--address={span.rendezvous}",
                                 f"--node-ip-address={span.address}",
                                 f"--num-gpus={len(replica.gpus)}", "--disable-usage-stats",
                                 *RayPorts(span.port).start_flags(head=False)]
    if span.is_head:
        service["healthcheck"] = {"test": _health_test(health_url), "interval": "30s",
                                  "timeout": "10s", "retries": 3,
                                  "start_period": f"{plan.start_seconds}s"}
    if plan.ulimits:
        service["ulimits"] = dict(plan.ulimits)
    if plan.api_key and span.is_head:
        service["env_file"] = [API_KEY_PATH]
    return service


def compose_document(plan: EnginePlan, beside: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The Compose file as data: one service per replica, each on its own GPUs and port, then
    ``beside``: the services components run in the engine's compose project (the DCGM exporter
    on a monitored host: components/dcgm_exporter)."""
    port = ENGINE_PORT[plan.engine]
    services: dict[str, Any] = {}
    if plan.span is not None:
        name = plan.replicas[0].service if runs_server(plan) else NODE_SERVICE
        services[name] = node_service(plan)
    else:
        for replica in plan.replicas:
            service: dict[str, Any] = {
                "image": plan.image,
                "container_name": replica.container,
                "entrypoint": server_entrypoint(plan, plan.api_key),
                "command": engine_args(plan),
                "ports": [port_binding(plan.bind, replica.port, port)],
                "volumes": [_bind(plan.model_dir, plan.mount)],
                # The engine never reaches a hub: the weights are all there, verified.
                "environment": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
                # Tensor parallel workers share tensors through /dev/shm.
                "ipc": "host",
                "restart": "unless-stopped",
                "healthcheck": {
                    "test": _health_test(f"http://127.0.0.1:{port}{HEALTH_PATH[plan.engine]}"),
                    "interval": "30s", "timeout": "10s", "retries": 3,
                    "start_period": f"{plan.start_seconds}s",
                },
                "deploy": _gpu_devices(replica.gpus),
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
    services.update(beside or {})
    return _literal({"services": services})


class _NoAliases(yaml.SafeDumper):
    """Every service spelled out in full: no &anchors / *aliases for shared values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_compose(plan: EnginePlan, beside: Mapping[str, Any] | None = None) -> str:
    body = compose_yaml(compose_document(plan, beside))
    return render("inference/docker-compose.yml.j2", plan=plan, body=body)


_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any) -> bool:
    if type(value) in _PLAIN:
        return True
    if type(value) is list:
        return all(_plain(item) for item in value)
    if type(value) is dict:
        return all(type(key) is str and _plain(item) for key, item in value.items())
    return False


def compose_yaml(document: dict[str, Any]) -> str:
    """The YAML of a Compose document (every service in full, in the document's order)."""
    # Hosts with the same plan have the same document: dumped once, keyed by its repr
    # (builtin values only: the repr tells them apart, type and order included).
    return _yaml_of_repr(repr(document)) if _plain(document) else _dump(document)


def _dump(document: Any) -> str:
    body: str = yaml.dump(document, Dumper=_NoAliases, sort_keys=False,
                          default_flow_style=False, width=100)
    return body


@lru_cache(maxsize=64)
def _yaml_of_repr(text: str) -> str:
    """A memo of a pure function (the key is the whole document), not run data."""
    return _dump(ast.literal_eval(text))


def render_unit(plan: EnginePlan, compose: Compose) -> str:
    return render("inference/gpufleet-inference.service.j2", plan=plan, compose=compose.path,
                  compose_v2=compose.kind == "v2", project=COMPOSE_PROJECT,
                  compose_path=COMPOSE_PATH, timeout=plan.start_seconds + 300)


def render_multinode_launcher() -> str:
    """The vLLM head's launcher (static: its arguments come from the compose file)."""
    return (TEMPLATES_DIR / "inference" / "multinode-launch.py").read_text()


def render_api_key_env(engine: str, key: str) -> str:
    return f"{API_KEY_VARIABLE[engine]}={key.strip()}\n"


def compose_digest(compose_text: str, key_env: str | None = None) -> str:
    """What the applied-stamp records: the compose file that was brought up, and the API key
    file its services read. The key lives in an env file, not in the compose file, so a new
    key alone must bring the services up again (Compose recreates a container whose
    environment changed), or the engines keep answering to the old key."""
    digest = hashlib.sha256(compose_text.encode()).hexdigest()
    if key_env is None:
        return digest
    return f"{digest} key:{key_stamp(hashlib.sha256(key_env.encode()).hexdigest())}"


def key_stamp(key_env_sha256: str) -> str:
    """The key's part of the applied-stamp, from the key file's SHA-256 (what the state read
    reports for it): a digest of that digest, so the stamp never shows the same value."""
    return hashlib.sha256(f"gpufleet-applied-key:{key_env_sha256}".encode()).hexdigest()


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
        elif plan.api_key and answer.unauthenticated != 401:
            problem = ("an API key is set, but /v1/models without it answered "
                       f"{answer.unauthenticated}, not 401: the key does not guard the API "
                       f"(does the engine read {API_KEY_PATH}?)")
        else:
            continue
        found.append(Finding(
            "error", "engine-not-serving", f"{where} does not serve {plan.served_name}",
            problem, "healthy, listing the model, answering a chat completion"
            + (", refusing a request without the API key" if plan.api_key else ""),
            f"docker logs {replica.container}; journalctl -u {UNIT_NAME}",
        ))
    return found
