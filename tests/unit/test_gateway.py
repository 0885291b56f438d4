"""The gateway's routing per canary phase, and the canary verdict. nginx itself checks the
rendered file in the simulator (`nginx -t` before every change, tests/e2e/test_monitoring.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from facts.canary_figures import CanaryFiguresResult, VariantFigures, parse_canary_figures
from facts.name_resolution import NameLookup
from inventory.fleet import load_fleet
from inventory.schema import CanarySettings
from rules.canary_verdict import canary_queries, judge
from rules.fleet_checks import fleet_problems
from rules.gateway import (
    GatewayConfigError,
    lookup_names,
    parse_canary_state,
    render_canary_state,
    render_gateway,
    resolver_trouble,
    routing,
    unresolved_report,
    upstreams,
)
from rules.monitoring import is_monitor
from tests.unit.test_monitoring import FLEET, ttft_buckets

# What the canary host's name resolves to on the gateway host (facts.name_resolution).
RESOLVED = {"gpu-02.example.internal": NameLookup("resolved", ("10.0.0.12",))}


def specs(tmp_path: Path, text: str = FLEET) -> tuple:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    hosts = load_fleet(path, checks=fleet_problems).hosts
    return next(s for s in hosts if is_monitor(s)), hosts


@pytest.mark.parametrize("phase,split", [
    ("off", ["* stable;"]),
    ("running", ["20% canary;", "* stable;"]),
    ("promoted", ["* canary;"]),
    ("rolled-back", ["* stable;"]),
])
def test_each_phase_routes_its_share_to_the_canary(tmp_path: Path, phase: str,
                                                   split: list[str]) -> None:
    gateway, hosts = specs(tmp_path)
    route = routing(gateway, hosts, phase)  # type: ignore[arg-type]
    assert route.stable == tuple(f"10.0.0.11:{8000 + i}" for i in range(8))
    assert route.canary == ("gpu-02.example.internal:8000", "gpu-02.example.internal:8001")
    text = render_gateway(gateway, route, upstreams(route, RESOLVED))
    assert split_lines(text) == split
    assert "proxy_buffering off;" in text and "proxy_read_timeout 1800s;" in text
    assert "listen 127.0.0.1:8080;" in text  # loopback unless configured
    assert "    server 10.0.0.11:8007 max_fails=3 fail_timeout=10s;\n" in text
    # by the address its name resolves to on the gateway host, the name kept beside it
    assert ("    server 10.0.0.12:8001 max_fails=3 fail_timeout=10s;  "
            "# gpu-02.example.internal:8001\n") in text
    assert "server gpu-02" not in text


def test_the_weight_is_a_setting(tmp_path: Path) -> None:
    gateway, hosts = specs(tmp_path, FLEET.replace('settings = { role = "monitor" }',
                                                   'settings = { role = "monitor", '
                                                   'canary = { weight = 5 } }'))
    route = routing(gateway, hosts, "running")
    assert "    5% canary;" in render_gateway(gateway, route, upstreams(route, RESOLVED))


def test_without_canary_hosts_nothing_goes_to_a_canary(tmp_path: Path) -> None:
    gateway, hosts = specs(tmp_path, FLEET.replace(', inference = { variant = "canary" }', ""))
    route = routing(gateway, hosts, "running")
    assert route.phase == "off" and route.weight == 0 and route.canary == ()
    text = render_gateway(gateway, route, upstreams(route, {}))
    assert "upstream gpufleet_canary" not in text and "canary;" not in text


def test_the_recorded_phase_reads_back_and_garbage_reads_as_off() -> None:
    for phase in ("off", "running", "promoted", "rolled-back"):
        assert parse_canary_state(render_canary_state(phase)) == phase
    for text in (None, "", "{", '{"phase": "sideways"}', "[]"):
        assert parse_canary_state(text) == "off"


# --- the verdict --------------------------------------------------------------------------------
def figures(canary: VariantFigures, stable: VariantFigures) -> CanaryFiguresResult:
    return CanaryFiguresResult({"canary": canary, "stable": stable})


STABLE = VariantFigures(requests=800, errors=0, ttft_p99=0.08, tokens_per_second=190.0)


def test_a_canary_as_good_as_stable_is_promoted() -> None:
    verdict = judge(figures(VariantFigures(200, 0, 0.09, 185.0), STABLE), CanarySettings(), 0.5)
    assert verdict.verdict == "promote"
    assert "canary verdict: PROMOTE" in verdict.render()


@pytest.mark.parametrize("canary,reason", [
    (VariantFigures(200, 10, 0.09, 185.0), "canary error rate 5.00% > 1.00% (stable 0.00%)"),
    (VariantFigures(200, 0, 0.8, 185.0), "canary TTFT P99 800 ms > the alert's 500 ms"),
    (VariantFigures(200, 0, 0.2, 185.0), "canary TTFT P99 200 ms > 1.5 x stable's 80 ms"),
    (VariantFigures(200, 0, 0.09, 100.0), "canary decodes 100.0 tokens/s < 0.8 x stable's 190.0"),
])
def test_a_worse_canary_is_rolled_back_with_the_numbers(canary: VariantFigures,
                                                        reason: str) -> None:
    verdict = judge(figures(canary, STABLE), CanarySettings(), 0.5)
    assert verdict.verdict == "roll back"
    assert reason in verdict.reasons


def test_too_little_canary_traffic_holds() -> None:
    verdict = judge(figures(VariantFigures(20, 0, 0.09, 185.0), STABLE), CanarySettings(), 0.5)
    assert verdict.verdict == "hold" and "20 requests" in verdict.reasons[0]


def test_the_figures_parser_never_raises() -> None:
    assert parse_canary_figures("python3: not found").errors
    assert parse_canary_figures('{"queries": [], "log": 3}').errors
    parsed = parse_canary_figures(json.dumps({
        "queries": {"ttft_buckets": [*ttft_rows("canary", "vllm", {0.5: 0, 0.75: 10}),
                                     *ttft_rows("stable", "vllm", {0.5: 0, 0.75: 0}),
                                     [{"variant": "canary", "le": "x"}, "1"], ["junk"]],
                    "tokens_per_second": [[{"variant": "canary"}, "NaN"]]},
        "log": {"canary": [100, 3], "stable": [400, 0]}, "errors": []}))
    canary = parsed.variants["canary"]
    assert (canary.requests, canary.errors, canary.tokens_per_second) == (100, 3, None)
    assert canary.ttft_p99 == pytest.approx(0.5 + 0.25 * 0.99)  # inside (0.5, 0.75]
    assert parsed.variants["stable"].ttft_p99 is None  # no traffic: no figure
    assert parsed.ttft_bounds == ()  # one layout: read on all of its bounds


# --- TTFT across engines: each engine's bucket bounds from its pinned release ---------------
def ttft_rows(variant: str, engine: str, counts: Mapping[float, float]) -> list[list[object]]:
    """The fact script's rows for one engine's TTFT histogram: ``counts`` gives the cumulative
    rate at some bounds; every bound of the release's layout reads as the last one given below
    it (0 below the first), +Inf as the largest."""
    rows: list[list[object]] = []
    for bound in [*ttft_buckets(engine), math.inf]:
        below = [c for b, c in counts.items() if b <= bound]
        rows.append([{"le": "+Inf" if bound == math.inf else str(bound), "variant": variant,
                      "engine": engine}, str(max(below, default=0))])
    return rows


def reading(stable: list[list[object]], canary: list[list[object]]) -> CanaryFiguresResult:
    return parse_canary_figures(json.dumps({
        "queries": {"ttft_buckets": stable + canary,
                    "tokens_per_second": [[{"variant": "stable"}, "190"],
                                          [{"variant": "canary"}, "185"]]},
        "log": {"canary": [200, 0], "stable": [800, 0]}, "errors": []}))


def test_an_equally_fast_canary_on_the_other_engine_is_promoted() -> None:
    """Every reply in ~15 ms on both sides. On its own buckets vLLM reads 20 ms and SGLang
    (first bound 100 ms) 99 ms, five times slower: compared on the bounds both engines
    export, the two read alike."""
    figures = reading(ttft_rows("stable", "vllm", {0.02: 40}),
                      ttft_rows("canary", "sglang", {0.1: 10}))
    assert figures.ttft_bounds == (0.1, 0.25, 0.5, 0.75, 1.0, 5.0, 10.0, math.inf)
    verdict = judge(figures, CanarySettings(), 0.5)
    assert verdict.verdict == "promote", verdict.render()
    assert "TTFT read on the bucket bounds every engine's histogram has: 0.1, 0.25, 0.5, " \
        "0.75, 1, 5, 10 s" in verdict.render()


def test_a_slower_canary_on_the_other_engine_is_still_rolled_back() -> None:
    figures = reading(ttft_rows("stable", "vllm", {0.02: 40}),
                      ttft_rows("canary", "sglang", {0.1: 2, 0.25: 10}))
    verdict = judge(figures, CanarySettings(), 0.5)
    assert verdict.verdict == "roll back"
    assert "canary TTFT P99 248 ms > 1.5 x stable's 99 ms" in verdict.reasons


def test_a_mixed_stable_is_read_on_the_shared_bounds_too() -> None:
    """Stable replicas on both engines: their buckets add up only where both have a bound."""
    stable = ttft_rows("stable", "vllm", {0.02: 30}) + ttft_rows("stable", "sglang", {0.1: 10})
    figures = reading(stable, ttft_rows("canary", "vllm", {0.02: 10}))
    assert figures.ttft_bounds[0] == 0.1
    assert figures.variants["stable"].ttft_p99 == pytest.approx(0.099)
    assert figures.variants["canary"].ttft_p99 == pytest.approx(0.099)


def test_queries_select_the_served_model_by_variant() -> None:
    queries = canary_queries("deepseek-r1-distill-qwen-7b", "5m")
    assert ('vllm:time_to_first_token_seconds_bucket{engine="vllm", '
            'model="deepseek-r1-distill-qwen-7b"}[5m]') in queries["ttft_buckets"]
    assert queries["ttft_buckets"].startswith("sum by (le, variant, engine) ")
    assert "sum by (variant)" in queries["tokens_per_second"]


def test_an_ipv6_monitoring_address_becomes_one_bracketed_server(tmp_path: Path) -> None:
    gateway, hosts = specs(tmp_path, FLEET.replace(
        'target = "gpu-02.example.internal"',
        'target = "gpu-02.example.internal"\nsettings = { monitoring = { address = "fd00::12" } }'))
    route = routing(gateway, hosts, "running")
    assert lookup_names(route) == ()  # an IP address needs no lookup
    text = render_gateway(gateway, route, upstreams(route, {}))
    assert "    server [fd00::12]:8001 max_fails=3 fail_timeout=10s;\n" in text


@pytest.mark.parametrize("address", [
    "10.0.0.12:9000; } server { listen 80; location / { proxy_pass http://evil",
    "gpu-02.example.internal max_fails=0",
    "gpu-02\n}",
    "fd00::12",  # an IPv6 address without its brackets: nginx would misread the port
])
def test_the_renderer_refuses_a_server_that_is_not_host_and_port(tmp_path: Path,
                                                                 address: str) -> None:
    """The schema refuses these addresses (tests/fixtures/hostile_fleets); the renderer
    checks the parts again itself, so no path around the schema adds an nginx directive."""
    gateway, hosts = specs(tmp_path)
    route = routing(gateway, hosts, "running")
    hostile = replace(route, canary=(f"{address}:8000",))
    with pytest.raises(GatewayConfigError, match="not an nginx server address"):
        render_gateway(gateway, hostile, upstreams(hostile, RESOLVED))
    with pytest.raises(GatewayConfigError, match="not an nginx server address"):
        lookup_names(hostile)  # nor asked of the gateway host's shell
    with pytest.raises(GatewayConfigError, match="not a served model name"):
        render_gateway(gateway, replace(route, served_name='m"; return 200 "x'),
                       upstreams(route, RESOLVED))


# --- upstreams by address: the names resolved on the gateway host -------------------------------
def test_only_names_are_looked_up(tmp_path: Path) -> None:
    gateway, hosts = specs(tmp_path)
    assert lookup_names(routing(gateway, hosts, "running")) == ("gpu-02.example.internal",)


def test_a_canary_whose_name_does_not_resolve_is_left_out_and_gets_nothing(
        tmp_path: Path) -> None:
    """nginx 1.22 would refuse to start on the name: the gateway runs without the replica,
    and the canary's share (20 % while it runs) goes to stable, not to a pool nginx cannot
    reach."""
    gateway, hosts = specs(tmp_path)
    route = routing(gateway, hosts, "running")
    missing = {"gpu-02.example.internal": NameLookup(
        "not_found", reason="the resolver has no address for it")}
    found = upstreams(route, missing)
    assert found.canary == () and len(found.stable) == 8 and found.weight == 0
    assert found.canary_unreachable
    text = render_gateway(gateway, route, upstreams(route, missing))
    assert "upstream gpufleet_canary" not in text and "gpu-02.example.internal:8000" in text
    assert split_lines(text) == ["* stable;"]
    assert "# Left out: gpu-02.example.internal:8001 (canary): its name does not resolve " \
        "here." in text
    report = unresolved_report(gateway, found)
    assert report.splitlines() == [
        "the gateway on mon-01 leaves out 2 replica(s) whose host name does not resolve on "
        "mon-01 (nginx would refuse to start):",
        "  gpu-02.example.internal:8000 (canary) of GPU host gpu-02: the resolver has no "
        "address for it",
        "  gpu-02.example.internal:8001 (canary) of GPU host gpu-02: the resolver has no "
        "address for it",
        "  no canary replica resolves: the canary gets no request (phase running, 0 % to the "
        "canary)",
        "Fix the name in DNS (or /etc/hosts) on mon-01, or give the GPU host an IP address as "
        "its `target` (or settings.monitoring.address) in the fleet file; the next deploy of "
        "mon-01 routes to it again."]
    # a name the fact brought no answer for counts as unresolved too
    assert upstreams(route, {}).left_out[0].reason == "no answer from getent"


def test_a_stable_pool_left_empty_is_refused_not_sent_to_the_canary(tmp_path: Path) -> None:
    """Rendered, it would send everything to the canary (as when every stable host is
    drained): the deploy keeps the running file instead (resolver_trouble), since a stable
    pool none of whose names resolves is a resolver in trouble."""
    gateway, hosts = specs(tmp_path, FLEET.replace('target = "10.0.0.11"',
                                                   'target = "gpu-01.example.internal"'))
    route = routing(gateway, hosts, "off")
    found = upstreams(route, RESOLVED)
    assert found.stable == () and len(found.left_out) == 8 and found.weight == 100
    assert not found.canary_unreachable
    text = render_gateway(gateway, route, upstreams(route, RESOLVED))
    assert split_lines(text) == ["* canary;"] and "upstream gpufleet_stable" not in text
    # and no replica left at all: the gateway still starts, and answers 503
    assert "return 503" in render_gateway(gateway, route, upstreams(route, {}))
    gone = {**RESOLVED, "gpu-01.example.internal": NameLookup("not_found", reason="none")}
    trouble = resolver_trouble(gateway, route, gone, upstreams(route, gone))
    assert trouble is not None and trouble.startswith(
        "the gateway on mon-01 keeps its current routing file: its resolver did not give the "
        "replicas' addresses (none of the 8 stable replicas' names resolves)")


def test_a_name_without_an_answer_keeps_the_running_file(tmp_path: Path) -> None:
    """A timeout says nothing of the host behind the name: nothing is left out on it."""
    gateway, hosts = specs(tmp_path)
    route = routing(gateway, hosts, "running")
    silent = {"gpu-02.example.internal": NameLookup("unknown", reason="no answer within 10 s")}
    trouble = resolver_trouble(gateway, route, silent, upstreams(route, silent))
    assert trouble is not None
    assert "(no answer for gpu-02.example.internal: no answer within 10 s)" in trouble
    # a name the resolver says does not exist is left out, and the rest routed (above)
    missing = {"gpu-02.example.internal": NameLookup("not_found", reason="no address")}
    assert resolver_trouble(gateway, route, missing, upstreams(route, missing)) is None
    assert resolver_trouble(gateway, route, RESOLVED, upstreams(route, RESOLVED)) is None


def test_an_ipv6_answer_is_bracketed_and_the_pick_is_stable(tmp_path: Path) -> None:
    gateway, hosts = specs(tmp_path)
    route = routing(gateway, hosts, "running")
    rotated = [("fd00::13", "10.0.0.12", "fd00::12"), ("fd00::12", "fd00::13", "10.0.0.12")]
    texts = {render_gateway(gateway, route, upstreams(route, {"gpu-02.example.internal":
                                                              NameLookup("resolved", answer)}))
             for answer in rotated}
    assert len(texts) == 1  # a DNS server rotating its answers rewrites nothing
    assert ("    server [fd00::12]:8000 max_fails=3 fail_timeout=10s;  "
            "# gpu-02.example.internal:8000\n") in texts.pop()
    # getaddrinfo put IPv4 first: the IPv4 address, not the lowest of all
    ipv4_first = NameLookup("resolved", ("10.0.0.12", "fd00::12"))
    found = upstreams(route, {"gpu-02.example.internal": ipv4_first})
    assert [u.server for u in found.canary] == ["10.0.0.12:8000", "10.0.0.12:8001"]


def split_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("split_clients "))
    return [line.strip() for line in lines[start + 1:lines.index("}", start)]]
