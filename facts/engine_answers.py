"""``EngineAnswers``: does each engine replica on the host answer? Health, the model list, and
one small chat completion that must return tokens — the deep check, since /health can be green
while the engine is hung or still loading. With an API key, also a request without it, which
must be refused (401): a key the engine ignores guards nothing.

Read at execution only (by a check, after the engine was (re)started): it waits, bounded, for
the replicas to come up, and sends one request to each. It changes nothing on the host. The API
key, when there is one, is read on the host from its root-only file and never printed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from facts._shell import clip, quote

_EOF = "GPUFLEET_ENGINE_PROBE"

PROBE = r'''
import json, os, sys, time, urllib.error, urllib.request
spec = json.loads(sys.argv[1])
key = None
if spec.get("key_file") and os.path.isfile(spec["key_file"]):
    for line in open(spec["key_file"]):
        if "=" in line:
            key = line.split("=", 1)[1].strip()
deadline = time.monotonic() + spec["wait_seconds"]
results = []
for port, container in spec["replicas"]:
    base = "http://%s:%d" % (spec["address"], port)
    result = {"port": port, "container": container}
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    def call(path, body=None, timeout=30):
        request = urllib.request.Request(base + path, data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    started = time.monotonic()
    while True:
        try:
            status, _ = call(spec["health_path"], timeout=5)
            if status == 200:
                result["health"] = "ok"
                break
        except (OSError, urllib.error.URLError) as exc:
            result["health"] = "%s: %s" % (type(exc).__name__, exc)
        if time.monotonic() > deadline:
            break
        time.sleep(2)
    result["waited"] = round(time.monotonic() - started, 1)
    if result.get("health") == "ok" and key:
        try:
            bare = urllib.request.Request(base + "/v1/models")
            with urllib.request.urlopen(bare, timeout=30) as response:
                result["unauthenticated"] = response.status
        except urllib.error.HTTPError as exc:
            result["unauthenticated"] = exc.code
        except Exception as exc:
            result["unauthenticated"] = "%s: %s" % (type(exc).__name__, exc)
    if result.get("health") == "ok":
        try:
            _, body = call("/v1/models")
            result["models"] = [m.get("id") for m in json.loads(body).get("data", [])]
            t0 = time.monotonic()
            _, body = call("/v1/chat/completions", spec["request"].encode(), timeout=120)
            answer = json.loads(body)
            result["seconds"] = round(time.monotonic() - t0, 3)
            result["content"] = answer["choices"][0]["message"]["content"][:200]
            result["tokens"] = answer.get("usage", {}).get("completion_tokens", 0)
        except Exception as exc:
            result["error"] = "%s: %s" % (type(exc).__name__, exc)
    results.append(result)
print(json.dumps(results))
'''


def engine_probe_script(spec: str) -> str:
    """``spec``: JSON (a string, so that pyinfra can key the fact by it)."""
    logs = " ".join(quote(c) for _, c in json.loads(spec)["replicas"])
    return "\n".join([
        f"python3 - {quote(spec)} <<'{_EOF}'\n{PROBE}\n{_EOF}",
        "echo '@logs'",
        f"for c in {logs}; do echo \"@container $c\"; "
        "docker logs --tail 40 \"$c\" 2>&1 | tail -n 40; done",
    ])


@dataclass(frozen=True)
class ReplicaAnswer:
    port: int
    container: str
    health: str = "not checked"
    waited: float = 0.0
    models: tuple[str, ...] = ()
    content: str = ""
    tokens: int = 0
    seconds: float | None = None
    error: str = ""
    log: str = ""  # the container's last lines
    # With an API key: the status of /v1/models asked without it (401 when the key guards the
    # API), or why that request failed; None when not asked (no key).
    unauthenticated: int | str | None = None


@dataclass(frozen=True)
class EngineAnswersResult:
    replicas: tuple[ReplicaAnswer, ...] = ()
    raw: str = ""
    errors: list[str] = field(default_factory=list)


def _status(value: object) -> int | str | None:
    if value is None or isinstance(value, int):
        return value
    return str(value)


def parse_engine_answers(lines: list[str]) -> EngineAnswersResult:
    """Parse the probe's JSON line and the containers' logs. Never raises."""
    text = "\n".join(lines)
    head, _, tail = text.partition("@logs")
    logs: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in tail.splitlines():
        if line.startswith("@container "):
            current = logs.setdefault(line.split(" ", 1)[1], [])
        elif current is not None:
            current.append(line)
    try:
        data = json.loads(head.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return EngineAnswersResult(raw=clip(text), errors=["the probe printed no result"])
    replicas = []
    for item in data:
        replicas.append(ReplicaAnswer(
            port=int(item.get("port", 0)), container=str(item.get("container", "")),
            health=str(item.get("health", "not checked")), waited=float(item.get("waited", 0)),
            models=tuple(str(m) for m in item.get("models", [])),
            content=str(item.get("content", "")), tokens=int(item.get("tokens", 0) or 0),
            seconds=item.get("seconds"), error=str(item.get("error", "")),
            unauthenticated=_status(item.get("unauthenticated")),
            log="\n".join(logs.get(str(item.get("container", "")), [])),
        ))
    return EngineAnswersResult(tuple(replicas), clip(text))


class EngineAnswers(FactBase[EngineAnswersResult]):
    """
    Each replica's health, model list and one chat completion (waits up to wait_seconds).

    + spec: JSON of {"address", "replicas": [[port, container]], "health_path", "request"
      (the chat completion body, JSON), "wait_seconds", "key_file"}

    .. code:: python

        EngineAnswersResult(replicas=(ReplicaAnswer(port=8000, container="...-engine-0",
                            health="ok", models=("deepseek-r1-distill-qwen-7b",),
                            content="Hello ...", tokens=8, seconds=0.4),))
    """

    @staticmethod
    def default() -> EngineAnswersResult:
        return EngineAnswersResult(errors=["no output from the host"])

    def command(self, spec: str) -> str:
        return engine_probe_script(spec)

    def process(self, output: list[str]) -> EngineAnswersResult:
        return parse_engine_answers(output)
