"""The structure the README promises, checked: each layer imports only the layers below it,
and no two modules share a name across packages (a newcomer can tell where a decision lives).

    gpufleet/ -> deploys/ -> operations/ -> rules/ -> facts/ -> inventory/

gpufleet/ is the `gpufleet` command (the front door): it runs the deploys and tools/ as the
commands they are, so it sits above everything and nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["inventory", "facts", "rules", "operations", "deploys", "gpufleet"]  # bottom to top


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
    the monitoring host and the GPU hosts both take, called from two lines of the deploy,
    shows as two rows of the result table (1 host, then 2 hosts)."""
    path = REPO / "deploys" / "gpu_host.py"
    steps = {alias.asname or alias.name
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deploys.")
             for alias in node.names}
    assert {"host_network", "host_record", "monitoring_host", "inference"} <= steps
    twice = {name: sorted(lines) for name, lines in calls_by_line(path, steps).items()
             if len(lines) > 1}
    assert twice == {}, f"called from several lines of deploys/gpu_host.py: {twice}"
