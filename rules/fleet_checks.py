"""Checks that need only the fleet file and the catalog, run before any host is contacted.

The schema checks each value on its own; these check values against each other and against
what the catalog knows (a model's attention heads and maximum context, the finding codes), so
a deploy never stops halfway through on a mistake that was knowable from the file. Each
problem names the host (and group) or the settings table, the field, the value and what is
allowed. inventory.py passes `fleet_problems` to `load_fleet`, so these problems are reported
in the same run, and in the same shape, as the schema's.
"""

from __future__ import annotations

from collections.abc import Mapping
from difflib import get_close_matches
from typing import Any

from inventory.fleet import MISSING, Fleet, HostSpec, Problem
from rules.findings import CODES
from rules.monitoring import monitoring_problems
from rules.multinode import multinode_problems
from rules.sizing import tensor_parallel_sizes, tp_candidates

DOWNGRADE_ALL = "all"


def fleet_problems(fleet: Fleet) -> list[Problem]:
    """Every cross-field problem of a loaded fleet; [] when there is none."""
    problems: list[Problem] = []
    for spec in fleet.hosts:
        problems += _parallelism(spec)
        problems += _context_length(spec)
        problems += _weights_source(spec)
    for where, layer in fleet.setting_layers:
        problems += _downgrade_codes(where, layer)
    problems += monitoring_problems(fleet.hosts)
    problems += multinode_problems(fleet.hosts)
    return problems


def _weights_source(spec: HostSpec) -> list[Problem]:
    """Each weights source names what it needs."""
    weights = spec.settings.weights
    needs = {"controller": ("controller_path",), "hub": ("hub_endpoint", "revision")}
    problems = [
        Problem(spec.where, f"settings.weights.{name}", MISSING,
                f"required with settings.weights.source = {weights.source!r}")
        for name in needs.get(weights.source, ()) if getattr(weights, name) is None
    ]
    endpoint = weights.hub_endpoint
    if endpoint is not None and endpoint.scheme != "https" and not weights.allow_plain_http:
        problems.append(Problem(
            spec.where, "settings.weights.hub_endpoint", str(endpoint),
            "must be an https:// URL (over plain http:// the hub token and the weights cross "
            "the network readable and changeable); for a mirror on a trusted network set "
            "settings.weights.allow_plain_http = true"))
    return problems


def _join(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers) or "none"


def _parallelism(spec: HostSpec) -> list[Problem]:
    settings, model, where = spec.settings, spec.model, spec.where
    tp, pp, count = settings.tensor_parallel, settings.pipeline_parallel, settings.gpus.count
    problems = []
    if pp > model.layers:
        problems.append(Problem(
            where, "settings.pipeline_parallel", pp,
            f"{model.id} has {model.layers} layers; a pipeline stage needs at least one "
            f"(allowed: 1 to {model.layers})",
        ))
    if tp is not None:
        sizes = tensor_parallel_sizes(model)
        if tp not in sizes:
            usual = tp_candidates(model, limit=count // pp if count else 1024)
            problems.append(Problem(
                where, "settings.tensor_parallel", tp,
                f"must divide the {model.attention_heads} attention heads of {model.id}"
                + (f" (and its {model.kv_heads} KV heads, or be a multiple of them)"
                   if model.attention == "gqa" else "")
                + f"; allowed: {_join(sizes)} (usual: {_join(usual)}; or leave it unset to "
                "use the smallest that fits)",
            ))
    if spec.settings.multinode.nodes > 1:
        count = None  # a replica spans hosts: rules.multinode checks its GPUs
    if count is not None and (tp or 1) * pp > count:
        if tp is None:
            problems.append(Problem(
                where, "settings.pipeline_parallel", pp,
                f"needs at least {pp} GPUs, but gpus.count is {count}: "
                f"pipeline_parallel must not exceed gpus.count",
            ))
        else:
            problems.append(Problem(
                where, "settings.tensor_parallel", tp,
                f"tensor_parallel x pipeline_parallel = {tp} x {pp} = {tp * pp} GPUs, but "
                f"gpus.count is {count}: the product must not exceed gpus.count",
            ))
    return problems


def _context_length(spec: HostSpec) -> list[Problem]:
    context, model = spec.settings.context_length, spec.model
    if context is None or context <= model.max_context:
        return []
    return [Problem(
        spec.where, "settings.context_length", context,
        f"{model.id} handles at most {model.max_context} tokens (max_position_embeddings); "
        f"allowed: 256 to {model.max_context}, or unset for the model's maximum",
    )]


def _downgrade_codes(where: str, layer: Mapping[str, Any]) -> list[Problem]:
    """Unknown codes in one settings table (downgrade_errors, expected_warnings), reported
    where they are written (once, not once per host that inherits them). Wrong types were
    reported by the schema: skipped here."""
    preflight = layer.get("preflight")
    problems = []
    for key, extra in (("downgrade_errors", [DOWNGRADE_ALL]), ("expected_warnings", [])):
        codes = preflight.get(key) if isinstance(preflight, Mapping) else None
        if not isinstance(codes, list):
            continue
        for code in codes:
            if not isinstance(code, str) or code in extra or code in CODES:
                continue
            close = get_close_matches(code.lower(), [*CODES, *extra], n=3, cutoff=0.6)
            hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close
                    else "the codes are the keys of CODES in rules/findings.py (or preflight's "
                         "report, in brackets)")
            allowed = "\"all\" or a finding code" if extra else "a finding code"
            problems.append(Problem(
                where, f"settings.preflight.{key}", code,
                f"unknown finding code; allowed: {allowed}; {hint}",
            ))
    return problems
