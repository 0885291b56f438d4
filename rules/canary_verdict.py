"""The canary verdict: promote, hold or roll back, with the numbers that decided it. Pure.

The canary is compared with stable over the same window, on what a user feels: server errors
(at the gateway), time to first token P99 and decode speed per sequence (from the engines'
histograms, so the canary's smaller share of traffic does not count against it).

Before any routing to the canary changes (start, promote), every canary host must have proved
itself in that same run (``canary_proof``): in the run, still active, its weights hashed
against the manifest and a completion from each replica. A host left out (`--limit
<gateway>`), failed, or short of its proof keeps the routing as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from facts.canary_figures import CanaryFiguresResult, VariantFigures
from inventory.schema import CanarySettings
from rules.engine_metrics import any_engine

Verdict = Literal["promote", "hold", "roll back"]


@dataclass(frozen=True)
class CanaryProof:
    """Whether the routing to the canary may change in this run, and if not, who is missing."""

    absent: tuple[str, ...]  # canary hosts not active in this run (left out by --limit, failed)
    unproved: tuple[str, ...]  # active, but their proof did not complete in this run
    none: bool = False  # no canary host at all

    @property
    def passed(self) -> bool:
        return not (self.absent or self.unproved or self.none)

    def render(self) -> str:
        if self.passed:
            return "every canary host proved itself in this run"
        parts = ["the routing is unchanged: every canary host must prove itself (weights "
                 "against the manifest, a completion per replica) in the run that routes to it"]
        if self.none:
            parts.append("there is no canary host")
        if self.absent:
            parts.append("not in this run (left out by --limit, or failed): "
                         + ", ".join(self.absent))
        if self.unproved:
            parts.append("did not complete their proof in this run: " + ", ".join(self.unproved))
        return "; ".join(parts) + ". Run the action on the gateway and every canary host."


def canary_proof(canary: Collection[str], active: Collection[str],
                 proved: Collection[str]) -> CanaryProof:
    """``canary``: the canary hosts; ``active``: the run's hosts still active when the routing
    would change; ``proved``: the hosts whose proof completed in this run."""
    return CanaryProof(absent=tuple(sorted(h for h in canary if h not in active)),
                       unproved=tuple(sorted(h for h in canary if h in active
                                             and h not in proved)),
                       none=not canary)


def duration_seconds(text: str) -> int:
    return int(text[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[text[-1]]


def canary_queries(model: str, window: str) -> dict[str, str]:
    """PromQL per figure, by variant, for the gateway's served model."""
    where = f'model="{model}"'
    return {
        # Raw bucket rates, by engine too: the P99 is taken on the controller, on the bounds
        # every engine's layout shares (facts/histogram.py).
        "ttft_buckets": "sum by (le, variant, engine) "
                        f"{any_engine('ttft', '_bucket', where, window)}",
        "tokens_per_second": (
            f"sum by (variant) {any_engine('tpot', '_count', where, window)}"
            f" / sum by (variant) {any_engine('tpot', '_sum', where, window)}"),
    }


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reasons: list[str]
    canary: VariantFigures
    stable: VariantFigures
    ttft_bounds: tuple[float, ...] = ()  # CanaryFiguresResult's: the bounds TTFT was read on

    @property
    def finite_ttft_bounds(self) -> list[float]:
        return [b for b in self.ttft_bounds if math.isfinite(b)]

    def render(self) -> str:
        def row(name: str, f: VariantFigures) -> str:
            ttft = f"{f.ttft_p99 * 1000:.0f} ms" if f.ttft_p99 is not None else "n/a"
            tps = f"{f.tokens_per_second:.1f}" if f.tokens_per_second is not None else "n/a"
            return (f"  {name:<7} {f.requests:>7} requests  {f.error_rate:6.2%} errors  "
                    f"TTFT P99 {ttft:>9}  {tps:>7} tokens/s per sequence")
        shared = []
        if self.ttft_bounds:
            shared = ["  TTFT read on the bucket bounds every engine's histogram has: "
                      + ", ".join(f"{b:g}" for b in self.finite_ttft_bounds) + " s"]
        return "\n".join([f"canary verdict: {self.verdict.upper()}",
                          row("stable", self.stable), row("canary", self.canary), *shared,
                          *(f"  - {r}" for r in self.reasons)])


def judge(figures: CanaryFiguresResult, settings: CanarySettings,
          ttft_alert_seconds: float) -> Judgement:
    canary = figures.variants.get("canary", VariantFigures())
    stable = figures.variants.get("stable", VariantFigures())
    worse: list[str] = []
    if canary.requests and canary.error_rate > settings.max_error_rate:
        worse.append(f"canary error rate {canary.error_rate:.2%} > {settings.max_error_rate:.2%}"
                     f" (stable {stable.error_rate:.2%})")
    if canary.ttft_p99 is not None:
        if canary.ttft_p99 > ttft_alert_seconds:
            worse.append(f"canary TTFT P99 {canary.ttft_p99 * 1000:.0f} ms > the alert's "
                         f"{ttft_alert_seconds * 1000:.0f} ms")
        elif stable.ttft_p99 and canary.ttft_p99 > settings.max_ttft_ratio * stable.ttft_p99:
            worse.append(f"canary TTFT P99 {canary.ttft_p99 * 1000:.0f} ms > "
                         f"{settings.max_ttft_ratio} x stable's {stable.ttft_p99 * 1000:.0f} ms")
    if (canary.tokens_per_second is not None and stable.tokens_per_second
            and canary.tokens_per_second < settings.min_tokens_ratio * stable.tokens_per_second):
        worse.append(f"canary decodes {canary.tokens_per_second:.1f} tokens/s < "
                     f"{settings.min_tokens_ratio} x stable's {stable.tokens_per_second:.1f}")
    if worse:
        return Judgement("roll back", worse, canary, stable, figures.ttft_bounds)
    if canary.requests < settings.min_requests:
        return Judgement("hold", [f"the canary answered {canary.requests} requests in the "
                                  f"window; {settings.min_requests} are needed for a verdict"],
                         canary, stable, figures.ttft_bounds)
    if figures.errors:
        return Judgement("hold", ["incomplete reading: " + "; ".join(figures.errors)],
                         canary, stable, figures.ttft_bounds)
    return Judgement("promote", ["the canary is as good as stable on errors, TTFT and decode "
                                 "speed"], canary, stable, figures.ttft_bounds)


def verdict_record(judgement: Judgement, phase: str, share: int, served: str,
                   written_at: str) -> str:
    """The last `canary status` as the controller keeps it (fleet-state/<fleet>/canary.json):
    the phase, the share of requests the canary gets, the verdict, its reasons and figures."""
    def figures(f: VariantFigures) -> dict[str, object]:
        return {"requests": f.requests, "errors": f.errors, "error_rate": f.error_rate,
                "ttft_p99_s": f.ttft_p99, "tokens_per_second": f.tokens_per_second}

    return json.dumps({"written_at": written_at, "model": served, "phase": phase,
                       "share_percent": share, "verdict": judgement.verdict,
                       "reasons": judgement.reasons, "canary": figures(judgement.canary),
                       "stable": figures(judgement.stable),
                       "ttft_shared_bounds_s": judgement.finite_ttft_bounds}, indent=2) + "\n"
