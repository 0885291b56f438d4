"""Conformance with the released engines: every command line, key variable and metric name
gpufleet renders, for every pin set x engine x catalog model the set claims to serve, checked
against what that engine release's own source defines (tests/conformance/released.py extracted
it from the hash-locked PyPI wheels into tests/sim/images/engine/released/). No GPU, no import
of the engines. The stand-in engine parses with the same data: a wrong flag or key variable
fails both."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.version import Version

from inventory.catalog import load_models
from inventory.fleet import HostSpec, load_fleet
from inventory.pins import load_pins
from inventory.schema import AlertSettings
from rules import compat
from rules.canary_verdict import canary_queries
from rules.engine_metrics import ENGINE_METRICS, ENGINES, METRICS_NEED_KEY
from rules.monitoring import DASHBOARDS, render_dashboard, render_rules
from rules.multinode import VLLM_ONLINE_PP, replica_layout
from rules.serving import (
    API_KEY_VARIABLE,
    ENGINE_READS_KEY_VARIABLE,
    SGLANG_MEMORY_FRACTION_BY_TP,
    VLLM_DEFAULT_MEMORY_FRACTION,
    EnginePlan,
    compose_document,
    plan_engine,
)
from tests.conformance import check
from tests.conformance.released import (
    RELEASED_DIR,
    extract,
    read_lock,
    render,
    verified_wheel,
)

ENGINE_DIR = Path(__file__).resolve().parents[1] / "sim" / "images" / "engine"
KEY = "k3y-for-the-test-0123456789abcdefghijklmnop"


def pinned() -> list[tuple[str, str, str]]:
    """(pin set, engine, version) for every engine every pin set pins."""
    out = []
    for name, pin_set in sorted(load_pins().sets.items()):
        for engine in ENGINES:
            image = pin_set.inference.engine(engine)
            if image is not None:
                out.append((name, engine, image.version))
    return out


def served(engine: str, version: str) -> list[str]:
    """The catalog models the pinned release claims to serve (rules/compat.py)."""
    return [m.id for m in load_models().values()
            if not compat.check_engine_for_model(engine, version, m)]


def fleet(tmp_path: Path, pin_set: str, engine: str, model: str, extra: str = "",
          group: str = "", hosts: int = 1) -> list[HostSpec]:
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    text = textwrap.dedent(f"""
        [settings]
        pin_set = "{pin_set}"
        model = "{model}"
        weights_path = "/srv/models/{model}"
        {extra}
        [settings.inference]
        engine = "{engine}"
        api_key_file = "{key}"
        [groups.g.settings]
        {group}
    """)
    for i in range(hosts):
        text += f'[groups.g.hosts.h{i}]\n'
        if hosts > 1:
            text += f'settings = {{ multinode = {{ address = "10.0.0.{i + 1}" }} }}\n'
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return load_fleet(path).hosts


def plans(tmp_path: Path, pin_set: str, engine: str, version: str, model: str
          ) -> list[EnginePlan]:
    """The plans a fleet of this pin set, engine and model renders: one host at tensor parallel
    1, 2 and 8, at fp8, with pipeline parallel where the release serves it, and a replica across
    two nodes."""
    out: list[EnginePlan] = []
    variants = [("", 1, 8, 1), ("", 2, 8, 1), ("", 8, 8, 1), ('precision = "fp8"', 8, 8, 1)]
    if engine == "vllm" and Version(version) >= VLLM_ONLINE_PP:
        variants.append(("pipeline_parallel = 2", 4, 8, 2))
    for extra, tp, gpus, pp in variants:
        spec = fleet(tmp_path, pin_set, engine, model, extra)[0]
        plan = plan_engine(spec, gpus, tp, 4096, 8, 60.0, pp=pp)
        assert isinstance(plan, EnginePlan), plan
        out.append(plan)
    for spec in fleet(tmp_path, pin_set, engine, model, hosts=2,
                      group='gpus = { count = 8, model = "H100-SXM5-80GB", memory_gib = 80 }\n'
                            'multinode = { nodes = 2, interface = "eth1" }'):
        layout = replica_layout(spec, 8)
        plan = plan_engine(spec, 8, layout.tp, 4096, 8, 60.0, pp=layout.pp)
        assert isinstance(plan, EnginePlan), plan
        out.append(plan)
    return out


CASES = [(pin_set, engine, version, model) for pin_set, engine, version in pinned()
         for model in served(engine, version)]


def rendered_servers(plan: EnginePlan) -> list[tuple[dict[str, Any], str, list[str]]]:
    """(service, engine, argv) of each service that runs the engine's server."""
    out = []
    for service in compose_document(plan)["services"].values():
        words = [*service.get("entrypoint", []), *service.get("command", [])]
        if any(module in words or any(module in w for w in words)
               for module in check.ENGINE_MODULES):
            environment = dict(service.get("environment", {}))
            if service.get("env_file"):
                environment[API_KEY_VARIABLE[plan.engine]] = KEY
            engine, argv = check.engine_argv(service, environment)
            out.append((service, engine, argv))
    return out


def test_every_pin_set_serves_something_with_each_engine() -> None:
    assert {(p, e) for p, e, _, _ in CASES} == {(p, e) for p, e, _ in pinned()}


@pytest.mark.parametrize(("pin_set", "engine", "version", "model"), CASES)
def test_rendered_command_lines_conform_to_the_release(tmp_path: Path, pin_set: str,
                                                       engine: str, version: str,
                                                       model: str) -> None:
    data = check.released(engine, version)
    architecture = load_models()[model].architecture
    problems: list[str] = []
    servers = 0
    for plan in plans(tmp_path, pin_set, engine, version, model):
        for service, ran, argv in rendered_servers(plan):
            servers += 1
            assert ran == engine
            problems += check.command_problems(data, argv)
            problems += check.model_problems(data, architecture, argv)
            # Engine-named variables we set are ones the release reads.
            ours = [v for v in service.get("environment", {}) if check.ENGINE_VARIABLE.match(v)]
            if service.get("env_file"):
                variable = API_KEY_VARIABLE[engine]
                if ENGINE_READS_KEY_VARIABLE[engine]:
                    ours.append(variable)
                elif argv[argv.index("--api-key") + 1:][:1] != [KEY]:
                    problems.append(f"{engine}: the key does not reach --api-key: {argv}")
                problems += check.command_problems(data, ["--api-key", KEY])
            problems += check.variable_problems(data, ours)
    assert servers >= 6
    assert problems == []


@pytest.mark.parametrize(("pin_set", "engine", "version"), pinned())
def test_every_metric_the_monitoring_queries_exists_in_the_release(
        pin_set: str, engine: str, version: str) -> None:
    data = check.released(engine, version)
    texts = {"recording and alerting rules": render_rules(AlertSettings()),
             **{f"dashboard {uid}": render_dashboard(uid) for uid in DASHBOARDS},
             "canary verdict": json.dumps(canary_queries("m", "5m"))}
    problems = [p for where, text in texts.items()
                for p in check.metric_problems(data, text, where)]
    assert problems == []
    # On a par: every rule or query naming one engine's metric names the other's too.
    exprs = [r["expr"] for group in yaml.safe_load(texts["recording and alerting rules"])[
        "groups"] for r in group["rules"]]
    exprs += [t["expr"] for uid in DASHBOARDS
              for panel in json.loads(render_dashboard(uid))["panels"] for t in panel["targets"]]
    exprs += list(canary_queries("m", "5m").values())
    for expr in exprs:
        if "vllm:" in expr or "sglang:" in expr:
            assert "vllm:" in expr and "sglang:" in expr, expr


def test_the_engine_defaults_we_restate_are_the_releases() -> None:
    for _, engine, version in pinned():
        data = check.released(engine, version)
        if engine == "sglang":
            assert [tuple(row) for row in data["mem_fraction_static_by_tp"]] == \
                list(SGLANG_MEMORY_FRACTION_BY_TP)
        else:
            assert data["arguments"]["--gpu-memory-utilization"]["default"] == \
                VLLM_DEFAULT_MEMORY_FRACTION
        for figure, names in ENGINE_METRICS.items():
            assert names[engine] in data["metrics"], (figure, engine, version)


def test_the_lock_holds_exactly_the_pinned_versions_each_with_its_data() -> None:
    locked = {(x.engine, x.version) for x in read_lock()}
    assert locked == {(e, v) for _, e, v in pinned()}
    for x in read_lock():
        data = json.loads(x.json_path.read_text())
        assert data["wheel"] == {"filename": x.filename, "sha256": x.sha256}
        assert x.filename.startswith(f"{x.engine}-{x.version}-")


@pytest.mark.parametrize("locked", read_lock(), ids=lambda x: f"{x.engine}-{x.version}")
def test_the_committed_data_is_what_the_locked_wheel_says(locked: Any) -> None:
    wheel = verified_wheel(locked)  # raises when the cached file's sha256 is not the lock's
    if wheel is None:
        pytest.skip(f"{locked.filename} is not cached: python -m tests.conformance.released "
                    "fetch")
    assert render(extract(locked, wheel)) == locked.json_path.read_text()


# --- a wrong flag and a wrong key variable fail the check and the stand-in ------------------------
def standin() -> ModuleType:
    for path in (str(ENGINE_DIR / "python"), str(ENGINE_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    return importlib.import_module("standin_engine")


SGLANG_ARGS = ["--model-path", "/models/m", "--tp-size", "2", "--context-length", "4096"]
VLLM_ARGS = ["--model", "/models/m", "--tensor-parallel-size", "2", "--max-model-len", "4096"]


@pytest.mark.parametrize(("engine", "version", "good", "wrong"), [
    ("sglang", "0.4.1.post7", SGLANG_ARGS, ["--max-num-seqs", "8"]),  # vLLM's flag
    ("vllm", "0.4.2", VLLM_ARGS, ["--distributed-executor-backend", "ray"]),  # from 0.5
    ("vllm", "0.4.2", VLLM_ARGS, ["--quantization", "awq_marlin"]),  # not in 0.4.2's choices
    ("vllm", "0.6.6.post1", VLLM_ARGS, ["--dtype", "bf16"]),
])
def test_a_wrong_flag_fails_the_check_and_the_standins_parser(
        engine: str, version: str, good: list[str], wrong: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    data = check.released(engine, version)
    engine_module = standin()
    assert check.command_problems(data, good) == []
    engine_module.parse_command_line(engine, version, good)
    assert check.command_problems(data, good + wrong) != []
    with pytest.raises(SystemExit) as exited:
        engine_module.parse_command_line(engine, version, good + wrong)
    assert exited.value.code == 2  # argparse's error exit, as the real server's
    assert "error:" in capsys.readouterr().err


def test_an_abbreviated_flag_fails_the_check_though_argparse_takes_it() -> None:
    data = check.released("sglang", "0.4.1.post7")
    assert check.command_problems(data, ["--tp", "2"]) == [
        "sglang 0.4.1.post7: --tp is an abbreviation of --tp-size; write it in full"]
    # The stand-in, like the real argparse, takes the unique prefix.
    args = standin().parse_command_line("sglang", "0.4.1.post7", [*SGLANG_ARGS, "--tp", "4"])
    assert args.tensor_parallel_size == 4


@pytest.mark.parametrize(("engine", "version", "wrong", "right"), [
    ("sglang", "0.4.1.post7", "SGLANG_API_KEY", None),  # no variable: --api-key only
    ("vllm", "0.4.2", "VLLM_KEY", "VLLM_API_KEY"),
    ("vllm", "0.6.6.post1", "OPENAI_KEY", "VLLM_API_KEY"),
])
def test_a_wrong_key_variable_fails_the_check_and_leaves_the_standin_open(
        engine: str, version: str, wrong: str, right: str | None) -> None:
    data = check.released(engine, version)
    engine_module = standin()
    assert check.variable_problems(data, [wrong]) != []
    assert engine_module.api_key(engine, version, argparse.Namespace(api_key=None),
                                 {wrong: "k"}) is None
    if right is not None:
        assert check.variable_problems(data, [right]) == []
        assert engine_module.api_key(engine, version, argparse.Namespace(api_key=None),
                                     {right: "k"}) == "k"
    assert engine_module.api_key(engine, version, argparse.Namespace(api_key="f"), {}) == "f"


@pytest.mark.parametrize(("pin_set", "engine", "version"), pinned())
def test_the_key_guards_metrics_where_the_monitoring_sends_it(
        pin_set: str, engine: str, version: str) -> None:
    """Which paths the released key middleware guards (released/: api_key_scope, read from
    its source): the chat API always, /health never, /metrics exactly where the monitoring
    scrapes with the key (rules.engine_metrics.METRICS_NEED_KEY). The stand-in answers so."""
    guards = standin().key_guards
    assert guards(engine, version, "/v1/chat/completions")
    assert not guards(engine, version, "/health")
    assert guards(engine, version, "/metrics") is METRICS_NEED_KEY[engine], (pin_set, version)


# Engines whose transformers requirement is not their own: SGLang's comes with the vLLM its
# [srt] extra pins, a wheel not in tests/conformance/engines.lock, so pins.toml's value for it
# is taken from that vLLM's METADATA by hand (the comment beside it) and not checked here.
TRANSFORMERS_VIA = {("sglang", "0.4.1.post7"): "vllm==0.6.4.post1"}


@pytest.mark.parametrize(("pin_set", "engine", "version"), pinned())
def test_the_pinned_transformers_is_the_engines_declared_requirement(
        pin_set: str, engine: str, version: str) -> None:
    image = load_pins().sets[pin_set].inference.engine(engine)
    assert image is not None
    data = check.released(engine, version)
    if (engine, version) in TRANSFORMERS_VIA:
        # the gap stays as named: the requirement comes through that vLLM, unconditionally
        # under the extra the image installs
        assert check.declared_minimum(data, "transformers") is None
        assert f'{TRANSFORMERS_VIA[engine, version]}; extra == "srt"' in data["requires_dist"]
        return
    assert check.transformers_problems(data, image.transformers) == []


def test_a_pinned_transformers_other_than_the_requirement_fails() -> None:
    data = check.released("vllm", "0.7.3")
    assert check.transformers_problems(data, "4.45.2") == [
        "vllm 0.7.3: pins.toml says transformers 4.45.2, its METADATA requires "
        "transformers>=4.48.2"]


def test_every_rendered_command_line_parses_with_the_standin(tmp_path: Path) -> None:
    """The e2e tests run the stand-in with what we render: it must take it."""
    engine_module = standin()
    count = 0
    for pin_set, engine, version, model in CASES:
        for plan in plans(tmp_path, pin_set, engine, version, model):
            for service, _, argv in rendered_servers(plan):
                args = engine_module.parse_command_line(engine, version, argv)
                environ = {API_KEY_VARIABLE[engine]: KEY} if service.get("env_file") else {}
                assert engine_module.api_key(engine, version, args, environ) == (
                    KEY if service.get("env_file") else None)
                count += 1
    assert count >= len(CASES) * 6


def test_the_standin_exports_the_monitorings_names() -> None:
    names = standin().METRIC_NAMES
    for figure, by_engine in ENGINE_METRICS.items():
        for engine, name in by_engine.items():
            assert names[engine][figure] == name


def test_released_data_lives_where_the_standin_image_copies_it() -> None:
    assert RELEASED_DIR == ENGINE_DIR / "released"
    assert "COPY released/" in (ENGINE_DIR / "Dockerfile").read_text()


def test_each_pin_sets_label_names_its_engines_images() -> None:
    """pins.toml's descriptions say which engine release and image CUDA each set runs (the
    default once said vLLM 0.4.3, whose image is CUDA 12.4, while it pinned v0.4.2)."""
    label = {"vllm": "vLLM", "sglang": "SGLang"}
    for name, pin_set in load_pins().sets.items():
        for engine in ENGINES:
            image = pin_set.inference.engine(engine)
            if image is None:
                continue
            assert f":v{image.version}" in image.image, (name, image.image)
            assert f"{label[engine]} {image.version} (CUDA {image.cuda} image" in \
                pin_set.description, (name, pin_set.description)
