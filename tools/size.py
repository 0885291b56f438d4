"""Offline sizing: will this model fit these GPUs? No host, no network.

    .venv/bin/python tools/size.py --model deepseek-r1-distill-llama-70b --precision int8 \\
        --gpus 2xa100-80gb --context 8192 --concurrency 16

Exit codes: 0 fits, 1 does not fit, 2 bad input (one line naming the flag, the value and
what is allowed).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packaging.version import InvalidVersion, Version

from inventory.catalog import CatalogError, find_gpu, find_model, load_gpus, load_models
from inventory.pins import load_pins
from inventory.schema import Settings
from rules.sizing import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    GIB,
    PRECISIONS,
    SizingInputError,
    SizingRequest,
    engine_profile,
    render_sizing,
    size,
)

EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_BAD_INPUT = 0, 1, 2
_FLAG_FOR_FIELD = {
    "tp": "--tp",
    "pp": "--pp",
    "context": "--context",
    "concurrency": "--concurrency",
    "gpu_count": "--gpus",
    "gpu_memory": "--gpu-memory-gib",
    "gpu_memory_utilization": "--gpu-memory-utilization",
}


def _pinned_vllm() -> str:
    """The vLLM release the default pin set serves: the sizing budgets memory as it does."""
    pinned = load_pins().sets[Settings.model_fields["pin_set"].default].inference.engine("vllm")
    return pinned.version if pinned else "0.4.2"



class BadInput(Exception):
    def __init__(self, flag: str, value: object, allowed: str) -> None:
        super().__init__(f"{flag} {value}: {allowed}" if flag else allowed)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own message names the flag; keep it to one line and exit 2.
        raise BadInput("", "", message)


def _parse_gpus(spec: str) -> tuple[int, str | None]:
    """'2xa100-80gb' -> (2, 'a100-80gb'); 'h200' -> (1, 'h200'); '4' -> (4, None)."""
    match = re.fullmatch(r"\s*(?:(\d+)\s*[x*]\s*)?(.*?)\s*", spec, flags=re.IGNORECASE)
    assert match is not None
    count_text, name = match.group(1), match.group(2)
    if count_text is None and name.isdigit():
        return int(name), None
    count = int(count_text) if count_text else 1
    if count < 1:
        raise BadInput("--gpus", spec, "a count of at least 1, e.g. 2xa100-80gb")
    return count, name or None


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=".venv/bin/python tools/size.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="catalog model id (see --list-models)")
    p.add_argument("--precision", default=None, help=f"one of {', '.join(PRECISIONS)}")
    p.add_argument("--gpus", help="COUNTxGPU, e.g. 2xa100-80gb or 8xh200 (see --list-gpus)")
    p.add_argument("--gpu-memory-gib", type=float, help="memory per GPU, overrides the catalog")
    p.add_argument("--context", type=int, default=8192, help="tokens per sequence (8192)")
    p.add_argument("--concurrency", type=int, default=1, help="concurrent sequences (1)")
    p.add_argument("--tp", type=int, help="tensor-parallel size (default: all GPUs / pp)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (1)")
    p.add_argument("--kv-dtype", choices=("auto", "fp8"), default="auto", help="KV cache dtype")
    p.add_argument("--engine-version", default=None,
                   help="vLLM release whose start-up memory profile to apply "
                        "(default: the default pin set's)")
    p.add_argument("--max-num-seqs", type=int, default=None,
                   help="the engine's batch limit (default: the engine's own default)")
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=DEFAULT_GPU_MEMORY_UTILIZATION,
        help="fraction of GPU memory vLLM may use (0.9)",
    )
    p.add_argument("--list-models", action="store_true", help="list catalog models and exit")
    p.add_argument("--list-gpus", action="store_true", help="list catalog GPUs and exit")
    return p


def _list_models() -> str:
    rows = [f"{'id':<32} {'params':>8} {'dtype':>5} {'max ctx':>8}  architecture"]
    for m in load_models().values():
        rows.append(
            f"{m.id:<32} {m.params_total / 1e9:>7.1f}B {m.native_dtype:>5} {m.max_context:>8}"
            f"  {m.architecture}"
        )
    return "\n".join(rows)


def _list_gpus() -> str:
    rows = [f"{'id':<16} {'memory':>10} {'cc':>5}  nvidia-smi name / aliases"]
    for g in load_gpus().values():
        rows.append(
            f"{g.id:<16} {g.memory_bytes / GIB:>6.1f} GiB {g.compute_capability:>5}  "
            f"{' | '.join(g.names)}; {', '.join(g.aliases)}"
        )
    return "\n".join(rows)


def _engine_version(given: str | None) -> str:
    if given is None:
        return _pinned_vllm()
    try:
        Version(given.lstrip("v"))
    except InvalidVersion as exc:
        raise BadInput("--engine-version", given, "a vLLM release such as 0.6.6.post1") from exc
    return given


def _request(args: argparse.Namespace) -> SizingRequest:
    if not args.model:
        raise BadInput("--model", "(missing)", "required; see --list-models")
    try:
        model = find_model(args.model)
    except CatalogError as exc:
        raise BadInput(
            "--model", args.model, "not in the catalog; " + str(exc).split("; ", 1)[-1]
        ) from exc
    precision = args.precision or model.native_dtype
    if precision not in PRECISIONS:
        raise BadInput("--precision", precision, f"one of {', '.join(PRECISIONS)}")
    if args.max_num_seqs is not None and args.max_num_seqs < 1:
        raise BadInput("--max-num-seqs", args.max_num_seqs, "at least 1")
    if not args.gpus:
        raise BadInput("--gpus", "(missing)", "required, e.g. 2xa100-80gb; see --list-gpus")
    count, name = _parse_gpus(args.gpus)
    if args.gpu_memory_gib is not None:
        if args.gpu_memory_gib <= 0:
            raise BadInput("--gpu-memory-gib", args.gpu_memory_gib, "a positive number of GiB")
        memory = int(args.gpu_memory_gib * GIB)
        label = f"{name or 'GPU'} ({args.gpu_memory_gib:g} GiB given)"
        capability = None
    else:
        if name is None:
            raise BadInput("--gpus", args.gpus, "name a GPU (e.g. 4xl40s) or give --gpu-memory-gib")
        try:
            gpu = find_gpu(name)
        except CatalogError as exc:
            raise BadInput(
                "--gpus", args.gpus, "GPU not in the catalog; " + str(exc).split("; ", 1)[-1]
            ) from exc
        memory, label = gpu.memory_bytes, f"{gpu.names[0]} ({gpu.memory_source})"
        capability = gpu.compute_capability
    return SizingRequest(
        model=model,
        precision=precision,
        gpu_memory_bytes=memory,
        gpu_count=count,
        context=args.context,
        concurrency=args.concurrency,
        tp=args.tp,
        pp=args.pp,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_dtype=args.kv_dtype,
        gpu_label=label,
        engine=engine_profile(_engine_version(args.engine_version)),
        max_num_seqs=args.max_num_seqs,
        compute_capability=capability,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.list_models:
            print(_list_models())
            return EXIT_FITS
        if args.list_gpus:
            print(_list_gpus())
            return EXIT_FITS
        req = _request(args)
        try:
            result = size(req)
        except SizingInputError as exc:
            flag = _FLAG_FOR_FIELD.get(exc.field_name, exc.field_name)
            raise BadInput(flag, exc.value, exc.allowed) from exc
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(render_sizing(result))
    return EXIT_FITS if result.fits else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(main())
