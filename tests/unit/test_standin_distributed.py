"""The simulator's stand-in engine in distributed mode (tests/sim/images/engine: SGLang's
--nnodes, and vLLM's multi-node flags), run as plain processes on this machine.

vLLM on a Ray cluster runs on the real Ray (the engine image installs it from
tests/sim/images/engine/ray.lock; it is not in the controller's venv): the two-node rehearsal,
tests/e2e/test_multinode.py, proves it there.

Each "node" is a process with its own node address on loopback (127.0.0.2, 127.0.0.3, ...) and
its own working directory: the model path is relative (models/m), so every node resolves the same
path in its own folder, as each host of a real cluster has its own disk.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "sim" / "images" / "engine"
HEAD_IP, WORKER_IP, OTHER_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
MODEL = "models/m"  # relative: each node's own copy under its working directory
CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536,
          "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
          "num_key_value_heads": 2, "head_dim": 128, "vocab_size": 151936,
          "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}
GPU = {"name": "NVIDIA A100-PCIE-40GB", "memory_total_mib": 40960, "memory_used_mib": 0}
VLLM = ["-m", "vllm.entrypoints.openai.api_server", "--model", MODEL, "--max-model-len", "4096"]
SGLANG = ["-m", "sglang.launch_server", "--model-path", MODEL, "--context-length", "4096"]


def free_port(ip: str) -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        port: int = sock.getsockname()[1]
        return port


def listening(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((ip, port)) == 0


def wait_for(what: Callable[[], object], seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s: {message}")
        time.sleep(0.1)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def write_model(folder: Path, manifest: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    (folder / "model.safetensors").write_bytes(b"\0" * 1024)
    if manifest is not None:
        (folder / ".gpufleet").mkdir(exist_ok=True)
        (folder / ".gpufleet" / "manifest.json").write_text(json.dumps(manifest))


class Proc:
    """A stand-in process, its output in a file (no pipe to fill up)."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen, self.log = popen, log

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, seconds: float) -> int:
        try:
            return self.popen.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {seconds} s:\n{self.output}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


class Cluster:
    """Starts node processes with their own directories; kills every one of them at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[Proc] = []
        self.dirs: list[Path] = []
        hardware = root / "hardware.json"
        hardware.write_text(json.dumps({"gpus": [
            {**GPU, "index": i, "uuid": f"GPU-standin-{i}"} for i in range(2)]}))
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("RAY_ADDRESS", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME",
                                 "VLLM_HOST_IP")}
        self.env.update({"PYTHONPATH": f"{ENGINE / 'python'}:{ENGINE}",
                         "GPUFLEET_SIM_HARDWARE": str(hardware),
                         "GPUFLEET_SIM_LOAD_SECONDS": "0",
                         "GPUFLEET_SIM_VLLM_VERSION": "0.4.2",
                         "GPUFLEET_SIM_SGLANG_VERSION": "0.4.1.post7",
                         "GPUFLEET_SIM_CONNECT_TIMEOUT_SECONDS": "10",
                         "PYTHONUNBUFFERED": "1"})

    def node_dir(self, name: str) -> Path:
        """A node's "disk": its working directory and its RAY_TMPDIR."""
        path = self.root / name
        if path not in self.dirs:
            path.mkdir(exist_ok=True)
            self.dirs.append(path)
        return path

    def start(self, node: str, args: list[str], **env: str) -> Proc:
        cwd = self.node_dir(node)
        log = cwd / f"{len(self.procs)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**self.env, "RAY_TMPDIR": str(cwd), **env},
                                     start_new_session=True)
        proc = Proc(popen, log)
        self.procs.append(proc)
        return proc

    def run(self, node: str, args: list[str], seconds: float = 15, **env: str) -> tuple[int, str]:
        proc = self.start(node, args, **env)
        code = proc.wait(seconds)
        return code, proc.output

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


# --- vLLM's multi-node flags, before any Ray -------------------------------------------------------
def test_wrong_socket_interface_fails_as_gloo_does(cluster: Cluster) -> None:
    gloo = ("RuntimeError: [enforce fail at ../third_party/gloo/gloo/transport/tcp/device.cc:83] "
            "ifa != nullptr. Unable to find address for: nosuch0")
    write_model(cluster.node_dir("head") / MODEL)
    code, out = cluster.run("head", [*SGLANG, "--tp", "4", "--nnodes", "2", "--node-rank", "0",
                                     "--dist-init-addr", f"{HEAD_IP}:{free_port(HEAD_IP)}"],
                            GLOO_SOCKET_IFNAME="nosuch0")
    assert code != 0 and gloo in out
    code, out = cluster.run("head", [*VLLM, "-tp", "4", "--worker-use-ray"],
                            NCCL_SOCKET_IFNAME="nosuch0")
    assert code != 0 and gloo in out


def test_vllm_04_lacks_the_backend_flag_and_pipeline_parallel(cluster: Cluster) -> None:
    write_model(cluster.node_dir("head") / MODEL)
    code, out = cluster.run("head", [*VLLM, "-tp", "2", "--distributed-executor-backend", "ray"])
    assert code == 2 and "unrecognized arguments: --distributed-executor-backend" in out  # 0.4.2
    code, out = cluster.run("head", [*VLLM, "-pp", "2", "--worker-use-ray"])  # 0.4.2
    assert code != 0 and "NotImplementedError: Pipeline parallelism is not supported yet." in out


# --- SGLang --nnodes ---------------------------------------------------------------------------
def sglang(rank: int, dist: str, http: int, tp: int = 4) -> list[str]:
    return [*SGLANG, "--tp", str(tp), "--nnodes", "2", "--node-rank", str(rank),
            "--dist-init-addr", dist, "--host", HEAD_IP, "--port", str(http)]


def test_sglang_two_nodes_join_then_rank0_serves(cluster: Cluster) -> None:
    dist, http = f"{HEAD_IP}:{free_port(HEAD_IP)}", free_port(HEAD_IP)
    write_model(cluster.node_dir("head") / MODEL)
    write_model(cluster.node_dir("worker") / MODEL)
    rank0 = cluster.start("head", sglang(0, dist, http))
    wait_for(lambda: "waiting on" in rank0.output or rank0.popen.poll() is not None, 10, "rank 0")
    time.sleep(0.3)
    assert not listening(HEAD_IP, http), "rank 0 serves before rank 1 joined"

    rank1 = cluster.start("worker", sglang(1, dist, http))
    wait_for(lambda: listening(HEAD_IP, http) or rank0.popen.poll() is not None, 15, "serving")
    assert rank0.popen.poll() is None, rank0.output
    assert get_json(f"http://{HEAD_IP}:{http}/v1/models")["data"][0]["id"] == MODEL
    assert "node rank 1 joined from 127." in rank0.output
    assert rank1.popen.poll() is None, rank1.output

    rank1.kill()
    assert rank0.wait(10) == 1
    assert "Process group watchdog thread terminated with exception: NCCL error" in rank0.output


def test_sglang_rank0_refuses_a_mismatching_rank(cluster: Cluster) -> None:
    dist = f"{HEAD_IP}:{free_port(HEAD_IP)}"
    write_model(cluster.node_dir("head") / MODEL)
    write_model(cluster.node_dir("worker") / MODEL)
    rank0 = cluster.start("head", sglang(0, dist, free_port(HEAD_IP)))
    wait_for(lambda: "waiting on" in rank0.output or rank0.popen.poll() is not None, 10, "rank 0")

    code, out = cluster.run("worker", sglang(1, dist, 0, tp=2))
    assert code != 0 and f"node rank 0 at {dist} refused node rank 1" in out
    assert "refused node rank 1 at 127." in rank0.output
    assert "its tp_size (2) differs from rank 0's (4)" in rank0.output

    (cluster.node_dir("worker") / MODEL / "extra.bin").write_bytes(b"x")
    code, out = cluster.run("worker", sglang(1, dist, 0))
    assert code != 0 and f"model weights in {MODEL}" in out
    assert rank0.popen.poll() is None, "a refused rank must not end rank 0"


def test_sglang_rank_that_cannot_reach_rank0_times_out_as_torch(cluster: Cluster) -> None:
    port = free_port(HEAD_IP)
    write_model(cluster.node_dir("worker") / MODEL)
    code, out = cluster.run("worker", sglang(1, f"{HEAD_IP}:{port}", 0),
                            GPUFLEET_SIM_CONNECT_TIMEOUT_SECONDS="1")
    assert code != 0
    assert ("torch.distributed.DistNetworkError: The client socket has timed out after 1000ms "
            f"while trying to connect to ({HEAD_IP}, {port}).") in out


def test_sglang_tp_must_split_over_the_nodes(cluster: Cluster) -> None:
    write_model(cluster.node_dir("head") / MODEL)
    code, out = cluster.run("head", sglang(0, f"{HEAD_IP}:1", 0, tp=3))
    assert code != 0 and "AssertionError: tp_size must be divisible by number of nodes" in out
    code, out = cluster.run("head", sglang(0, f"{HEAD_IP}:1", 0, tp=8))
    assert code != 0 and "RuntimeError: CUDA error: invalid device ordinal" in out


# --- SGLang's key, as the compose file passes it ------------------------------------------------
def test_sglang_run_as_rendered_refuses_a_request_without_the_key(cluster: Cluster,
                                                                   tmp_path: Path) -> None:
    """The compose entrypoint (its sh -c wrapper, with Compose's $$ -> $) hands the key from
    api-key.env's variable to SGLang's --api-key: /v1/* then needs it, /health does not."""
    from tests.unit.test_serving import plan as serving_plan

    key = tmp_path / "key"
    key.write_text("k3y-0123456789abcdefghijklmnopqrstuvwxyz\n")
    engine_plan = serving_plan(tmp_path, f'[settings.inference]\nengine = "sglang"\n'
                                         f'api_key_file = "{key}"\n')
    from rules.serving import API_KEY_VARIABLE, compose_document

    entrypoint = [w.replace("$$", "$") for w in
                  compose_document(engine_plan)["services"]["engine-0"]["entrypoint"]]
    entrypoint = [sys.executable if w == "python3" else w for w in entrypoint]
    write_model(cluster.node_dir("head") / MODEL)
    http = free_port(HEAD_IP)
    log = cluster.node_dir("head") / "sglang.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [*entrypoint, "--model-path", MODEL, "--context-length", "4096", "--host", HEAD_IP,
             "--port", str(http)], cwd=cluster.node_dir("head"), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**cluster.env, API_KEY_VARIABLE["sglang"]: "k3y-0123456789abcdefghijklmnopqrstuvwxyz"})
    proc = Proc(popen, log)
    cluster.procs.append(proc)
    wait_for(lambda: listening(HEAD_IP, http) or popen.poll() is not None, 15, "serving")
    assert popen.poll() is None, proc.output

    def status(path: str, token: str | None) -> int:
        request = urllib.request.Request(f"http://{HEAD_IP}:{http}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    assert status("/v1/models", None) == 401
    assert status("/v1/models", "wrong") == 401
    assert status("/v1/models", "k3y-0123456789abcdefghijklmnopqrstuvwxyz") == 200
    assert status("/health", None) == 200
