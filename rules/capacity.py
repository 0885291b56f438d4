"""How many requests one replica serves, and how many replicas (and GPUs) a load needs.

An ESTIMATE from datasheet figures, not a measurement; pure arithmetic, no I/O. One replica
is the sized configuration (tensor-parallel x pipeline-parallel GPUs, rules/sizing.py).

- Decode is memory-bound: every step reads the weights and the KV cache of the whole batch.
  Per GPU, bytes per step = weights read + batch x average context x KV bytes per token per
  GPU (the sizing's figure), and

      step time = pp x bytes / (DECODE_BANDWIDTH_EFFICIENCY x bandwidth)
                  + 2 x layers x ALLREDUCE_SECONDS                      (only when tp > 1)

  or the compute time of the step when that is longer (large batches). A dense model reads
  all its weights every step; a MoE model reads the experts its batch routes to, taken as
  1 - (1 - active/total)^batch of the expert weights (each token picks its own).
- Prefill is compute-bound: 2 x active parameters FLOPs per prompt token, on the tp GPUs at
  PREFILL_MFU of their dense tensor throughput (fp8 throughput for fp8 weights where the GPU
  has it, 16-bit otherwise; attention's own FLOPs are left out: a few % at 5k tokens).
- A replica running `batch` sequences at once spends, per request, its prefill plus its share
  of the decode steps: requests/s = 1 / (prefill + output_tokens x step / batch). Each user
  sees output_tokens / (output_tokens x step + (batch - 1) x prefill) tokens/s (the other
  users' prefills interleave with its steps), and a time to first token of its prefill, one
  step, and the wait for the prefills ahead of it (an M/D/1 queue at that request rate).
- The batch is the largest that meets both targets, bounded by the KV cache (how many
  sequences of prompt + output tokens its blocks hold) and the engine's batch limit.
- Replicas = ceil(peak requests/s x (1 + headroom) / requests/s per replica).

The efficiency constants are the assumptions; tests/unit/test_capacity.py compares the
estimate with published benchmark figures and states the factor it stays within.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from inventory.catalog import GpuSpec
from rules.sizing import BLOCK_SIZE, SizingResult, is_large_gpu

# Assumptions (see the module docstring). Public batch-1 decode runs reach 74-77 % of the
# datasheet bandwidth (vLLM, Llama-3.1-8B on A100 40GB and H100); 0.7 keeps some margin.
DECODE_BANDWIDTH_EFFICIENCY = 0.7
# Model FLOPs utilisation of a long prefill: NIM's 5,000-token TTFT for a 70B model on
# 2 x H100 fp8 (407 ms) is 44 % of the dense fp8 peak.
PREFILL_MFU = 0.5
# Two all-reduces per layer with tensor parallelism, latency-bound at decode batch sizes
# (NVLink custom all-reduce: 10-20 us each).
ALLREDUCE_SECONDS = 15e-6
DEFAULT_HEADROOM = 0.25  # spare capacity: queues stay short, a replica can be drained
SECONDS_PER_DAY = 86_400
# Bounds of a load beyond any real one: they keep the arithmetic finite (1e308 requests/s
# overflows to inf, then nan) and say so in the problem instead of a nonsense plan.
MAX_REQUESTS_PER_SECOND = 1_000_000
MAX_TOKENS = 10_000_000  # prompt or output tokens of one request
MAX_TTFT_SECONDS = 3_600
MAX_TOKENS_PER_SECOND = 100_000  # decode speed one user sees


class CapacityInputError(ValueError):
    """A load that cannot be planned for: names the field, the value and what is allowed."""

    def __init__(self, field_name: str, value: object, allowed: str) -> None:
        self.field_name, self.value, self.allowed = field_name, value, allowed
        super().__init__(f"{field_name}={value!r}: {allowed}")


@dataclass(frozen=True)
class Load:
    """What the replicas must serve. `requests_per_second` is the rate to plan for (a daily
    count becomes one with `from_daily`)."""

    requests_per_second: float
    prompt_tokens: int
    output_tokens: int
    ttft_target_s: float | None = None  # time to first token each user must see
    tokens_per_second_target: float | None = None  # decode speed each user must see
    headroom: float = DEFAULT_HEADROOM
    requests_per_day: float | None = None  # as given, when the rate came from a daily count
    peak_factor: float = 1.0

    @staticmethod
    def per_day_to_rate(requests_per_day: float, peak_factor: float) -> float:
        """A day's requests arrive unevenly: plan for the busy hour, peak_factor x average."""
        return requests_per_day / SECONDS_PER_DAY * peak_factor


def validate_load(load: Load) -> list[CapacityInputError]:
    """Every problem at once, each naming its field."""
    problems = []
    if not load.requests_per_second > 0:
        problems.append(CapacityInputError("requests", load.requests_per_second,
                                           "a positive rate"))
    elif not load.requests_per_second <= MAX_REQUESTS_PER_SECOND:
        problems.append(CapacityInputError(
            "requests", load.requests_per_second,
            f"at most {MAX_REQUESTS_PER_SECOND:,} requests/s at the busy hour"))
    for name, tokens in (("prompt_tokens", load.prompt_tokens),
                         ("output_tokens", load.output_tokens)):
        if tokens < 1:
            problems.append(CapacityInputError(name, tokens, "at least 1"))
        elif tokens > MAX_TOKENS:
            problems.append(CapacityInputError(name, tokens, f"at most {MAX_TOKENS:,}"))
    if load.ttft_target_s is not None and not 0 < load.ttft_target_s <= MAX_TTFT_SECONDS:
        problems.append(CapacityInputError("ttft", load.ttft_target_s, "a positive number of "
                                           f"seconds, at most {MAX_TTFT_SECONDS:,}"))
    if load.tokens_per_second_target is not None and not (
            0 < load.tokens_per_second_target <= MAX_TOKENS_PER_SECOND):
        problems.append(CapacityInputError("tokens_per_second", load.tokens_per_second_target,
                                           "a positive number of tokens/s per user, at most "
                                           f"{MAX_TOKENS_PER_SECOND:,}"))
    if not 0 <= load.headroom <= 10:
        problems.append(CapacityInputError("headroom", load.headroom,
                                           "a fraction from 0 to 10 (0.25 = 25 % spare)"))
    return problems


def gpu_figures_missing(gpu: GpuSpec) -> list[str]:
    """The datasheet figures the estimate needs that the catalog lacks for this GPU."""
    missing = []
    if gpu.memory_bandwidth_gbs is None:
        missing.append("memory_bandwidth_gbs")
    if gpu.dense_16bit_tflops is None:
        missing.append("dense_16bit_tflops")
    return missing


@dataclass(frozen=True)
class ReplicaModel:
    """The figures of one replica that the estimate uses, per GPU where it says so."""

    gpu: GpuSpec
    tp: int
    pp: int
    layers: int
    weights_per_gpu: int  # bytes
    active_fraction: float  # params_active / params_total (1 for dense models)
    active_params: int
    kv_per_token_per_gpu: int  # bytes
    kv_tokens: int  # the KV cache's capacity, tokens
    batch_limit: int  # the engine's max_num_seqs
    fp8_compute: bool  # prefill runs on fp8 tensor cores

    @property
    def bandwidth(self) -> float:  # bytes/s
        assert self.gpu.memory_bandwidth_gbs is not None
        return self.gpu.memory_bandwidth_gbs * 1e9

    @property
    def flops(self) -> float:  # dense FLOP/s of one GPU at the prefill's precision
        if self.fp8_compute and self.gpu.dense_fp8_tflops is not None:
            return self.gpu.dense_fp8_tflops * 1e12
        assert self.gpu.dense_16bit_tflops is not None
        return self.gpu.dense_16bit_tflops * 1e12


def replica_model(sizing: SizingResult, gpu: GpuSpec, batch_limit: int) -> ReplicaModel:
    req, m = sizing.request, sizing.request.model
    active = m.params_active or m.params_total
    return ReplicaModel(
        gpu=gpu, tp=sizing.tp, pp=sizing.pp, layers=m.layers,
        weights_per_gpu=sizing.weights_per_gpu,
        active_fraction=active / m.params_total, active_params=active,
        kv_per_token_per_gpu=sizing.kv_per_token_per_gpu, kv_tokens=sizing.kv_tokens,
        batch_limit=batch_limit,
        fp8_compute=req.precision == "fp8" and gpu.dense_fp8_tflops is not None,
    )


def weights_read_per_gpu(r: ReplicaModel, batch: int) -> float:
    """Weight bytes one decode step reads on one GPU (MoE: the experts the batch touches)."""
    if r.active_fraction >= 1:
        return float(r.weights_per_gpu)
    return r.weights_per_gpu * (1 - (1 - r.active_fraction) ** batch)


def step_seconds(r: ReplicaModel, batch: int, context: float) -> float:
    """One decode step for `batch` sequences of `context` tokens on average."""
    per_gpu = weights_read_per_gpu(r, batch) + batch * context * r.kv_per_token_per_gpu
    memory = r.pp * per_gpu / (DECODE_BANDWIDTH_EFFICIENCY * r.bandwidth)
    compute = 2 * r.active_params * batch / (r.tp * r.flops * PREFILL_MFU)
    comms = 2 * r.layers * ALLREDUCE_SECONDS if r.tp > 1 else 0.0
    return max(memory, compute) + comms


def prefill_seconds(r: ReplicaModel, prompt_tokens: int) -> float:
    """One prompt's prefill on the replica's tp GPUs (pipeline stages run one after another)."""
    return 2 * r.active_params * prompt_tokens / (r.tp * r.flops * PREFILL_MFU)


def kv_concurrency(r: ReplicaModel, load: Load) -> int:
    """Sequences of prompt + output tokens the KV cache holds at once (whole blocks)."""
    blocks_each = -(-(load.prompt_tokens + load.output_tokens) // BLOCK_SIZE)
    return r.kv_tokens // (blocks_each * BLOCK_SIZE)


@dataclass(frozen=True)
class BatchPoint:
    batch: int
    step_s: float
    prefill_s: float
    requests_per_second: float
    output_tokens_per_second: float
    user_tokens_per_second: float
    ttft_s: float


def at_batch(r: ReplicaModel, load: Load, batch: int) -> BatchPoint:
    """The replica kept at `batch` sequences: its rate, and what each user sees."""
    context = load.prompt_tokens + load.output_tokens / 2  # average over a sequence's decode
    step = step_seconds(r, batch, context)
    prefill = prefill_seconds(r, load.prompt_tokens)
    out = load.output_tokens
    rate = 1 / (prefill + out * step / batch)
    user = out / (out * step + (batch - 1) * prefill)
    busy = min(rate * prefill, 0.99)  # share of the time spent on prefills
    wait = busy * prefill / (2 * (1 - busy))  # M/D/1: waiting for the prefills ahead
    return BatchPoint(batch, step, prefill, rate, rate * out, user, prefill + step + wait)


LimitedBy = Literal["KV cache", "batch limit", "tokens/s target", "TTFT target", "none"]


@dataclass(frozen=True)
class ReplicaEstimate:
    replica: ReplicaModel
    load: Load
    kv_concurrency: int
    batch_limit: int
    single: BatchPoint  # batch 1: the fastest a user can be served
    best: BatchPoint | None  # the largest batch that meets the targets (None: none does)
    limited_by: LimitedBy

    @property
    def meets_targets(self) -> bool:
        return self.best is not None


def _meets(point: BatchPoint, load: Load) -> tuple[bool, LimitedBy]:
    if (load.tokens_per_second_target is not None
            and point.user_tokens_per_second < load.tokens_per_second_target):
        return False, "tokens/s target"
    if load.ttft_target_s is not None and point.ttft_s > load.ttft_target_s:
        return False, "TTFT target"
    return True, "none"


def estimate_replica(r: ReplicaModel, load: Load) -> ReplicaEstimate:
    """The largest batch one replica can run while every user still gets the targets."""
    kv = kv_concurrency(r, load)
    limit = min(kv, r.batch_limit)
    single = at_batch(r, load, 1)
    if limit < 1:
        return ReplicaEstimate(r, load, kv, r.batch_limit, single, None, "KV cache")
    ok, why = _meets(single, load)
    if not ok:
        return ReplicaEstimate(r, load, kv, r.batch_limit, single, None, why)
    # Per-user speed falls and TTFT rises with the batch: search for the last batch that meets.
    low, high = 1, limit
    while low < high:
        mid = (low + high + 1) // 2
        if _meets(at_batch(r, load, mid), load)[0]:
            low = mid
        else:
            high = mid - 1
    best = at_batch(r, load, low)
    if low < limit:
        limited: LimitedBy = _meets(at_batch(r, load, low + 1), load)[1]
    else:
        limited = "KV cache" if kv <= r.batch_limit else "batch limit"
    return ReplicaEstimate(r, load, kv, r.batch_limit, single, best, limited)


@dataclass(frozen=True)
class CapacityPlan:
    estimate: ReplicaEstimate
    replicas: int | None  # None: one replica cannot meet the targets
    gpus: int | None
    planned_rate: float  # requests/s the replicas must carry: load x (1 + headroom)

    @property
    def capacity_rate(self) -> float:
        """What the planned replicas carry at the chosen batch, requests/s."""
        best = self.estimate.best
        return (self.replicas or 0) * (best.requests_per_second if best else 0.0)


def plan(r: ReplicaModel, load: Load) -> CapacityPlan:
    estimate = estimate_replica(r, load)
    planned = load.requests_per_second * (1 + load.headroom)
    if estimate.best is None:
        return CapacityPlan(estimate, None, None, planned)
    replicas = max(1, math.ceil(planned / estimate.best.requests_per_second - 1e-9))
    return CapacityPlan(estimate, replicas, replicas * r.tp * r.pp, planned)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def render_capacity(p: CapacityPlan, label: str) -> str:
    """The estimate, its arithmetic, and the replicas it leads to."""
    e, r, load = p.estimate, p.estimate.replica, p.estimate.load
    context = load.prompt_tokens + load.output_tokens / 2
    best = e.best
    batch = best.batch if best else 1
    read = weights_read_per_gpu(r, batch)
    kv_bytes = batch * context * r.kv_per_token_per_gpu
    moe = (f" (MoE: experts touched by {batch} tokens, {r.active_fraction:.1%} active each)"
           if r.active_fraction < 1 else "")
    flops_name = "fp8" if r.fp8_compute else "16-bit"
    tflops = r.flops / 1e12
    lines = [
        f"Capacity ESTIMATE for {label} (one replica = {r.tp * r.pp} GPU(s), tp {r.tp} x "
        f"pp {r.pp}), from datasheet figures; not a measurement",
        f"  load: {load.requests_per_second:,.3f} requests/s to plan for"
        + (f" ({load.requests_per_day:,.0f} requests/day / 86,400 s x peak factor "
           f"{load.peak_factor:g})" if load.requests_per_day else "")
        + ", "
        f"{load.prompt_tokens} prompt + {load.output_tokens} output tokens each"
        + (f", TTFT <= {load.ttft_target_s:g} s" if load.ttft_target_s else "")
        + (f", >= {load.tokens_per_second_target:g} tokens/s per user"
           if load.tokens_per_second_target else ""),
        f"  decode step at batch {batch}, per GPU: weights {read / 1e9:,.2f} GB{moe} + KV "
        f"{batch} x {context:,.0f} tokens x {r.kv_per_token_per_gpu / 1024:,.1f} KiB = "
        f"{kv_bytes / 1e9:,.2f} GB, read at {DECODE_BANDWIDTH_EFFICIENCY:.0%} of "
        f"{r.bandwidth / 1e9:,.0f} GB/s"
        + (f" x pp {r.pp}" if r.pp > 1 else "")
        + (f", + {2 * r.layers} all-reduces x {ALLREDUCE_SECONDS * 1e6:.0f} us"
           if r.tp > 1 else "")
        + f" = {_ms(best.step_s if best else e.single.step_s)}",
        f"  prefill: 2 x {r.active_params / 1e9:,.1f}B params x {load.prompt_tokens} tokens "
        f"/ ({r.tp} GPU(s) x {tflops:,.0f} TFLOPS {flops_name} x {PREFILL_MFU:.0%} MFU) = "
        f"{_ms(e.single.prefill_s)}",
        f"  batch 1: {e.single.user_tokens_per_second:,.1f} tokens/s per user, TTFT "
        f"{_ms(e.single.ttft_s)}, {e.single.requests_per_second:,.3f} requests/s per replica",
        f"  KV cache holds {e.kv_concurrency} sequences of "
        f"{load.prompt_tokens + load.output_tokens} tokens; engine batch limit {e.batch_limit}",
    ]
    if best is None:
        lines.append(f"  Verdict: one replica cannot meet the targets even at batch 1 "
                     f"({e.limited_by}); use more GPUs per replica (--tp), a faster GPU, or "
                     f"relax the target.")
        return "\n".join(lines)
    lines += [
        f"  largest batch that meets the targets: {best.batch} (limited by {e.limited_by}): "
        f"{best.user_tokens_per_second:,.1f} tokens/s per user, TTFT {_ms(best.ttft_s)}",
        f"  per replica: 1 / ({best.prefill_s:,.3f} s prefill + {load.output_tokens} x "
        f"{best.step_s:,.4f} s / {best.batch}) = {best.requests_per_second:,.3f} requests/s "
        f"= {best.output_tokens_per_second:,.0f} output tokens/s",
        f"  replicas: ceil({load.requests_per_second:,.3f} x (1 + {load.headroom:g} headroom) / "
        f"{best.requests_per_second:,.3f}) = {p.replicas} -> {p.gpus} GPU(s)",
        f"  Verdict: {p.replicas} replica(s), {p.gpus} GPU(s); they carry up to "
        f"{p.capacity_rate:,.2f} requests/s at the chosen batch.",
    ]
    return "\n".join(lines)


def capacity_json(p: CapacityPlan) -> dict[str, object]:
    e, best = p.estimate, p.estimate.best

    def point(b: BatchPoint) -> dict[str, float]:
        return {"batch": b.batch, "step_s": b.step_s, "prefill_s": b.prefill_s,
                "requests_per_second": b.requests_per_second,
                "output_tokens_per_second": b.output_tokens_per_second,
                "user_tokens_per_second": b.user_tokens_per_second, "ttft_s": b.ttft_s}

    r = e.replica
    return {
        "estimate": True,
        "assumptions": {"decode_bandwidth_efficiency": DECODE_BANDWIDTH_EFFICIENCY,
                        "prefill_mfu": PREFILL_MFU, "allreduce_seconds": ALLREDUCE_SECONDS},
        "replica": {"gpu": r.gpu.id, "tp": r.tp, "pp": r.pp, "gpus": r.tp * r.pp,
                    "memory_bandwidth_gbs": r.gpu.memory_bandwidth_gbs,
                    "tflops": r.flops / 1e12, "kv_concurrency": e.kv_concurrency,
                    "batch_limit": e.batch_limit},
        "load": {"requests_per_second": e.load.requests_per_second,
                 "prompt_tokens": e.load.prompt_tokens, "output_tokens": e.load.output_tokens,
                 "ttft_target_s": e.load.ttft_target_s,
                 "tokens_per_second_target": e.load.tokens_per_second_target,
                 "headroom": e.load.headroom},
        "batch_1": point(e.single),
        "chosen": point(best) if best else None,
        "limited_by": e.limited_by,
        "replicas": p.replicas,
        "gpus": p.gpus,
        "capacity_requests_per_second": p.capacity_rate,
        "capacity_requests_per_day": p.capacity_rate * SECONDS_PER_DAY,
    }



# What the doctor assumes of a request when it has no load to plan for (tools/size.py's
# defaults): the line it prints is a rate per replica, not a fleet plan.
DOCTOR_PROMPT_TOKENS, DOCTOR_OUTPUT_TOKENS = 1000, 500


def engine_batch_limit(sizing: SizingResult) -> int:
    """The engine's max_num_seqs for this sizing: the one given, else its default."""
    req = sizing.request
    return req.max_num_seqs or req.engine.default_max_num_seqs(
        is_large_gpu(req.gpu_memory_bytes, req.gpu_label))


def replica_summary(sizing: SizingResult, gpu: GpuSpec) -> str | None:
    """One line for the doctor: what one replica of this sizing carries at the concurrency it
    was sized for, estimated from the GPU's datasheet figures. None when the sizing does not
    fit or the catalog lacks the GPU's bandwidth or compute."""
    if not sizing.fits or gpu_figures_missing(gpu):
        return None
    batch_limit = engine_batch_limit(sizing)
    r = replica_model(sizing, gpu, batch_limit)
    load = Load(requests_per_second=1.0, prompt_tokens=DOCTOR_PROMPT_TOKENS,
                output_tokens=DOCTOR_OUTPUT_TOKENS)
    batch = max(1, min(sizing.request.concurrency, kv_concurrency(r, load), batch_limit))
    point = at_batch(r, load, batch)
    return (f"capacity ESTIMATE (datasheet figures, not a measurement): one replica at "
            f"{batch} concurrent request(s) of {load.prompt_tokens} + {load.output_tokens} "
            f"tokens carries about {point.requests_per_second:.2f} requests/s "
            f"({point.output_tokens_per_second:,.0f} output tokens/s), "
            f"{point.user_tokens_per_second:.0f} tokens/s and a first token in "
            f"{_ms(point.ttft_s)} per user; for a fleet plan: tools/size.py "
            "--requests-per-day N")
