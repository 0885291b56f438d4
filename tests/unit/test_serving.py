"""The serving engine's rules: replicas on disjoint GPUs, every flag from the sizing, and the
Compose file and unit validated by the real tools (`docker-compose config`, `systemd-analyze
verify`), plus what preflight refuses for serving before anything changes."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from facts.engine_answers import (
    EngineAnswersResult,
    ReplicaAnswer,
    engine_probe_script,
    parse_engine_answers,
)
from facts.nvidia import Gpu, GpuQuery
from facts.weights_files import WeightsListing
from inventory.fleet import HostSpec, load_fleet
from rules.assessment import assess
from rules.container_runtime import COMPOSE_BY_DISTRO
from rules.serving import (
    EnginePlan,
    compose_document,
    engine_args,
    engine_findings,
    plan_engine,
    plan_replicas,
    render_api_key_env,
    render_compose,
    render_unit,
    smoke_request,
)
from tests.unit.test_preflight import bare_host, h100_pci


def spec(tmp_path: Path, settings: str = "", pins: str | None = None) -> HostSpec:
    path = tmp_path / "fleet.toml"
    path.write_text(textwrap.dedent("""
        [settings]
        weights_path = "/srv/models/qwen-7b"
    """) + textwrap.dedent(settings) + "\n[groups.g.hosts.h]\n")
    return load_fleet(path).hosts[0]


def plan(tmp_path: Path, settings: str = "", gpus: int = 8, tp: int = 1) -> EnginePlan:
    result = plan_engine(spec(tmp_path, settings), gpus, tp, 32768, 16, 60.0)
    assert isinstance(result, EnginePlan), result
    return result


def test_replicas_take_disjoint_gpus_and_their_own_ports() -> None:
    replicas = plan_replicas(8, 2, 1, None, 8000)
    assert isinstance(replicas, tuple)
    assert [r.gpus for r in replicas] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [r.port for r in replicas] == [8000, 8001, 8002, 8003]
    used = [g for r in replicas for g in r.gpus]
    assert len(used) == len(set(used))


def test_replicas_the_host_cannot_hold_are_refused() -> None:
    too_many = plan_replicas(2, 2, 1, 2, 8000)
    assert isinstance(too_many, list)
    assert too_many[0].code == "engine-replicas" and "at most 1" in too_many[0].required
    none_fit = plan_replicas(1, 2, 1, None, 8000)
    assert isinstance(none_fit, list) and none_fit[0].code == "engine-replicas"


def test_every_flag_comes_from_the_sizing(tmp_path: Path) -> None:
    args = engine_args(plan(tmp_path, tp=2))
    flags = dict(zip(args[::2], args[1::2], strict=False))
    assert flags["--max-model-len"] == "32768"  # never the model's 131072 default
    assert flags["--tensor-parallel-size"] == "2"
    assert flags["--gpu-memory-utilization"] == "0.9"
    assert flags["--max-num-seqs"] == "16"
    assert flags["--dtype"] == "bfloat16"
    assert flags["--served-model-name"] == "deepseek-r1-distill-qwen-7b"
    assert "--disable-log-requests" in args  # vLLM 0.4.2 still has it
    assert "--pipeline-parallel-size" not in args and "--quantization" not in args


def test_fp8_quantizes_and_sglang_speaks_its_own_flags(tmp_path: Path) -> None:
    fp8 = engine_args(plan(tmp_path, '[settings]\nprecision = "fp8"\n'.replace("[settings]\n", "")))
    assert fp8[fp8.index("--quantization") + 1] == "fp8"
    sglang = engine_args(plan(tmp_path, '[settings.inference]\nengine = "sglang"\n'))
    assert sglang[:2] == ["--model-path", "/models/qwen-7b"]
    assert sglang[sglang.index("--context-length") + 1] == "32768"
    assert "--enable-metrics" in sglang and "--max-model-len" not in sglang


def test_int8_without_quantized_weights_is_refused(tmp_path: Path) -> None:
    result = plan_engine(spec(tmp_path, 'precision = "int8"\n'), 8, 1, 8192, 8, None)
    assert isinstance(result, list)
    assert [f.code for f in result] == ["quantized-weights-needed"]


def test_pipeline_parallel_needs_vllm_0_5_1(tmp_path: Path) -> None:
    result = plan_engine(spec(tmp_path, "pipeline_parallel = 2\n"), 8, 1, 8192, 8, None)
    assert isinstance(result, list) and result[0].code == "engine-parallel"


def test_the_compose_file_keeps_the_engine_offline_and_the_api_on_loopback(
        tmp_path: Path) -> None:
    document = compose_document(plan(tmp_path, gpus=2))
    engine = document["services"]["engine-1"]
    assert engine["ports"] == ["127.0.0.1:8001:8000"]
    assert engine["volumes"] == [{"type": "bind", "source": "/srv/models/qwen-7b",
                                  "target": "/models/qwen-7b", "read_only": True}]
    assert engine["environment"]["HF_HUB_OFFLINE"] == "1"
    assert engine["ipc"] == "host" and engine["restart"] == "unless-stopped"
    assert engine["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["1"], "capabilities": ["gpu"]}]
    assert engine["healthcheck"]["start_period"] == "300s"  # 2 x 60 s load, at least 300
    assert "env_file" not in engine  # no API key asked for


def test_an_api_key_travels_in_a_root_only_file_never_in_the_compose_file(
        tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("s3cr3t-key-0123456789abcdefghijklmnop-" + "0123456789abcdef" * 2 + "\n")
    text = render_compose(plan(tmp_path, f'[settings.inference]\napi_key_file = "{key}"\n'))
    assert "s3cr3t" not in text
    assert yaml.safe_load(text)["services"]["engine-0"]["env_file"] == [
        "/etc/gpufleet/inference/api-key.env"]


def test_sglang_takes_its_key_as_api_key_through_the_container_shell(tmp_path: Path) -> None:
    # SGLang 0.4.1.post7 reads no key variable (tests/conformance): the shell passes ours on.
    key = tmp_path / "key"
    key.write_text("s3cr3t-key-0123456789abcdefghijklmnop\n")
    engine_plan = plan(tmp_path, f'[settings.inference]\nengine = "sglang"\n'
                                 f'api_key_file = "{key}"\n')
    service = compose_document(engine_plan)["services"]["engine-0"]
    assert service["entrypoint"] == [
        "sh", "-c", 'exec "$$@" --api-key "$$GPUFLEET_API_KEY"', "sglang",
        "python3", "-m", "sglang.launch_server"]
    assert service["env_file"] == ["/etc/gpufleet/inference/api-key.env"]
    assert render_api_key_env("sglang", "s3cr3t-key-0123456789abcdefghijklmnop\n") == "GPUFLEET_API_KEY=s3cr3t-key-0123456789abcdefghijklmnop\n"
    assert "s3cr3t" not in render_compose(engine_plan)
    # Without a key: the engine itself, no shell.
    bare = compose_document(plan(tmp_path, '[settings.inference]\nengine = "sglang"\n'))
    assert bare["services"]["engine-0"]["entrypoint"] == ["python3", "-m", "sglang.launch_server"]


@pytest.mark.parametrize(("tp", "fraction"), [(1, "0.88"), (2, "0.87"), (4, "0.85"),
                                              (8, "0.81"), (16, "0.79")])
def test_sglang_memory_fraction_follows_its_own_per_tp_default(
        tmp_path: Path, tp: int, fraction: str) -> None:
    args = engine_args(plan(tmp_path, '[settings.inference]\nengine = "sglang"\n', gpus=16,
                            tp=tp))
    assert args[args.index("--mem-fraction-static") + 1] == fraction
    assert args[args.index("--tp-size") + 1] == str(tp) and "--tp" not in args
    # The fleet's own setting wins, for either engine.
    mine = engine_args(plan(tmp_path, 'gpu_memory_utilization = 0.7\n'
                                      '[settings.inference]\nengine = "sglang"\n', gpus=16, tp=tp))
    assert mine[mine.index("--mem-fraction-static") + 1] == "0.7"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs docker-compose")
@pytest.mark.parametrize("settings", ["", '[settings.inference]\nbind = "::"\n',
                                      '[settings.inference]\nengine = "sglang"\n'])
def test_docker_compose_accepts_the_rendered_file(tmp_path: Path, settings: str) -> None:
    path = tmp_path / "docker-compose.yml"
    text = render_compose(plan(tmp_path, settings, tp=2))
    # Beyond loopback the engine gets a key (generated): Compose reads its env file, which the
    # deploy writes before it validates the compose file; here a stand-in beside it.
    assert ("env_file" in text) is ("::" in settings)
    (tmp_path / "api-key.env").write_text("VLLM_API_KEY=x\n")
    path.write_text(text.replace("/etc/gpufleet/inference/api-key.env",
                                 str(tmp_path / "api-key.env")))
    proc = subprocess.run(["docker-compose", "--file", str(path), "config"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)["services"]
    assert sorted(resolved) == ["engine-0", "engine-1", "engine-2", "engine-3"]


# A weights folder whose name holds what Compose would read: '$' (substitution), ':' (the short
# volume syntax's separator), ',' and spaces.
ODD_FOLDER = "/srv/models/a:b,c $HOME ${USER:-x} $$"
ODD_SETTINGS = f'[groups.g]\nsettings = {{ weights_path = "{ODD_FOLDER}" }}\n'


def test_fleet_values_reach_compose_as_written(tmp_path: Path) -> None:
    document = compose_document(plan(tmp_path, ODD_SETTINGS))
    engine = document["services"]["engine-0"]
    (volume,) = engine["volumes"]
    assert volume == {"type": "bind", "source": ODD_FOLDER.replace("$", "$$"),
                      "target": "/models/" + ODD_FOLDER.rsplit("/", 1)[1].replace("$", "$$"),
                      "read_only": True}
    assert "--model" in engine["command"]
    model = engine["command"][engine["command"].index("--model") + 1]
    assert model == volume["target"]
    # Nothing else holds a lone '$' either.
    text = render_compose(plan(tmp_path, ODD_SETTINGS))
    assert "$HOME" not in text.replace("$$", "")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs docker-compose")
def test_docker_compose_reads_an_odd_weights_folder_as_written(tmp_path: Path) -> None:
    """The real tool: no substitution, no split at ':' (with HOME and USER set)."""
    path = tmp_path / "docker-compose.yml"
    path.write_text(render_compose(plan(tmp_path, ODD_SETTINGS)))
    proc = subprocess.run(["docker-compose", "--file", str(path), "config"],
                          capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/root", "USER": "root"})
    assert proc.returncode == 0, proc.stderr
    engine = yaml.safe_load(proc.stdout)["services"]["engine-0"]
    (volume,) = engine["volumes"]
    # `config` prints the file back with '$' escaped again: the literal path, never /root.
    assert "/root" not in proc.stdout and "WARNING" not in proc.stderr
    assert volume["source"] == ODD_FOLDER.replace("$", "$$") and volume["read_only"] is True
    assert volume["target"] == "/models/" + ODD_FOLDER.rsplit("/", 1)[1].replace("$", "$$")
    assert engine["command"][engine["command"].index("--model") + 1] == volume["target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("distro", ["debian12", "ubuntu2204"])
def test_systemd_analyze_accepts_the_rendered_unit(tmp_path: Path, distro: str) -> None:
    compose = COMPOSE_BY_DISTRO[distro]
    unit = tmp_path / "gpufleet-inference.service"
    unit.write_text(render_unit(plan(tmp_path), compose))
    text = unit.read_text()
    assert "Type=oneshot" in text and "RemainAfterExit=yes" in text
    assert "Requires=docker.service" in text and "nvidia-fabricmanager.service" in text
    assert ("--wait" in text) is (compose.kind == "v2")
    if not Path(compose.path.split()[0]).exists():
        pytest.skip(f"{compose.path} is not on this machine")
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def answers(*replicas: ReplicaAnswer) -> EngineAnswersResult:
    return EngineAnswersResult(replicas=replicas)


def test_only_a_completion_with_tokens_counts_as_serving(tmp_path: Path) -> None:
    two = plan(tmp_path, gpus=2)
    good = ReplicaAnswer(8000, "gpufleet-inference-engine-0", "ok", 3.0,
                         ("deepseek-r1-distill-qwen-7b",), "Hello", 8, 0.2)
    hung = ReplicaAnswer(8001, "gpufleet-inference-engine-1", "ok", 1.0,
                         ("deepseek-r1-distill-qwen-7b",), "", 0, None,
                         error="TimeoutError: timed out",
                         log="INFO loading\nERROR 12-01 engine step hung: CUDA error")
    (finding,) = engine_findings(two, answers(good, hung))
    assert finding.code == "engine-not-serving" and "replica 1" in finding.what
    assert "timed out" in finding.measured and "CUDA error" in finding.measured
    assert engine_findings(two, answers(good, good.__class__(**{**good.__dict__,
                                                                 "port": 8001}))) == []


def test_a_replica_that_never_became_healthy_says_why_from_its_log(tmp_path: Path) -> None:
    one = plan(tmp_path, gpus=1)
    down = ReplicaAnswer(8000, "gpufleet-inference-engine-0", "ConnectionRefusedError", 300.0,
                         log="INFO x\nValueError: The model's max seq len (131072) is larger than "
                             "the maximum number of tokens that can be stored in KV cache")
    (finding,) = engine_findings(one, answers(down))
    assert "not healthy after 300 s" in finding.measured
    assert "max seq len (131072)" in finding.measured


def test_the_engine_probe_output_parses_with_logs() -> None:
    lines = ['[{"port": 8000, "container": "c0", "health": "ok", "waited": 2.1, '
             '"models": ["m"], "content": "Hello", "tokens": 8, "seconds": 0.3}]',
             "@logs", "@container c0", "INFO Uvicorn running on http://0.0.0.0:8000"]
    result = parse_engine_answers(lines)
    assert result.replicas[0].tokens == 8 and "Uvicorn" in result.replicas[0].log
    assert parse_engine_answers(["python3: not found"]).errors


# --- what preflight refuses for serving, before anything changes ---------------------------------
def rtx_host() -> object:
    return bare_host(gpus=GpuQuery("ok", gpus=(Gpu(0, "NVIDIA GeForce RTX 4090", "GPU-0", 24564,
                                                    0, (8, 9), "535.183.06", "0:1:0", True,
                                                    None),)),
                     pci=h100_pci(0, 0))


def codes(host_spec: HostSpec, probe: object) -> list[str]:
    return [f.code for f in assess(host_spec, probe).findings.errors]  # type: ignore[arg-type]


def test_a_consumer_gpu_with_a_forward_compat_image_is_refused(tmp_path: Path) -> None:
    fwd = spec(tmp_path, 'pin_set = "r535-fwdcompat"\nmodel = "deepseek-r1-distill-qwen-1.5b"\n')
    assert "image-needs-forward-compat" in codes(fwd, rtx_host())
    cuda121 = spec(tmp_path, 'model = "deepseek-r1-distill-qwen-1.5b"\n')
    assert "image-needs-forward-compat" not in codes(cuda121, rtx_host())


def test_a_model_the_pinned_engine_cannot_load_is_refused(tmp_path: Path) -> None:
    llama = spec(tmp_path, 'model = "deepseek-r1-distill-llama-8b"\n')
    assert "engine-cannot-load-model" in codes(llama, bare_host())
    fwd = spec(tmp_path, 'model = "deepseek-r1-distill-llama-8b"\npin_set = "r535-fwdcompat"\n')
    assert "engine-cannot-load-model" not in codes(fwd, bare_host())


def test_weights_that_are_another_model_are_refused(tmp_path: Path) -> None:
    other = bare_host(weights=WeightsListing("ok", config={
        "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 32}))
    assert "weights-config-differs" in codes(spec(tmp_path), other)
    missing = bare_host(weights=WeightsListing("absent"))
    assert "weights-missing" in codes(spec(tmp_path), missing)
    off = spec(tmp_path, "[settings.inference]\nenabled = false\n")
    assert "weights-missing" not in codes(off, missing)


def test_the_plan_reaches_the_inference_step(tmp_path: Path) -> None:
    assessment = assess(spec(tmp_path), bare_host())
    assert assessment.plan is not None and assessment.plan.engine is not None
    engine = assessment.plan.engine
    assert [r.gpus for r in engine.replicas] == [(i,) for i in range(8)]  # 7B: TP1 x 8
    assert engine.max_model_len == 32768


def test_the_fleet_file_names_what_each_weights_source_needs(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(textwrap.dedent("""
        [settings]
        weights_path = "/srv/m"
        weights = { source = "hub" }
        inference = { api_key_file = "no-such-key" }
        [groups.g.hosts.h1]
        [groups.g.hosts.h2.settings]
        weights = { source = "controller", controller_path = "no-such-folder" }
    """))
    proc = subprocess.run([sys.executable, "inventory.py", str(fleet)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2
    for line in [
        "host h1 (group g): settings.weights.hub_endpoint = (missing): required with "
        "settings.weights.source = 'hub'",
        "host h1 (group g): settings.weights.revision = (missing)",
        "settings.inference.api_key_file = 'no-such-key': no such file on this machine",
        "host h2 (group g): settings.weights.controller_path = 'no-such-folder': no such folder",
    ]:
        assert line in proc.stderr, proc.stderr


def test_a_hub_endpoint_is_https_unless_plain_http_is_asked_for(tmp_path: Path) -> None:
    """Over plain http the hub token and the weights cross the network readable: refused
    offline, per host once the layers are merged, unless allow_plain_http says so (warned)."""
    hub = 'source = "hub", revision = "' + "0" * 40 + '"'
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(textwrap.dedent(f"""
        [settings]
        weights_path = "/srv/m"
        weights = {{ {hub}, hub_endpoint = "http://mirror.internal:8080" }}
        [groups.g.hosts.plain]
        [groups.g.hosts.allowed.settings]
        weights = {{ allow_plain_http = true }}
        [groups.g.hosts.tls.settings]
        weights = {{ hub_endpoint = "https://mirror.internal" }}
    """))
    proc = subprocess.run([sys.executable, "inventory.py", str(fleet)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2
    problems = [line for line in proc.stderr.splitlines() if line.startswith("  - ")]
    assert problems == [
        f"  - {fleet}: host plain (group g): settings.weights.hub_endpoint = "
        "'http://mirror.internal:8080/': must be an https:// URL (over plain http:// the hub "
        "token and the weights cross the network readable and changeable); for a mirror on a "
        "trusted network set settings.weights.allow_plain_http = true"], proc.stderr
    allowed = spec(tmp_path, f"weights = {{ {hub}, hub_endpoint = \"http://m.internal\", "
                             "allow_plain_http = true }\n")
    warnings = assess(allowed, bare_host()).findings.warnings
    assert [f.code for f in warnings if f.code == "weights-plain-http"] == ["weights-plain-http"]
    tls = spec(tmp_path, f"weights = {{ {hub}, hub_endpoint = \"https://m.internal\" }}\n")
    assert "weights-plain-http" not in assess(tls, bare_host()).findings.codes()


class _Engine(http.server.BaseHTTPRequestHandler):
    """A stand-in API for the probe: health, models and one completion; ``guarded``: /v1/*
    needs the key, as vLLM and SGLang do with one set."""

    guarded = True
    key = "k" * 40

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self) -> None:
        if self.path == "/health":
            return self._send(200, {})
        if self.guarded and self.headers.get("Authorization") != f"Bearer {self.key}":
            return self._send(401, {"error": "Unauthorized"})
        if self.path == "/v1/models":
            return self._send(200, {"data": [{"id": "deepseek-r1-distill-qwen-7b"}]})
        self._send(200, {"choices": [{"message": {"content": "Hi"}}],
                         "usage": {"completion_tokens": 2}})

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("guarded", [True, False])
def test_with_a_key_the_check_shows_a_request_without_it_is_refused(
        tmp_path: Path, guarded: bool) -> None:
    # The engine check's probe, run for real against a stand-in API: with a key set, the
    # check passes only when a request without the key gets 401.
    key = tmp_path / "key"
    key.write_text("k" * 40 + "\n")
    one = plan(tmp_path, f'[settings.inference]\napi_key_file = "{key}"\n', gpus=1)
    assert one.api_key
    handler = type("Engine", (_Engine,), {"guarded": guarded})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env_file = tmp_path / "api-key.env"
    env_file.write_text(render_api_key_env("vllm", "k" * 40))
    port = server.server_address[1]
    try:
        spec = json.dumps({"address": "127.0.0.1", "replicas": [[port, "c0"]],
                           "health_path": "/health", "request": smoke_request(one),
                           "wait_seconds": 5, "key_file": str(env_file)})
        out = subprocess.run(["sh", "-c", engine_probe_script(spec)], capture_output=True,
                             text=True, timeout=60).stdout
    finally:
        server.shutdown()
    found = parse_engine_answers(out.splitlines())
    assert found.replicas and found.replicas[0].tokens == 2, out
    answer = found.replicas[0]
    assert answer.unauthenticated == (401 if guarded else 200)
    moved = ReplicaAnswer(**{**answer.__dict__, "port": one.replicas[0].port})
    problems = engine_findings(one, EngineAnswersResult(replicas=(moved,)))
    if guarded:
        assert problems == []
    else:
        (finding,) = problems
        assert "without it answered 200, not 401" in finding.measured


def test_a_new_api_key_alone_brings_the_engine_up_again() -> None:
    """The key lives in an env file the compose file names, so the applied-stamp must change
    with it: before, a rotated key left the engines answering to the old one."""
    import hashlib

    from rules.serving import compose_digest

    compose = "services:\n  engine-0:\n    env_file: [/etc/gpufleet/api-key.env]\n"
    old = compose_digest(compose, "VLLM_API_KEY=" + "a" * 40 + "\n")
    new = compose_digest(compose, "VLLM_API_KEY=" + "b" * 40 + "\n")
    assert old != new
    assert compose_digest(compose, "VLLM_API_KEY=" + "a" * 40 + "\n") == old  # no-op stays one
    # a host without a key keeps the stamp it has (no restart on upgrade)
    assert compose_digest(compose) == hashlib.sha256(compose.encode()).hexdigest()
    assert old != compose_digest(compose)
