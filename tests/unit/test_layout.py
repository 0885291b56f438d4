"""The structure the README promises, checked: each layer imports only the layers below it,
and no two modules share a name across packages (a newcomer can tell where a decision lives).

    gpufleet/ -> deploys/ -> components/ -> operations/ -> rules/ -> facts/ -> inventory/

A component (components/<name>/, one folder) imports only the layers below deploys/ and the
components it declares (``depends_on``); inside it, each module keeps to its layer:
manages.py is plain data (facts.coverage reads it), decisions.py is pure rules, deploy.py
calls operations.

gpufleet/ is the `gpufleet` command (the front door): it runs the deploys and tools/ as the
commands they are, so it sits above everything and nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["inventory", "facts", "rules", "operations", "components", "deploys",
          "gpufleet"]  # bottom to top


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    wrong = {
        str(path.relative_to(REPO)): sorted(imports_of(path) & above)
        for path in sorted((REPO / layer).glob("*.py"))
        if imports_of(path) & above
    }
    assert wrong == {}, f"{layer}/ imports layers above it: {wrong}"


def test_no_two_modules_share_a_name_across_packages() -> None:
    seen: dict[str, str] = {}
    clashes = []
    for layer in LAYERS:
        for path in sorted((REPO / layer).glob("*.py")):
            if path.name == "__init__.py":
                continue
            if path.stem in seen:
                clashes.append(f"{seen[path.stem]}/{path.name} and {layer}/{path.name}")
            seen[path.stem] = layer
    assert clashes == []


# The layers a component's module may import, by its file name (besides its own folder and the
# components it declares); any other file of a component may import every layer below deploys.
COMPONENT_MODULE_LAYERS = {
    "manages": set(),
    "decisions": {"inventory", "facts", "rules"},
    "deploy": {"inventory", "facts", "rules", "operations"},
}
PROJECT = set(LAYERS) | {"tools", "benchmarks", "tests"}


def component_imports(path: Path) -> set[str]:
    """The modules ``path`` imports by absolute name, in full (``components.x.decisions``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_a_component_imports_only_the_layers_below_it_and_the_components_it_declares() -> None:
    from deploys.runner import STEPS

    parts: list[Any] = list(STEPS)  # the steps' names and the components
    declared = {part.name: set(part.depends_on) for part in parts if not isinstance(part, str)}
    wrong: dict[str, list[str]] = {}
    for folder in sorted(p for p in (REPO / "components").iterdir() if p.is_dir()
                         and not p.name.startswith("__")):
        allowed_components = {folder.name} | declared.get(folder.name, set())
        for path in sorted(folder.glob("*.py")):
            layers = COMPONENT_MODULE_LAYERS.get(path.stem, set(LAYERS[:LAYERS.index(
                "components")]))
            bad = sorted(
                module for module in component_imports(path)
                if module.split(".")[0] in PROJECT and not (
                    module.split(".")[0] in layers
                    or (module.split(".")[0] == "components" and len(module.split(".")) > 1
                        and module.split(".")[1] in allowed_components
                        and path.stem != "manages")))
            if bad:
                wrong[str(path.relative_to(REPO))] = bad
    assert wrong == {}
    # manages.py imports nothing at all: facts.coverage loads it while facts/ is importing.
    for path in (REPO / "components").glob("*/manages.py"):
        assert component_imports(path) <= {"__future__"}, path


def calls_by_line(path: Path, names: set[str]) -> dict[str, set[int]]:
    """Lines on which each of ``names`` is called in ``path``."""
    found: dict[str, set[int]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in names:
            found.setdefault(node.func.id, set()).add(node.lineno)
    return found


def test_each_step_of_the_main_deploy_is_called_from_one_line() -> None:
    """pyinfra tells one step from another by the line numbers of its call stack: a step that
    the monitoring host and the GPU hosts both take, called from two lines of the runner,
    shows as two rows of the result table (1 host, then 2 hosts)."""
    path = REPO / "deploys" / "runner.py"
    steps = {alias.asname or alias.name
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deploys.")
             for alias in node.names}
    assert {"host_network", "host_record", "monitoring_host", "inference"} <= steps
    twice = {name: sorted(lines) for name, lines in calls_by_line(path, steps).items()
             if len(lines) > 1}
    assert twice == {}, f"called from several lines of deploys/runner.py: {twice}"


def test_every_converging_entry_is_a_list_of_the_runners_steps() -> None:
    """deploys/gpu_host.py and deploys/serve.py prepare nothing themselves: each hands the
    runner its list of steps, so the preflight, the exporter beside the engine and the
    manifest cannot differ between them."""
    from deploys.runner import GPU_HOST, SERVE, STEPS

    for entry in ("gpu_host", "serve"):
        tree = ast.parse((REPO / "deploys" / f"{entry}.py").read_text())
        imported = {(node.module, alias.name) for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) for alias in node.names}
        assert {module for module, _ in imported} == {"deploys.runner"}, (entry, imported)
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
        assert [ast.unparse(c) for c in calls] in (["run(GPU_HOST)"], ["run(SERVE)"]), entry
    assert GPU_HOST == STEPS
    assert set(SERVE) < set(STEPS) and "record" in SERVE and "inference" in SERVE
    assert [part for part in STEPS if part in SERVE] == list(SERVE)  # in the one order
