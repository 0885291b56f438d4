"""What the released serving engines accept and export, read from their released source.

The pinned engine versions (inventory/pins.toml) are fetched as the wheels PyPI publishes,
hash-locked in tests/conformance/engines.lock, and read with Python's ``ast`` — never imported
(their GPU dependencies are not installed here). Per engine version this extracts into one small
JSON file (tests/sim/images/engine/released/, so the stand-in engine reads the same data):

- the server's command-line flags: every ``add_argument`` of the files that build its parser
  (option strings, dest, action, type, choices, default, whether it takes a value);
- the environment variables the package reads (``os.environ.get``, ``os.getenv``,
  ``os.environ[...]``, ``"X" in os.environ``), with the files that read them;
- the Prometheus metrics it exports (``Counter``/``Gauge``/``Histogram``/``Info`` names, types
  and histogram buckets);
- the model architectures it registers, and (vLLM) the configs it registers itself;
- (SGLang) the per-tensor-parallel defaults of --mem-fraction-static from ServerArgs.__post_init__.

    python -m tests.conformance.released fetch     # pip download the locked wheels (hashes checked)
    python -m tests.conformance.released extract   # (re)write the JSON files from the wheels

The wheels are cached in $GPUFLEET_ENGINE_WHEELS (default ~/.cache/gpufleet/engine-wheels).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOCK = Path(__file__).with_name("engines.lock")
RELEASED_DIR = ROOT / "tests" / "sim" / "images" / "engine" / "released"
# What pip must pick for the locked files: vLLM 0.4.2 publishes one wheel per CPython version.
PIP_PLATFORM = ["--only-binary=:all:", "--platform", "manylinux1_x86_64",
                "--python-version", "3.11", "--implementation", "cp"]

# The files that build each engine's server parser, per engine (paths inside the wheel).
PARSER_FILES = {
    "vllm": ["vllm/engine/arg_utils.py", "vllm/entrypoints/openai/cli_args.py"],
    "sglang": ["sglang/srt/server_args.py"],
}
METRIC_FILES = {
    "vllm": ["vllm/engine/metrics.py"],
    "sglang": ["sglang/srt/metrics/collector.py"],
}
METRIC_TYPES = ("Counter", "Gauge", "Histogram", "Info", "Summary")
NO_VALUE_ACTIONS = {"store_true", "store_false", "store_const", "count", "help", "version",
                    "argparse.BooleanOptionalAction", "BooleanOptionalAction"}


def cache_dir() -> Path:
    return Path(os.environ.get("GPUFLEET_ENGINE_WHEELS")
                or Path.home() / ".cache" / "gpufleet" / "engine-wheels")


@dataclass(frozen=True)
class Locked:
    """One locked artifact: ``engine==version``, its file name and sha256."""

    engine: str
    version: str
    filename: str
    sha256: str

    @property
    def json_path(self) -> Path:
        return RELEASED_DIR / f"{self.engine}-{self.version}.json"


def read_lock(path: Path = LOCK) -> list[Locked]:
    """The lock: ``# file: NAME`` comment lines, each followed by ``pkg==ver --hash=sha256:H``."""
    locked, filename = [], None
    for line in path.read_text().splitlines():
        if m := re.match(r"#\s*file:\s*(\S+)", line):
            filename = m.group(1)
        elif m := re.match(r"([a-z0-9_-]+)==(\S+)\s+--hash=sha256:([0-9a-f]{64})", line):
            if filename is None:
                raise ValueError(f"{path}: {line!r} has no '# file:' line before it")
            locked.append(Locked(m.group(1), m.group(2), filename, m.group(3)))
            filename = None
    return locked


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- reading the source ------------------------------------------------------------------------
class Package:
    """The .py files of one wheel, parsed on demand."""

    def __init__(self, wheel: Path) -> None:
        self.zip = zipfile.ZipFile(wheel)
        self.names = set(self.zip.namelist())
        self._trees: dict[str, ast.Module] = {}

    def tree(self, path: str) -> ast.Module:
        if path not in self._trees:
            with warnings.catch_warnings():  # the release's own invalid escapes and the like
                warnings.simplefilter("ignore")
                self._trees[path] = ast.parse(self.zip.read(path).decode(), path)
        return self._trees[path]

    def python_files(self) -> Iterator[str]:
        return (n for n in sorted(self.names) if n.endswith(".py"))

    def module_file(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for path in (f"{base}.py", f"{base}/__init__.py"):
            if path in self.names:
                return path
        return None

    def resolve_name(self, path: str, name: str, depth: int = 0) -> ast.expr | None:
        """The value a module-level name is assigned in ``path``, following ``from X import``."""
        if depth > 4:
            return None
        tree = self.tree(path)
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return node.value
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and node.target.id == name and node.value is not None):
                return node.value
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and any(
                    (a.asname or a.name) == name for a in node.names):
                module = node.module
                if node.level:  # relative import
                    parts = path.split("/")[:-node.level]
                    module = ".".join(parts + ([module] if module else []))
                target = self.module_file(module)
                original = next(a.name for a in node.names if (a.asname or a.name) == name)
                if target:
                    return self.resolve_name(target, original, depth + 1)
        return None

    def class_default(self, path: str, cls: str, attr: str) -> ast.expr | None:
        for node in self.tree(path).body:
            if isinstance(node, ast.ClassDef) and node.name == cls:
                for item in node.body:
                    if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                            and item.target.id == attr):
                        return item.value
                    if isinstance(item, ast.Assign) and any(
                            isinstance(t, ast.Name) and t.id == attr for t in item.targets):
                        return item.value
        return None

    def values(self, path: str, node: ast.expr | None) -> list[Any] | None:
        """A list of constants from a literal, a name bound to one, ``[*NAME, None]``,
        a dict's keys, or ``get_args(Literal[...])``; None when it cannot be read."""
        if node is None:
            return None
        if isinstance(node, ast.Constant):
            return [node.value]
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            out: list[Any] = []
            for element in node.elts:
                inner = element.value if isinstance(element, ast.Starred) else element
                got = self.values(path, inner)
                if got is None:
                    return None
                out += got
            return out
        if isinstance(node, ast.Dict):
            keys = [k for k in node.keys if k is not None]
            if len(keys) != len(node.keys) or not all(isinstance(k, ast.Constant) for k in keys):
                return None
            return [k.value for k in keys if isinstance(k, ast.Constant)]
        if isinstance(node, ast.Name):
            return self.values(path, self.resolve_name(path, node.id))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args and (
                node.func.id in ("get_args", "list", "tuple", "sorted")):
            return self.values(path, node.args[0])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "keys":
            return self.values(path, node.func.value)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and \
                node.value.id == "Literal":
            return self.values(path, node.slice)
        return None

    def literal(self, path: str, node: ast.expr | None) -> tuple[bool, Any]:
        """(known, value) of a default: a constant, or ``Class.field`` of a dataclass here."""
        if node is None:
            return True, None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            value = self.class_default(path, node.value.id, node.attr)
            if value is None:
                return False, None
            node = value
        try:
            return True, ast.literal_eval(node)
        except ValueError:
            return False, None


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dest(flags: list[str]) -> str:
    """argparse's dest: the first long option (else the first), dashes to underscores."""
    long = [f for f in flags if f.startswith("--")]
    return (long or flags)[0].lstrip("-").replace("-", "_")


def extract_arguments(pkg: Package, engine: str) -> dict[str, dict[str, Any]]:
    """Every ``add_argument`` of the engine's parser files, keyed by its first option string."""
    args: dict[str, dict[str, Any]] = {}
    for path in PARSER_FILES[engine]:
        for node in ast.walk(pkg.tree(path)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument"):
                continue
            flags = [a.value for a in node.args
                     if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if not flags or not flags[0].startswith("-"):
                continue  # positional (vllm serve's model_tag): not ours to render
            action_node = _keyword(node, "action")
            action = "store" if action_node is None else (
                action_node.value if isinstance(action_node, ast.Constant)
                else ast.unparse(action_node))
            type_node = _keyword(node, "type")
            choices_node = _keyword(node, "choices")
            choices = pkg.values(path, choices_node)
            known, default = pkg.literal(path, _keyword(node, "default"))
            dest_node = _keyword(node, "dest")
            nargs_node = _keyword(node, "nargs")
            entry: dict[str, Any] = {
                "flags": flags,
                "dest": dest_node.value if isinstance(dest_node, ast.Constant) else _dest(flags),
                "action": action,
                "takes_value": action not in NO_VALUE_ACTIONS,
                "type": None if type_node is None else ast.unparse(type_node),
                "choices": choices,
                "nargs": None if nargs_node is None else ast.literal_eval(nargs_node)
                if isinstance(nargs_node, ast.Constant) else ast.unparse(nargs_node),
                "default": default if known else None,
                "required": isinstance(_keyword(node, "required"), ast.Constant)
                and getattr(_keyword(node, "required"), "value", False) is True,
                "source": f"{path}:{node.lineno}",
            }
            if choices_node is not None and choices is None:
                entry["choices_unread"] = ast.unparse(choices_node)
            if not known:
                entry["default_unread"] = ast.unparse(_keyword(node, "default") or node)
            args[flags[0]] = entry
    return dict(sorted(args.items()))


def _env_name(call: ast.Call) -> str | None:
    func = ast.unparse(call.func)
    if func in ("os.environ.get", "os.getenv", "environ.get", "getenv") and call.args and \
            isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    return None


def extract_env_vars(pkg: Package, top: str) -> dict[str, list[str]]:
    """Variables the package reads (not its tests), each with up to three files reading it."""
    found: dict[str, list[str]] = {}
    for path in pkg.python_files():
        if not path.startswith(f"{top}/") or re.search(r"/tests?/", path):
            continue
        for node in ast.walk(pkg.tree(path)):
            name: object = None
            if isinstance(node, ast.Call):
                name = _env_name(node)
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ" \
                    and isinstance(node.ctx, ast.Load) and isinstance(node.slice, ast.Constant):
                name = node.slice.value
            elif isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(
                    node.ops[0], (ast.In, ast.NotIn)) and ast.unparse(
                    node.comparators[0]) == "os.environ" and isinstance(node.left, ast.Constant):
                name = node.left.value
            if isinstance(name, str):
                files = found.setdefault(name, [])
                if path not in files and len(files) < 3:
                    files.append(path)
    return dict(sorted(found.items()))


def extract_metrics(pkg: Package, engine: str) -> dict[str, dict[str, Any]]:
    """Prometheus metrics by declared name: type, buckets when literal, and where."""
    metrics: dict[str, dict[str, Any]] = {}
    for path in METRIC_FILES[engine]:
        for node in ast.walk(pkg.tree(path)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func.attr if isinstance(node.func, ast.Attribute) else (
                node.func.id if isinstance(node.func, ast.Name) else "")
            kind = next((t for t in METRIC_TYPES if func in (t, f"_{t.lower()}_cls")), None)
            if kind is None:
                continue
            name_node = _keyword(node, "name") or (node.args[0] if node.args else None)
            if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
                continue
            entry: dict[str, Any] = {"type": kind.lower(), "source": f"{path}:{node.lineno}"}
            buckets = pkg.values(path, _keyword(node, "buckets"))
            if kind == "Histogram":
                entry["buckets"] = buckets
            metrics[name_node.value] = entry
    return dict(sorted(metrics.items()))


def extract_architectures(pkg: Package, engine: str) -> list[str]:
    """The architectures (config.json "architectures") the engine's model registry knows."""
    names: set[str] = set()
    if engine == "vllm":
        for path in ("vllm/model_executor/models/__init__.py",
                     "vllm/model_executor/models/registry.py"):
            if path not in pkg.names:
                continue
            for node in pkg.tree(path).body:
                if not isinstance(node, (ast.Assign, ast.AnnAssign)):
                    continue
                target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                if (isinstance(target, ast.Name) and re.fullmatch(r"_\w*MODELS", target.id)
                        and not re.match(r"_(ROCM|OOT)", target.id)
                        and isinstance(node.value, ast.Dict)):
                    names |= {str(v) for v in pkg.values(path, node.value) or []}
    else:  # SGLang: each sglang/srt/models/*.py names its classes in EntryClass
        for path in pkg.python_files():
            if not re.fullmatch(r"sglang/srt/models/\w+\.py", path):
                continue
            for node in pkg.tree(path).body:
                if isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "EntryClass" for t in node.targets):
                    value = node.value
                    elts = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
                    names |= {e.id for e in elts if isinstance(e, ast.Name)}
    return sorted(names)


def extract_config_registry(pkg: Package, engine: str) -> list[str] | None:
    """vLLM's own config classes by model_type (others go through transformers' AutoConfig)."""
    path = "vllm/transformers_utils/config.py"
    if engine != "vllm" or path not in pkg.names:
        return None
    value = pkg.resolve_name(path, "_CONFIG_REGISTRY")
    if not isinstance(value, ast.Dict):
        return None
    keys = [str(k.value) for k in value.keys if isinstance(k, ast.Constant)]
    for k, v in zip(value.keys, value.values, strict=True):
        if k is None and isinstance(v, ast.Name):  # **_CONFIG_REGISTRY_OVERRIDE_HF
            keys += [str(x) for x in pkg.values(path, v) or []]
    return sorted(keys)


def extract_mem_fraction_defaults(pkg: Package) -> list[list[float]] | None:
    """SGLang's ServerArgs.__post_init__: ``if self.tp_size >= N: mem_fraction_static = F``
    chain, as [[N, F], ..., [0, F_else]], largest N first."""
    path = "sglang/srt/server_args.py"
    for node in ast.walk(pkg.tree(path)):
        if not (isinstance(node, ast.If) and ast.unparse(node.test)
                == "self.mem_fraction_static is None"):
            continue
        table: list[list[float]] = []
        branch: list[ast.stmt] = node.body
        while branch and isinstance(branch[0], ast.If):
            test = branch[0]
            m = re.fullmatch(r"self\.tp_size >= (\d+)", ast.unparse(test.test))
            value = test.body[0]
            if not (m and isinstance(value, ast.Assign)):
                return None
            table.append([int(m.group(1)), ast.literal_eval(value.value)])
            branch = test.orelse
        if branch and isinstance(branch[0], ast.Assign):
            table.append([0, ast.literal_eval(branch[0].value)])
            return table
    return None


def _prefix(node: ast.expr) -> str | None:
    """The path prefix a ``....startswith(X)`` test names: a string, or an f-string's text
    (f"{root_path}/v1": /v1, the root path being empty unless configured)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values
                       if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return None


def extract_key_scope(pkg: Package, top: str) -> dict[str, list[str]] | None:
    """Which paths the engine's API key guards, read from its key middleware (the function
    answering 401 "Unauthorized"): its branches that pass a request on before the key is
    compared. ``if not path.startswith(P): pass on``: only P is guarded ("guarded");
    ``if path.startswith(P): pass on``: everything but P is ("open")."""
    for path in pkg.python_files():
        if not path.startswith(f"{top}/"):
            continue
        for func in ast.walk(pkg.tree(path)):
            if not isinstance(func, ast.AsyncFunctionDef) or not any(
                    isinstance(n, ast.Constant) and n.value == "Unauthorized"
                    for n in ast.walk(func)):
                continue
            scope: dict[str, list[str]] = {"guarded": [], "open": []}
            for node in func.body:
                if not (isinstance(node, ast.If) and isinstance(node.body[0], ast.Return)
                        and "call_next" in ast.unparse(node.body[0])):
                    continue
                test, kind = node.test, "open"
                if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
                    test, kind = test.operand, "guarded"
                if isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) \
                        and test.func.attr == "startswith" and test.args:
                    prefix = _prefix(test.args[0])
                    if prefix is not None:
                        scope[kind].append(prefix)
            return scope
    return None


# The requirements of the wheel's METADATA that decide what loads a model's config in the
# engine's image: transformers, or the vLLM an engine runs on (SGLang's [srt] extra).
REQUIREMENT_NAMES = ("transformers", "vllm")


def extract_requirements(pkg: Package) -> list[str]:
    """Its Requires-Dist lines for REQUIREMENT_NAMES, as the METADATA writes them."""
    found = []
    for name in sorted(pkg.names):
        if name.count("/") == 1 and name.endswith(".dist-info/METADATA"):
            for line in pkg.zip.read(name).decode().splitlines():
                if not line.startswith("Requires-Dist:"):
                    continue
                requirement = line.split(":", 1)[1].strip()
                project = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
                if project.lower() in REQUIREMENT_NAMES:
                    found.append(requirement)
    return found


def extract(locked: Locked, wheel: Path) -> dict[str, Any]:
    pkg = Package(wheel)
    top = {"vllm": "vllm", "sglang": "sglang"}[locked.engine]
    data: dict[str, Any] = {
        "engine": locked.engine,
        "version": locked.version,
        "wheel": {"filename": locked.filename, "sha256": locked.sha256},
        "generated_by": "python -m tests.conformance.released extract",
        "parser_files": PARSER_FILES[locked.engine],
        "arguments": extract_arguments(pkg, locked.engine),
        "env_vars": extract_env_vars(pkg, top),
        "api_key_scope": extract_key_scope(pkg, top),
        "requires_dist": extract_requirements(pkg),
        "metric_files": METRIC_FILES[locked.engine],
        "metrics": extract_metrics(pkg, locked.engine),
        "architectures": extract_architectures(pkg, locked.engine),
    }
    registry = extract_config_registry(pkg, locked.engine)
    if registry is not None:
        data["config_registry"] = registry
    if locked.engine == "sglang":
        data["mem_fraction_static_by_tp"] = extract_mem_fraction_defaults(pkg)
    return data


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=False) + "\n"


def verified_wheel(locked: Locked, directory: Path | None = None) -> Path | None:
    """The cached wheel when present; an error when its sha256 is not the locked one."""
    path = (directory or cache_dir()) / locked.filename
    if not path.is_file():
        return None
    got = sha256_of(path)
    if got != locked.sha256:
        raise ValueError(f"{path}: sha256 {got}, the lock says {locked.sha256}")
    return path


def fetch(directory: Path) -> None:
    """Download the locked wheels not yet in ``directory`` (nothing, not even an index query,
    when every one is there with its locked sha256). One pip call per wheel: the lock holds
    several versions of vLLM, which one resolution refuses as a conflict."""
    lock = read_lock()
    missing = [locked for locked in lock if verified_wheel(locked, directory) is None]
    if not missing:
        print(f"engine wheels: all {len(lock)} locked wheels are in {directory}")
        return
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for locked in missing:
            requirement = Path(tmp) / f"{locked.engine}-{locked.version}.txt"
            requirement.write_text(
                f"{locked.engine}=={locked.version} --hash=sha256:{locked.sha256}\n")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                            "--require-hashes", "--disable-pip-version-check", "-qq",
                            *PIP_PLATFORM, "-d", str(directory), "-r", str(requirement)],
                           check=True)
            if verified_wheel(locked, directory) is None:  # (a wrong hash raises)
                raise SystemExit(f"pip left no {locked.filename} in {directory}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("command", choices=["fetch", "extract"])
    p.add_argument("--wheels", type=Path, default=None, help="the wheel cache folder")
    a = p.parse_args(argv)
    directory = a.wheels or cache_dir()
    if a.command == "fetch":
        fetch(directory)
        return 0
    RELEASED_DIR.mkdir(parents=True, exist_ok=True)
    for locked in read_lock():
        wheel = verified_wheel(locked, directory)
        if wheel is None:
            print(f"missing {directory / locked.filename}: run `fetch` first", file=sys.stderr)
            return 1
        locked.json_path.write_text(render(extract(locked, wheel)))
        print(f"wrote {locked.json_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
