"""The offline sizing command, run as an operator would: exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.size", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_fits_exits_0_with_the_arithmetic() -> None:
    p = run(
        "--model",
        "deepseek-r1-distill-llama-70b",
        "--precision",
        "int8",
        "--gpus",
        "2xa100-80gb",
        "--context",
        "8192",
        "--concurrency",
        "16",
    )
    assert p.returncode == 0, p.stderr
    assert "Verdict: FITS" in p.stdout and "KV cache" in p.stdout and p.stderr == ""


def test_does_not_fit_exits_1_with_alternatives() -> None:
    p = run("--model", "deepseek-r1", "--gpus", "8xh100-80gb")
    assert p.returncode == 1
    assert "DOES NOT FIT" in p.stdout and "--tp 16" in p.stdout


def test_r1_on_8_h200_fits() -> None:
    assert run("--model", "deepseek-r1", "--gpus", "8xh200", "--concurrency", "8").returncode == 0


def test_gpu_memory_override_and_bare_count() -> None:
    p = run("--model", "deepseek-r1-distill-qwen-7b", "--gpus", "1", "--gpu-memory-gib", "24")
    assert p.returncode == 0, p.stderr
    assert "24 GiB given" in p.stdout
    p = run("--model", "deepseek-r1-distill-qwen-7b", "--gpus", "1", "--gpu-memory-gib", "8")
    assert p.returncode == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "deepseek-r2", "--gpus", "1xh200"], "--model deepseek-r2: not in the catalog"),
        (["--model", "deepseek-r1", "--gpus", "8xh300"], "--gpus 8xh300: GPU not in the catalog"),
        (["--model", "deepseek-r1", "--gpus", "8xh200", "--precision", "int3"], "--precision int3"),
        (
            ["--model", "deepseek-r1-distill-qwen-7b", "--gpus", "4xl4", "--tp", "3"],
            "--tp 3: must divide the 28 attention heads",
        ),
        (  # the fleet file's rule: 5 divides no power-of-two head count
            ["--model", "deepseek-r1-distill-llama-70b", "--gpus", "8xh100", "--tp", "5"],
            "--tp 5: must divide the 64 attention heads of deepseek-r1-distill-llama-70b (and "
            "its 8 KV heads, or be a multiple of them); allowed: 1, 2, 4, 8, 16, 32, 64",
        ),
        (  # 5 divides the 40 attention heads, but not the 8 KV heads
            ["--model", "deepseek-r1-distill-qwen-32b", "--gpus", "8xh100", "--tp", "5"],
            "--tp 5: must divide the 40 attention heads",
        ),
        (
            ["--model", "deepseek-r1-distill-qwen-7b", "--gpus", "2xl4", "--tp", "4"],
            "must not exceed the 2 GPU(s)",
        ),
        (
            ["--model", "deepseek-r1-distill-qwen-7b", "--gpus", "1xl4", "--context", "200000"],
            "--context 200000: 1..131072",
        ),
        (
            ["--model", "deepseek-r1-distill-qwen-7b", "--gpus", "1xl4", "--context", "abc"],
            "argument --context: invalid int value",
        ),
        (
            ["--model", "deepseek-r1-distill-qwen-7b", "--gpus", "1xl4", "--concurrency", "0"],
            "--concurrency 0: 1 to 4096 sequences",
        ),
        (["--model", "deepseek-r1-distill-qwen-7b", "--gpus", "2"], "--gpus 2: name a GPU"),
        (["--gpus", "2xl4"], "--model (missing)"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str) -> None:
    p = run(*args)
    assert p.returncode == 2
    assert p.stdout == ""
    assert needle in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_lists() -> None:
    models = run("--list-models")
    assert models.returncode == 0 and "deepseek-r1-distill-qwen-1.5b" in models.stdout
    gpus = run("--list-gpus")
    assert gpus.returncode == 0 and "NVIDIA H100 80GB HBM3" in gpus.stdout


def test_capacity_estimate_with_a_load() -> None:
    p = run("--model", "deepseek-r1-distill-llama-70b", "--precision", "fp8", "--gpus", "2xh100",
            "--requests-per-day", "1000000", "--prompt-tokens", "1000", "--output-tokens", "500",
            "--ttft", "2", "--tokens-per-second", "20")
    assert p.returncode == 0, p.stderr
    assert "Capacity ESTIMATE" in p.stdout and "not a measurement" in p.stdout
    assert "replicas: ceil(" in p.stdout and "Verdict: " in p.stdout
    p = run("--model", "deepseek-r1-distill-llama-70b", "--precision", "fp8", "--gpus", "2xh100",
            "--requests-per-second", "30", "--json")
    assert p.returncode == 0, p.stderr
    capacity = json.loads(p.stdout)["capacity"]
    assert capacity["estimate"] is True and capacity["gpus"] == 2 * capacity["replicas"]


def test_capacity_target_out_of_reach_exits_1() -> None:
    p = run("--model", "deepseek-r1-distill-llama-70b", "--precision", "fp8", "--gpus", "2xh100",
            "--requests-per-second", "1", "--tokens-per-second", "1000")
    assert p.returncode == 1 and "cannot meet the targets" in p.stdout


def test_bad_load_one_line_per_problem() -> None:
    p = run("--model", "deepseek-r1-distill-llama-70b", "--gpus", "2xh100",
            "--requests-per-day", "-5", "--prompt-tokens", "0", "--headroom", "-1")
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert lines == [
        "error: --requests-per-second / --requests-per-day -5.0: a positive rate",
        "error: --prompt-tokens 0: at least 1",
        "error: --headroom -1.0: a fraction from 0 to 10 (0.25 = 25 % spare)",
    ]
    p = run("--model", "deepseek-r1-distill-llama-70b", "--gpus", "2", "--gpu-memory-gib", "80",
            "--requests-per-second", "1")
    assert p.returncode == 2 and "name a catalog GPU for the capacity estimate" in p.stderr


@pytest.mark.parametrize("tool", ["tools.size", "tools.cost"])
def test_help_prints_every_flag_without_a_traceback(tool: str) -> None:
    # argparse formats help strings with %: a bare "25%)" in one of them crashed --help.
    proc = subprocess.run([sys.executable, "-m", tool, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--headroom" in proc.stdout and "Traceback" not in proc.stderr


def r1_fp8(gpus: str) -> subprocess.CompletedProcess[str]:
    return run("--model", "deepseek-r1", "--precision", "fp8", "--gpus", gpus,
               "--context", "8192", "--concurrency", "8", "--json")


def test_r1_at_fp8_one_h200_node_fits_one_h100_node_does_not_two_do() -> None:
    # 671B at fp8 is about 688 GB of weights: 86 GB per GPU on 8 GPUs, more than an H100's 80.
    assert r1_fp8("8xh200").returncode == 0
    one_node = r1_fp8("8xh100")
    assert one_node.returncode == 1 and json.loads(one_node.stdout)["sizing"]["fits"] is False
    two_nodes = r1_fp8("2x(8xh100-80gb)")
    assert two_nodes.returncode == 0, two_nodes.stdout + two_nodes.stderr
    sizing = json.loads(two_nodes.stdout)["sizing"]
    # Tensor parallel within a node, pipeline parallel across the two: each GPU holds 1/16 of
    # the weights and the KV cache of its stage's layers only (the larger stage: 31 of 61).
    assert (sizing["gpu_count"], sizing["tp"], sizing["pp"]) == (16, 8, 2)
    assert sizing["weights_per_gpu_bytes"] == 43_000_000_000
    single = json.loads(r1_fp8("8xh200").stdout)["sizing"]
    assert sizing["kv_per_token_per_gpu_bytes"] * 61 == single["kv_per_token_per_gpu_bytes"] * 31
    # The KV budget the text states: 29.81 GiB per GPU, 896,352 tokens, 109 sequences of 8192.
    assert (sizing["kv_tokens"], sizing["max_concurrency"]) == (896_352, 109)
    assert "in 2 nodes of 8" in sizing["gpu"]


@pytest.mark.parametrize(("gpus", "needle"), [
    ("0x(8xh100)", "a node count of 1 to 64"),
    ("2x(8xnot-a-gpu)", "GPU not in the catalog"),
])
def test_bad_multi_node_shapes_get_one_line(gpus: str, needle: str) -> None:
    proc = run("--model", "deepseek-r1", "--gpus", gpus)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr


def test_r1_is_sized_as_the_pinned_vllm_that_serves_it_and_says_how_it_caches() -> None:
    # The default pin set's vLLM 0.4.2 cannot load R1: the newest pinned vLLM that can (0.7.3)
    # is the one sized, with its MLA latent cache; 0.6.6.post1 caches full K/V.
    latent = run("--model", "deepseek-r1", "--precision", "fp8", "--gpus", "2x(8xh100-80gb)",
                 "--context", "8192", "--concurrency", "8")
    assert latent.returncode == 0, latent.stdout
    assert "vLLM 0.7.3 profiling pass" in latent.stdout and "MLA latent" in latent.stdout
    full = run("--model", "deepseek-r1", "--precision", "fp8", "--gpus", "2x(8xh100-80gb)",
               "--context", "8192", "--concurrency", "8", "--engine-version", "0.6.6.post1")
    assert full.returncode == 1
    assert "no MLA in vLLM 0.6.6.post1: full K and V of 128 heads x 256" in full.stdout
    assert "= 63,024 tokens" in full.stdout


def test_r1_block_fp8_cannot_run_on_a100_and_the_tool_says_what_would() -> None:
    p = run("--model", "deepseek-r1", "--precision", "fp8", "--gpus", "4x(8xa100-80gb)")
    assert p.returncode == 1, p.stdout
    assert "Verdict: CANNOT RUN: vLLM 0.7.3 cannot run deepseek-r1's block-wise FP8" in p.stdout
    assert "--precision int4 (an AWQ/GPTQ checkpoint)" in p.stdout
