"""TEST STAND-IN: small model weights for the simulator (gpufleet), never downloaded.

A folder that looks like a Hugging Face checkpoint to the deploy and to the stand-in engine:
the model's real config.json fields (from gpufleet's catalog), a tokenizer file, and two
safetensors-named shards of a few MB of deterministic bytes (not loadable by a real engine).

    python tests/sim/weights.py deepseek-r1-distill-qwen-7b DEST
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from inventory.catalog import find_model  # noqa: E402

SHARD_BYTES = 3 * 2**20
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp8": "bfloat16"}


def config_json(model_id: str) -> dict[str, object]:
    """config.json as the hub's checkpoint has it (the fields engines size with)."""
    model = find_model(model_id)
    config: dict[str, object] = {
        "architectures": [model.architecture],
        "model_type": {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama",
                       "DeepseekV3ForCausalLM": "deepseek_v3"}.get(model.architecture, "x"),
        "hidden_size": model.hidden_size,
        "intermediate_size": model.intermediate_size,
        "num_hidden_layers": model.layers,
        "num_attention_heads": model.attention_heads,
        "num_key_value_heads": model.kv_heads,
        "head_dim": model.head_dim,
        "vocab_size": model.vocab_size,
        "tie_word_embeddings": model.tie_word_embeddings,
        "max_position_embeddings": model.max_context,
        "torch_dtype": DTYPES.get(model.native_dtype, "bfloat16"),
    }
    if model.rope_scaling:
        config["rope_scaling"] = {"rope_type": model.rope_scaling}
    return config


def _bytes(seed: str, size: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def write_weights(model_id: str, dest: Path, shard_bytes: int = SHARD_BYTES) -> Path:
    """Write the stand-in checkpoint into ``dest`` (created); returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(config_json(model_id), indent=2) + "\n")
    (dest / "tokenizer.json").write_text(json.dumps(
        {"comment": "TEST STAND-IN tokenizer (gpufleet simulator)", "model": {"type": "BPE"}})
        + "\n")
    shards = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    for name in shards:
        (dest / name).write_bytes(_bytes(f"{model_id}/{name}", shard_bytes))
    (dest / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": shard_bytes * len(shards)},
         "weight_map": {"stand-in": shards[0]}}) + "\n")
    return dest


if __name__ == "__main__":
    write_weights(sys.argv[1], Path(sys.argv[2]))
