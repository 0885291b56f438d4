"""The catalog loader: real data loads, malformed data is refused, lookups explain misses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from inventory.catalog import CatalogError, ModelSpec, find_gpu, find_model, load_gpus, load_models

QWEN7B: dict[str, Any] = dict(
    id="my-qwen",
    hub_repo="me/my-qwen",
    architecture="Qwen2ForCausalLM",
    params_total=7_615_616_512,
    layers=28,
    hidden_size=3584,
    attention_heads=28,
    kv_heads=4,
    head_dim=128,
    vocab_size=152064,
    max_context=131072,
    native_dtype="bf16",
    weights_bytes=15_231_233_024,
    min_transformers="4.37.0",
)


def test_catalog_has_the_deepseek_family() -> None:
    models = load_models()
    assert {
        "deepseek-r1",
        "deepseek-v3",
        "deepseek-r1-distill-qwen-1.5b",
        "deepseek-r1-distill-qwen-7b",
        "deepseek-r1-distill-qwen-14b",
        "deepseek-r1-distill-qwen-32b",
        "deepseek-r1-distill-llama-8b",
        "deepseek-r1-distill-llama-70b",
    } <= set(models)
    r1 = models["deepseek-r1"]
    assert (r1.attention, r1.kv_lora_rank, r1.qk_rope_head_dim) == ("mla", 512, 64)
    assert r1.native_dtype == "fp8" and r1.params_active == 37_000_000_000
    assert models["deepseek-r1-distill-llama-70b"].rope_scaling == "llama3"


def test_gpu_lookup_by_alias_and_by_nvidia_smi_name() -> None:
    assert find_gpu("h100-80gb") is find_gpu("NVIDIA H100 80GB HBM3")
    assert find_gpu("A100-40GB").id == "a100-40gb"
    assert find_gpu("rtx4090").names == ("NVIDIA GeForce RTX 4090",)
    assert find_gpu("NVIDIA  H200").memory_mib == 143771  # whitespace-insensitive
    assert find_gpu("b200").compute_capability == "10.0"
    assert find_gpu("rtx5090").compute_capability == "12.0"


def test_memory_prefers_reported_mib_then_datasheet() -> None:
    assert find_gpu("h200").memory_bytes == 143771 * 2**20
    pcie = find_gpu("h100-pcie")
    assert pcie.memory_mib is None and pcie.memory_bytes == 80 * 10**9


def test_unknown_ids_list_the_known_ones() -> None:
    with pytest.raises(CatalogError, match="deepseek-r1-distill-qwen-7b"):
        find_model("deepseek-r2")
    with pytest.raises(CatalogError, match="a100-80gb"):
        find_gpu("a100-81gb")


def test_user_model_validates_like_catalog_model() -> None:
    assert ModelSpec.model_validate(QWEN7B).embedding_params == 2 * 152064 * 3584
    with pytest.raises(ValidationError, match="extra"):
        ModelSpec.model_validate({**QWEN7B, "colour": "blue"})
    with pytest.raises(ValidationError, match="multiple of"):
        ModelSpec.model_validate({**QWEN7B, "kv_heads": 5})
    with pytest.raises(ValidationError, match="not a version"):
        ModelSpec.model_validate({**QWEN7B, "min_transformers": "latest"})
    with pytest.raises(ValidationError, match="kv_lora_rank"):
        ModelSpec.model_validate({**QWEN7B, "attention": "mla"})


def test_unknown_keys_in_catalog_files_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "models.toml"
    bad.write_text(
        (Path("inventory/catalog/models.toml").read_text()).replace(
            'native_dtype = "bf16"', 'native_dtype = "bf16"\nsurprise = 1', 1
        )
    )
    with pytest.raises(CatalogError, match="surprise"):
        load_models(bad)
    gpus = tmp_path / "gpus.toml"
    gpus.write_text(
        '[[gpu]]\nid = "x"\nnames = ["X"]\nmemory_gb = 1\ncompute_capability = "8.0"\nbogus = 2\n'
    )
    with pytest.raises(CatalogError, match="bogus"):
        load_gpus(gpus)


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    gpus = tmp_path / "gpus.toml"
    entry = '[[gpu]]\nid = "x"\nnames = ["X"]\nmemory_gb = 1\ncompute_capability = "8.0"\n'
    gpus.write_text(entry + entry)
    with pytest.raises(CatalogError, match="twice"):
        load_gpus(gpus)
