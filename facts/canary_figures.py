"""``CanaryFigures``: how canary and stable compare over a window, read on the gateway host.

Two sources, one command: Prometheus' HTTP API on the host (time to first token P99 and
decode speed per variant, from the engines' own histograms) and the gateway's access log
(requests and server errors per variant: vLLM 0.4 counts only successful requests, so the
gateway is where a failed request is seen). Read-only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from facts._shell import clip, quote

SCRIPT = r'''
import json, sys, time, urllib.parse, urllib.request
spec = json.loads(sys.argv[1])
out = {"queries": {}, "log": {}, "errors": []}
for name, query in spec["queries"].items():
    url = spec["prometheus"] + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        out["queries"][name] = {r["metric"].get("variant", ""): float(r["value"][1])
                                for r in body["data"]["result"]}
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


def _number(value: object) -> float | None:
    """A finite number, or None (Prometheus answers NaN for a quantile without traffic)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_canary_figures(output: str) -> CanaryFiguresResult:
    """The script's JSON; never raises (a broken reading is an error in the result)."""
    try:
        data = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return CanaryFiguresResult(errors=["no reading: " + clip(output, 300)], raw=output)
    queries, log = data.get("queries", {}), data.get("log", {})
    variants = {}
    for variant in ("stable", "canary"):
        requests, errors = log.get(variant, [0, 0])
        variants[variant] = VariantFigures(
            requests=int(requests), errors=int(errors),
            ttft_p99=_number(queries.get("ttft_p99", {}).get(variant)),
            tokens_per_second=_number(queries.get("tokens_per_second", {}).get(variant)),
        )
    return CanaryFiguresResult(variants, list(data.get("errors", [])), output)


class CanaryFigures(FactBase):
    """Canary and stable figures over a window (``spec``: JSON with prometheus, queries,
    log and window_seconds)."""

    def command(self, spec: str) -> str:
        return f"python3 -c {quote(SCRIPT)} {quote(spec)}"

    def process(self, output: list[str]) -> CanaryFiguresResult:
        return parse_canary_figures("\n".join(output))
