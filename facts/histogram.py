"""Prometheus' ``histogram_quantile`` over a classic histogram's buckets, in Python. Pure.

The canary verdict reads the engines' raw TTFT bucket rates and takes the quantile here rather
than in PromQL, because the two engines do not share a bucket layout (vLLM 0.4.2's first
bounds are 1 ms to 100 ms, SGLang 0.4.1's first bound is 100 ms): a quantile interpolated
inside SGLang's first bucket reads ~99 ms for replies that vLLM's buckets place at ~20 ms,
so a canary on the other engine looked five times slower than an equally fast stable.
Compared on the bounds both layouts share, the two read alike.

The arithmetic follows Prometheus' ``bucketQuantile`` (promql/quantile.go): linear
interpolation inside the bucket that holds the rank, 0 as the first bucket's lower end, and
the highest finite bound when the rank falls in the +Inf bucket. tests/unit/test_gateway.py
checks it against promtool's own answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

Buckets = Mapping[float, float]  # upper bound (le; +Inf as math.inf) -> cumulative count or rate


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile, or None where Prometheus answers NaN (no +Inf bucket, fewer than two
    buckets, or no observation)."""
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return None
    counts: list[float] = []
    for bound in bounds:  # cumulative counts never fall (rates of a scrape race may)
        counts.append(max(buckets[bound], counts[-1] if counts else 0.0))
    observations = counts[-1]
    if not observations > 0:
        return None
    rank = q * observations
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[index], counts[index]
    if index > 0:
        start = bounds[index - 1]
        count -= counts[index - 1]
        rank -= counts[index - 1]
    return start + (end - start) * (rank / count)


def shared_bounds(histograms: Iterable[Buckets]) -> frozenset[float]:
    """The upper bounds every histogram has."""
    sets = [frozenset(h) for h in histograms]
    return frozenset.intersection(*sets) if sets else frozenset()


def summed(histograms: Iterable[Buckets], bounds: frozenset[float]) -> dict[float, float]:
    """The histograms added bucket by bucket, on ``bounds`` only. A cumulative count at a bound
    is exact whatever other bounds a layout has, so dropping bounds only coarsens."""
    total = dict.fromkeys(bounds, 0.0)
    for histogram in histograms:
        for bound in bounds:
            total[bound] += histogram.get(bound, 0.0)
    return total
