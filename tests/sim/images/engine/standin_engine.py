#!/usr/bin/python3
"""TEST STAND-IN for a serving engine (gpufleet simulator): vLLM's OpenAI server and SGLang.

Accepts the engines' real command lines: its parser, the key variable it reads and its metric
names come from the pinned release's own source (released/<engine>-<version>.json, written by
tests/conformance/released.py), so an unknown flag or a value outside the choices is an error
as with argparse in the real one, and a variable the release does not read is ignored. It
refuses to start the way they do — no config.json in the model folder, fewer GPUs than tensor x
pipeline parallel, more memory asked for than the GPUs it sees have — and then serves /health,
/v1/models, /v1/chat/completions and /v1/completions (streaming too) and /metrics under that
version's metric names and histogram buckets. It sees only the GPUs the
container was given (the stand-in NVIDIA hook writes them to /etc/gpufleet-sim/hardware.json;
GPUFLEET_SIM_HARDWARE points at another file). No model runs: answers are a fixed text cut to
max_tokens words.

    python3 -m vllm.entrypoints.openai.api_server --model /models/m ...   (vLLM's entrypoint)
    python3 -m sglang.launch_server --model-path /models/m ...            (SGLang's)

Multi-node: vLLM with --distributed-executor-backend ray (or 0.4's --worker-use-ray) and more
GPUs than this node has joins the Ray cluster (real Ray, as the image carries it: ray.lock),
checks the cluster's GPUs, looks at the model folder on every node with a Ray task placed on
that node, and exits 1 when a node of its placement dies. SGLang
with --nnodes N --node-rank R --dist-init-addr HOST:PORT meets its other nodes at HOST:PORT
(rank 0 listens there, checks that every rank runs the same tp, nnodes, version and weights, and
serves HTTP once all joined); a lost node ends the others with exit 1, as NCCL's watchdog does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn

import standin_net as standin

# Knobs a test turns on a running engine (docker exec ... to write it): JSON with
# "ttft_seconds" (wait before the first token), "tpot_seconds" (per further token) and
# "error_rate" (share of requests answered with a 500). Read at every request.
KNOBS = "/tmp/gpufleet-sim-knobs.json"
DEFAULT_KNOBS = {"ttft_seconds": 0.0, "tpot_seconds": 0.005, "error_rate": 0.0}
MIB = 2**20
GIB = 2**30
BLOCK_TOKENS = 16
ANSWER = ("<think>\nThe user wants a greeting.\n</think>\n\nHello from the gpufleet stand-in "
          "engine, serving as if it were the real model. ")


def log(message: str) -> None:
    print(f"INFO {time.strftime('%m-%d %H:%M:%S')} {message}", flush=True)


def fail(message: str, code: int = 1) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)


def die(message: str) -> NoReturn:
    """fail() from a thread other than the main one: the whole server ends, exit status 1."""
    print(message, file=sys.stderr, flush=True)
    os._exit(1)


def version_tuple(version: str) -> tuple[int, ...]:
    """(0, 6, 6) for "0.6.6.post1"."""
    return tuple(int(m.group()) if (m := re.match(r"\d+", part)) else 0
                 for part in version.split(".")[:3])


def knobs() -> dict[str, float]:
    try:
        with open(KNOBS) as fh:
            return {**DEFAULT_KNOBS, **{k: float(v) for k, v in json.load(fh).items()}}
    except (OSError, ValueError, AttributeError):
        return dict(DEFAULT_KNOBS)


# --- command lines, key variables and metric names: from the released engines ----------------
# tests/conformance/released.py reads them from the pinned releases' source into released/
# (copied beside this file in the image), so the stand-in accepts no flag, reads no variable
# and exports no metric the real version lacks.
RELEASED_DIR = os.environ.get("GPUFLEET_SIM_RELEASED") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "released")
PROG = {"vllm": "api_server.py", "sglang": "launch_server.py"}
# The variable each engine reads its API key from itself, used only where that version's source
# reads it (SGLang 0.4.1.post7 reads none: --api-key only).
KEY_VARIABLE = {"vllm": "VLLM_API_KEY"}
# What the stand-in reports, under each engine's own metric names (the same figures as
# rules/engine_metrics.py; tests/unit/test_standin_engine.py compares the two).
METRIC_NAMES = {
    "vllm": {"ttft": "vllm:time_to_first_token_seconds",
             "tpot": "vllm:time_per_output_token_seconds",
             "e2e": "vllm:e2e_request_latency_seconds",
             "prompt_tokens": "vllm:prompt_tokens_total",
             "generation_tokens": "vllm:generation_tokens_total",
             "kv_cache_usage": "vllm:gpu_cache_usage_perc",
             "requests_running": "vllm:num_requests_running",
             "requests_waiting": "vllm:num_requests_waiting"},
    "sglang": {"ttft": "sglang:time_to_first_token_seconds",
               "tpot": "sglang:time_per_output_token_seconds",
               "e2e": "sglang:e2e_request_latency_seconds",
               "prompt_tokens": "sglang:prompt_tokens_total",
               "generation_tokens": "sglang:generation_tokens_total",
               "kv_cache_usage": "sglang:token_usage",
               "requests_running": "sglang:num_running_reqs",
               "requests_waiting": "sglang:num_queue_reqs"},
}
TYPES = {"int": int, "float": float}


def released(kind: str, version: str) -> dict[str, Any]:
    """The extracted data of that engine version; no data, no engine (as no such image)."""
    path = os.path.join(RELEASED_DIR, f"{kind}-{version}.json")
    try:
        with open(path) as fh:
            data: dict[str, Any] = json.load(fh)
    except FileNotFoundError:
        fail(f"stand-in: no released data for {kind} {version} ({path}): add the version to "
             "tests/conformance/engines.lock and run python -m tests.conformance.released")
    return data


def engine_parser(kind: str, version: str) -> argparse.ArgumentParser:
    """The engine's server parser as its release defines it: every option string, action,
    value type, choices and default that version's add_argument calls give (argparse's own
    prefix matching included, as in the real one)."""
    p = argparse.ArgumentParser(prog=PROG[kind])
    for arg in released(kind, version)["arguments"].values():
        kwargs: dict[str, Any] = {"dest": arg["dest"]}
        if arg["default"] is not None:
            kwargs["default"] = arg["default"]
        action = arg["action"]
        if action in ("store_true", "store_false", "count", "append"):
            kwargs["action"] = action
        elif action.endswith("BooleanOptionalAction"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif not arg["takes_value"]:
            kwargs["action"] = "store_true"  # store_const and the like: no value
        if arg["takes_value"]:
            convert = TYPES.get(arg["type"] or "", str)
            if action != "append" or arg["type"] in TYPES:
                kwargs["type"] = convert
            if arg["nargs"] in ("?", "*", "+") or isinstance(arg["nargs"], int):
                kwargs["nargs"] = arg["nargs"]
            if arg["choices"] is not None:
                kwargs["choices"] = [c for c in arg["choices"] if c is not None]
        if arg.get("required"):
            kwargs["required"] = True
        p.add_argument(*arg["flags"], **kwargs)
    return p


def parse_command_line(kind: str, version: str, argv: list[str]) -> argparse.Namespace:
    """argv as that engine version parses it: exit status 2 and argparse's message on an
    unknown flag or a value outside the choices."""
    return engine_parser(kind, version).parse_args(argv)


def api_key(kind: str, version: str, args: argparse.Namespace,
            environ: dict[str, str]) -> str | None:
    """The key the engine enforces: --api-key, or its own variable where that version reads it."""
    variable = KEY_VARIABLE.get(kind)
    reads = variable is not None and variable in released(kind, version)["env_vars"]
    return args.api_key or (environ.get(variable) if reads and variable else None)


def key_guards(kind: str, version: str, path: str) -> bool:
    """Whether that version's key middleware asks for the key on ``path`` (released/: vLLM's
    guards /v1 only; SGLang's every path but /health, /metrics included)."""
    scope = released(kind, version)["api_key_scope"]
    if any(path.startswith(prefix) for prefix in scope["open"]):
        return False
    return not scope["guarded"] or any(path.startswith(p) for p in scope["guarded"])


def sglang_memory_fraction(version: str, tp: int) -> float:
    """SGLang's --mem-fraction-static default for a tensor parallel size (its __post_init__)."""
    for least, fraction in released("sglang", version)["mem_fraction_static_by_tp"]:
        if tp >= least:
            return float(fraction)
    return 0.88


def metric_names(kind: str, version: str) -> dict[str, dict[str, Any]]:
    """The stand-in's figures under that version's names, each with its declaration (type,
    buckets); a name the version does not declare stops the stand-in."""
    declared = released(kind, version)["metrics"]
    missing = sorted(n for n in METRIC_NAMES[kind].values() if n not in declared)
    if missing:
        fail(f"stand-in: {kind} {version} declares no {', '.join(missing)}")
    return {figure: {"name": name, **declared[name]}
            for figure, name in METRIC_NAMES[kind].items()}


# --- the checks a real engine makes before it serves ----------------------------------------------
def visible_gpus() -> list[dict[str, Any]]:
    gpus = standin.local_gpus()
    if gpus is None:
        fail("RuntimeError: No CUDA GPUs are available")
    return gpus


def no_config(model_dir: str) -> str:
    return (f"{model_dir} does not appear to have a file named config.json. Checkout "
            f"'https://huggingface.co/{model_dir}/None' for available files.")


def load_config(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        fail(f"OSError: {no_config(model_dir)}")
    with open(path) as fh:
        config: dict[str, Any] = json.load(fh)
    return config


def param_count(c: dict[str, Any]) -> int:
    """A dense decoder's parameters from its config (what sizes the weights in memory)."""
    hidden, layers = c["hidden_size"], c["num_hidden_layers"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    head_dim = c.get("head_dim") or hidden // heads
    inter = c.get("intermediate_size") or 4 * hidden
    embed = c["vocab_size"] * hidden * (1 if c.get("tie_word_embeddings") else 2)
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim
    return int(embed + layers * (attention + 3 * hidden * inter))


def kv_cache_tokens(c: dict[str, Any], gpu_mib: int, utilization: float, tp: int,
                    weight_bytes: int) -> int:
    """Tokens the KV cache holds per replica after the weights and a runtime reserve."""
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads", heads)
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    per_token_per_gpu = 2 * c["num_hidden_layers"] * kv * head_dim * 2 / tp
    free = gpu_mib * MIB * utilization - weight_bytes / tp - GIB  # 1 GiB: context + activations
    if free <= 0:
        return 0
    blocks = int(free // (per_token_per_gpu * BLOCK_TOKENS))
    return blocks * BLOCK_TOKENS


class Engine:
    def __init__(self, kind: str, argv: list[str]) -> None:
        self.kind = kind
        self.version = os.environ.get(f"GPUFLEET_SIM_{kind.upper()}_VERSION") or "0.4.2"
        self.ray_backend = False  # vLLM: workers through Ray (may span nodes)
        self.nnodes, self.node_rank, self.dist_init_addr = 1, 0, ""  # SGLang's multi-node flags
        self.placement: list[dict[str, Any]] = []  # vLLM on Ray: the nodes its workers are on
        a = parse_command_line(kind, self.version, argv)
        self.api_key = api_key(kind, self.version, a, dict(os.environ))
        self.metric = metric_names(kind, self.version)
        self.tp = a.tensor_parallel_size
        if kind == "vllm":
            self.model_dir, self.port, self.host = a.model, a.port, a.host or "0.0.0.0"
            self.names = a.served_model_name or [a.model]
            if isinstance(self.names, str):
                self.names = [self.names]
            self.pp = a.pipeline_parallel_size
            self.max_len, self.util, self.max_seqs = a.max_model_len, a.gpu_memory_utilization, \
                a.max_num_seqs
            self.ray_backend = a.worker_use_ray or getattr(
                a, "distributed_executor_backend", None) == "ray"
            if self.pp > 1 and version_tuple(self.version) < (0, 5, 1):
                fail("NotImplementedError: Pipeline parallelism is not supported yet.")
        else:
            self.model_dir, self.port, self.host = a.model_path, a.port, a.host
            self.names = [a.served_model_name or a.model_path]
            self.pp = 1
            self.max_len = a.context_length
            self.util = (a.mem_fraction_static if a.mem_fraction_static is not None
                         else sglang_memory_fraction(self.version, self.tp))
            self.max_seqs = a.max_running_requests or 256
            self.nnodes, self.node_rank = a.nnodes, a.node_rank
            self.dist_init_addr = a.dist_init_addr or ""
            if self.nnodes > 1 and not self.dist_init_addr:
                fail("ValueError: --dist-init-addr is required when --nnodes is more than 1")
        self.lock = threading.Lock()
        self.metrics: dict[str, float] = {"running": 0, "prompt_tokens": 0,
                                          "generation_tokens": 0, "success": 0}
        self.ttft: list[float] = []
        self.e2e: list[float] = []
        self.tpot: list[float] = []

    def check(self) -> None:
        config = load_config(self.model_dir)
        gpus = visible_gpus()
        log(f"gpufleet stand-in {self.kind} {self.version}: GPUs visible: "
            + ", ".join(f"{g['index']}:{g['uuid']}" for g in gpus)
            + (f" ({gpus[0]['name']})" if gpus else ""))
        need = self.tp * self.pp
        if self.nnodes > 1:
            need = self.gpus_per_sglang_node(len(gpus))
        elif self.ray_backend and len(gpus) < need:
            self.placement = place_on_ray(self, need)
        elif len(gpus) < need:
            fail(f"ValueError: The number of required GPUs exceeds the total number of available "
                 f"GPUs in the cluster (required {need}, available {len(gpus)}).")
        model_max = int(config.get("max_position_embeddings", 2048))
        self.max_len = self.max_len or model_max
        if self.max_len > model_max:
            fail(f"ValueError: User-specified max_model_len ({self.max_len}) is greater than the "
                 f"derived max_model_len (max_position_embeddings={model_max} in model's "
                 "config.json).")
        weights = param_count(config) * 2
        tokens = kv_cache_tokens(config, min(g["memory_total_mib"] for g in gpus[:need]),
                                 self.util, self.tp, weights)
        if tokens <= 0:
            fail("ValueError: No available memory for the cache blocks. Try increasing "
                 "`gpu_memory_utilization` when initializing the engine.")
        log(f"# GPU blocks: {tokens // BLOCK_TOKENS}, # CPU blocks: 0")
        if self.max_len > tokens:
            fail(f"ValueError: The model's max seq len ({self.max_len}) is larger than the "
                 f"maximum number of tokens that can be stored in KV cache ({tokens}). Try "
                 "increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
                 "initializing the engine.")
        log(f"Maximum concurrency for {self.max_len} tokens per request: "
            f"{tokens / self.max_len:.2f}x")

    def gpus_per_sglang_node(self, local: int) -> int:
        """SGLang splits tp evenly over the nodes; each node needs its share locally."""
        if self.tp % self.nnodes:
            fail("AssertionError: tp_size must be divisible by number of nodes "
                 f"(tp_size {self.tp}, nnodes {self.nnodes})")
        per_node = self.tp // self.nnodes
        if per_node > local:
            fail(f"RuntimeError: CUDA error: invalid device ordinal (stand-in: tp_size {self.tp} "
                 f"over {self.nnodes} nodes needs {per_node} GPUs on each, this node has {local})")
        return per_node

    # --- answers ---------------------------------------------------------------------------
    def answer(self, max_tokens: int) -> list[str]:
        words = (ANSWER * (1 + max_tokens // 8)).split()
        return [w + " " for w in words[:max(1, max_tokens)]]

    def record(self, prompt: int, generated: int, ttft: float, total: float) -> None:
        with self.lock:
            self.metrics["prompt_tokens"] += prompt
            self.metrics["generation_tokens"] += generated
            self.metrics["success"] += 1
            self.ttft.append(ttft)
            self.e2e.append(total)
            # vLLM observes one time-per-output-token per token after the first.
            self.tpot.extend([(total - ttft) / (generated - 1)] * (generated - 1)
                             if generated > 1 else [])

    def prometheus(self) -> str:
        """/metrics in the text format, under the engine version's own metric names and
        histogram buckets (released/)."""
        label = f'model_name="{self.names[0]}"'
        lines = []

        def histogram(figure: str, values: list[float]) -> None:
            # Buckets the source computes at run time (vLLM 0.6.6's e2e) were not read: only
            # +Inf then, rather than buckets the release may not have.
            name, buckets = self.metric[figure]["name"], self.metric[figure]["buckets"] or []
            lines.append(f"# TYPE {name} histogram")
            for bound in buckets:
                count = sum(1 for v in values if v <= bound)
                lines.append(f'{name}_bucket{{le="{float(bound)}",{label}}} {count}')
            lines.append(f'{name}_bucket{{le="+Inf",{label}}} {len(values)}')
            lines.append(f"{name}_sum{{{label}}} {sum(values)}")
            lines.append(f"{name}_count{{{label}}} {len(values)}")

        with self.lock:
            m = dict(self.metrics)
            ttft, e2e, tpot = list(self.ttft), list(self.e2e), list(self.tpot)
        for figure, value in (("requests_running", m["running"]), ("requests_waiting", 0),
                              ("kv_cache_usage", 0.0)):
            name = self.metric[figure]["name"]
            lines += [f"# TYPE {name} gauge", f"{name}{{{label}}} {value}"]
        for figure, key in (("prompt_tokens", "prompt_tokens"),
                            ("generation_tokens", "generation_tokens")):
            name = self.metric[figure]["name"]
            lines += [f"# TYPE {name} counter", f"{name}{{{label}}} {m[key]}"]
        histogram("ttft", ttft)
        histogram("e2e", e2e)
        histogram("tpot", tpot)
        return "\n".join(lines) + "\n"


# --- multi-node ------------------------------------------------------------------------------------
def weights_digest(model_dir: str) -> str:
    """What every node's copy of the model folder must agree on: the files of gpufleet's weights
    manifest (.gpufleet/manifest.json; its "files" only, so that how each host came by the
    weights does not count), else the sorted names and sizes of the files. Runs on every node
    (through Ray on vLLM's nodes), so the config.json check is the node's own."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise OSError(no_config(model_dir))
    try:
        with open(os.path.join(model_dir, ".gpufleet", "manifest.json"), "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        listing = []
        for root, dirs, names in os.walk(model_dir):
            dirs[:] = sorted(d for d in dirs if not (root == model_dir and d == ".gpufleet"))
            for name in sorted(names):
                path = os.path.join(root, name)
                listing.append([os.path.relpath(path, model_dir), os.path.getsize(path)])
        return "files " + hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    with contextlib.suppress(ValueError, KeyError, TypeError):  # else: the bytes as they are
        raw = json.dumps(json.loads(raw)["files"], sort_keys=True).encode()
    return "manifest " + hashlib.sha256(raw).hexdigest()[:16]


def ray_worker_prefix(answer: dict[str, Any]) -> str:
    """How Ray prefixes what a worker on another node printed."""
    return f"(RayWorkerWrapper pid={answer.get('pid', 0)}, ip={answer.get('ip', '?')})"


def node_weights(model_dir: str) -> dict[str, Any]:
    """Run as a Ray task on one node (as vLLM's workers start on every node): that node's
    weights_digest, or the error it met, with the worker's pid and the node's address."""
    import ray

    where = {"pid": os.getpid(), "ip": ray.util.get_node_ip_address()}
    try:
        return {"result": weights_digest(model_dir), **where}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", **where}


def place_on_ray(engine: Engine, need: int) -> list[dict[str, Any]]:
    """vLLM's Ray executor: find `need` GPUs among the cluster's alive nodes (the driver's node
    first), then have every node of that placement look at the model folder (a Ray task pinned
    to that node): the same path, with the same weights, on every node. Returns the
    placement's nodes."""
    bad_interface = standin.socket_ifname_error()
    if bad_interface:
        fail(bad_interface)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        ray.init(ignore_reinit_error=True)  # RAY_ADDRESS, else the cluster this node is in
        nodes = [n for n in ray.nodes() if n["Alive"]]
    except (ConnectionError, RuntimeError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
    total = sum(int(n["Resources"].get("GPU", 0)) for n in nodes)
    if total < need:
        fail("ValueError: The number of required GPUs exceeds the total number of available GPUs "
             f"in the placement group (required {need}, available {total} on {len(nodes)} "
             "Ray nodes).")
    # The driver's node: VLLM_HOST_IP's (as vLLM finds its own address), else the head's.
    driver_ip = os.environ.get("VLLM_HOST_IP")
    nodes.sort(key=lambda n: not (n["NodeManagerAddress"] == driver_ip if driver_ip
                                  else "node:__internal_head__" in n["Resources"]))
    placement, placed = [], 0
    for node in nodes:
        if placed < need and node["Resources"].get("GPU", 0):
            placement.append(node)
            placed += int(node["Resources"]["GPU"])
    here = weights_digest(engine.model_dir)
    task = ray.remote(num_cpus=0)(node_weights)
    for node in placement:
        pinned = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        try:
            answer = ray.get(task.options(scheduling_strategy=pinned).remote(engine.model_dir),
                             timeout=120)
        except ray.exceptions.RayError as exc:
            fail(f"{ray_worker_prefix({'ip': node['NodeManagerAddress']})} "
                 f"{type(exc).__name__}: {exc}")
        node["worker_pid"] = answer.get("pid", 0)
        if "error" in answer:
            fail(f"{ray_worker_prefix(answer)} {answer['error']}")
        if answer["result"] != here:
            fail(f"{ray_worker_prefix(answer)} RuntimeError: the model weights in "
                 f"{engine.model_dir} on node {node['NodeManagerAddress']} differ from the "
                 f"driver's ({answer['result']} there, {here} here): every node needs the same "
                 "weights at the same path")
    log("Ray placement: " + ", ".join(f"{n['NodeManagerAddress']} "
                                      f"({int(n['Resources']['GPU'])} GPUs)" for n in placement)
        + f"; weights {here} on every node")
    return placement


def watch_placement(placement: list[dict[str, Any]]) -> None:
    """While serving: a dead node of the placement ends the server (its Ray workers died with
    it), as does losing the GCS; Docker's restart policy then starts it again."""
    import ray

    while True:
        time.sleep(0.5)
        try:
            alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        except Exception as exc:  # the GCS is gone: whatever the client raises then
            die(f"Failed to reach the Ray cluster's GCS ({type(exc).__name__}: {exc}). The "
                "program will terminate.")
        for node in placement:
            if node["NodeID"] not in alive:
                die("ray.exceptions.RayActorError: The actor died unexpectedly before finishing "
                    "this task.\n\tclass_name: RayWorkerWrapper\n"
                    f"\tactor_id: {uuid.uuid4().hex[:32]}\n\tpid: {node.get('worker_pid', 0)}\n"
                    f"\tip: {node['NodeManagerAddress']}\nThe actor is dead because its node has "
                    f"died. Node Id: {node['NodeID']} (ip={node['NodeManagerAddress']})")


def nccl_lost(engine: Engine, peer: str) -> str:
    """What NCCL's watchdog says when another node of the process group went away."""
    rank = engine.node_rank * (engine.tp // engine.nnodes)
    return (f"[rank{rank}]:[E ProcessGroupNCCL.cpp:1316] [PG 0 Rank {rank}] Process group watchdog "
            "thread terminated with exception: NCCL error: remote process exited or there was a "
            "network error, NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a "
            "network error or a remote process exiting prematurely.\nLast error:\n"
            f"socketProgress: Connection closed by remote peer {peer}")


def sglang_hello(engine: Engine) -> dict[str, Any]:
    """What every SGLang rank must agree on (and its rank)."""
    return {"op": "join", "rank": engine.node_rank, "tp": engine.tp, "nnodes": engine.nnodes,
            "version": engine.version, "weights": weights_digest(engine.model_dir)}


def sglang_refusal(engine: Engine, mine: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    rank = theirs.get("rank")
    if not isinstance(rank, int) or not 0 < rank < engine.nnodes:
        return f"node rank {rank} is not in 1..{engine.nnodes - 1} (nnodes {engine.nnodes})"
    for key, what in (("nnodes", "nnodes"), ("tp", "tp_size"), ("version", "SGLang version"),
                      ("weights", f"model weights in {engine.model_dir}")):
        if theirs.get(key) != mine[key]:
            return f"its {what} ({theirs.get(key)}) differs from rank 0's ({mine[key]})"
    return None


def sglang_rank0(engine: Engine) -> list[standin.Conn]:
    """Rank 0 listens on --dist-init-addr (that address exactly) until every rank has joined."""
    host, port = standin.split_address(engine.dist_init_addr)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind((host, port))
    except OSError as exc:
        fail(f"torch.distributed.DistNetworkError: The server socket has failed to bind to "
             f"{host}:{port} (errno: {exc.errno} - {exc.strerror}).")
    server.listen(16)
    mine = sglang_hello(engine)
    log(f"node rank 0: waiting on {host}:{port} for {engine.nnodes - 1} more node(s)")
    # torch's store waits 600 s for its clients; the stand-in 60 s.
    timeout = standin.connect_timeout(60)
    deadline = time.monotonic() + timeout
    joined: dict[int, standin.Conn] = {}
    while len(joined) < engine.nnodes - 1:
        server.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock, _ = server.accept()
        except TimeoutError:
            fail(f"torch.distributed.DistStoreError: Timed out after {timeout:.0f} seconds waiting "
                 f"for clients. {len(joined) + 1}/{engine.nnodes} clients joined.")
        conn = standin.Conn(sock)
        hello = conn.recv(timeout=10)
        if hello is None or hello.get("op") != "join":
            conn.close()
            continue
        refusal = sglang_refusal(engine, mine, hello)
        if refusal:
            log(f"refused node rank {hello.get('rank')} at {conn.peer}: {refusal}")
            conn.send({"ok": False, "error": refusal})
            conn.close()
            continue
        old = joined.pop(hello["rank"], None)
        if old is not None:  # that rank restarted: the new process replaces the old one
            old.close()
        joined[hello["rank"]] = conn
        conn.send({"ok": True})
        log(f"node rank {hello['rank']} joined from {conn.peer}")
    server.close()
    for conn in joined.values():
        conn.send({"op": "start"})
        conn.keep_alive()
    log(f"all {engine.nnodes} nodes joined (tp_size {engine.tp}, weights {mine['weights']})")
    return list(joined.values())


def sglang_join(engine: Engine) -> standin.Conn:
    """A rank > 0 joins rank 0 at --dist-init-addr and waits until every rank has."""
    host, port = standin.split_address(engine.dist_init_addr)
    # torch's client waits 600 s (600000ms) for the store; the stand-in gives up after 60 s.
    timeout = standin.connect_timeout(60)
    sock = standin.connect_retry(host, port, timeout)
    if sock is None:
        fail("torch.distributed.DistNetworkError: The client socket has timed out after "
             f"{timeout * 1000:.0f}ms while trying to connect to ({host}, {port}).")
    conn = standin.Conn(sock)
    conn.send(sglang_hello(engine))
    reply = conn.recv(timeout=30)
    if reply is not None and not reply.get("ok"):
        fail(f"RuntimeError: node rank 0 at {host}:{port} refused node rank {engine.node_rank}: "
             f"{reply.get('error')}")
    log(f"node rank {engine.node_rank}: joined node rank 0 at {host}:{port}, waiting for the "
        "other nodes")
    if reply is None or conn.recv(timeout=None) is None:
        fail(nccl_lost(engine, f"{host}<{port}>"))
    conn.keep_alive()
    return conn


def lost_on_close(engine: Engine, conn: standin.Conn) -> NoReturn:
    """Block until the other node's connection closes (or goes silent), then end with exit 1."""
    while conn.recv() is not None:
        pass
    die(nccl_lost(engine, conn.peer))


def handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            log(f'{self.client_address[0]} "{self.requestline}" {args[1] if len(args) > 1 else ""}')

        def send_json(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def authorized(self) -> bool:
            if not engine.api_key or not key_guards(engine.kind, engine.version, self.path):
                return True
            if self.headers.get("Authorization") == f"Bearer {engine.api_key}":
                return True
            self.send_json(401, {"error": "Unauthorized"})
            return False

        def do_GET(self) -> None:
            if not self.authorized():
                return
            if self.path in ("/health", "/health_generate"):
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [
                    {"id": name, "object": "model", "created": int(time.time()),
                     "owned_by": engine.kind, "root": engine.model_dir,
                     "max_model_len": engine.max_len} for name in engine.names]})
            elif self.path == "/metrics":
                data = engine.prometheus().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif self.path == "/version":
                self.send_json(200, {"version": engine.version})
            else:
                self.send_json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            if not self.authorized():
                return
            if self.path not in ("/v1/chat/completions", "/v1/completions"):
                self.send_json(404, {"detail": "Not Found"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError as exc:
                self.send_json(400, {"object": "error", "message": str(exc)})
                return
            if body.get("model") not in engine.names:
                self.send_json(404, {"object": "error", "type": "NotFoundError",
                                     "message": f"The model `{body.get('model')}` does not exist."})
                return
            temperature = float(body.get("temperature", 1.0))
            top_p = float(body.get("top_p", 1.0))
            if temperature < 0 or not 0 < top_p <= 1:
                self.send_json(400, {"object": "error", "message":
                                     "temperature must be >= 0 and top_p in (0, 1]"})
                return
            chat = self.path.endswith("chat/completions")
            prompt = body.get("messages") if chat else body.get("prompt", "")
            prompt_tokens = len(json.dumps(prompt).split())
            started = time.monotonic()
            pieces = engine.answer(int(body.get("max_tokens") or 16))
            knob = knobs()
            if random.random() < knob["error_rate"]:
                self.send_json(500, {"object": "error", "type": "InternalServerError",
                                     "message": "stand-in: injected error (error_rate knob)"})
                return
            with engine.lock:
                engine.metrics["running"] += 1
            try:
                rid = f"{'chat' if chat else 'cmpl'}-{uuid.uuid4().hex}"
                time.sleep(knob["ttft_seconds"])
                ttft = time.monotonic() - started
                if body.get("stream"):
                    self.stream(rid, chat, pieces, knob["tpot_seconds"])
                else:
                    time.sleep(knob["tpot_seconds"] * (len(pieces) - 1))
                    text = "".join(pieces)
                    choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
                    if chat:
                        choice["message"] = {"role": "assistant", "content": text}
                    else:
                        choice["text"] = text
                    self.send_json(200, {
                        "id": rid, "object": "chat.completion" if chat else "text_completion",
                        "created": int(time.time()), "model": body["model"], "choices": [choice],
                        "usage": {"prompt_tokens": prompt_tokens,
                                  "completion_tokens": len(pieces),
                                  "total_tokens": prompt_tokens + len(pieces)}})
            finally:
                with engine.lock:
                    engine.metrics["running"] -= 1
            total = time.monotonic() - started
            engine.record(prompt_tokens, len(pieces), ttft, total)

        def stream(self, rid: str, chat: bool, pieces: list[str], tpot: float) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def chunk(data: str) -> None:
                raw = f"data: {data}\n\n".encode()
                self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")

            for piece in pieces:
                delta = {"delta": {"content": piece}} if chat else {"text": piece}
                chunk(json.dumps({"id": rid, "object": "chat.completion.chunk" if chat
                                  else "text_completion", "choices": [{"index": 0, **delta,
                                                                       "finish_reason": None}]}))
                time.sleep(tpot)
            chunk("[DONE]")
            self.wfile.write(b"0\r\n\r\n")

    return Handler


def main(kind: str, argv: list[str]) -> None:
    engine = Engine(kind, argv)
    if engine.nnodes > 1 and (bad_interface := standin.socket_ifname_error()):
        fail(bad_interface)
    engine.check()
    peers: list[standin.Conn] = []
    if engine.nnodes > 1 and engine.node_rank > 0:
        rank0 = sglang_join(engine)
        log(f"node rank {engine.node_rank}: all nodes joined; node rank 0 serves HTTP")
        lost_on_close(engine, rank0)
    if engine.nnodes > 1:
        peers = sglang_rank0(engine)
    load = float(os.environ.get("GPUFLEET_SIM_LOAD_SECONDS", "2"))
    log(f"Loading weights from {engine.model_dir} (stand-in: {load:.0f} s)")
    time.sleep(load)
    for conn in peers:
        threading.Thread(target=lost_on_close, args=(engine, conn), daemon=True).start()
    if engine.placement:
        threading.Thread(target=watch_placement, args=(engine.placement,), daemon=True).start()
    server = ThreadingHTTPServer((engine.host, engine.port), handler(engine))
    log(f"Uvicorn running on http://{engine.host}:{engine.port} (Press CTRL+C to quit)")
    server.serve_forever()
