#!/usr/bin/env python3
"""Smoke test and latency probe of a fleet's inference endpoints, from the controller.

    .venv/bin/python tools/smoke.py                         # $GPUFLEET_FLEET (or fleet.toml)
    .venv/bin/python tools/smoke.py --fleet inventory/sim.toml --requests 20 --seconds 30
    .venv/bin/python tools/smoke.py --url http://10.0.0.7:8000 --model NAME

For every replica: /v1/models must list the served name and a chat completion with the
fleet's sampling settings must return tokens (the deep check: /health can be green while an
engine hangs). Then a short latency probe, bounded in count and time: streamed requests one
after another, with time to first token, tokens per second and end-to-end latency (P50, P99).
Only the replicas the fleet file configures are contacted (settings.inference.port + N for
each of its settings.inference.replicas, the gateway of a monitoring host), and the API key
goes only to them. Exit 0 when every endpoint answered, 1 when one did not, 2 for bad input
(one line each, before any request is sent).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inventory.controller_files import write_atomically
from inventory.fleet import Fleet, FleetError, HostSpec, load_fleet
from rules.gateway import behind_gateway
from rules.monitoring import fleet_replicas, served_name
from tools.inputs import (
    EXIT_BAD_INPUT,
    KeyFileError,
    OneLineParser,
    control_character_problem,
    finite,
    printable,
    read_key_file,
    shown,
)

MAX_REQUESTS = 1000
MAX_SECONDS = 600


class BadInput(Exception):
    """One line: what is wrong with an argument or a file the command names."""


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
        try:
            out = subprocess.run(
                ["docker", "inspect", "--format",
                 "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name],
                capture_output=True, text=True, check=False).stdout.split()
        except OSError as exc:
            raise BadInput(f"{spec.name}: target {spec.target}: its address comes from "
                           f"`docker inspect`, which cannot run here ({exc.strerror})") from None
        return out[0] if out else None
    return spec.target if bind.is_unspecified else str(bind)


def api_keys(fleet: Fleet) -> dict[str, str | None]:
    """Each host's API key (settings.inference.api_key_file, read on this machine), every
    file read and checked before any request is sent."""
    keys: dict[str, str | None] = {}
    for spec in fleet.hosts:
        named = spec.settings.inference.api_key_file
        if named is None:
            keys[spec.name] = None
            continue
        try:
            keys[spec.name] = read_key_file(spec.controller_path(named))
        except KeyFileError as exc:
            raise BadInput(f"{printable(str(fleet.source))}: {spec.where}: "
                           "settings.inference.api_key_file = "
                           f"{shown(repr(named))}: {exc}") from None
    return keys


def select_endpoints(fleet: Fleet, keys: dict[str, str | None],
                     address_of: Callable[[HostSpec, str], str | None]
                     ) -> tuple[list[Endpoint], list[str]]:
    """The endpoints the fleet file configures, and the hosts skipped (with why): the gateway
    of a monitoring host, and each replica of a GPU host (replica N on inference.port + N, as
    many as fleet_replicas says: what the monitoring host scrapes and the gateway routes to).
    Nothing else is probed; each host's key goes only to that host's endpoints, and the
    gateway's to the engines behind it (nginx passes it on)."""
    endpoints: list[Endpoint] = []
    skipped: list[str] = []
    for spec in fleet.hosts:
        cfg, key = spec.settings.inference, keys.get(spec.name)
        if spec.settings.role == "monitor":
            gateway = spec.settings.gateway
            address = address_of(spec, gateway.bind) if gateway.enabled else None
            # nginx passes the client's Authorization on: the gateway takes the key of the
            # engines behind it, when they share one (else no single client key would do).
            behind = {keys.get(s.name) for s in behind_gateway(spec, fleet.hosts)}
            if len(behind) > 1:
                skipped.append(f"{spec.name} (gateway): the hosts behind it have different API "
                               "keys, so no one key passes it: give them one api_key_file")
            elif address is not None:
                endpoints.append(_endpoint(spec, f"{spec.name} (gateway)", address,
                                           gateway.port, next(iter(behind), None) or key))
            continue
        replicas = fleet_replicas(spec)
        if not cfg.enabled or replicas == 0:
            continue  # not serving, or a node of a replica whose head serves
        address = address_of(spec, cfg.bind)
        if address is None:
            skipped.append(f"{spec.name}: the API is bound to {cfg.bind} on the host: run this "
                           "there, or set settings.inference.bind")
            continue
        if replicas is None:
            skipped.append(f"{spec.name}: replicas after the first: the fleet file does not say "
                           "how many it runs (settings.inference.replicas, or gpus.count and "
                           "tensor_parallel)")
            replicas = 1
        endpoints += [_endpoint(spec, spec.name, address, cfg.port + index, key)
                      for index in range(replicas)]
    return endpoints, skipped


def _endpoint(spec: HostSpec, label: str, address: str, port: int, key: str | None
              ) -> Endpoint:
    host = f"[{address}]" if ":" in address else address
    sampling = spec.settings.sampling
    return Endpoint(label, f"http://{host}:{port}", served_name(spec), key,
                    sampling.temperature, sampling.top_p)


def fleet_endpoints(path: Path) -> tuple[list[Endpoint], list[str], Path | None]:
    """The fleet's endpoints, the hosts skipped, and where its results are recorded."""
    fleet = load_fleet(path)
    endpoints, skipped = select_endpoints(fleet, api_keys(fleet), host_address)
    return endpoints, skipped, fleet.hosts[0].state_dir if fleet.hosts else None


def record(path: Path, results: list[dict[str, object]]) -> None:
    """The run's results beside the host manifests (fleet-state/<fleet>/smoke.json): what
    `gpufleet report` shows as each replica's last completion."""
    write_atomically(path, json.dumps({
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "endpoints": results}, indent=2) + "\n")


def url_endpoint(url: str, model: str | None, key: str | None) -> Endpoint:
    """--url: an http(s) URL of one endpoint (scheme, host, optional port), checked before
    any request."""
    allowed = "an http:// or https:// URL of one endpoint, e.g. http://10.0.0.7:8000"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        raise BadInput(f"--url {shown(url)}: {allowed}") from None
    if "@" in parts.netloc:  # user:password@ would print with every result line
        masked = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()
        raise BadInput(f"--url {shown(masked)}: credentials in the URL are refused; give the "
                       "API key with --api-key-file")
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
        raise BadInput(f"--url {shown(url)}: {allowed}")
    if not model:
        raise BadInput("--url needs --model (the served model name)")
    return Endpoint(url, url.rstrip("/"), model, key)


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


def endpoints_from(args: argparse.Namespace
                   ) -> tuple[list[Endpoint], list[str], Path | None]:
    """What to test, every input checked first (BadInput / FleetError: nothing was sent), and
    where to record the results (a fleet's state folder; None for --url)."""
    if not 0 <= args.requests <= MAX_REQUESTS:
        raise BadInput(f"--requests {args.requests}: 0 to {MAX_REQUESTS}")
    if not 0 < args.seconds <= MAX_SECONDS:
        raise BadInput(f"--seconds {args.seconds:g}: more than 0, at most {MAX_SECONDS}")
    if args.url is not None:
        key = None
        if args.api_key_file is not None:
            try:
                key = read_key_file(args.api_key_file)
            except KeyFileError as exc:
                raise BadInput(f"--api-key-file {shown(args.api_key_file)}: {exc}") from None
        return [url_endpoint(args.url, args.model, key)], [], None
    if args.api_key_file is not None or args.model is not None:
        raise BadInput("--api-key-file and --model go with --url (a fleet's hosts use their "
                       "settings.inference.api_key_file and served name)")
    path = args.fleet or Path(os.environ.get("GPUFLEET_FLEET") or "inventory/fleet.toml")
    return fleet_endpoints(path)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="smoke", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--fleet", type=Path, default=None)
    parser.add_argument("--url", help="one endpoint instead of a fleet's")
    parser.add_argument("--model", help="with --url: the served model name")
    parser.add_argument("--api-key-file", type=Path, help="with --url: the API key's file")
    parser.add_argument("--requests", type=int, default=10, help="latency probe (default 10)")
    parser.add_argument("--seconds", type=finite, default=20, help="at most (default 20)")
    argv = sys.argv[1:] if argv is None else argv
    problem = control_character_problem(argv)
    if problem:
        print(f"smoke: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = parser.parse_args(argv)
    try:
        endpoints, skipped, state_dir = endpoints_from(args)
    except BadInput as exc:
        print(printable(f"smoke: {exc}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except FleetError as exc:
        for line in exc.lines:  # one line per problem of the fleet file
            print(printable(f"smoke: {line}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in skipped:
        print(f"skipped {line}")
    failed = 0
    results: list[dict[str, object]] = []
    for endpoint in endpoints:
        started = time.monotonic()
        problem = smoke(endpoint)
        result: dict[str, object] = {
            "endpoint": endpoint.host, "url": endpoint.url, "model": endpoint.model,
            "ok": problem is None, "problem": problem,
            "completion_ms": None if problem else (time.monotonic() - started) * 1000}
        results.append(result)
        if problem:
            failed += 1
            print(printable(f"FAIL {endpoint.host} {endpoint.url}: {problem}"))
            continue
        print(f"ok   {endpoint.host} {endpoint.url} serves {endpoint.model}")
        if args.requests:
            try:
                figures = probe(endpoint, args.requests, args.seconds)
            except (requests.RequestException, ValueError) as exc:
                failed += 1  # it answered one completion, then failed under the probe
                result.update(ok=False, problem=f"latency probe: {type(exc).__name__}: {exc}")
                print(printable(f"FAIL {endpoint.host} {endpoint.url}: latency probe: "
                                f"{type(exc).__name__}: {exc}"))
                continue
            if figures["ttft"]:
                result.update(requests=len(figures["ttft"]),
                              ttft_p50_ms=percentile(figures["ttft"], 0.5) * 1000,
                              e2e_p50_ms=percentile(figures["e2e"], 0.5) * 1000,
                              e2e_p99_ms=percentile(figures["e2e"], 0.99) * 1000)
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
    if state_dir is not None and endpoints:
        record(state_dir / "smoke.json", results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
