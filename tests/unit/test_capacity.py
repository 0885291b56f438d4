"""The capacity estimate (rules/capacity.py) against published benchmark figures.

Each row is a public measurement of a model the catalog holds under another name (the R1
distills are Llama-3.x-70B / -8B by architecture: same layers, heads, vocab, so the same
bytes per token) on a catalog GPU. The estimate must land within FACTOR of every row;
`pytest -s` prints the table with each error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from inventory.catalog import find_gpu, find_model
from rules.capacity import (
    DOCTOR_OUTPUT_TOKENS,
    DOCTOR_PROMPT_TOKENS,
    Load,
    ReplicaModel,
    at_batch,
    engine_batch_limit,
    estimate_replica,
    plan,
    replica_model,
    replica_summary,
    validate_load,
)
from rules.sizing import KvDtype, SizingRequest, SizingResult, engine_profile, size

FACTOR = 1.5  # the estimate stays within 1.5x of every published figure below, either way

Metric = Literal["output_tokens_per_second", "decode_tokens_per_second", "batch_seconds"]

NIM = "https://docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance"
VLLM_CI = "https://buildkite.com/vllm/performance-benchmark/builds/9515"


@dataclass(frozen=True)
class Point:
    what: str  # the model as benchmarked, engine, precision
    model: str  # the catalog model of the same architecture
    precision: Literal["bf16", "fp8"]
    gpu: str
    gpus: int
    prompt: int
    output: int
    concurrency: int
    metric: Metric
    measured: float
    source: str
    kv_dtype: KvDtype = "auto"


POINTS = [
    # NIM 1.8.0, Llama-3.3-70B-Instruct, 2 x H100 80G, fp8 TP2, 5000 in / 500 out.
    Point("Llama-3.3-70B NIM 1.8.0 fp8 TP2, c=1", "deepseek-r1-distill-llama-70b", "fp8",
          "h100-80gb", 2, 5000, 500, 1, "output_tokens_per_second", 51.67, NIM),
    Point("Llama-3.3-70B NIM 1.8.0 fp8 TP2, c=25", "deepseek-r1-distill-llama-70b", "fp8",
          "h100-80gb", 2, 5000, 500, 25, "output_tokens_per_second", 623.4, NIM),
    # vLLM's nightly performance run: latency of a fixed batch of 8, 32 in / 128 out, bf16.
    Point("Llama-3-70B vLLM bf16 TP4, batch 8", "deepseek-r1-distill-llama-70b", "bf16",
          "h200", 4, 32, 128, 8, "batch_seconds", 2.07753, VLLM_CI),
    Point("Llama-3.1-8B vLLM bf16 TP1, batch 8", "deepseek-r1-distill-llama-8b", "bf16",
          "h200", 1, 32, 128, 8, "batch_seconds", 0.833421, VLLM_CI),
    # vLLM 0.23.0, A100 40GB, 1024 in / 128 out, one request at a time: ~75 tokens/s decode.
    Point("Llama-3.1-8B vLLM 0.23 bf16, c=1", "deepseek-r1-distill-llama-8b", "bf16",
          "a100-40gb", 1, 1024, 128, 1, "decode_tokens_per_second", 75.0,
          "https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on"),
    # vLLM 0.21.0, H100 80GB HBM3, fp16, chatbot-short, c=1: TPOT p50 6.48 ms.
    Point("Llama-3.1-8B vLLM 0.21 fp16, c=1", "deepseek-r1-distill-llama-8b", "bf16",
          "h100-80gb", 1, 128, 128, 1, "decode_tokens_per_second", 1000 / 6.48,
          "https://yobitelcomm.github.io/bench/recipes/concurrency-sweep/"),
    # SGLang v0.5.7, DeepSeek-R1-0528 FP8, 8 x H200 TP8, 1024 in / 1024 out: output
    # throughput per GPU 74.6 (c=8) and 223.6 (c=64) tokens/s, x 8 GPUs.
    Point("DeepSeek-R1 SGLang 0.5.7 fp8 TP8, c=8", "deepseek-r1", "fp8", "h200", 8, 1024,
          1024, 8, "output_tokens_per_second", 74.6 * 8,
          "https://github.com/SemiAnalysisAI/InferenceX/issues/870"),
    Point("DeepSeek-R1 SGLang 0.5.7 fp8 TP8, c=64", "deepseek-r1", "fp8", "h200", 8, 1024,
          1024, 64, "output_tokens_per_second", 223.6 * 8,
          "https://github.com/SemiAnalysisAI/InferenceX/issues/870"),
]


def estimated(point: Point) -> float:
    gpu, model = find_gpu(point.gpu), find_model(point.model)
    result = size(SizingRequest(
        model=model, precision=point.precision, gpu_memory_bytes=gpu.memory_bytes,
        gpu_count=point.gpus, context=point.prompt + point.output, concurrency=1,
        kv_dtype=point.kv_dtype, gpu_label=gpu.id, engine=engine_profile("0.8.0"),
        compute_capability=gpu.compute_capability))
    replica = replica_model(result, gpu, batch_limit=1024)
    load = Load(1.0, point.prompt, point.output)
    at = at_batch(replica, load, point.concurrency)
    if point.metric == "output_tokens_per_second":
        return at.output_tokens_per_second
    if point.metric == "decode_tokens_per_second":
        return 1 / at.step_s
    # A fixed batch started together: its prefills, then every decode step.
    return point.concurrency * at.prefill_s + point.output * at.step_s


def speed_ratio(point: Point) -> float:
    """Estimated speed / measured speed (>1: the estimate is optimistic)."""
    value = estimated(point)
    return point.measured / value if point.metric == "batch_seconds" else value / point.measured


def test_public_figures_within_the_stated_factor() -> None:
    print(f"\n{'benchmark':<42} {'GPUs':>9} {'measured':>10} {'estimate':>10} {'est/meas':>8}")
    for point in POINTS:
        value, ratio = estimated(point), speed_ratio(point)
        print(f"{point.what:<42} {point.gpus}x{point.gpu:<7} {point.measured:>10,.2f} "
              f"{value:>10,.2f} {ratio:>8.2f}  {point.source}")
    ratios = {p.what: speed_ratio(p) for p in POINTS}
    assert all(1 / FACTOR <= r <= FACTOR for r in ratios.values()), ratios
    assert len({(p.model, p.gpu) for p in POINTS}) >= 3


def _replica(model: str, precision: Literal["bf16", "fp8"], gpu_id: str,
             gpus: int) -> ReplicaModel:
    gpu = find_gpu(gpu_id)
    result = size(SizingRequest(
        model=find_model(model), precision=precision, gpu_memory_bytes=gpu.memory_bytes,
        gpu_count=gpus, context=8192, concurrency=1, gpu_label=gpu.id,
        compute_capability=gpu.compute_capability))
    return replica_model(result, gpu, batch_limit=256)


def test_batch_is_bounded_by_the_kv_cache_and_the_targets() -> None:
    replica = _replica("deepseek-r1-distill-llama-70b", "fp8", "h100-80gb", 2)
    free = estimate_replica(replica, Load(1.0, 1000, 500))
    assert free.best is not None and free.limited_by == "KV cache"
    assert free.best.batch == free.kv_concurrency <= 256
    strict = estimate_replica(replica, Load(1.0, 1000, 500, tokens_per_second_target=40))
    assert strict.best is not None and strict.limited_by == "tokens/s target"
    assert strict.best.batch < free.best.batch
    assert strict.best.user_tokens_per_second >= 40
    impossible = estimate_replica(replica, Load(1.0, 1000, 500, tokens_per_second_target=500))
    assert impossible.best is None and impossible.limited_by == "tokens/s target"


def test_replicas_cover_the_load_with_headroom() -> None:
    replica = _replica("deepseek-r1-distill-llama-8b", "bf16", "l40s", 1)
    load = Load(Load.per_day_to_rate(1_000_000, 2.0), 1000, 500, ttft_target_s=2,
                tokens_per_second_target=20, headroom=0.25)
    p = plan(replica, load)
    assert p.replicas is not None and p.gpus == p.replicas
    assert p.capacity_rate >= load.requests_per_second * 1.25
    best = p.estimate.best
    assert best is not None
    assert p.capacity_rate - best.requests_per_second < load.requests_per_second * 1.25


def test_bad_load_names_every_field() -> None:
    problems = validate_load(Load(0, 0, -1, ttft_target_s=0, tokens_per_second_target=-2,
                                  headroom=-1))
    assert [p.field_name for p in problems] == [
        "requests", "prompt_tokens", "output_tokens", "ttft", "tokens_per_second", "headroom"]


@pytest.mark.parametrize("gpu_id", ["h200", "h100-80gb", "a100-80gb", "a100-40gb", "l40s",
                                    "rtx4090"])
def test_catalog_gpus_carry_the_datasheet_figures(gpu_id: str) -> None:
    gpu = find_gpu(gpu_id)
    assert gpu.memory_bandwidth_gbs and gpu.dense_16bit_tflops and gpu.tdp_watts


def _sizing(model: str, gpu_id: str, gpus: int, concurrency: int) -> SizingResult:
    gpu = find_gpu(gpu_id)
    return size(SizingRequest(
        model=find_model(model), precision="fp8", gpu_memory_bytes=gpu.memory_bytes,
        gpu_count=gpus, context=8192, concurrency=concurrency, gpu_label=gpu.id,
        compute_capability=gpu.compute_capability))


def test_the_doctors_line_is_the_estimate_at_the_sized_concurrency() -> None:
    sizing = _sizing("deepseek-r1-distill-llama-70b", "h100-80gb", 2, concurrency=16)
    line = replica_summary(sizing, find_gpu("h100-80gb"))
    assert line is not None and line.startswith("capacity ESTIMATE")
    # The same arithmetic as tools/size.py's estimate, at 16 requests of 1000 + 500 tokens.
    point = at_batch(replica_model(sizing, find_gpu("h100-80gb"), engine_batch_limit(sizing)),
                     Load(1.0, DOCTOR_PROMPT_TOKENS, DOCTOR_OUTPUT_TOKENS), 16)
    assert "at 16 concurrent request(s)" in line
    assert f"about {point.requests_per_second:.2f} requests/s" in line
    assert f"({point.output_tokens_per_second:,.0f} output tokens/s)" in line


def test_no_capacity_line_when_it_does_not_fit_or_the_catalog_lacks_figures() -> None:
    too_big = _sizing("deepseek-r1", "h100-80gb", 8, concurrency=8)
    assert not too_big.fits and replica_summary(too_big, find_gpu("h100-80gb")) is None
    fits = _sizing("deepseek-r1-distill-llama-8b", "h100-80gb", 1, concurrency=4)
    no_figures = find_gpu("h100-80gb").model_copy(update={"memory_bandwidth_gbs": None})
    assert replica_summary(fits, no_figures) is None
