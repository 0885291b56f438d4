"""Sizing arithmetic: the brief's numbers and DESIGN §6's KV figures, reproduced."""

from __future__ import annotations

from dataclasses import replace

import pytest

from inventory.catalog import find_gpu, find_model
from rules.sizing import (
    GIB,
    KIB,
    Configuration,
    SizingInputError,
    SizingRequest,
    engine_profile,
    kv_bytes_per_token,
    kv_bytes_per_token_per_gpu,
    render_model_needs,
    render_sizing,
    serving_configurations,
    size,
    tp_candidates,
    weights_bytes,
)

L70 = find_model("deepseek-r1-distill-llama-70b")
R1 = find_model("deepseek-r1")


def req(model_id: str, precision: str, gpu: str, count: int, **kw: object) -> SizingRequest:
    g = find_gpu(gpu)
    return SizingRequest(
        model=find_model(model_id),
        precision=precision,  # type: ignore[arg-type]
        gpu_memory_bytes=g.memory_bytes,
        gpu_count=count,
        context=kw.pop("context", 8192),  # type: ignore[arg-type]
        concurrency=kw.pop("concurrency", 1),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_70b_weights_match_the_brief() -> None:
    assert weights_bytes(L70, "fp16") / 1e9 == pytest.approx(140, rel=0.02)
    # int8 keeps embeddings and the output head at 16 bit: 72.7 GB, within 5 % of "70 GB".
    assert weights_bytes(L70, "int8") / 1e9 == pytest.approx(70, rel=0.05)
    assert weights_bytes(L70, "int8") > L70.params_total  # the 16-bit head is counted


@pytest.mark.parametrize(
    ("model_id", "kib"),
    [
        ("deepseek-r1-distill-qwen-1.5b", 28),
        ("deepseek-r1-distill-qwen-7b", 56),
        ("deepseek-r1-distill-qwen-14b", 192),
        ("deepseek-r1-distill-qwen-32b", 256),
        ("deepseek-r1-distill-llama-8b", 128),
        ("deepseek-r1-distill-llama-70b", 320),
        ("deepseek-r1", 68.625),  # (512 + 64) x 61 x 2 B
    ],
)
def test_kv_per_token_matches_design(model_id: str, kib: float) -> None:
    assert kv_bytes_per_token(find_model(model_id)) == kib * KIB
    assert kv_bytes_per_token(find_model(model_id), "fp8") == kib * KIB / 2


def test_kv_split_gqa_by_tp_but_replicate_mla() -> None:
    assert kv_bytes_per_token_per_gpu(L70, tp=2, pp=1) == 160 * KIB
    assert kv_bytes_per_token_per_gpu(L70, tp=16, pp=1) == 40 * KIB  # 8 heads: 1 head per GPU
    assert kv_bytes_per_token_per_gpu(R1, tp=8, pp=1) == kv_bytes_per_token(R1)
    assert kv_bytes_per_token_per_gpu(R1, tp=1, pp=61) == 576 * 2


def test_r1_fits_8_h200_not_8_h100() -> None:
    h200 = size(req("deepseek-r1", "fp8", "h200", 8, concurrency=4))
    h100 = size(req("deepseek-r1", "fp8", "h100-80gb", 8, concurrency=1))
    assert h200.fits and h200.max_concurrency >= 4
    assert not h100.fits and h100.kv_budget_per_gpu < 0
    assert h100.shortfall_per_gpu == h100.needed_per_gpu - h100.usable_per_gpu > 0


def test_usable_is_utilization_times_what_cuda_reports() -> None:
    r = size(req("deepseek-r1-distill-qwen-7b", "bf16", "l4", 1, gpu_memory_utilization=0.5))
    # CUDA sees nvidia-smi's 23034 MiB less the driver's share (600 MiB on a card this size).
    assert r.cuda_visible_per_gpu == (23034 - 600) * 2**20
    assert r.usable_per_gpu == int((23034 - 600) * 2**20 * 0.5)
    assert r.needed_per_gpu == r.weights_per_gpu + r.overhead_per_gpu + r.kv_per_gpu
    h200 = size(req("deepseek-r1-distill-qwen-7b", "bf16", "h200", 1))
    assert h200.cuda_visible_per_gpu == 143771 * 2**20 - int(143771 * 2**20 * 0.01)


def test_fit_boundary_is_exact() -> None:
    base = size(req("deepseek-r1-distill-qwen-7b", "bf16", "a100-80gb", 1))
    at_limit = size(
        req("deepseek-r1-distill-qwen-7b", "bf16", "a100-80gb", 1, concurrency=base.max_concurrency)
    )
    over = size(
        req(
            "deepseek-r1-distill-qwen-7b",
            "bf16",
            "a100-80gb",
            1,
            concurrency=base.max_concurrency + 1,
        )
    )
    assert at_limit.fits and not over.fits


def test_alternatives_are_computed_and_each_one_fits() -> None:
    r = size(req("deepseek-r1-distill-llama-70b", "fp16", "a100-80gb", 1, concurrency=4))
    assert not r.fits
    kinds = {a.kind: a for a in r.alternatives}
    assert kinds["precision"].change == "--precision int4 (an AWQ/GPTQ checkpoint)"
    assert kinds["tensor-parallel"].change.startswith("--tp 4")
    assert all(a.needed_per_gpu <= a.usable_per_gpu for a in r.alternatives)
    # weights alone do not fit one card, so no context/concurrency change can help
    assert "context" not in kinds and "concurrency" not in kinds


def test_shorter_context_or_fewer_sequences_suggested_when_only_kv_misses() -> None:
    r = size(
        req("deepseek-r1-distill-qwen-32b", "bf16", "a100-80gb", 1, context=16384, concurrency=16)
    )
    assert not r.fits
    kinds = {a.kind: a for a in r.alternatives}
    context = int(kinds["context"].change.split()[-1])
    sequences = int(kinds["concurrency"].change.split()[-1])
    # Suggestions keep the calibration's 3 % in hand: a little under the arithmetic's limit.
    assert 0.9 * r.max_context <= context < r.max_context
    assert 0.9 * r.max_concurrency <= sequences <= r.max_concurrency
    changed = size(req("deepseek-r1-distill-qwen-32b", "bf16", "a100-80gb", 1, context=context,
                       concurrency=16))
    assert changed.fits and changed.kv_tokens >= context


@pytest.mark.parametrize(("model_id", "precision", "gpu", "count", "context", "concurrency"), [
    ("deepseek-r1-distill-llama-8b", "bf16", "rtx3090", 1, 29000, 1),
    ("deepseek-r1-distill-qwen-32b", "bf16", "l40s", 1, 32768, 8),
    ("deepseek-r1-distill-llama-70b", "bf16", "a100-80gb", 2, 32768, 32),
    ("deepseek-r1-distill-qwen-14b", "bf16", "rtx4090", 1, 32768, 4),
    ("deepseek-r1", "fp8", "h100-80gb", 8, 32768, 8),
])
def test_every_suggestion_passes_the_engines_own_checks(
        model_id: str, precision: str, gpu: str, count: int, context: int, concurrency: int
) -> None:
    base = req(model_id, precision, gpu, count, context=context, concurrency=concurrency)
    r = size(base)
    assert not r.fits and r.alternatives
    for alt in r.alternatives:
        flag, value = alt.change.split()[:2]
        if flag == "--precision":
            changed = replace(base, precision=value)  # type: ignore[arg-type]
        elif flag == "--tp":  # "--tp 4 (4 GPUs; you have 1)": as many GPUs as it needs
            changed = replace(base, tp=int(value), gpu_count=max(count, int(value) * base.pp))
        elif flag == "--context":
            changed = replace(base, context=int(value))
        else:
            changed = replace(base, concurrency=int(value))
        result = size(changed)  # validates tp against the heads, context against the model
        assert result.fits, alt.change
        assert result.kv_tokens >= changed.context, f"{alt.change}: vLLM would refuse to start"


def test_fp8_is_suggested_only_where_the_engine_runs_it() -> None:
    old, new = engine_profile("0.4.2"), engine_profile("0.6.6.post1")
    ampere = req("deepseek-r1-distill-llama-8b", "bf16", "rtx3090", 1, context=29000,
                 compute_capability="8.6")
    changes = [a.change for a in size(replace(ampere, engine=old)).alternatives]
    assert not any("fp8" in c for c in changes)  # 0.4.2: FP8 needs Ada or Hopper
    changes = [a.change for a in size(replace(ampere, engine=new)).alternatives]
    assert "--precision fp8" in changes  # 0.5+: FP8 weights through Marlin on Ampere


def test_model_needs_lists_only_gpus_that_run_the_precision_and_fit() -> None:
    base = req("deepseek-r1-distill-llama-70b", "bf16", "h100-80gb", 1, context=8192,
               concurrency=4)
    gpus = {"V100 32GB": (32480 * 2**20, "7.0"), "A100 80GB": (81920 * 2**20, "8.0"),
            "L4": (23034 * 2**20, "8.9")}
    configs = serving_configurations(base, gpus)
    labels = [c.gpu_label for c in configs]
    assert "V100 32GB" not in labels  # no bf16 before Ampere
    a100 = next(c for c in configs if c.gpu_label == "A100 80GB")
    # 141 GB of weights: 66 GiB on each of two cards leaves no room for the KV cache.
    assert a100.gpu_count == 4 and a100.result.fits
    assert not _fewer_fit(base, a100)
    report = render_model_needs(base, configs)
    assert "320.0 KiB per token" in report and "4 x A100 80GB" in report


def _fewer_fit(base: SizingRequest, config: Configuration) -> bool:
    fewer = config.gpu_count // 2
    return size(replace(base, gpu_memory_bytes=config.result.request.gpu_memory_bytes,
                        gpu_count=fewer, tp=fewer)).fits


def test_long_context_on_a_24gb_card_is_refused_when_the_prefill_is_profiled_whole() -> None:
    # vLLM 0.4.2 profiles one max_model_len prefill; the activations of 29k tokens are what
    # left the RTX 3090 of vllm-project/vllm#10517 without room for one sequence.
    r = size(req("deepseek-r1-distill-llama-8b", "bf16", "rtx3090", 1, context=29000))
    assert r.profile_tokens == 29000 and not r.fits and r.kv_tokens < 29000
    short = size(req("deepseek-r1-distill-llama-8b", "bf16", "rtx3090", 1, context=20000))
    assert short.fits


def test_smallest_tp_reported_when_it_fits() -> None:
    r = size(req("deepseek-r1-distill-qwen-7b", "bf16", "h100-80gb", 4))
    assert r.fits and r.tp == 4 and r.smallest_tp == 1


def test_tp_candidates_are_powers_of_two_dividing_heads() -> None:
    assert tp_candidates(find_model("deepseek-r1-distill-qwen-7b")) == [1, 2, 4]  # 28 heads
    assert tp_candidates(L70) == [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"tp": 3}, "tp"),
        ({"tp": 4}, "tp"),  # more than the 2 GPUs
        ({"pp": 0}, "pp"),
        ({"context": 131073}, "context"),
        ({"concurrency": 0}, "concurrency"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ],
)
def test_impossible_requests_name_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(SizingInputError) as exc:
        size(req("deepseek-r1-distill-llama-70b", "int8", "a100-80gb", 2, **kw))
    assert exc.value.field_name == field


def test_render_shows_the_arithmetic_and_the_rule_of_thumb() -> None:
    r = size(req("deepseek-r1-distill-llama-70b", "int8", "a100-80gb", 2, concurrency=16))
    text = render_sizing(r)
    assert "Verdict: FITS" in text
    assert "320.0 KiB/token -> 160.0 KiB/token/GPU" in text
    assert f"derived for this setup: {r.max_concurrency}" in text and "batch 8 at int8" in text
    assert f"{r.weights_per_gpu / GIB:,.2f}" in text
    miss = render_sizing(size(req("deepseek-r1", "fp8", "h100-80gb", 8)))
    assert "DOES NOT FIT" in miss and "--tp 16" in miss


@pytest.mark.parametrize(("version", "per_gpu", "layout"), [
    # no MLA cache: K and V of 128/8 = 16 heads at the padded head size 256, 61 layers, bf16
    ("0.6.6.post1", 2 * 16 * 256 * 61 * 2, "no MLA in vLLM 0.6.6.post1"),
    ("0.7.0", 2 * 16 * 256 * 61 * 2, "no MLA in vLLM 0.7.0"),
    # the MLA latent: (kv_lora_rank 512 + qk_rope_head_dim 64) x 61 layers x 2 B, every rank
    ("0.7.1", 576 * 61 * 2, "MLA latent"),
    ("0.7.3", 576 * 61 * 2, "MLA latent"),
])
def test_the_r1_kv_cache_follows_the_engine_release(version: str, per_gpu: int,
                                                    layout: str) -> None:
    engine = engine_profile(version)
    assert kv_bytes_per_token_per_gpu(R1, tp=8, pp=1, engine=engine) == per_gpu
    result = size(req("deepseek-r1", "fp8", "h200", 8, engine=engine,
                      compute_capability="9.0"))
    assert result.kv_per_token_per_gpu == per_gpu
    assert layout in render_sizing(result)


def test_sglang_caches_the_latent_with_the_pinned_vllm_budget() -> None:
    engine = engine_profile("0.4.1.post7", "sglang", vllm_version="0.6.6.post1")
    assert engine.mla_latent and engine.label == "SGLang 0.4.1.post7"
    assert kv_bytes_per_token_per_gpu(R1, tp=16, pp=1, engine=engine) == 576 * 61 * 2


def test_block_fp8_cannot_run_on_ampere_whatever_the_memory() -> None:
    engine = engine_profile("0.7.3")
    a100 = req("deepseek-r1", "fp8", "a100-80gb", 32, engine=engine, compute_capability="8.0")
    result = size(a100)
    assert not result.fits and result.unsupported is not None
    assert "no Marlin path for block-wise FP8" in result.unsupported
    assert [a.change for a in result.alternatives] == [
        "--precision bf16 (the checkpoint converted)", "--precision fp16 (the checkpoint "
        "converted)", "--precision int8 (an AWQ/GPTQ checkpoint)",
        "--precision int4 (an AWQ/GPTQ checkpoint)"]
    assert "Verdict: CANNOT RUN: vLLM 0.7.3 cannot run deepseek-r1's block-wise FP8" in \
        render_sizing(result)
    # Hopper runs it; a non-block FP8 model on Ampere still goes through Marlin (0.5+).
    assert size(replace(a100, compute_capability="9.0")).unsupported is None
    l70 = req("deepseek-r1-distill-llama-70b", "fp8", "a100-80gb", 2, engine=engine,
              compute_capability="8.0")
    assert size(l70).unsupported is None
