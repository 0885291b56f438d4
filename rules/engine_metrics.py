"""Which metric each serving engine exports for each figure the monitoring uses. Pure.

vLLM exports ``vllm:*`` and SGLang (with --enable-metrics) ``sglang:*``, each under its own
names (vllm/engine/metrics.py; sglang/srt/metrics/collector.py of the pinned releases). The
recording rules, alerts, dashboards and the canary verdict query a figure through
:func:`any_engine`, so one rule serves a fleet of either engine (a replica's target counts one
engine's series, never both: those of the engine its ``engine`` label names).
tests/conformance checks every name here against the released source of every pinned version.
"""

from __future__ import annotations

# figure -> engine -> the metric's name as declared in the engine's source (a histogram's
# series add _bucket/_sum/_count; counters are declared with their _total).
ENGINE_METRICS: dict[str, dict[str, str]] = {
    "ttft": {"vllm": "vllm:time_to_first_token_seconds",
             "sglang": "sglang:time_to_first_token_seconds"},
    "tpot": {"vllm": "vllm:time_per_output_token_seconds",
             "sglang": "sglang:time_per_output_token_seconds"},
    "e2e": {"vllm": "vllm:e2e_request_latency_seconds",
            "sglang": "sglang:e2e_request_latency_seconds"},
    "generation_tokens": {"vllm": "vllm:generation_tokens_total",
                          "sglang": "sglang:generation_tokens_total"},
    # The share of the KV cache in use, 0..1: vLLM's block usage, SGLang's token pool usage.
    "kv_cache_usage": {"vllm": "vllm:gpu_cache_usage_perc", "sglang": "sglang:token_usage"},
    "requests_running": {"vllm": "vllm:num_requests_running",
                         "sglang": "sglang:num_running_reqs"},
    "requests_waiting": {"vllm": "vllm:num_requests_waiting", "sglang": "sglang:num_queue_reqs"},
}
ENGINES = ("vllm", "sglang")
# Whether the engine's API key guards its /metrics too: SGLang's key middleware answers 401 on
# every path but /health, vLLM's only under /v1 (tests/conformance reads each pinned version's).
METRICS_NEED_KEY = {"vllm": False, "sglang": True}


def any_engine(figure: str, suffix: str = "", matchers: str = "",
               window: str | None = None) -> str:
    """The figure's series from whichever engine exports it: ``(a or b)``, or with a window
    ``(rate(a[w]) or rate(b[w]))``. ``suffix``: _bucket, _sum or _count of a histogram;
    ``matchers``: more label matchers (``model="m"``).

    Each engine's series count only from targets labelled with that engine (the fleet file's
    ``inference.engine``, rules/monitoring.py's ``engine_targets``): when a host moves from one
    engine to the other, Prometheus may scrape the old engine, still running, under the new
    target before the host's converge replaces it. Its series would stay in every rate window
    for the window's length, and `or` would take each bucket from whichever engine has it: the
    two releases' bounds differ, so the mix is no histogram (a fast replica read a P99 of
    about 2 s from it, and the latency alert fired)."""
    names = []
    for engine in ENGINES:
        selector = ", ".join(m for m in (f'engine="{engine}"', matchers) if m)
        names.append(f"{ENGINE_METRICS[figure][engine]}{suffix}{{{selector}}}")
    if window is not None:
        names = [f"rate({name}[{window}])" for name in names]
    return "(" + " or ".join(names) + ")"
