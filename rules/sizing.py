"""How much GPU memory a model needs, per GPU, and what fits when it does not.

Pure arithmetic on catalog facts; no I/O. The model is what vLLM does at start-up: it
profiles one forward pass, then gives the KV cache whatever is left of its budget:

    budget  = gpu_memory_utilization x the memory CUDA reports
    KV      = budget - weights - activation peak of the profiling run - non-torch memory

- CUDA reports less than nvidia-smi's memory.total (the driver keeps some): about 0.4-0.9 GiB
  on the cards of the calibration table, taken as max(DRIVER_RESERVED_MIN_BYTES,
  DRIVER_RESERVED_FRACTION of the total).
- weights: checkpoint bytes at the chosen precision / (tensor-parallel x pipeline-parallel);
  int8/int4/fp8 keep the input embedding and output head at 16 bit.
- activation peak: the profiling run pushes a batch of `profile_tokens` through the model
  (max_num_batched_tokens; a whole max_model_len prefill where chunked prefill is off, which
  is what sinks 24 GB cards at long context), whose MLP holds about 3 x (hidden + intermediate
  / tp) 16-bit values per token, plus the sampler's fp32 logits for max_num_seqs sequences
  (held several times over by V1 releases from 0.11).
- non-torch memory: CUDA context and cuBLAS workspaces, plus NCCL buffers at tp > 1.
- CUDA graphs are captured after the KV cache is allocated, out of the (1 - utilization)
  headroom, in every release these figures cover, so they do not reduce the KV cache.
- KV cache per token: GQA 2 x layers x kv_heads x head_dim x kv_bytes; MLA
  (kv_lora_rank + qk_rope_head_dim) x layers x kv_bytes. Tensor parallelism splits GQA
  KV heads (a GPU holds at least one head: past kv_heads, heads are replicated); the MLA
  latent is one vector per token and is replicated on every tensor-parallel rank, so only
  pipeline parallelism (which splits layers) divides it. vLLM hands it out in blocks of
  BLOCK_SIZE tokens.

The constants are calibrated against vLLM's own start-up logs in public reports
(tests/fixtures/sizing/vllm_kv_points.toml; tests/unit/test_sizing_calibration.py prints
predicted against logged): the predicted KV cache is never more than 3 % above vLLM's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from packaging.version import InvalidVersion, Version

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
MIB = 2**20
# Calibrated constants (see the module docstring and the calibration table).
DRIVER_RESERVED_MIN_BYTES = 600 * MIB
DRIVER_RESERVED_FRACTION = 0.01
NON_TORCH_BYTES = int(0.35 * GIB)  # CUDA context, cuBLAS workspaces (logged: 0.13-0.35 GiB)
NCCL_EXTRA_BYTES = int(0.2 * GIB)  # tp > 1 (logged non-torch at tp 2: 0.25-0.55 GiB)
ACTIVATION_VALUES_PER_TOKEN = 3  # x (hidden + intermediate / tp), 16-bit, at the MLP's peak
SAMPLER_LOGIT_BYTES = 4  # fp32 logits, one row per sequence of the profiling batch
BLOCK_SIZE = 16  # tokens per KV block (vLLM's default on CUDA)
CHUNKED_PREFILL_TOKENS = 2048  # max_num_batched_tokens where chunked prefill is on
LONG_CONTEXT = 32768  # V0 turns chunked prefill on by itself above this max_model_len
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


def caches_latent(model: ModelSpec, engine: EngineProfile | None) -> bool:
    """Whether the engine caches an MLA model's latent (None: the model's own layout)."""
    return model.attention == "mla" and (engine is None or engine.mla_latent)


def kv_layout(model: ModelSpec, engine: EngineProfile | None = None) -> str:
    """What one token of the KV cache is, in words (the sizing output says which)."""
    if model.attention != "mla":
        return "KV heads split by tp"
    if caches_latent(model, engine):
        return "MLA latent, replicated per tp rank"
    assert engine is not None
    return (f"no MLA in {engine.label}: full K and V of {model.attention_heads} heads "
            f"x {engine.mla_fallback_head_size} (padded), split by tp")


def kv_bytes_per_token(model: ModelSpec, kv_dtype: KvDtype = "auto",
                       engine: EngineProfile | None = None) -> int:
    """KV cache bytes one token occupies across the whole model (no parallelism)."""
    return kv_bytes_per_token_per_gpu(model, 1, 1, kv_dtype, engine)


def kv_bytes_per_token_per_gpu(
    model: ModelSpec, tp: int, pp: int, kv_dtype: KvDtype = "auto",
    engine: EngineProfile | None = None,
) -> int:
    """KV cache bytes one token occupies on the busiest GPU.

    An MLA model where the engine caches the latent (vLLM >= 0.7.1, SGLang): one vector of
    kv_lora_rank + qk_rope_head_dim per layer, the same on every tensor-parallel rank. Where
    it does not (vLLM <= 0.7.0), the engine caches K and V of every attention head at its
    padded head size, and tensor parallelism splits the heads like any multi-head attention.
    """
    kv_bytes = 1 if kv_dtype == "fp8" else 2
    layers = math.ceil(model.layers / pp)
    if caches_latent(model, engine):
        assert model.kv_lora_rank is not None and model.qk_rope_head_dim is not None
        return (model.kv_lora_rank + model.qk_rope_head_dim) * layers * kv_bytes
    if model.attention == "mla":
        assert engine is not None
        heads = math.ceil(model.attention_heads / tp)
        return 2 * layers * heads * engine.mla_fallback_head_size * kv_bytes
    heads = math.ceil(model.kv_heads / tp)  # >= 1: replicated once tp > kv_heads
    return 2 * layers * heads * model.head_dim * kv_bytes


# vLLM caches DeepSeek's MLA latent from 0.7.1: vllm/attention/backends/mla/ and
# ModelConfig.use_mla (get_head_size = kv_lora_rank + qk_rope_head_dim, one KV head) first
# ship in the 0.7.1 wheel; 0.7.0's and 0.6.6.post1's config.py pad the 192-wide heads to 256
# for FlashAttention ("we need to pad head_size 192 to 256") and cache K and V of every head
# (inventory/pins.toml, set r535-fwdcompat-mla, has the evidence).
VLLM_MLA_CACHE = (0, 7, 1)
MLA_FALLBACK_HEAD_SIZE = 256
# Block-wise FP8 (config.json quantization_config.weight_block_size, DeepSeek-V3/R1's
# 128x128) runs only on FP8 tensor cores (compute capability 8.9: Ada, Hopper) in every
# release gpufleet pins: vLLM 0.6.6.post1, 0.7.1 and 0.7.3 fp8.py and SGLang 0.4.1.post7
# fp8.py set use_marlin = False "Marlin doesn't support block-wise fp8" (vllm-project/vllm
# #13885: R1's FP8 does not run on Ampere).
BLOCK_FP8_MIN_COMPUTE_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class EngineProfile:
    """What sizing must know about one engine release: how it budgets memory at start-up (what
    its profiling run pushes through the model, how much of the sampler's logits it holds at
    the peak), how it caches MLA and which GPUs its FP8 kernels run on. The budget is
    vLLM's; SGLang is budgeted as the pin set's vLLM would be (engine_label names it)."""

    version: str
    v1: bool  # the V1 engine (0.8 and later): chunked prefill always on
    sampler_copies: int  # fp32 logit-sized buffers held at the sampler's peak
    auto_chunked_prefill: bool  # V0 turns chunked prefill on above LONG_CONTEXT
    fp8_min_compute_capability: tuple[int, int]  # Ada/Hopper; Ampere via Marlin from 0.5
    mla_latent: bool = True  # caches an MLA model's latent (else full K/V, padded heads)
    mla_fallback_head_size: int = MLA_FALLBACK_HEAD_SIZE
    block_fp8_min_compute_capability: tuple[int, int] = BLOCK_FP8_MIN_COMPUTE_CAPABILITY
    engine_label: str = ""  # "SGLang 0.4.1.post7" where another engine serves

    @property
    def label(self) -> str:
        return self.engine_label or f"vLLM {self.version}"

    def runs(self, precision: Precision, compute_capability: str | None,
             block_fp8: bool = False) -> bool:
        """Whether this release serves `precision` on a GPU of that compute capability:
        bf16 needs Ampere (8.0), int8/int4 kernels Turing (7.5), fp8 per release, and a
        block-wise FP8 checkpoint (``block_fp8``) FP8 tensor cores."""
        if compute_capability is None:
            return True  # unknown GPU: not held against it
        major, minor = (int(part) for part in compute_capability.split(".")[:2])
        fp8 = self.block_fp8_min_compute_capability if block_fp8 else \
            self.fp8_min_compute_capability
        needed = {"bf16": (8, 0), "int8": (7, 5), "int4": (7, 5),
                  "fp8": fp8}.get(precision, (7, 0))
        return (major, minor) >= needed

    def profile_tokens(self, max_model_len: int, large_gpu: bool,
                       max_num_batched_tokens: int | None = None) -> int:
        """Tokens of the profiling forward pass (vLLM's max_num_batched_tokens)."""
        if max_num_batched_tokens is not None:
            return max_num_batched_tokens
        if self.v1:  # H100/H200-class GPUs get the larger default
            return 8192 if large_gpu else CHUNKED_PREFILL_TOKENS
        if self.auto_chunked_prefill and max_model_len > LONG_CONTEXT:
            return CHUNKED_PREFILL_TOKENS
        return max(max_model_len, CHUNKED_PREFILL_TOKENS)  # one whole prefill

    def default_max_num_seqs(self, large_gpu: bool) -> int:
        return 1024 if self.v1 and large_gpu else 256


def engine_profile(version: str, engine: str = "vllm", vllm_version: str | None = None
                   ) -> EngineProfile:
    """The profile of a vLLM release ("0.4.2", "v0.6.6.post1"); an unreadable version gets
    the most conservative one (0.11's, with the largest sampler peak). For SGLang
    (``engine="sglang"``, ``version`` its release): the budget of ``vllm_version`` (the pin
    set's vLLM), with SGLang's MLA cache (0.4.1's model_runner: MLATokenToKVPool)."""
    if engine == "sglang":
        base = engine_profile(vllm_version or "0.4.2")
        return replace(base, mla_latent=True, engine_label=f"SGLang {version}")
    try:
        release = Version(version.lstrip("v")).release
    except InvalidVersion:
        release = (0, 11)
    return EngineProfile(
        version=version,
        v1=release >= (0, 8),
        # Calibrated: 0.11 releases on H100/H200 hold ~4 GiB more at the sampler's peak
        # than 0.10 did (the llm-d and H200 points of the table).
        sampler_copies=8 if release >= (0, 11) else 1,
        auto_chunked_prefill=release >= (0, 5),
        fp8_min_compute_capability=(8, 0) if release >= (0, 5) else (8, 9),
        mla_latent=release >= VLLM_MLA_CACHE,
    )


def block_fp8(model: ModelSpec, precision: Precision) -> bool:
    """The weights served are the checkpoint's own block-wise FP8."""
    return precision == "fp8" and model.native_dtype == "fp8" and \
        model.weight_block_size is not None


def kernel_problem(engine: EngineProfile, model: ModelSpec, precision: Precision,
                   compute_capability: str | None) -> str | None:
    """Why the engine release cannot run these weights on that GPU (None: it can)."""
    block = block_fp8(model, precision)
    if engine.runs(precision, compute_capability, block):
        return None
    if block:
        need = ".".join(str(p) for p in engine.block_fp8_min_compute_capability)
        size = "x".join(str(n) for n in model.weight_block_size or ())
        return (f"{engine.label} cannot run {model.id}'s block-wise FP8 weights ({size} "
                f"blocks) on compute capability {compute_capability}: its FP8 layers have no "
                "Marlin path for block-wise FP8 (fp8.py: \"Marlin doesn't support block-wise "
                f"fp8\"); they need compute capability >= {need}")
    return (f"{engine.label} has no {precision} kernels for compute capability "
            f"{compute_capability}")


DEFAULT_ENGINE = engine_profile("0.4.2")  # the default pin set's vLLM
# H100/H200-class GPUs: V1 picks larger batch defaults for them (not for A100s).
_LARGE_GPU_MIN_BYTES = 70 * GIB


def is_large_gpu(memory_bytes: int, label: str) -> bool:
    return memory_bytes >= _LARGE_GPU_MIN_BYTES and "a100" not in label.lower()


def cuda_visible_bytes(nvidia_smi_total: int) -> int:
    """What CUDA (and so vLLM) reports as the device's total memory."""
    reserved = max(DRIVER_RESERVED_MIN_BYTES, int(nvidia_smi_total * DRIVER_RESERVED_FRACTION))
    return nvidia_smi_total - reserved


def activation_peak_bytes(model: ModelSpec, tp: int, tokens: int, seqs: int,
                          sampler_copies: int) -> int:
    """Peak of the profiling run on one GPU: the MLP's activations for `tokens` tokens plus
    the sampler's fp32 logits for `seqs` sequences. A MoE model's dense-layer intermediate
    size bounds its fused-expert buffers (top-k x expert width is smaller)."""
    intermediate = model.intermediate_size or 4 * model.hidden_size
    per_token = ACTIVATION_VALUES_PER_TOKEN * (model.hidden_size + intermediate / tp) * 2
    sampler = seqs * model.vocab_size * SAMPLER_LOGIT_BYTES * sampler_copies
    return int(tokens * per_token + sampler)


def non_torch_bytes(tp: int) -> int:
    return NON_TORCH_BYTES + (NCCL_EXTRA_BYTES if tp > 1 else 0)


def tensor_parallel_sizes(model: ModelSpec) -> list[int]:
    """Tensor-parallel sizes vLLM can run the model with.

    The attention heads must split evenly over the GPUs; with grouped-query attention the KV
    heads must too, or else be replicated a whole number of times (vLLM's QKVParallelLinear
    asserts either). MLA keeps one latent per token, replicated on every rank.
    """
    heads, kv_heads = model.attention_heads, model.kv_heads
    sizes = [tp for tp in range(1, heads + 1) if heads % tp == 0]
    if model.attention == "gqa":
        sizes = [tp for tp in sizes if kv_heads % tp == 0 or tp % kv_heads == 0]
    return sizes


def tp_candidates(model: ModelSpec, limit: int = 1024) -> list[int]:
    """Tensor-parallel sizes worth suggesting: the powers of two vLLM can run."""
    return [tp for tp in tensor_parallel_sizes(model) if tp <= limit and tp & (tp - 1) == 0]


@dataclass(frozen=True)
class SizingRequest:
    model: ModelSpec
    precision: Precision
    gpu_memory_bytes: int  # per GPU, as nvidia-smi reports it (memory.total)
    gpu_count: int
    context: int  # max_model_len
    concurrency: int  # sequences that must fit at full context at once
    tp: int | None = None  # default: every GPU / pp
    pp: int = 1
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    kv_dtype: KvDtype = "auto"
    gpu_label: str = "GPU"
    engine: EngineProfile = DEFAULT_ENGINE
    max_num_seqs: int | None = None  # the engine's batch limit (None: its default)
    max_num_batched_tokens: int | None = None  # None: the engine's default
    compute_capability: str | None = None  # "8.6": decides which precisions can be suggested

    @property
    def tensor_parallel(self) -> int:
        return self.tp if self.tp is not None else max(1, self.gpu_count // self.pp)


@dataclass(frozen=True)
class Alternative:
    """A change to the request that fits, checked by sizing the changed request again."""

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
    cuda_visible_per_gpu: int  # what CUDA reports: nvidia-smi's total less the driver's share
    profile_tokens: int  # tokens of the engine's profiling forward pass
    activation_per_gpu: int  # peak of that pass, sampler included
    non_torch_per_gpu: int
    kv_per_token: int
    kv_per_token_per_gpu: int
    kv_per_gpu: int  # what the requested context x concurrency occupies
    usable_per_gpu: int  # the engine's budget: utilization x cuda_visible
    needed_per_gpu: int
    fits: bool
    shortfall_per_gpu: int  # 0 when it fits
    kv_budget_per_gpu: int  # usable - weights - overhead; negative when weights do not fit
    kv_tokens: int  # the KV cache's capacity in tokens, whole blocks (what vLLM logs)
    max_concurrency: int  # at the requested context
    max_context: int = 0  # at the requested concurrency, capped by the model (size() fills it)
    smallest_tp: int | None = None  # when it fits: fewest GPUs per replica that still fit
    alternatives: list[Alternative] = field(default_factory=list)  # when it does not fit
    unsupported: str | None = None  # the engine has no kernels for the weights on the GPU

    @property
    def overhead_per_gpu(self) -> int:
        """Everything besides weights and KV cache inside the engine's budget."""
        return self.activation_per_gpu + self.non_torch_per_gpu

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
    sizes = tensor_parallel_sizes(m)
    if tp not in sizes:
        kv = (f" (and its {m.kv_heads} KV heads, or be a multiple of them)"
              if m.attention == "gqa" else "")
        raise SizingInputError(
            "tp", tp, f"must divide the {m.attention_heads} attention heads of {m.id}{kv}; "
            f"allowed: {', '.join(str(s) for s in sizes)}"
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


def _blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


def _arithmetic(req: SizingRequest) -> SizingResult:
    tp, pp = req.tensor_parallel, req.pp
    large = is_large_gpu(req.gpu_memory_bytes, req.gpu_label)
    total = weights_bytes(req.model, req.precision)
    per_gpu = math.ceil(total / (tp * pp))
    tokens = req.engine.profile_tokens(req.context, large, req.max_num_batched_tokens)
    seqs = req.max_num_seqs or req.engine.default_max_num_seqs(large)
    activation = activation_peak_bytes(req.model, tp, tokens, seqs, req.engine.sampler_copies)
    non_torch = non_torch_bytes(tp)
    per_token = kv_bytes_per_token(req.model, req.kv_dtype, req.engine)
    per_token_gpu = kv_bytes_per_token_per_gpu(req.model, tp, pp, req.kv_dtype, req.engine)
    block = BLOCK_SIZE * per_token_gpu
    kv = req.concurrency * _blocks(req.context) * block  # vLLM allocates whole blocks
    visible = cuda_visible_bytes(req.gpu_memory_bytes)
    usable = int(visible * req.gpu_memory_utilization)
    needed = per_gpu + activation + non_torch + kv
    budget = usable - per_gpu - activation - non_torch
    blocks = max(0, budget // block)
    return SizingResult(
        request=req,
        tp=tp,
        pp=pp,
        weights_total=total,
        weights_per_gpu=per_gpu,
        cuda_visible_per_gpu=visible,
        profile_tokens=tokens,
        activation_per_gpu=activation,
        non_torch_per_gpu=non_torch,
        kv_per_token=per_token,
        kv_per_token_per_gpu=per_token_gpu,
        kv_per_gpu=kv,
        usable_per_gpu=usable,
        needed_per_gpu=needed,
        fits=needed <= usable,
        shortfall_per_gpu=max(0, needed - usable),
        kv_budget_per_gpu=budget,
        kv_tokens=int(blocks * BLOCK_SIZE),
        max_concurrency=int(blocks // _blocks(req.context)),
    )


# Suggestions keep the calibration's bound in hand: the sizing may be up to this much
# optimistic about the KV cache, so a suggested context or batch leaves that much unused.
SUGGESTION_MARGIN = 0.03


def _fits(result: SizingResult, margin: float = 0.0) -> bool:
    return result.kv_per_gpu <= result.kv_budget_per_gpu * (1 - margin)


def _max_context(req: SizingRequest, margin: float = 0.0) -> int:
    """The longest context that fits at the requested concurrency (0: none). The profiling
    run can grow with the context, so each candidate is sized again, not extrapolated."""
    low, high = 0, req.model.max_context
    while low < high:
        mid = (low + high + 1) // 2
        if _fits(_arithmetic(replace(req, context=mid)), margin):
            low = mid
        else:
            high = mid - 1
    return low


def _max_concurrency(result: SizingResult, margin: float = 0.0) -> int:
    budget = result.kv_budget_per_gpu * (1 - margin)
    per_sequence = _blocks(result.request.context) * BLOCK_SIZE * result.kv_per_token_per_gpu
    return max(0, int(budget // per_sequence))


def _alternatives(req: SizingRequest, base: SizingResult) -> list[Alternative]:
    """Single changes that fit. Each is the changed request sized again (and validated as the
    engine would), so a suggestion never fails vLLM's own start-up check."""
    candidates: list[tuple[Literal["precision", "tensor-parallel", "context", "concurrency"],
                           str, SizingRequest]] = []
    here = BYTES_PER_PARAM[req.precision]
    for precision in PRECISIONS:
        if BYTES_PER_PARAM[precision] >= here or (precision == "fp16" and req.precision == "bf16"):
            continue
        if not req.engine.runs(precision, req.compute_capability,
                               block_fp8(req.model, precision)):
            continue
        changed = replace(req, precision=precision)
        if _arithmetic(changed).fits:
            checkpoint = " (an AWQ/GPTQ checkpoint)" if precision in ("int8", "int4") else ""
            candidates.append(("precision", f"--precision {precision}{checkpoint}", changed))
            break  # the least lossy precision that fits is the useful answer
    for tp in tp_candidates(req.model):
        if tp <= base.tp:
            continue
        gpus = max(req.gpu_count, tp * req.pp)
        changed = replace(req, tp=tp, gpu_count=gpus)
        if _arithmetic(changed).fits:
            more = f" ({gpus} GPUs; you have {req.gpu_count})" if gpus > req.gpu_count else ""
            candidates.append(("tensor-parallel", f"--tp {tp}{more}", changed))
            break
    context = _max_context(req, SUGGESTION_MARGIN)
    if context >= 1:
        candidates.append(("context", f"--context {context}", replace(req, context=context)))
    sequences = _max_concurrency(base, SUGGESTION_MARGIN)
    if sequences >= 1:
        candidates.append(("concurrency", f"--concurrency {sequences}",
                           replace(req, concurrency=sequences)))
    found = []
    for kind, change, changed in candidates:
        _validate(changed)
        result = _arithmetic(changed)
        if result.fits and result.kv_tokens >= changed.context:
            found.append(Alternative(kind, change, result.needed_per_gpu, result.usable_per_gpu))
    return found


def _kernel_alternatives(req: SizingRequest) -> list[Alternative]:
    """Other precisions the engine runs on this GPU and that fit as requested."""
    found = []
    for precision in PRECISIONS:
        if precision == req.precision or not req.engine.runs(
                precision, req.compute_capability, block_fp8(req.model, precision)):
            continue
        result = _arithmetic(replace(req, precision=precision))
        if result.fits:
            checkpoint = (" (an AWQ/GPTQ checkpoint)" if precision in ("int8", "int4") else
                          " (the checkpoint converted)")
            found.append(Alternative("precision", f"--precision {precision}{checkpoint}",
                                     result.needed_per_gpu, result.usable_per_gpu))
    return found


def size(req: SizingRequest) -> SizingResult:
    """Size one request; raises SizingInputError when the request is impossible as stated.
    Weights the engine has no kernels for on the GPU do not fit, whatever the memory says."""
    _validate(req)
    problem = kernel_problem(req.engine, req.model, req.precision, req.compute_capability)
    if problem is not None:
        base = _arithmetic(req)
        return replace(base, fits=False, unsupported=problem,
                       alternatives=_kernel_alternatives(req))
    base = replace(_arithmetic(req), max_context=_max_context(req))
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
    split = kv_layout(m, req.engine)
    large = is_large_gpu(req.gpu_memory_bytes, req.gpu_label)
    seqs = req.max_num_seqs or req.engine.default_max_num_seqs(large)
    copies = f" x {req.engine.sampler_copies}" if req.engine.sampler_copies > 1 else ""
    rows = [
        ("GPU memory", f"{req.gpu_label}", req.gpu_memory_bytes),
        ("CUDA sees", "less the driver's share", result.cuda_visible_per_gpu),
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
            "activation peak",
            f"{req.engine.label} profiling pass: {result.profile_tokens} tokens + "
            f"sampler {seqs} seqs x {m.vocab_size} fp32{copies}",
            result.activation_per_gpu,
        ),
        ("non-torch", "CUDA context, cuBLAS" + (", NCCL" if result.tp > 1 else ""),
         result.non_torch_per_gpu),
        (
            "KV cache",
            f"{result.kv_per_token / KIB:,.1f} KiB/token -> "
            f"{result.kv_per_token_per_gpu / KIB:,.1f} KiB/token/GPU ({split}) "
            f"x {req.context} tokens x {req.concurrency} seqs",
            result.kv_per_gpu,
        ),
        ("needed", "weights + activation + non-torch + KV cache", result.needed_per_gpu),
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
    if result.unsupported:
        lines.append(f"Verdict: CANNOT RUN: {result.unsupported}.")
        lines.append("  Other GPUs, or one of these precisions on these GPUs:"
                     if result.alternatives else "  Use other GPUs.")
        for alt in result.alternatives:
            lines.append(f"    {alt.change:<40} needs {_gib(alt.needed_per_gpu)} of "
                         f"{_gib(alt.usable_per_gpu)} GiB per GPU")
        return "\n".join(lines)
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
        f"  KV cache: {_gib(max(0, result.kv_budget_per_gpu))} GiB per GPU = "
        f"{result.kv_tokens:,} tokens -> at most {result.max_concurrency} concurrent sequences "
        f"of {req.context} tokens; at {req.concurrency}, a context of up to "
        f"{result.max_context:,} tokens."
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


@dataclass(frozen=True)
class Configuration:
    """The fewest GPUs of one kind that serve a request, and the sizing that says so."""

    gpu_label: str
    gpu_count: int
    result: SizingResult


def serving_configurations(base: SizingRequest, gpus: Mapping[str, tuple[int, str | None]],
                           max_gpus: int = 8) -> list[Configuration]:
    """For each GPU (label -> (memory.total bytes, compute capability)), the fewest of them
    (a tensor-parallel size vLLM can run, up to max_gpus) that fit `base`, least memory in all
    first. GPUs that cannot run the precision, or that do not fit even max_gpus, are left out."""
    found = []
    for label, (memory, capability) in gpus.items():
        if not base.engine.runs(base.precision, capability, block_fp8(base.model, base.precision)):
            continue
        for tp in tp_candidates(base.model, limit=max_gpus):
            request = replace(base, gpu_memory_bytes=memory, gpu_count=tp * base.pp, tp=tp,
                              gpu_label=label, compute_capability=capability)
            result = _arithmetic(request)
            if result.fits:
                found.append(Configuration(label, tp * base.pp, result))
                break
    return sorted(found, key=lambda c: (c.gpu_count * c.result.request.gpu_memory_bytes,
                                        c.gpu_label))


def render_model_needs(base: SizingRequest, configurations: list[Configuration]) -> str:
    """What a model needs, without any GPU at hand: weights, KV cache per token, and the GPU
    configurations that would serve it."""
    m, req = base.model, base
    per_token = kv_bytes_per_token(m, req.kv_dtype, req.engine)
    lines = [
        f"What {m.id} needs at {req.precision}, context {req.context}, "
        f"{req.concurrency} concurrent sequence(s) ({req.engine.label}):",
        f"  weights:          {weights_bytes(m, req.precision) / 1e9:,.1f} GB "
        f"({weights_bytes(m, req.precision) / GIB:,.1f} GiB) across all GPUs",
        f"  KV cache:         {per_token / KIB:,.1f} KiB per token ({kv_layout(m, req.engine)}), "
        f"{per_token * req.context * req.concurrency / GIB:,.2f} GiB for the requested sequences",
    ]
    if not configurations:
        lines.append("  no catalog GPU serves it on up to 8 GPUs")
        return "\n".join(lines)
    lines.append("  GPU configurations that would serve it (fewest GPUs of each kind):")
    for config in configurations:
        r = config.result
        lines.append(
            f"    {config.gpu_count} x {config.gpu_label:<28} tp {r.tp}: "
            f"{_gib(r.needed_per_gpu)} of {_gib(r.usable_per_gpu)} GiB per GPU, "
            f"up to {r.max_concurrency} sequences of {req.context} tokens")
    return "\n".join(lines)
