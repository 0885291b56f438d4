"""``CanaryFigures``: how canary and stable compare over a window, read on the gateway host.

Two sources, one command: Prometheus' HTTP API on the host (time to first token P99 and
decode speed per variant, from the engines' own histograms) and the gateway's access log
(requests and server errors per variant: vLLM 0.4 counts only successful requests, so the
gateway is where a failed request is seen). Read-only.

The TTFT P99 is taken here from the raw bucket rates, per variant and engine, and where the
engines' bucket layouts differ both variants are read on the bounds they share
(facts/histogram.py says why).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from facts._shell import clip, quote
from facts.histogram import histogram_quantile, shared_bounds, summed

SCRIPT = r'''
import json, sys, time, urllib.parse, urllib.request
spec = json.loads(sys.argv[1])
out = {"queries": {}, "log": {}, "errors": []}
for name, query in spec["queries"].items():
    url = spec["prometheus"] + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        out["queries"][name] = [[r["metric"], r["value"][1]] for r in body["data"]["result"]]
    except Exception as exc:
        out["errors"].append("%s: %s" % (name, exc))
since = time.time() - spec["window_seconds"]
counts = {}
try:
    with open(spec["log"], errors="replace") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if float(entry.get("msec", 0)) < since:
                continue
            c = counts.setdefault(entry.get("variant", ""), [0, 0])
            c[0] += 1
            c[1] += int(entry.get("status", 0)) >= 500
except OSError as exc:
    out["errors"].append("gateway log: %s" % exc)
out["log"] = counts
print(json.dumps(out))
'''


@dataclass(frozen=True)
class VariantFigures:
    requests: int = 0
    errors: int = 0
    ttft_p99: float | None = None  # seconds
    tokens_per_second: float | None = None  # decode speed of one sequence

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class CanaryFiguresResult:
    variants: dict[str, VariantFigures] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    raw: str = ""
    # The bucket bounds both variants' TTFT was read on, when the engines' layouts differed
    # (empty when every replica exports the same layout: each read on its own).
    ttft_bounds: tuple[float, ...] = ()


def _number(value: object) -> float | None:
    """A finite number, or None (Prometheus answers NaN for a quantile without traffic)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _by_variant(rows: object) -> dict[str, float | None]:
    """A query's answer (``[[labels, value], ...]``) as a number per variant."""
    return {labels.get("variant", ""): _number(value) for labels, value in _rows(rows)}


def _rows(rows: object) -> list[tuple[dict[str, str], object]]:
    if not isinstance(rows, list):
        return []
    return [(row[0], row[1]) for row in rows
            if isinstance(row, list) and len(row) == 2 and isinstance(row[0], dict)]


def ttft_histograms(rows: object) -> dict[str, dict[str, dict[float, float]]]:
    """The TTFT bucket rates as variant -> engine -> upper bound -> rate."""
    out: dict[str, dict[str, dict[float, float]]] = {}
    for labels, value in _rows(rows):
        rate, bound = _number(value), _bound(labels.get("le"))
        if rate is not None and bound is not None:
            engines = out.setdefault(labels.get("variant", ""), {})
            engines.setdefault(labels.get("engine", ""), {})[bound] = rate
    return out


def _bound(text: object) -> float | None:
    try:
        return float(text)  # type: ignore[arg-type]  # "+Inf" reads as math.inf
    except (TypeError, ValueError):
        return None


def parse_canary_figures(output: str) -> CanaryFiguresResult:
    """The script's JSON; never raises (a broken reading is an error in the result)."""
    try:
        data = json.loads(output.strip().splitlines()[-1])
        queries, log = dict(data.get("queries", {})), dict(data.get("log", {}))
    except (ValueError, IndexError, TypeError, AttributeError):
        return CanaryFiguresResult(errors=["no reading: " + clip(output, 300)], raw=output)
    histograms = ttft_histograms(queries.get("ttft_buckets"))
    layouts = [h for engines in histograms.values() for h in engines.values()]
    bounds = shared_bounds(layouts)
    tokens = _by_variant(queries.get("tokens_per_second"))
    variants = {}
    for variant in ("stable", "canary"):
        requests, errors = log.get(variant, [0, 0])
        variants[variant] = VariantFigures(
            requests=int(requests), errors=int(errors),
            ttft_p99=histogram_quantile(0.99, summed(histograms.get(variant, {}).values(),
                                                     bounds)),
            tokens_per_second=tokens.get(variant),
        )
    coarser = any(frozenset(h) != bounds for h in layouts)
    return CanaryFiguresResult(variants, list(data.get("errors", [])), output,
                               tuple(sorted(bounds)) if coarser else ())


class CanaryFigures(FactBase):
    """Canary and stable figures over a window (``spec``: JSON with prometheus, queries,
    log and window_seconds)."""

    def command(self, spec: str) -> str:
        return f"python3 -c {quote(SCRIPT)} {quote(spec)}"

    def process(self, output: list[str]) -> CanaryFiguresResult:
        return parse_canary_figures("\n".join(output))
