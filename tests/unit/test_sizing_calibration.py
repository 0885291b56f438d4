"""The sizing model against vLLM's own start-up logs (tests/fixtures/sizing/vllm_kv_points.toml).

Each public data point is re-sized with gpufleet's arithmetic from the catalog's model and
GPU: the predicted KV cache must never be more than 3 % above what vLLM allocated (an
optimistic sizing passes hosts that then fail at engine start) and never more than 15 %
below it (a pessimistic one refuses good hosts). Where vLLM refused to start (the KV cache
could not hold one max_model_len sequence), the sizing must refuse too.

Print the table (it is quoted in the README):

    .venv/bin/python -m tests.unit.test_sizing_calibration
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

from inventory.catalog import find_gpu, find_model
from rules.sizing import GIB, SizingRequest, SizingResult, engine_profile, size

POINTS_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "sizing" / "vllm_kv_points.toml"
MAX_OVER = 0.03
MAX_UNDER = 0.15


@dataclass(frozen=True)
class Mapping:
    """How a point maps onto the catalog, and what of it we had to take as given."""

    model: str  # catalog model with the point's geometry (layers, widths, heads, vocab)
    gpu: str  # catalog GPU (its nvidia-smi memory.total is what the sizing starts from)
    precision: str = "bf16"
    compare: str = "tokens"  # "tokens" (the instance's KV capacity) or "gib" (per GPU)
    vllm_version: str | None = None  # where the point does not state it: the log's era
    gpu_memory_utilization: float | None = None  # where the point does not state it
    excluded: str = ""  # why the point is not held to the bounds


# Qwen2-7B has the geometry of the Qwen-7B distill, Llama-3.x 8B/70B that of the Llama
# distills, Qwen2.5-32B that of the Qwen-32B distill (same layers, widths, heads, vocab).
MAPPINGS: dict[str, Mapping] = {
    "qwen2-7b-a100-80gb-tp1-u025": Mapping("deepseek-r1-distill-qwen-7b", "a100-80gb"),
    "qwen2-7b-a100-80gb-tp1-u050": Mapping("deepseek-r1-distill-qwen-7b", "a100-80gb"),
    "qwen2-7b-a100-80gb-tp2-u025": Mapping("deepseek-r1-distill-qwen-7b", "a100-80gb"),
    "qwen2-7b-a100-80gb-tp2-u050": Mapping("deepseek-r1-distill-qwen-7b", "a100-80gb"),
    "qwen2-7b-a100-40gb-tp2-u050-2nodes": Mapping(
        "deepseek-r1-distill-qwen-7b", "a100-40gb",
        excluded="the GPU is uncertain (the log's file name says 40GB, the README 80GB) and "
                 "Ray across two nodes adds overhead gpufleet does not serve with"),
    "llama31-8b-rtx3090-20k": Mapping("deepseek-r1-distill-llama-8b", "rtx3090",
                                      vllm_version="0.6.4"),
    "llama31-8b-rtx3090-29k": Mapping("deepseek-r1-distill-llama-8b", "rtx3090",
                                      vllm_version="0.6.4"),
    "llama31-8b-l4-32k": Mapping("deepseek-r1-distill-llama-8b", "l4"),
    # vLLM's token count is rank 1's (the smaller); only rank 0's GiB is logged: compare those.
    "r1-distill-qwen-14b-2xrtx4090-tp2-128k": Mapping(
        "deepseek-r1-distill-qwen-14b", "rtx4090", compare="gib", vllm_version="0.7.2"),
    "qwen25-32b-l40s-tp2-10k": Mapping("deepseek-r1-distill-qwen-32b", "l40s"),
    "llama31-8b-h100-tp1-16k": Mapping("deepseek-r1-distill-llama-8b", "h100-80gb",
                                       compare="gib", vllm_version="0.11.0"),
    "llama33-70b-fp8-h100-tp2-16k": Mapping("deepseek-r1-distill-llama-70b", "h100-80gb",
                                            precision="fp8", compare="gib",
                                            vllm_version="0.11.0"),
    "llama31-70b-h100-tp4-128k": Mapping("deepseek-r1-distill-llama-70b", "h100-80gb",
                                         vllm_version="0.11.0", gpu_memory_utilization=0.9),
    "llama3-8b-h200-tp1-1k": Mapping("deepseek-r1-distill-llama-8b", "h200"),
    "llama2-70b-a100-80gb-tp4": Mapping(
        "deepseek-r1-distill-llama-70b", "a100-80gb",
        excluded="vLLM 0.2 (Dec 2023), a 32k-vocabulary model and no max_model_len: older "
                 "than any engine gpufleet pins, and not the catalog's geometry"),
}


@dataclass(frozen=True)
class Row:
    point: dict[str, object]
    mapping: Mapping
    result: SizingResult

    @property
    def predicted(self) -> float:
        if self.mapping.compare == "gib":
            return max(0, self.result.kv_budget_per_gpu) / GIB
        return float(self.result.kv_tokens)

    @property
    def logged(self) -> float:
        key = "kv_cache_gib" if self.mapping.compare == "gib" else "kv_cache_tokens"
        return float(self.point[key])  # type: ignore[arg-type]

    @property
    def error(self) -> float:
        return self.predicted / self.logged - 1


def _points() -> list[dict[str, object]]:
    return list(tomllib.loads(POINTS_FILE.read_text())["point"])


def predict(point: dict[str, object], mapping: Mapping) -> SizingResult:
    gpu = find_gpu(mapping.gpu)
    tp = int(point.get("tensor_parallel", 1))  # type: ignore[call-overload]
    version = str(point.get("vllm_version") or mapping.vllm_version)
    utilization = point.get("gpu_memory_utilization") or mapping.gpu_memory_utilization
    request = SizingRequest(
        model=find_model(mapping.model),
        precision=mapping.precision,  # type: ignore[arg-type]
        gpu_memory_bytes=gpu.memory_bytes,
        gpu_count=tp,
        context=int(point["max_model_len"]),  # type: ignore[call-overload]
        concurrency=1,
        tp=tp,
        gpu_memory_utilization=float(utilization),  # type: ignore[arg-type]
        gpu_label=gpu.names[0],
        engine=engine_profile(version),
        max_num_seqs=point.get("max_num_seqs"),  # type: ignore[arg-type]
        max_num_batched_tokens=point.get("max_num_batched_tokens"),  # type: ignore[arg-type]
    )
    return size(request)


def rows() -> list[Row]:
    return [Row(p, MAPPINGS[str(p["id"])], predict(p, MAPPINGS[str(p["id"])]))
            for p in _points() if not MAPPINGS[str(p["id"])].excluded]


def test_every_point_is_mapped_and_enough_are_held_to_the_bounds() -> None:
    ids = [str(p["id"]) for p in _points()]
    assert sorted(ids) == sorted(MAPPINGS), "map each data point onto the catalog"
    assert len(rows()) >= 8


@pytest.mark.parametrize("row", rows(), ids=lambda row: str(row.point["id"]))
def test_predicted_kv_cache_is_within_bounds_of_vllms(row: Row) -> None:
    assert -MAX_UNDER <= row.error <= MAX_OVER, (
        f"predicted {row.predicted:,.2f} vs logged {row.logged:,.2f} ({row.error:+.1%})")


@pytest.mark.parametrize("row", [r for r in rows() if "refused" in str(r.point["note"]).lower()
                                 or "REFUSED" in str(r.point["note"])],
                         ids=lambda row: str(row.point["id"]))
def test_where_vllm_refused_to_start_the_sizing_refuses_too(row: Row) -> None:
    assert not row.result.fits
    assert row.result.kv_tokens < int(row.point["max_model_len"])  # type: ignore[call-overload]


def table() -> str:
    lines = [f"{'data point':<40} {'vLLM':>8} {'compared':>9} {'logged':>11} "
             f"{'predicted':>11} {'error':>7}"]
    for row in rows():
        unit = "GiB/GPU" if row.mapping.compare == "gib" else "tokens"
        version = str(row.point.get("vllm_version") or f"~{row.mapping.vllm_version}")
        fmt = "{:,.2f}" if unit == "GiB/GPU" else "{:,.0f}"
        lines.append(f"{row.point['id']!s:<40} {version:>8} {unit:>9} "
                     f"{fmt.format(row.logged):>11} {fmt.format(row.predicted):>11} "
                     f"{row.error:>+7.1%}")
    errors = [row.error for row in rows()]
    lines.append(f"{len(errors)} points: error from {min(errors):+.1%} to {max(errors):+.1%}, "
                 f"mean {sum(errors) / len(errors):+.1%}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
