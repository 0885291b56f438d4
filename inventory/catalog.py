"""The model and GPU catalogs: typed, validated, read from `inventory/catalog/*.toml`.

`ModelSpec` is also the shape a fleet file uses to declare a model of its own, so a
user's model is validated exactly like a catalog one. Lookups fail with the list of
known ids, because the usual mistake is a typo.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inventory.toml import TOMLDecodeError, load_toml

CATALOG_DIR = Path(__file__).with_name("catalog")

Precision = Literal["bf16", "fp16", "fp8", "int8", "int4"]
NativeDtype = Literal["bf16", "fp16", "fp8"]


# The hub's repository id (huggingface_hub's validate_repo_id), always with its owner.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
HUB_REPO = re.compile(rf"{_HUB_PART}/{_HUB_PART}")
HUB_REPO_MAX = 96


class CatalogError(ValueError):
    """A catalog file is malformed, or a lookup named something the catalog lacks."""


class ModelSpec(BaseModel):
    """One model: what sizing and compatibility checks need to know about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)
    # OWNER/NAME on the hub. It becomes a URL path on the hub and the name of a record on the
    # host, so it follows the hub's own repository-id rule (no '.' or '..' parts).
    hub_repo: str
    architecture: str  # config.json "architectures"[0], e.g. "Qwen2ForCausalLM"
    params_total: int = Field(gt=0)
    params_active: int | None = Field(default=None, gt=0)  # MoE: parameters used per token
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    attention_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    # config.json intermediate_size (the MLP width; for MoE models the dense layers'), when known.
    intermediate_size: int | None = Field(default=None, gt=0)
    attention: Literal["gqa", "mla"] = "gqa"  # GQA also covers MHA (kv_heads == heads)
    kv_lora_rank: int | None = Field(default=None, gt=0)  # MLA latent width
    qk_rope_head_dim: int | None = Field(default=None, gt=0)  # MLA decoupled RoPE key width
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    max_context: int = Field(gt=0)  # config.json max_position_embeddings
    native_dtype: NativeDtype
    weights_bytes: int = Field(gt=0)  # checkpoint size on disk
    rope_scaling: str | None = None  # config.json rope_scaling type: "llama3", "yarn", ...
    min_transformers: str  # first transformers release that loads it natively
    ships_remote_code: bool = False  # the hub repo carries modeling code (auto_map)
    # config.json quantization_config.weight_block_size: an FP8 checkpoint scaled per block
    # (DeepSeek-V3/R1: [128, 128]), which only some engine releases run on some GPUs.
    weight_block_size: tuple[int, int] | None = None
    recommended_temperature: float | None = Field(default=None, ge=0)
    recommended_top_p: float | None = Field(default=None, gt=0, le=1)

    @field_validator("hub_repo")
    @classmethod
    def _hub_repo(cls, value: str) -> str:
        if not HUB_REPO.fullmatch(value) or len(value) > HUB_REPO_MAX or ".." in value \
                or "--" in value:
            raise ValueError(
                "must be OWNER/NAME as the hub spells it: two parts of letters, digits, '.', '_' "
                "and '-', each starting and ending with a letter or digit, no '..' or '--', at "
                f"most {HUB_REPO_MAX} characters (e.g. deepseek-ai/DeepSeek-R1)")
        return value

    @field_validator("min_transformers")
    @classmethod
    def _is_version(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion as exc:
            raise ValueError(f"not a version: {value!r} (expected e.g. '4.37.0')") from exc
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.attention == "mla":
            if self.kv_lora_rank is None or self.qk_rope_head_dim is None:
                raise ValueError("attention = 'mla' needs kv_lora_rank and qk_rope_head_dim")
        elif self.attention_heads % self.kv_heads:
            raise ValueError(
                f"attention_heads ({self.attention_heads}) must be a multiple of "
                f"kv_heads ({self.kv_heads})"
            )
        if self.params_active is not None and self.params_active > self.params_total:
            raise ValueError("params_active cannot exceed params_total")
        return self

    @property
    def embedding_params(self) -> int:
        """Input embedding plus output head: kept at 16 bit by the usual quantisers."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)


class GpuSpec(BaseModel):
    """One GPU model as the driver names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    aliases: tuple[str, ...] = ()
    names: tuple[str, ...] = Field(min_length=1)  # `nvidia-smi --query-gpu=name` strings
    memory_mib: int | None = Field(default=None, gt=0)  # nvidia-smi memory.total, when known
    memory_gb: float = Field(gt=0)  # datasheet, decimal GB
    compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    pci_device_ids: tuple[str, ...] = ()
    interconnect: str = ""
    # NVIDIA supports CUDA forward compatibility (a newer CUDA runtime on an older driver,
    # through the cuda-compat libraries) on datacenter GPUs only; GeForce cards fail with
    # CUDA error 804 "forward compatibility was attempted on non supported HW".
    forward_compatible: bool = False
    # Datasheet figures for the capacity estimate (rules/capacity.py), per GPU: memory
    # bandwidth in decimal GB/s, dense (no sparsity) tensor throughput at 16 bit (bf16, or
    # fp16 where the GPU has no bf16) and at fp8 (absent: no fp8 tensor cores), board power.
    memory_bandwidth_gbs: float | None = Field(default=None, gt=0)
    dense_16bit_tflops: float | None = Field(default=None, gt=0)
    dense_fp8_tflops: float | None = Field(default=None, gt=0)
    tdp_watts: int | None = Field(default=None, gt=0)
    # An example purchase price per GPU in US dollars, for the cost report's default only:
    # street prices move; the report says it is an example and --gpu-price replaces it.
    example_price_usd: int | None = Field(default=None, gt=0)

    @property
    def memory_bytes(self) -> int:
        """What sizing plans with: the reported total when known, else the datasheet."""
        if self.memory_mib is not None:
            return self.memory_mib * 2**20
        return int(self.memory_gb * 1e9)

    @property
    def memory_source(self) -> str:
        return "nvidia-smi memory.total" if self.memory_mib is not None else "datasheet"


class _ModelFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: list[ModelSpec]


class _GpuFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu: list[GpuSpec]


def _read(path: Path, schema: type[BaseModel]) -> Any:
    try:
        return schema.model_validate(load_toml(path))
    except (OSError, TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read: {exc}") from exc
    except ValidationError as exc:
        raise CatalogError(f"{path}: {exc}") from exc


def _unique(ids: list[str], path: Path) -> None:
    seen: set[str] = set()
    for key in ids:
        if key in seen:
            raise CatalogError(f"{path}: {key!r} appears twice")
        seen.add(key)


def load_models(path: Path | None = None) -> dict[str, ModelSpec]:
    """All catalog models by id."""
    path = path or CATALOG_DIR / "models.toml"
    models = _read(path, _ModelFile).model
    _unique([m.id for m in models], path)
    return {m.id: m for m in models}


def load_gpus(path: Path | None = None) -> dict[str, GpuSpec]:
    """All catalog GPUs by id."""
    path = path or CATALOG_DIR / "gpus.toml"
    gpus = _read(path, _GpuFile).gpu
    _unique([key.lower() for g in gpus for key in (g.id, *g.aliases, *g.names)], path)
    return {g.id: g for g in gpus}


@cache
def _models() -> dict[str, ModelSpec]:
    return load_models()


@cache
def _gpus() -> dict[str, GpuSpec]:
    return load_gpus()


def catalog_gpus() -> dict[str, GpuSpec]:
    """The repository's catalog GPUs by id (load_gpus()), read once per process: the plan of
    every host asks for them."""
    return dict(_gpus())


def find_model(model_id: str) -> ModelSpec:
    """The catalog model with this id; the error lists the known ids."""
    models = _models()
    if model_id in models:
        return models[model_id]
    raise CatalogError(f"unknown model {model_id!r}; known: {', '.join(sorted(models))}")


def find_gpu(name_or_alias: str) -> GpuSpec:
    """A GPU by catalog id, alias or nvidia-smi name (case-insensitive)."""
    wanted = " ".join(name_or_alias.split()).lower()
    for gpu in _gpus().values():
        if wanted in {k.lower() for k in (gpu.id, *gpu.aliases, *gpu.names)}:
            return gpu
    known = sorted(k for g in _gpus().values() for k in (g.id, *g.aliases))
    raise CatalogError(f"unknown GPU {name_or_alias!r}; known: {', '.join(known)}")
