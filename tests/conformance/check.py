"""Does what gpufleet renders agree with a released engine? Pure checks against the data
tests/conformance/released.py extracted from that release's source (released/*.json).

Each function returns the problems as lines (empty: conforms).
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from tests.conformance.released import RELEASED_DIR

# The engine's entry modules, as rules/serving.py runs them.
ENGINE_MODULES = {"vllm.entrypoints.openai.api_server": "vllm",
                  "sglang.launch_server": "sglang"}
# Variables named for an engine are the engine's to read; others (HF_*, NCCL_*, GLOO_*) are
# read by the libraries under it.
ENGINE_VARIABLE = re.compile(r"^(VLLM|SGLANG)_")
METRIC = re.compile(r"\b(?:vllm|sglang):[A-Za-z0-9_:]*[A-Za-z0-9_]")


@cache
def released(engine: str, version: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RELEASED_DIR / f"{engine}-{version}.json").read_text())
    return data


def _options(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {flag: arg for arg in data["arguments"].values() for flag in arg["flags"]}


def command_problems(data: dict[str, Any], argv: list[str]) -> list[str]:
    """Every flag must be one of the release's option strings in full (argparse would take an
    abbreviation, but a later release adding a flag with the same prefix breaks it), take a
    value exactly when the release's does, and give a value within its choices."""
    who = f"{data['engine']} {data['version']}"
    options = _options(data)
    problems: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("-"):
            problems.append(f"{who}: stray argument {token!r}")
            continue
        flag: str = token
        inline: str | None = None
        if "=" in token:
            flag, inline = token.split("=", 1)
        arg = options.get(flag)
        if arg is None:
            longer = sorted(o for o in options if o.startswith(flag))
            problems.append(f"{who}: {flag} is an abbreviation of {', '.join(longer)}; write "
                            "it in full" if longer else f"{who}: unknown flag {flag}")
            if inline is None and i < len(argv) and not argv[i].startswith("-"):
                i += 1
            continue
        if not arg["takes_value"]:
            if inline is not None:
                problems.append(f"{who}: {flag} takes no value ({inline!r} given)")
            continue
        values: list[str] = []
        if inline is not None:
            values = [inline]
        elif arg["nargs"] in ("+", "*"):
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
        elif i < len(argv) and not (argv[i].startswith("-") and not _number(argv[i])):
            values = [argv[i]]
            i += 1
        if not values and arg["nargs"] not in ("?", "*"):
            problems.append(f"{who}: {flag} needs a value")
        for value in values:
            problems += _value_problems(who, flag, arg, value)
    return problems


def _number(text: str) -> bool:
    return re.fullmatch(r"-?\d+(\.\d+)?", text) is not None


def _value_problems(who: str, flag: str, arg: dict[str, Any], value: str) -> list[str]:
    kind = arg["type"]
    try:
        typed: Any = {"int": int, "float": float}.get(kind or "", str)(value)
    except ValueError:
        return [f"{who}: {flag} {value!r} is not {kind}"]
    choices = arg["choices"]
    if arg.get("choices_unread"):
        return [f"{who}: {flag}: its choices ({arg['choices_unread']}) could not be read from "
                f"the source; cannot check {value!r}"]
    if choices is not None and typed not in choices:
        allowed = ", ".join(str(c) for c in choices if c is not None)
        return [f"{who}: {flag} {value!r} is not one of {allowed}"]
    return []


def variable_problems(data: dict[str, Any], variables: list[str]) -> list[str]:
    """Variables the engine is relied on to read must be read by that release."""
    who = f"{data['engine']} {data['version']}"
    return [f"{who} reads no {name} (no os.environ/os.getenv of it in its source)"
            for name in variables if name not in data["env_vars"]]


def exposed_metrics(data: dict[str, Any]) -> set[str]:
    """The series names the release exports (prometheus_client's naming)."""
    names: set[str] = set()
    for name, metric in data["metrics"].items():
        kind = metric["type"]
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", name}
        elif kind == "counter":
            names.add(name.removesuffix("_total") + "_total")
        elif kind == "info":
            names.add(f"{name}_info")
        else:
            names.add(name)
    return names


def metric_problems(data: dict[str, Any], text: str, where: str) -> list[str]:
    """Every metric of this engine that ``text`` (PromQL, JSON) names exists in the release."""
    prefix = f"{data['engine']}:"
    have = exposed_metrics(data)
    return [f"{where}: {name} is not exported by {data['engine']} {data['version']}"
            for name in sorted(set(METRIC.findall(text)))
            if name.startswith(prefix) and name not in have]


def model_problems(data: dict[str, Any], architecture: str, argv: list[str]) -> list[str]:
    """The release registers the architecture, or the command line trusts remote code."""
    if architecture in data["architectures"] or "--trust-remote-code" in argv:
        return []
    return [f"{data['engine']} {data['version']} registers no {architecture} (and "
            "--trust-remote-code is not rendered)"]


def engine_argv(service: dict[str, Any], environment: dict[str, str]) -> tuple[str, list[str]]:
    """(engine, its arguments) of a Compose service that runs an engine server, as the
    container would run it: after a launcher's ``--``, and with what a ``sh -c`` wrapper
    appends (its ``$$VAR`` expanded from ``environment``)."""
    words = [*service.get("entrypoint", []), *service.get("command", [])]
    if "--" in words:  # the multi-node launcher: the server's command after --
        words = words[words.index("--") + 1:]
    appended: list[str] = []
    if words[:2] == ["sh", "-c"]:
        script = words[2]
        m = re.fullmatch(r'exec "\$\$@" (.*)', script)
        if m is None:
            raise ValueError(f"a shell wrapper gpufleet does not render: {script!r}")
        for word in re.findall(r'"[^"]*"|\S+', m.group(1)):
            word = word.strip('"')
            var = re.fullmatch(r"\$\$(\w+)", word)
            appended.append(environment.get(var.group(1), "") if var else word)
        words = words[4:]  # sh -c SCRIPT $0
    for module, engine in ENGINE_MODULES.items():
        if module in words:
            return engine, [*words[words.index(module) + 1:], *appended]
    raise ValueError(f"no engine server in {words}")


def declared_minimum(data: dict[str, Any], project: str) -> str | None:
    """The lowest ``project`` release the engine's METADATA accepts unconditionally (its
    Requires-Dist ``>=`` or ``==`` bound; None: it declares none)."""
    from packaging.requirements import Requirement

    for line in data["requires_dist"]:
        requirement = Requirement(line)
        if requirement.name.lower() != project or requirement.marker is not None:
            continue
        for spec in requirement.specifier:
            if spec.operator in (">=", "=="):
                return spec.version
    return None


def transformers_problems(data: dict[str, Any], pinned: str) -> list[str]:
    """pins.toml's transformers of an engine image is the engine's own requirement (the lowest
    release its image can carry): what preflight judges a model's architecture against."""
    who = f"{data['engine']} {data['version']}"
    declared = declared_minimum(data, "transformers")
    if declared is None:
        return [f"{who}: its METADATA declares no transformers requirement of its own"]
    if declared != pinned:
        return [f"{who}: pins.toml says transformers {pinned}, its METADATA requires "
                f"transformers>={declared}"]
    return []
