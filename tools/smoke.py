#!/usr/bin/env python3
"""Smoke test and latency probe of a fleet's inference endpoints, from the controller.

    .venv/bin/python tools/smoke.py                         # $GPUFLEET_FLEET (or fleet.toml)
    .venv/bin/python tools/smoke.py --fleet inventory/sim.toml --requests 20 --seconds 30
    .venv/bin/python tools/smoke.py --url http://10.0.0.7:8000 --model NAME

For every replica: /v1/models must list the served name and a chat completion with the
fleet's sampling settings must return tokens (the deep check: /health can be green while an
engine hangs). Then a short latency probe, bounded in count and time: streamed requests one
after another, with time to first token, tokens per second and end-to-end latency (P50, P99).
Exit 0 when every endpoint answered, 1 when one did not, 2 for bad input.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inventory.fleet import FleetError, HostSpec, load_fleet

MAX_REPLICAS = 64


@dataclass(frozen=True)
class Endpoint:
    host: str
    url: str
    model: str
    api_key: str | None
    temperature: float = 0.6
    top_p: float = 0.95


def host_address(spec: HostSpec, listen: str) -> str | None:
    """Where the controller reaches a service of a host listening on ``listen``: the host's SSH
    target, a container's address, loopback."""
    bind = ipaddress.ip_address(listen)
    if spec.target == "@local":
        return "127.0.0.1"
    if bind.is_loopback:
        return None  # only the host itself reaches it
    if spec.target.startswith("@docker/"):
        name = spec.target.split("/", 1)[1]
        out = subprocess.run(["docker", "inspect", "--format",
                              "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name],
                             capture_output=True, text=True, check=False).stdout.split()
        return out[0] if out else None
    return spec.target if bind.is_unspecified else str(bind)


def fleet_endpoints(path: Path) -> tuple[list[Endpoint], list[str]]:
    fleet = load_fleet(path)
    endpoints, skipped = [], []
    for spec in fleet.hosts:
        cfg = spec.settings.inference
        key = (spec.controller_path(cfg.api_key_file).read_text().strip()
               if cfg.api_key_file else None)
        if spec.settings.role == "monitor":
            gateway = spec.settings.gateway
            address = host_address(spec, gateway.bind) if gateway.enabled else None
            if address is not None:
                host = f"[{address}]" if ":" in address else address
                endpoints.append(Endpoint(f"{spec.name} (gateway)", f"http://{host}:{gateway.port}",
                                          cfg.served_model_name or spec.model.id, key,
                                          spec.settings.sampling.temperature,
                                          spec.settings.sampling.top_p))
            continue
        if not cfg.enabled:
            continue
        address = host_address(spec, cfg.bind)
        if address is None:
            skipped.append(f"{spec.name}: the API is bound to {cfg.bind} on the host: run this "
                           "there, or set settings.inference.bind")
            continue
        host = f"[{address}]" if ":" in address else address
        for index in range(MAX_REPLICAS):
            url = f"http://{host}:{cfg.port + index}"
            if index and not reachable(url):
                break  # replicas listen on consecutive ports
            endpoints.append(Endpoint(spec.name, url, cfg.served_model_name or spec.model.id,
                                      key, spec.settings.sampling.temperature,
                                      spec.settings.sampling.top_p))
    return endpoints, skipped


def reachable(url: str) -> bool:
    try:
        requests.get(f"{url}/health", timeout=3)
    except requests.RequestException:
        return False
    return True


def headers(endpoint: Endpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}


def smoke(endpoint: Endpoint) -> str | None:
    """None when it serves; else what is wrong."""
    try:
        models = requests.get(f"{endpoint.url}/v1/models", headers=headers(endpoint), timeout=10)
        models.raise_for_status()
        names = [m.get("id") for m in models.json().get("data", [])]
        if endpoint.model not in names:
            return f"/v1/models lists {names}, not {endpoint.model}"
        answer = requests.post(f"{endpoint.url}/v1/chat/completions", headers=headers(endpoint),
                               timeout=120, json={
                                   "model": endpoint.model, "max_tokens": 16,
                                   "temperature": endpoint.temperature, "top_p": endpoint.top_p,
                                   "messages": [{"role": "user", "content": "Say hello."}]})
        answer.raise_for_status()
        tokens = answer.json().get("usage", {}).get("completion_tokens", 0)
    except (requests.RequestException, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if tokens else "a chat completion returned no tokens"


def probe(endpoint: Endpoint, count: int, seconds: float) -> dict[str, list[float]]:
    """Streamed requests one after another, at most ``count`` and ``seconds``."""
    ttft: list[float] = []
    total: list[float] = []
    rates: list[float] = []
    deadline = time.monotonic() + seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        started = time.monotonic()
        first = None
        pieces = 0
        with requests.post(f"{endpoint.url}/v1/chat/completions", headers=headers(endpoint),
                           stream=True, timeout=120, json={
                               "model": endpoint.model, "max_tokens": 32, "stream": True,
                               "temperature": endpoint.temperature, "top_p": endpoint.top_p,
                               "messages": [{"role": "user", "content": "Count to ten."}]}) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                first = first or time.monotonic()
                pieces += 1
        end = time.monotonic()
        if first is None:
            continue
        ttft.append(first - started)
        total.append(end - started)
        if end > first and pieces > 1:
            rates.append((pieces - 1) / (end - first))
    return {"ttft": ttft, "e2e": total, "tokens_per_s": rates}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, default=None)
    parser.add_argument("--url", help="one endpoint instead of a fleet's")
    parser.add_argument("--model", help="with --url: the served model name")
    parser.add_argument("--api-key-file", type=Path)
    parser.add_argument("--requests", type=int, default=10, help="latency probe (default 10)")
    parser.add_argument("--seconds", type=float, default=20, help="at most (default 20)")
    args = parser.parse_args(argv)
    if not 0 <= args.requests <= 1000 or not 0 < args.seconds <= 600:
        print("smoke: --requests is 0 to 1000 and --seconds 1 to 600", file=sys.stderr)
        return 2
    key = args.api_key_file.read_text().strip() if args.api_key_file else None
    if args.url:
        if not args.model:
            print("smoke: --url needs --model (the served model name)", file=sys.stderr)
            return 2
        skipped: list[str] = []
        endpoints = [Endpoint(args.url, args.url.rstrip("/"), args.model, key)]
    else:
        path = args.fleet or Path(os.environ.get("GPUFLEET_FLEET") or "inventory/fleet.toml")
        try:
            endpoints, skipped = fleet_endpoints(path)
        except FleetError as exc:
            print("smoke: the fleet file has problems:\n  " + "\n  ".join(exc.lines),
                  file=sys.stderr)
            return 2
    for line in skipped:
        print(f"skipped {line}")
    failed = 0
    for endpoint in endpoints:
        problem = smoke(endpoint)
        if problem:
            failed += 1
            print(f"FAIL {endpoint.host} {endpoint.url}: {problem}")
            continue
        print(f"ok   {endpoint.host} {endpoint.url} serves {endpoint.model}")
        if args.requests:
            figures = probe(endpoint, args.requests, args.seconds)
            if figures["ttft"]:
                print("     " + ", ".join(
                    f"{label} P50 {percentile(v, 0.5) * scale:.1f}{unit} "
                    f"P99 {percentile(v, 0.99) * scale:.1f}{unit}"
                    for label, v, scale, unit in (
                        ("TTFT", figures["ttft"], 1000, " ms"),
                        ("end-to-end", figures["e2e"], 1000, " ms"),
                        ("tokens/s", figures["tokens_per_s"] or [0.0], 1, ""))
                ) + f" ({len(figures['ttft'])} requests"
                + (f", mean {statistics.mean(figures['e2e']) * 1000:.0f} ms)"
                   if figures["e2e"] else ")"))
    if not endpoints:
        print("no endpoint to test (inference disabled, or bound to loopback)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
