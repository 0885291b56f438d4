"""Broken fleet files by the hundred: validation accepts them or explains them, nothing else.

The shipped fleets (inventory/fleet.toml, inventory/sim.toml) are mutated: wrong types at every
setting, unknown keys, removed keys, bad values, truncated text, flipped and random bytes. For
each, `load_fleet` with the catalog checks either returns a fleet or raises FleetError with
one-line messages: any other exception is a bug. A sample also goes through the real
`python inventory.py`, which must never print a traceback. Examples are bounded and
derandomized, so the run is a few seconds and the same every time.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inventory.catalog import load_models
from inventory.fleet import Fleet, FleetError, load_fleet
from inventory.toml import load_toml
from rules.findings import CODES
from rules.fleet_checks import fleet_problems
from tests.unit.forked_tools import ToolServer

REPO = Path(__file__).resolve().parents[2]
SEEDS = {name: (REPO / "inventory" / name).read_text() for name in ("fleet.toml", "sim.toml")}
SECRET = "hunter2-secret"
EXAMPLES = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- a small TOML writer (inline tables only: enough to write any mutated document) ------------
def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's; raw non-ASCII (a \uD83D pair would be refused), DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{toml_value(key)} = {toml_value(value)}\n" for key, value in data.items())


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a parsed document: table keys and list items."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from paths(item, (*prefix, index))


SEED_DATA = {name: load_toml(REPO / "inventory" / name) for name in SEEDS}
# sim.toml names controller files (a CA bundle, a built image archive) that a fresh clone may
# lack and that mutants, written elsewhere, cannot reach by relative path: use one that exists.
SEED_DATA["sim.toml"]["settings"]["network"]["extra_ca_bundle"] = str(REPO / "pyproject.toml")
SEED_DATA["sim.toml"]["settings"]["verify"]["image_archives"] = [str(REPO / "pyproject.toml")]
SEED_DATA["sim.toml"]["settings"]["inference"]["image_archives"] = [str(REPO / "pyproject.toml")]
SEED_DATA["sim.toml"]["settings"]["weights"]["controller_path"] = str(REPO / "inventory")
SEED_PATHS = {name: list(paths(data)) for name, data in SEED_DATA.items()}
# Every setting the schema knows, so each can get a wrong value even where the seeds omit it.
SETTING_PATHS = [
    ("settings", *key.split(".")) for key in (
        "pin_set", "model", "precision", "tensor_parallel", "pipeline_parallel", "context_length",
        "concurrency", "gpu_memory_utilization", "weights_path", "gpus", "gpus.count",
        "gpus.model", "gpus.memory_gib", "storage.policy", "storage.free_space_margin",
        "storage.measure_read_speed", "storage.measure_seconds", "repos.cuda.url",
        "repos.cuda.key_url", "repos.cuda.key_fingerprint", "repos.container_toolkit.url",
        "apt.lists_max_age_seconds", "network.http_proxy", "network.https_proxy",
        "network.no_proxy", "network.extra_ca_bundle", "driver.reboot",
        "driver.reboot_timeout_seconds", "docker.default_runtime_nvidia",
        "docker.gpu_device_protection", "docker.registry_mirrors", "docker.daemon_json",
        "python_env.enabled", "python_env.path", "python_env.index_url", "python_env.wheelhouse",
        "verify.gpu_test_image", "verify.image_archives", "preflight.downgrade_errors",
        "sampling.temperature", "sampling.top_p",
    )
]

# --- values a person (or an editor, or a shell) might put anywhere ----------------------------
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 8, 65536, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from([
        "", "8", "yes", "true", "0.9", "nan", "/srv/m", "relative/path", "gpu-01\n", "010.0.0.1",
        "@docker/", "@local", "http://x/{distro}/{arch", "http://x/{0}", "all", "storage-hhd",
        f"http://user:{SECRET}@proxy:3128/x", f'http://u:{SECRET}"@p', "bf16", "fp12",
        "deepseek-r1", "r535-cuda121", "\x00", "\x1b[31m", "a\"b'c;d{e}f\\g", "日本語",
        "~nosuchuser/ca.pem", "~", ".", "/", "/dev/null", "x" * 5000, "/a" * 3000, "-" * 300,
    ]),
    st.datetimes(), st.dates(), st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def set_at(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        if isinstance(data, dict):
            data = data.setdefault(part, {})
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return
        if not isinstance(data, (dict, list)):
            return
    last = path[-1]
    if isinstance(data, dict) or (
        isinstance(data, list) and isinstance(last, int) and last < len(data)
    ):
        data[last] = value


def delete_at(data: Any, path: tuple[Any, ...]) -> None:
    for part in path[:-1]:
        data = data[part]
    if isinstance(data, dict):
        data.pop(path[-1], None)
    else:
        data.pop(path[-1])


@st.composite
def structural_mutants(draw: st.DrawFn) -> bytes:
    """A shipped fleet, parsed, with a few places changed, then written back as TOML."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = json.loads(json.dumps(SEED_DATA[name]))  # a deep copy (the seeds are JSON-able)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action = draw(st.sampled_from(["replace", "replace", "setting", "host-setting",
                                       "host-field", "unknown", "delete"]))
        seed_paths = SEED_PATHS[name]
        if action == "replace":
            set_at(data, draw(st.sampled_from(seed_paths)), draw(values))
        elif action == "setting":
            set_at(data, draw(st.sampled_from(SETTING_PATHS)), draw(values))
        elif action == "host-setting":
            group = draw(st.sampled_from(sorted(data.get("groups", {}) or {"g": None})))
            path = draw(st.sampled_from(SETTING_PATHS))
            set_at(data, ("groups", group, "hosts", "h9", *path), draw(values))
        elif action == "host-field":
            host_paths = [path for path in seed_paths if len(path) == 4 and path[2] == "hosts"]
            if host_paths:
                host = draw(st.sampled_from(host_paths))
                field = draw(st.sampled_from(["target", "ssh_user", "ssh_port", "ssh_key", "sudo"]))
                set_at(data, (*host, field), draw(values))
        elif action == "unknown":
            path = draw(st.sampled_from([(), *seed_paths]))
            set_at(data, (*path, draw(st.text(min_size=1, max_size=10))), draw(values))
        else:
            with contextlib.suppress(KeyError, IndexError, TypeError):
                delete_at(data, draw(st.sampled_from(seed_paths)))
    try:
        return toml_document(data).encode("utf-8", errors="surrogatepass")
    except TypeError:
        return b"x = 1\n"


@st.composite
def textual_mutants(draw: st.DrawFn) -> bytes:
    """A shipped fleet's text cut, with lines dropped, repeated or inserted, or bytes flipped."""
    text = SEEDS[draw(st.sampled_from(sorted(SEEDS)))].encode()
    action = draw(st.sampled_from(["truncate", "lines", "flip", "insert"]))
    if action == "truncate":
        return text[: draw(st.integers(min_value=0, max_value=len(text)))]
    if action == "flip":
        data = bytearray(text)
        for _ in range(draw(st.integers(min_value=1, max_value=8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    lines = text.splitlines(keepends=True)
    if action == "lines":
        index = draw(st.integers(0, len(lines) - 1))
        if draw(st.booleans()):
            del lines[index]
        else:
            lines.insert(draw(st.integers(0, len(lines))), lines[index])
        return b"".join(lines)
    inserted = draw(st.one_of(
        st.binary(max_size=40),
        st.text(max_size=40).map(lambda s: s.encode("utf-8", errors="surrogatepass")),
        st.sampled_from([b"[settings]\n", b"[groups.g]\n", b'x = "\n', b"a = [[[[\n",
                         b"[groups.hgx.hosts.gpu-01]\n", b"\xef\xbb\xbf", b"\x00\x00"]),
    ))
    lines.insert(draw(st.integers(0, len(lines))), inserted + b"\n")
    return b"".join(lines)


random_files = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", errors="surrogatepass")),
)


def check(content: bytes) -> Fleet | FleetError:
    """load_fleet + fleet_problems: a fleet or a FleetError of one-line messages, nothing else."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fleet.toml"
        path.write_bytes(content)
        try:
            fleet = load_fleet(path, checks=fleet_problems)
        except FleetError as error:
            assert error.lines, "a FleetError must say what is wrong"
            for line in error.lines:
                assert isinstance(line, str) and line.strip()
                assert "\n" not in line and "\r" not in line and "\x1b" not in line
                assert SECRET not in line, line
            return error
        assert fleet_problems(fleet) == []
        assert fleet.hosts
        return fleet


@EXAMPLES
@given(structural_mutants())
def test_structural_mutants_are_accepted_or_explained(content: bytes) -> None:
    check(content)


@EXAMPLES
@given(textual_mutants())
def test_textual_mutants_are_accepted_or_explained(content: bytes) -> None:
    check(content)


@settings(EXAMPLES, max_examples=100)
@given(random_files)
def test_random_files_are_accepted_or_explained(content: bytes) -> None:
    check(content)


@settings(EXAMPLES, max_examples=60)
@given(path=st.sampled_from(SETTING_PATHS), value=values)
def test_every_setting_with_any_value(path: tuple[str, ...], value: Any) -> None:
    """Every setting, at fleet level, with every kind of value (the seeds stay otherwise valid)."""
    data = json.loads(json.dumps(SEED_DATA["fleet.toml"]))
    set_at(data, path, value)
    try:
        content = toml_document(data).encode("utf-8", errors="surrogatepass")
    except TypeError:
        return
    check(content)


MODELS = sorted(load_models())


@settings(EXAMPLES, max_examples=200)
@given(
    model=st.sampled_from(MODELS),
    tp=st.one_of(st.none(), st.sampled_from([1, 2, 4, 8]), st.integers(min_value=1, max_value=64)),
    pp=st.one_of(st.integers(min_value=1, max_value=4), st.integers(min_value=1, max_value=64)),
    count=st.one_of(st.none(), st.integers(min_value=1, max_value=64)),
    context=st.one_of(st.none(), st.integers(min_value=256, max_value=300_000)),
    codes=st.lists(st.one_of(st.sampled_from(sorted(CODES)), st.just("all"),
                             st.text(max_size=20)), max_size=3),
)
def test_catalog_checks_hold_for_every_accepted_fleet(
    model: str, tp: int | None, pp: int, count: int | None, context: int | None,
    codes: list[str],
) -> None:
    """Well-typed settings reach rules/fleet_checks.py: whatever it accepts is consistent."""
    data = json.loads(json.dumps(SEED_DATA["fleet.toml"]))
    wanted: dict[str, Any] = {"model": model, "pipeline_parallel": pp,
                              "preflight": {"downgrade_errors": codes}}
    if tp is not None:
        wanted["tensor_parallel"] = tp
    if context is not None:
        wanted["context_length"] = context
    data["settings"].update(wanted)
    data["groups"]["hgx"]["settings"]["gpus"] = {"count": count} if count else {}
    result = check(toml_document(data).encode())
    if isinstance(result, Fleet):
        for spec in result.hosts:
            settings_ = spec.settings
            assert settings_.context_length is None or \
                settings_.context_length <= spec.model.max_context
            if settings_.tensor_parallel is not None:
                assert spec.model.attention_heads % settings_.tensor_parallel == 0
            if settings_.gpus.count is not None:
                assert (settings_.tensor_parallel or 1) * pp <= settings_.gpus.count
        assert all(code == "all" or code in CODES for code in codes)


def test_the_seeds_round_trip_through_the_writer() -> None:
    """The writer keeps a valid fleet valid: mutants differ from a seed only by the mutation."""
    for data in SEED_DATA.values():
        fleet = check(toml_document(data).encode())
        assert isinstance(fleet, Fleet), fleet
        assert [spec.name for spec in fleet.hosts] == [
            host for group in data["groups"].values() for host in group["hosts"]
        ]


def corpus_sample(count: int) -> list[bytes]:
    """A fixed sample of mutants for the subprocess test (plain random: no hypothesis needed)."""
    rng = random.Random(20240601)
    sample: list[bytes] = []
    for name, text in sorted(SEEDS.items()):
        raw = text.encode()
        sample += [raw[: rng.randrange(len(raw))] for _ in range(count // 6)]
        sample += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
                   for _ in range(count // 12)]
        data = json.loads(json.dumps(SEED_DATA[name]))
        for path in rng.sample(SETTING_PATHS, count // 6):
            mutated = json.loads(json.dumps(data))
            set_at(mutated, path, rng.choice([True, "8", 1.5, float("nan"), [], {"x": 1},
                                              f"http://u:{SECRET}@p:1/x", "a\nb"]))
            sample.append(toml_document(mutated).encode())
    return sample


@pytest.mark.parametrize("chunk", range(4))
def test_cli_never_prints_a_traceback(chunk: int) -> None:
    sample = corpus_sample(24)[chunk::4]
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for index, content in enumerate(sample):
            path = Path(folder) / f"fleet-{index}.toml"
            path.write_bytes(content)
            files.append(path)

        def env(path: Path) -> dict[str, str]:
            # Named the way pyinfra runs get it: through $GPUFLEET_FLEET.
            return {"PATH": "/usr/bin:/bin", "GPUFLEET_FLEET": str(path)}

        # Forked from one process that has imported the libraries (tests/unit/forked_tools.py),
        # not a new interpreter per file; the first file through both, which must agree.
        server = ToolServer()
        try:
            results = [server.run_script(REPO / "inventory.py", (), REPO, env(path))
                       for path in files]
        finally:
            server.close()
        new = subprocess.run([sys.executable, "inventory.py"], cwd=REPO, env=env(files[0]),
                             capture_output=True, text=True, timeout=60)
        assert (new.returncode, new.stdout, new.stderr) == (
            results[0].returncode, results[0].stdout, results[0].stderr)
    for path, result in zip(files, results, strict=True):
        output = result.stdout + result.stderr
        assert "Traceback" not in output, (path, output)
        assert result.returncode in (0, 2), (path, result.returncode, output)
        assert SECRET not in output
        if result.returncode == 2:
            assert "problem(s); no host was contacted:" in result.stderr
