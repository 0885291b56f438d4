#!/usr/bin/python3
"""TEST STAND-IN for a serving engine (gpufleet simulator): vLLM's OpenAI server and SGLang.

Accepts the engines' real command lines (an unknown flag is an error, as with argparse in the
real ones), refuses to start the way they do — no config.json in the model folder, fewer GPUs
than tensor x pipeline parallel, more memory asked for than the GPUs it sees have — and then
serves /health, /v1/models, /v1/chat/completions and /v1/completions (streaming too) and
/metrics with vLLM 0.4's metric names and histogram buckets. It sees only the GPUs the
container was given (the stand-in NVIDIA hook writes them to /etc/gpufleet-sim/hardware.json).
No model runs: answers are a fixed text cut to max_tokens words.

    python3 -m vllm.entrypoints.openai.api_server --model /models/m ...   (vLLM's entrypoint)
    python3 -m sglang.launch_server --model-path /models/m ...            (SGLang's)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HARDWARE = "/etc/gpufleet-sim/hardware.json"
# Knobs a test turns on a running engine (docker exec ... to write it): JSON with
# "ttft_seconds" (wait before the first token), "tpot_seconds" (per further token) and
# "error_rate" (share of requests answered with a 500). Read at every request.
KNOBS = "/tmp/gpufleet-sim-knobs.json"
DEFAULT_KNOBS = {"ttft_seconds": 0.0, "tpot_seconds": 0.005, "error_rate": 0.0}
MIB = 2**20
GIB = 2**30
BLOCK_TOKENS = 16
# vLLM 0.4.x histogram buckets (vllm/engine/metrics.py of that release).
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0]
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
E2E_BUCKETS = [1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0]
ANSWER = ("<think>\nThe user wants a greeting.\n</think>\n\nHello from the gpufleet stand-in "
          "engine, serving as if it were the real model. ")


def log(message: str) -> None:
    print(f"INFO {time.strftime('%m-%d %H:%M:%S')} {message}", flush=True)


def fail(message: str, code: int = 1) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)


def knobs() -> dict[str, float]:
    try:
        with open(KNOBS) as fh:
            return {**DEFAULT_KNOBS, **{k: float(v) for k, v in json.load(fh).items()}}
    except (OSError, ValueError, AttributeError):
        return dict(DEFAULT_KNOBS)


# --- command lines -----------------------------------------------------------------------------
def vllm_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="api_server.py",
                                description="vLLM OpenAI-Compatible RESTful API server.")
    p.add_argument("--model", default="facebook/opt-125m")
    p.add_argument("--served-model-name", nargs="+")
    p.add_argument("--host")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--dtype", default="auto",
                   choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    p.add_argument("--quantization", "-q",
                   choices=["aqlm", "awq", "fp8", "gptq", "squeezellm", "gptq_marlin", "marlin",
                            "awq_marlin"])
    p.add_argument("--api-key")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--swap-space", type=float, default=4)
    p.add_argument("--download-dir")
    p.add_argument("--enable-prefix-caching", action="store_true")
    p.add_argument("--disable-log-requests", action="store_true")
    return p


def sglang_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch_server.py")
    p.add_argument("--model-path", required=True)
    p.add_argument("--served-model-name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--tp-size", "--tp", type=int, default=1, dest="tp")
    p.add_argument("--context-length", type=int)
    p.add_argument("--mem-fraction-static", type=float, default=0.88)
    p.add_argument("--max-running-requests", type=int)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantization")
    p.add_argument("--api-key")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--enable-metrics", action="store_true")
    return p


# --- the checks a real engine makes before it serves ----------------------------------------------
def visible_gpus() -> list[dict[str, Any]]:
    try:
        with open(HARDWARE) as fh:
            gpus: list[dict[str, Any]] = json.load(fh)["gpus"]
    except OSError:
        fail("RuntimeError: No CUDA GPUs are available")
    return gpus


def load_config(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        fail(f"OSError: {model_dir} does not appear to have a file named config.json. Checkout "
             f"'https://huggingface.co/{model_dir}/None' for available files.")
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
        if kind == "vllm":
            a = vllm_parser().parse_args(argv)
            self.model_dir, self.port, self.host = a.model, a.port, a.host or "0.0.0.0"
            self.names = a.served_model_name or [a.model]
            self.tp, self.pp = a.tensor_parallel_size, a.pipeline_parallel_size
            self.max_len, self.util, self.max_seqs = a.max_model_len, a.gpu_memory_utilization, \
                a.max_num_seqs
            self.api_key = a.api_key or os.environ.get("VLLM_API_KEY")
            if self.pp > 1 and tuple(int(x) for x in self.version.split(".")[:2]) < (0, 5):
                fail("NotImplementedError: Pipeline parallelism is not supported yet.")
        else:
            a = sglang_parser().parse_args(argv)
            self.model_dir, self.port, self.host = a.model_path, a.port, a.host
            self.names = [a.served_model_name or a.model_path]
            self.tp, self.pp = a.tp, 1
            self.max_len, self.util = a.context_length, a.mem_fraction_static
            self.max_seqs = a.max_running_requests or 256
            self.api_key = a.api_key or os.environ.get("SGLANG_API_KEY")
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
        if len(gpus) < need:
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
        name = self.names[0]
        prefix = "vllm" if self.kind == "vllm" else "sglang"
        label = f'model_name="{name}"'
        lines = []

        def histogram(metric: str, buckets: list[float], values: list[float]) -> None:
            lines.append(f"# TYPE {prefix}:{metric} histogram")
            for bound in buckets:
                count = sum(1 for v in values if v <= bound)
                lines.append(f'{prefix}:{metric}_bucket{{le="{bound}",{label}}} {count}')
            lines.append(f'{prefix}:{metric}_bucket{{le="+Inf",{label}}} {len(values)}')
            lines.append(f"{prefix}:{metric}_sum{{{label}}} {sum(values)}")
            lines.append(f"{prefix}:{metric}_count{{{label}}} {len(values)}")

        with self.lock:
            m = dict(self.metrics)
            ttft, e2e, tpot = list(self.ttft), list(self.e2e), list(self.tpot)
        for metric, value in (("num_requests_running", m["running"]),
                              ("num_requests_waiting", 0), ("gpu_cache_usage_perc", 0.0)):
            lines += [f"# TYPE {prefix}:{metric} gauge", f"{prefix}:{metric}{{{label}}} {value}"]
        for metric, key in (("prompt_tokens_total", "prompt_tokens"),
                            ("generation_tokens_total", "generation_tokens")):
            lines += [f"# TYPE {prefix}:{metric} counter", f"{prefix}:{metric}{{{label}}} {m[key]}"]
        histogram("time_to_first_token_seconds", TTFT_BUCKETS, ttft)
        histogram("e2e_request_latency_seconds", E2E_BUCKETS, e2e)
        histogram("time_per_output_token_seconds", TPOT_BUCKETS, tpot)
        return "\n".join(lines) + "\n"


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
            if not engine.api_key or not self.path.startswith("/v1"):
                return True  # /health and /metrics are open, as in vLLM
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
    engine.check()
    load = float(os.environ.get("GPUFLEET_SIM_LOAD_SECONDS", "2"))
    log(f"Loading weights from {engine.model_dir} (stand-in: {load:.0f} s)")
    time.sleep(load)
    server = ThreadingHTTPServer((engine.host, engine.port), handler(engine))
    log(f"Uvicorn running on http://{engine.host}:{engine.port} (Press CTRL+C to quit)")
    server.serve_forever()
