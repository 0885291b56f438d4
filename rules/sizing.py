"""How much GPU memory a model needs, per GPU, and what fits when it does not.

Pure arithmetic on catalog facts; no I/O. The model of memory per GPU is vLLM's:

    usable  = gpu_memory_utilization x GPU memory          (vLLM default 0.9)
    needed  = weights share + runtime overhead + KV cache share

- weights share: checkpoint bytes at the chosen precision / (tensor-parallel x pipeline-parallel)
- runtime overhead: FIXED_OVERHEAD_BYTES (CUDA context, cuBLAS/NCCL workspaces, CUDA
  graphs) + ACTIVATION_FRACTION of the weights share (peak activations of the profiling
  forward pass, which grow with model width like the weights do). Both are estimates,
  named here once and printed with every result.
- KV cache per token: GQA 2 x layers x kv_heads x head_dim x kv_bytes; MLA
  (kv_lora_rank + qk_rope_head_dim) x layers x kv_bytes. Tensor parallelism splits GQA
  KV heads (a GPU holds at least one head: past kv_heads, heads are replicated); the MLA
  latent is one vector per token and is replicated on every tensor-parallel rank, so only
  pipeline parallelism (which splits layers) divides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from inventory.catalog import ModelSpec, Precision

GIB = 2**30
KIB = 2**10

PRECISIONS: tuple[Precision, ...] = ("bf16", "fp16", "fp8", "int8", "int4")
BYTES_PER_PARAM: dict[Precision, float] = {
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
}
# Scale storage on top of the quantised weights, as a fraction of them:
# - fp8: one fp32 scale per 128x128 block (DeepSeek's FP8 layout): 4 B / 16384 B.
# - int8: one 16-bit scale per output channel (W8A8 / bitsandbytes): < 0.1 %, left at 0.
# - int4: GPTQ/AWQ group size 128: a 16-bit scale and a 4-bit zero point per 128 weights
#   = 20 bits per 512 bits of weights = 3.9 %.
QUANT_SCALE_OVERHEAD: dict[Precision, float] = {
    "bf16": 0.0,
    "fp16": 0.0,
    "fp8": 4 / (128 * 128),
    "int8": 0.0,
    "int4": 20 / (128 * 4),
}
KvDtype = Literal["auto", "fp8"]
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM --gpu-memory-utilization default
FIXED_OVERHEAD_BYTES = int(1.5 * GIB)
ACTIVATION_FRACTION = 0.05
# The brief's rule of thumb for a 70B model on one card: batch 4 at fp16, 8 at int8.
RULE_OF_THUMB_70B: dict[Precision, int] = {"fp16": 4, "bf16": 4, "int8": 8}


class SizingInputError(ValueError):
    """The request itself is impossible (not merely too big): names the field and why."""

    def __init__(self, field_name: str, value: object, allowed: str) -> None:
        self.field_name, self.value, self.allowed = field_name, value, allowed
        super().__init__(f"{field_name}={value!r}: {allowed}")


def weights_bytes(model: ModelSpec, precision: Precision) -> int:
    """Bytes of weights in GPU memory at this precision, all GPUs together.

    At the checkpoint's own dtype this is the checkpoint size. Quantised precisions keep
    the input embedding and output head at 16 bit (AWQ, GPTQ and vLLM's embedding layer
    do), and add QUANT_SCALE_OVERHEAD on the rest.
    """
    bpp = BYTES_PER_PARAM[precision]
    if precision == model.native_dtype or (bpp == 2 and BYTES_PER_PARAM[model.native_dtype] == 2):
        return model.weights_bytes
    if bpp >= 2:
        return model.params_total * 2
    body = model.params_total - model.embedding_params
    return math.ceil(
        body * bpp * (1 + QUANT_SCALE_OVERHEAD[precision]) + model.embedding_params * 2
    )


def kv_bytes_per_token(model: ModelSpec, kv_dtype: KvDtype = "auto") -> int:
    """KV cache bytes one token occupies across the whole model (no parallelism)."""
    kv_bytes = 1 if kv_dtype == "fp8" else 2
    if model.attention == "mla":
        assert model.kv_lora_rank is not None and model.qk_rope_head_dim is not None
        return (model.kv_lora_rank + model.qk_rope_head_dim) * model.layers * kv_bytes
    return 2 * model.layers * model.kv_heads * model.head_dim * kv_bytes


def kv_bytes_per_token_per_gpu(
    model: ModelSpec, tp: int, pp: int, kv_dtype: KvDtype = "auto"
) -> int:
    """KV cache bytes one token occupies on the busiest GPU."""
    kv_bytes = 1 if kv_dtype == "fp8" else 2
    layers = math.ceil(model.layers / pp)
    if model.attention == "mla":
        assert model.kv_lora_rank is not None and model.qk_rope_head_dim is not None
        return (model.kv_lora_rank + model.qk_rope_head_dim) * layers * kv_bytes
    heads = math.ceil(model.kv_heads / tp)  # >= 1: replicated once tp > kv_heads
    return 2 * layers * heads * model.head_dim * kv_bytes


def runtime_overhead_bytes(weights_per_gpu: int) -> int:
    return FIXED_OVERHEAD_BYTES + int(ACTIVATION_FRACTION * weights_per_gpu)


def tp_candidates(model: ModelSpec, limit: int = 1024) -> list[int]:
    """Tensor-parallel sizes worth suggesting: powers of two dividing the attention heads."""
    sizes, tp = [], 1
    while tp <= min(limit, model.attention_heads):
        if model.attention_heads % tp == 0:
            sizes.append(tp)
        tp *= 2
    return sizes


@dataclass(frozen=True)
class SizingRequest:
    model: ModelSpec
    precision: Precision
    gpu_memory_bytes: int
    gpu_count: int
    context: int
    concurrency: int
    tp: int | None = None  # default: every GPU / pp
    pp: int = 1
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    kv_dtype: KvDtype = "auto"
    gpu_label: str = "GPU"

    @property
    def tensor_parallel(self) -> int:
        return self.tp if self.tp is not None else max(1, self.gpu_count // self.pp)


@dataclass(frozen=True)
class Alternative:
    """A change to the request that would fit, with the arithmetic that says so."""

    kind: Literal["precision", "tensor-parallel", "context", "concurrency"]
    change: str
    needed_per_gpu: int
    usable_per_gpu: int


@dataclass(frozen=True)
class SizingResult:
    request: SizingRequest
    tp: int
    pp: int
    weights_total: int
    weights_per_gpu: int
    overhead_per_gpu: int
    kv_per_token: int
    kv_per_token_per_gpu: int
    kv_per_gpu: int
    usable_per_gpu: int
    needed_per_gpu: int
    fits: bool
    shortfall_per_gpu: int  # 0 when it fits
    kv_budget_per_gpu: int  # usable - weights - overhead; negative when weights do not fit
    max_concurrency: int  # at the requested context
    max_context: int  # at the requested concurrency, capped by the model
    smallest_tp: int | None = None  # when it fits: fewest GPUs per replica that still fit
    alternatives: list[Alternative] = field(default_factory=list)  # when it does not fit

    @property
    def headroom_per_gpu(self) -> int:
        return self.usable_per_gpu - self.needed_per_gpu


def _validate(req: SizingRequest) -> None:
    m = req.model
    if req.gpu_count < 1:
        raise SizingInputError("gpu_count", req.gpu_count, "at least 1 GPU")
    if req.gpu_memory_bytes <= 0:
        raise SizingInputError("gpu_memory", req.gpu_memory_bytes, "a positive size")
    if not 0 < req.gpu_memory_utilization <= 1:
        raise SizingInputError(
            "gpu_memory_utilization", req.gpu_memory_utilization, "a fraction in (0, 1]"
        )
    if req.pp < 1 or req.pp > m.layers:
        raise SizingInputError("pp", req.pp, f"1..{m.layers} (the model has {m.layers} layers)")
    tp = req.tensor_parallel
    if tp < 1 or m.attention_heads % tp:
        divisors = [d for d in range(1, m.attention_heads + 1) if m.attention_heads % d == 0]
        raise SizingInputError(
            "tp", tp, f"a divisor of the {m.attention_heads} attention heads: {divisors}"
        )
    if tp * req.pp > req.gpu_count:
        raise SizingInputError(
            "tp", tp, f"tp x pp ({tp} x {req.pp}) must not exceed the {req.gpu_count} GPU(s)"
        )
    if not 1 <= req.context <= m.max_context:
        raise SizingInputError(
            "context", req.context, f"1..{m.max_context} (the model's max_position_embeddings)"
        )
    if req.concurrency < 1:
        raise SizingInputError("concurrency", req.concurrency, "at least 1 sequence")


def _arithmetic(req: SizingRequest) -> SizingResult:
    tp, pp = req.tensor_parallel, req.pp
    total = weights_bytes(req.model, req.precision)
    per_gpu = math.ceil(total / (tp * pp))
    overhead = runtime_overhead_bytes(per_gpu)
    per_token = kv_bytes_per_token(req.model, req.kv_dtype)
    per_token_gpu = kv_bytes_per_token_per_gpu(req.model, tp, pp, req.kv_dtype)
    kv = per_token_gpu * req.context * req.concurrency
    usable = int(req.gpu_memory_bytes * req.gpu_memory_utilization)
    needed = per_gpu + overhead + kv
    budget = usable - per_gpu - overhead
    max_conc = max(0, budget // (per_token_gpu * req.context)) if budget > 0 else 0
    max_ctx = max(0, budget // (per_token_gpu * req.concurrency)) if budget > 0 else 0
    return SizingResult(
        request=req,
        tp=tp,
        pp=pp,
        weights_total=total,
        weights_per_gpu=per_gpu,
        overhead_per_gpu=overhead,
        kv_per_token=per_token,
        kv_per_token_per_gpu=per_token_gpu,
        kv_per_gpu=kv,
        usable_per_gpu=usable,
        needed_per_gpu=needed,
        fits=needed <= usable,
        shortfall_per_gpu=max(0, needed - usable),
        kv_budget_per_gpu=budget,
        max_concurrency=int(max_conc),
        max_context=int(min(max_ctx, req.model.max_context)),
    )


def _alternatives(req: SizingRequest, base: SizingResult) -> list[Alternative]:
    found: list[Alternative] = []
    here = BYTES_PER_PARAM[req.precision]
    for precision in PRECISIONS:
        if BYTES_PER_PARAM[precision] >= here or (precision == "fp16" and req.precision == "bf16"):
            continue
        r = _arithmetic(replace(req, precision=precision))
        if r.fits:
            found.append(
                Alternative(
                    "precision", f"--precision {precision}", r.needed_per_gpu, r.usable_per_gpu
                )
            )
            break  # the least lossy precision that fits is the useful answer
    for tp in tp_candidates(req.model):
        if tp <= base.tp:
            continue
        gpus = max(req.gpu_count, tp * req.pp)
        r = _arithmetic(replace(req, tp=tp, gpu_count=gpus))
        if r.fits:
            more = f" ({gpus} GPUs; you have {req.gpu_count})" if gpus > req.gpu_count else ""
            found.append(
                Alternative(
                    "tensor-parallel", f"--tp {tp}{more}", r.needed_per_gpu, r.usable_per_gpu
                )
            )
            break
    if base.max_context >= 1:
        r = _arithmetic(replace(req, context=base.max_context))
        found.append(
            Alternative(
                "context", f"--context {base.max_context}", r.needed_per_gpu, r.usable_per_gpu
            )
        )
    if base.max_concurrency >= 1:
        r = _arithmetic(replace(req, concurrency=base.max_concurrency))
        found.append(
            Alternative(
                "concurrency",
                f"--concurrency {base.max_concurrency}",
                r.needed_per_gpu,
                r.usable_per_gpu,
            )
        )
    return found


def size(req: SizingRequest) -> SizingResult:
    """Size one request; raises SizingInputError when the request is impossible as stated."""
    _validate(req)
    base = _arithmetic(req)
    if not base.fits:
        return replace(base, alternatives=_alternatives(req, base))
    smallest = base.tp
    for tp in tp_candidates(req.model, limit=req.gpu_count // req.pp):
        if tp < smallest and _arithmetic(replace(req, tp=tp)).fits:
            smallest = tp
            break
    return replace(base, smallest_tp=smallest)


def _gib(n: int) -> str:
    return f"{n / GIB:,.2f}"


def render_sizing(result: SizingResult) -> str:
    """The arithmetic as a table, then the verdict and what to change."""
    req, m = result.request, result.request.model
    kv_name = "fp8" if req.kv_dtype == "fp8" else "bf16/fp16"
    quant = ""
    if BYTES_PER_PARAM[req.precision] < 2 and req.precision != m.native_dtype:
        quant = "; embeddings+head kept 16-bit"
    split = "MLA latent, replicated per tp rank" if m.attention == "mla" else "KV heads split by tp"
    rows = [
        ("GPU memory", f"{req.gpu_label}", req.gpu_memory_bytes),
        (
            "usable",
            f"x gpu_memory_utilization {req.gpu_memory_utilization:g}",
            result.usable_per_gpu,
        ),
        (
            "weights",
            f"{result.weights_total / 1e9:,.1f} GB at {req.precision} "
            f"({BYTES_PER_PARAM[req.precision]:g} B/param{quant}) / {result.tp * result.pp} GPUs",
            result.weights_per_gpu,
        ),
        (
            "runtime overhead",
            f"{FIXED_OVERHEAD_BYTES / GIB:g} GiB fixed + {ACTIVATION_FRACTION:.0%} of weights",
            result.overhead_per_gpu,
        ),
        (
            "KV cache",
            f"{result.kv_per_token / KIB:,.1f} KiB/token -> "
            f"{result.kv_per_token_per_gpu / KIB:,.1f} KiB/token/GPU ({split}) "
            f"x {req.context} tokens x {req.concurrency} seqs",
            result.kv_per_gpu,
        ),
        ("needed", "weights + overhead + KV cache", result.needed_per_gpu),
    ]
    lines = [
        f"Sizing {m.id} ({m.architecture}, {m.params_total / 1e9:,.1f}B params) at {req.precision}",
        f"on {req.gpu_count} x {req.gpu_label}: tensor-parallel {result.tp} x pipeline-parallel "
        f"{result.pp}, context {req.context}, {req.concurrency} concurrent sequences, KV {kv_name}",
        "",
        f"  {'per GPU':<18}{'GiB':>9}   how",
    ]
    for label, detail, value in rows:
        lines.append(f"  {label:<18}{_gib(value):>9}   {detail}")
    lines.append("")
    if result.fits:
        lines.append(f"Verdict: FITS, {_gib(result.headroom_per_gpu)} GiB per GPU to spare.")
        if result.smallest_tp is not None and result.smallest_tp < result.tp:
            lines.append(
                f"  Smallest tensor-parallel size that fits: {result.smallest_tp} "
                f"(frees GPUs for more replicas)."
            )
    else:
        lines.append(
            f"Verdict: DOES NOT FIT: short by {_gib(result.shortfall_per_gpu)} GiB per GPU "
            f"(needs {_gib(result.needed_per_gpu)} of {_gib(result.usable_per_gpu)} GiB usable)."
        )
        if result.kv_budget_per_gpu <= 0:
            lines.append("  The weights and runtime overhead alone exceed the usable memory.")
        if result.alternatives:
            lines.append("  Any one of these would fit:")
            for alt in result.alternatives:
                lines.append(
                    f"    {alt.change:<28} needs {_gib(alt.needed_per_gpu)} of "
                    f"{_gib(alt.usable_per_gpu)} GiB per GPU"
                )
        else:
            lines.append(
                "  No single change in precision, tensor parallelism, context or concurrency fits."
            )
    lines.append(
        f"  KV budget per GPU: {_gib(max(0, result.kv_budget_per_gpu))} GiB -> at most "
        f"{result.max_concurrency} concurrent sequences of {req.context} tokens."
    )
    lines.extend(_rule_of_thumb(result))
    return "\n".join(lines)


def _rule_of_thumb(result: SizingResult) -> list[str]:
    rule = RULE_OF_THUMB_70B.get(result.request.precision)
    if rule is None:
        return []
    return [
        f"  Rule of thumb (brief): a 70B model on one card serves batch {rule} at "
        f"{result.request.precision}; derived for this setup: {result.max_concurrency}.",
        "    The rule ignores context length and assumes the weights already fit with room to",
        "    spare; what halving the weight bytes really buys is KV-cache space, shown above.",
    ]
