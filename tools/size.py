"""Offline sizing: will this model fit these GPUs, and how many does a load need? No host.

    .venv/bin/python tools/size.py --model deepseek-r1-distill-llama-70b --precision int8 \\
        --gpus 2xa100-80gb --context 8192 --concurrency 16
    .venv/bin/python tools/size.py --model deepseek-r1-distill-llama-70b --precision fp8 \\
        --gpus 2xh100 --requests-per-day 100000 --prompt-tokens 1000 --output-tokens 500 \\
        --ttft 2 --tokens-per-second 20          # + the capacity estimate

Exit codes: 0 fits (and the load's targets can be met), 1 does not fit (or one replica cannot
meet the targets), 2 bad input (one line per problem, naming the flag, the value and what is
allowed). --json prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from difflib import get_close_matches
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packaging.version import InvalidVersion, Version

from inventory.catalog import (
    CatalogError,
    GpuSpec,
    ModelSpec,
    find_gpu,
    find_model,
    load_gpus,
    load_models,
)
from inventory.pins import load_pins
from inventory.schema import ExpectedGpus, InferenceSettings, MultiNodeSettings, Settings
from rules.capacity import (
    DEFAULT_HEADROOM,
    CapacityPlan,
    Load,
    capacity_json,
    engine_batch_limit,
    gpu_figures_missing,
    plan,
    render_capacity,
    replica_model,
    validate_load,
)
from rules.compat import check_engine_for_model
from rules.sizing import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    GIB,
    PRECISIONS,
    SizingInputError,
    SizingRequest,
    SizingResult,
    engine_profile,
    render_sizing,
    size,
)
from tools.inputs import (
    EXIT_BAD_INPUT,
    control_character_problem,
    finite,
    printable,
    schema_most,
    shown,
)

EXIT_FITS, EXIT_DOES_NOT_FIT = 0, 1
# What a fleet file accepts, the tool accepts: GPUs per node, nodes per replica, sequences.
MAX_GPUS_PER_NODE = schema_most(ExpectedGpus, "count")
MAX_NODES = schema_most(MultiNodeSettings, "nodes")
MAX_CONCURRENCY = schema_most(Settings, "concurrency")
MAX_NUM_SEQS = schema_most(InferenceSettings, "max_num_seqs")
MAX_GPU_MEMORY_GIB = 1024  # per GPU: the largest today hold under 300 GiB
_FLAG_FOR_FIELD = {
    "tp": "--tp",
    "pp": "--pp",
    "context": "--context",
    "concurrency": "--concurrency",
    "gpu_count": "--gpus",
    "gpu_memory": "--gpu-memory-gib",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "requests": "--requests-per-second / --requests-per-day",
    "prompt_tokens": "--prompt-tokens",
    "output_tokens": "--output-tokens",
    "ttft": "--ttft",
    "tokens_per_second": "--tokens-per-second",
    "headroom": "--headroom",
}


def _pinned_vllm(model: ModelSpec | None = None) -> str:
    """The vLLM release the default pin set serves: the sizing budgets memory (and caches the
    KV) as it does. A model that release cannot load is sized as the newest vLLM of the pin
    sets that serve it (DeepSeek-V3/R1: r535-fwdcompat-mla's, which caches the MLA latent)."""
    sets = load_pins().sets
    default = sets[Settings.model_fields["pin_set"].default].inference.engine("vllm")
    version = default.version if default else "0.4.2"
    if model is None or not check_engine_for_model("vllm", version, model):
        return version
    serving = [pins.version for pins in (s.inference.engine("vllm") for s in sets.values())
               if pins is not None and not check_engine_for_model("vllm", pins.version, model)]
    return max(serving, key=Version, default=version)



class BadInput(Exception):
    """One problem: the flag, the value (escaped, cut when long) and what is allowed."""

    def __init__(self, flag: str, value: object, allowed: str) -> None:
        super().__init__(f"{flag} {shown(value)}: {allowed}" if flag else allowed)


class BadInputs(Exception):
    """Several problems at once: each is printed on its own line."""

    def __init__(self, problems: list[BadInput]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own message names the flag; keep it to one line and exit 2. It echoes
        # stray arguments as given: escape them.
        raise BadInput("", "", printable(message))


def _parse_gpus(spec: str) -> tuple[int, str | None]:
    """'2xa100-80gb' -> (2, 'a100-80gb'); 'h200' -> (1, 'h200'); '4' -> (4, None)."""
    match = re.fullmatch(r"\s*(?:(\d+)\s*[x*]\s*)?(.*?)\s*", spec, flags=re.IGNORECASE)
    assert match is not None
    count_text, name = match.group(1), match.group(2)
    count = int(count_text) if count_text else 1
    if count_text is None and name.isdigit():
        count, name = int(name), ""
    if not 1 <= count <= MAX_GPUS_PER_NODE:
        raise BadInput("--gpus", spec, f"a count of 1 to {MAX_GPUS_PER_NODE} GPUs (per node), "
                       "e.g. 2xa100-80gb")
    return count, name or None


def _parse_shape(spec: str) -> tuple[int, int, str | None]:
    """'2x(8xh100-80gb)' -> (2 nodes, 8 GPUs each, 'h100-80gb'); '8xh200' -> (1, 8, 'h200')."""
    match = re.fullmatch(r"\s*(\d+)\s*[x*]\s*\((.*)\)\s*", spec, flags=re.IGNORECASE)
    if match is None:
        return (1, *_parse_gpus(spec))
    nodes = int(match.group(1))
    if not 1 <= nodes <= MAX_NODES:
        raise BadInput("--gpus", spec, f"a node count of 1 to {MAX_NODES}, e.g. 2x(8xh100-80gb)")
    return (nodes, *_parse_gpus(match.group(2)))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=".venv/bin/python tools/size.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="catalog model id (see --list-models)")
    p.add_argument("--precision", default=None, help=f"one of {', '.join(PRECISIONS)}")
    p.add_argument("--gpus", help="COUNTxGPU, e.g. 2xa100-80gb or 8xh200 (see --list-gpus); "
                   "NODESx(COUNTxGPU) for a replica across nodes, e.g. 2x(8xh100-80gb): "
                   "tensor parallel within a node, pipeline parallel across nodes")
    p.add_argument("--gpu-memory-gib", type=finite, help="memory per GPU, overrides the catalog")
    p.add_argument("--context", type=int, default=8192, help="tokens per sequence (8192)")
    p.add_argument("--concurrency", type=int, default=1, help="concurrent sequences (1)")
    p.add_argument("--tp", type=int, help="tensor-parallel size (default: all GPUs / pp)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (1)")
    p.add_argument("--kv-dtype", choices=("auto", "fp8"), default="auto", help="KV cache dtype")
    p.add_argument("--engine-version", default=None,
                   help="vLLM release whose start-up memory profile and KV cache layout "
                        "to apply (default: the default pin set's, or for a model it cannot "
                        "load, the newest pinned vLLM that can)")
    p.add_argument("--max-num-seqs", type=int, default=None,
                   help="the engine's batch limit (default: the engine's own default)")
    p.add_argument(
        "--gpu-memory-utilization",
        type=finite,
        default=DEFAULT_GPU_MEMORY_UTILIZATION,
        help="fraction of GPU memory vLLM may use (0.9)",
    )
    p.add_argument("--list-models", action="store_true", help="list catalog models and exit")
    p.add_argument("--list-gpus", action="store_true", help="list catalog GPUs and exit")
    add_load_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """The load a capacity estimate plans for (given a rate, the estimate runs)."""
    g = p.add_argument_group("load (capacity estimate)")
    g.add_argument("--requests-per-second", type=finite, help="peak request rate to serve")
    g.add_argument("--requests-per-day", type=finite, help="requests a day (see --peak-factor)")
    g.add_argument("--peak-factor", type=finite, default=2.0,
                   help="busy-hour rate / the day's average, for --requests-per-day (2)")
    g.add_argument("--prompt-tokens", type=int, default=1000, help="prompt tokens (1000)")
    g.add_argument("--output-tokens", type=int, default=500, help="output tokens (500)")
    g.add_argument("--ttft", type=finite, help="target time to first token, seconds")
    g.add_argument("--tokens-per-second", type=finite,
                   help="target decode speed each user sees, tokens/s")
    g.add_argument("--headroom", type=finite, default=DEFAULT_HEADROOM,
                   # argparse formats help with %: a literal percent sign is %%.
                   help=f"spare capacity on top of the load ({DEFAULT_HEADROOM:g} = "
                        f"{DEFAULT_HEADROOM * 100:.0f} %%)")


def load_from_args(args: argparse.Namespace, required: bool = False) -> Load | None:
    """The load the flags describe (None: no rate given and none required)."""
    per_s, per_day = args.requests_per_second, args.requests_per_day
    if per_s is None and per_day is None:
        if required:
            raise BadInput("--requests-per-day", "(missing)",
                           "required (or --requests-per-second)")
        return None
    problems = []
    if per_s is not None and per_day is not None:
        problems.append(BadInput("--requests-per-second", per_s,
                                 "give either it or --requests-per-day, not both"))
    peak = args.peak_factor
    if per_day is not None and not 1 <= peak <= 100:
        problems.append(BadInput("--peak-factor", peak, "from 1 (a flat day) to 100"))
        peak = 1.0  # said once: the rate it would make is not a second problem
    rate = per_s if per_s is not None else Load.per_day_to_rate(per_day, peak)
    load = Load(requests_per_second=rate, prompt_tokens=args.prompt_tokens,
                output_tokens=args.output_tokens, ttft_target_s=args.ttft,
                tokens_per_second_target=args.tokens_per_second, headroom=args.headroom,
                requests_per_day=per_day, peak_factor=args.peak_factor if per_day else 1.0)
    for problem in validate_load(load):
        flag = _FLAG_FOR_FIELD.get(problem.field_name, problem.field_name)
        value = per_day if problem.field_name == "requests" and per_day is not None \
            else problem.value
        problems.append(BadInput(flag, value, problem.allowed))
    if problems:
        raise BadInputs(problems)
    return load


def _unknown_gpu(name: str) -> str:
    """What to say of a GPU the catalog lacks: the nearest names, and where the rest are."""
    return _not_in_catalog("GPU", name, (k for g in load_gpus().values()
                                         for k in (g.id, *g.aliases)), "--list-gpus")


def _not_in_catalog(what: str, wanted: str, known: Iterable[str], listing: str) -> str:
    close = get_close_matches(wanted.lower(), sorted(set(known)), n=3, cutoff=0.6)
    hint = f"; nearest: {', '.join(close)}" if close else ""
    return f"{what} not in the catalog{hint} (see {listing})"


def catalog_gpu(args: argparse.Namespace) -> GpuSpec:
    """The catalog GPU named by --gpus, for what only the catalog knows (bandwidth, watts)."""
    _, _, name = _parse_shape(args.gpus or "")
    if name is None:
        raise BadInput("--gpus", args.gpus, "name a catalog GPU for the capacity estimate "
                       "(its bandwidth and TFLOPS), e.g. 2xh100")
    try:
        gpu = find_gpu(name)
    except CatalogError as exc:
        raise BadInput("--gpus", args.gpus, _unknown_gpu(name)) from exc
    missing = gpu_figures_missing(gpu)
    if missing:
        raise BadInput("--gpus", args.gpus, f"the catalog has no {' or '.join(missing)} for "
                       f"{gpu.id}: add it to inventory/catalog/gpus.toml to estimate capacity")
    return gpu


def capacity_plan(result: SizingResult, gpu: GpuSpec, load: Load) -> CapacityPlan:
    return plan(replica_model(result, gpu, engine_batch_limit(result)), load)


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


def _engine_version(given: str | None, model: ModelSpec | None = None) -> str:
    if given is None:
        return _pinned_vllm(model)
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
    if args.max_num_seqs is not None and not 1 <= args.max_num_seqs <= MAX_NUM_SEQS:
        raise BadInput("--max-num-seqs", args.max_num_seqs, f"1 to {MAX_NUM_SEQS}")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise BadInput("--concurrency", args.concurrency, f"1 to {MAX_CONCURRENCY} sequences")
    if not args.gpus:
        raise BadInput("--gpus", "(missing)", "required, e.g. 2xa100-80gb; see --list-gpus")
    nodes, per_node, name = _parse_shape(args.gpus)
    count, tp, pp = nodes * per_node, args.tp, args.pp
    if nodes > 1 and tp is None and pp == 1:
        # vLLM's layout for a replica across nodes: tensor parallel over each node's NVLink,
        # pipeline parallel over the slower network between nodes.
        tp, pp = per_node, nodes
    if args.gpu_memory_gib is not None:
        if not 0 < args.gpu_memory_gib <= MAX_GPU_MEMORY_GIB:
            raise BadInput("--gpu-memory-gib", args.gpu_memory_gib,
                           f"a positive number of GiB, at most {MAX_GPU_MEMORY_GIB}")
        memory = int(args.gpu_memory_gib * GIB)
        label = f"{name or 'GPU'} ({args.gpu_memory_gib:g} GiB given)"
        capability = None
    else:
        if name is None:
            raise BadInput("--gpus", args.gpus, "name a GPU (e.g. 4xl40s) or give --gpu-memory-gib")
        try:
            gpu = find_gpu(name)
        except CatalogError as exc:
            raise BadInput("--gpus", args.gpus, _unknown_gpu(name)) from exc
        memory, label = gpu.memory_bytes, f"{gpu.names[0]} ({gpu.memory_source})"
        capability = gpu.compute_capability
    if nodes > 1:
        label += f" in {nodes} nodes of {per_node}"
    return SizingRequest(
        model=model,
        precision=precision,
        gpu_memory_bytes=memory,
        gpu_count=count,
        context=args.context,
        concurrency=args.concurrency,
        tp=tp,
        pp=pp,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_dtype=args.kv_dtype,
        gpu_label=label,
        engine=engine_profile(_engine_version(args.engine_version, model)),
        max_num_seqs=args.max_num_seqs,
        compute_capability=capability,
    )


def collect(*steps: Callable[[], object]) -> list[object]:
    """Run each input step, gathering every problem before giving up (one line each)."""
    values: list[object] = []
    problems: list[BadInput] = []
    for step in steps:
        try:
            values.append(step())
        except BadInputs as exc:
            problems.extend(exc.problems)
            values.append(None)
        except BadInput as exc:
            problems.append(exc)
            values.append(None)
    if problems:
        raise BadInputs(problems)
    return values


def sized(req: SizingRequest) -> SizingResult:
    try:
        return size(req)
    except SizingInputError as exc:
        flag = _FLAG_FOR_FIELD.get(exc.field_name, exc.field_name)
        raise BadInput(flag, exc.value, exc.allowed) from exc


def check_context(args: argparse.Namespace, load: Load | None) -> None:
    if load is not None and args.context < load.prompt_tokens + load.output_tokens:
        raise BadInput("--context", args.context, f"at least --prompt-tokens + --output-tokens "
                       f"({load.prompt_tokens + load.output_tokens}): a request must fit")


def sizing_json(result: SizingResult) -> dict[str, object]:
    req = result.request
    return {
        "model": req.model.id, "precision": req.precision, "gpu": req.gpu_label,
        "gpu_count": req.gpu_count, "tp": result.tp, "pp": result.pp, "context": req.context,
        "concurrency": req.concurrency, "fits": result.fits,
        "needed_per_gpu_bytes": result.needed_per_gpu,
        "usable_per_gpu_bytes": result.usable_per_gpu,
        "weights_per_gpu_bytes": result.weights_per_gpu,
        "kv_per_token_per_gpu_bytes": result.kv_per_token_per_gpu,
        "kv_tokens": result.kv_tokens, "max_concurrency": result.max_concurrency,
        "alternatives": [a.change for a in result.alternatives],
    }


def print_problems(exc: BadInput | BadInputs) -> int:
    for problem in exc.problems if isinstance(exc, BadInputs) else [exc]:
        print(printable(f"error: {problem}"), file=sys.stderr)
    return EXIT_BAD_INPUT


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments, once none holds a control character (refused before argparse echoes
    one back)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    problem = control_character_problem(argv)
    if problem:
        raise BadInput("", "", problem)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(_parser(), argv)
        if args.list_models:
            print(_list_models())
            return EXIT_FITS
        if args.list_gpus:
            print(_list_gpus())
            return EXIT_FITS
        req, load = collect(lambda: _request(args), lambda: load_from_args(args))
        gpu = None
        if load is not None:
            assert isinstance(load, Load)
            gpu, _ = collect(lambda: catalog_gpu(args), lambda: check_context(args, load))
        assert isinstance(req, SizingRequest)
        result = sized(req)
    except (BadInput, BadInputs) as exc:
        return print_problems(exc)
    capacity = None
    if isinstance(load, Load) and isinstance(gpu, GpuSpec) and result.fits:
        capacity = capacity_plan(result, gpu, load)
    if args.json:
        out: dict[str, object] = {"sizing": sizing_json(result)}
        if load is not None:
            out["capacity"] = capacity_json(capacity) if capacity else None
        print(json.dumps(out, indent=2))
    else:
        print(render_sizing(result))
        if capacity is not None and isinstance(gpu, GpuSpec):
            print()
            print(render_capacity(capacity, f"{req.model.id} at {req.precision} on {gpu.id}"))
        elif load is not None:
            print("\nCapacity: not estimated: the model does not fit one replica (see above).")
    ok = result.fits and (capacity is None or capacity.replicas is not None)
    return EXIT_FITS if ok else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(main())
