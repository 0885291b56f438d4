"""Shared pieces of the end-to-end tests: the simulator and the real pyinfra CLI.

Every test here drives the real `pyinfra` command against simulated hosts (tests/sim/): apt,
dpkg, systemd and Docker inside them are real; only NVIDIA hardware and repositories are
stand-ins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.sim import simctl

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
FLEETS = Path(__file__).resolve().parent / "fleets"


@pytest.fixture(scope="session")
def sim() -> None:
    """The simulator's images, network and stand-in repository (idempotent). Each test module
    starts its own copies of the hosts: the rehearsal fleet is never touched by tests."""
    if not simctl.engine_reachable():
        pytest.skip("no Docker engine reachable: run `make test` (it installs and starts one)")
    simctl.ensure_shared()


@pytest.fixture(scope="module", autouse=True)
def _remove_the_module_hosts() -> Iterator[None]:
    """Every test module's host copies are removed (containers and volumes) when it ends, even
    when it failed: a running host costs the rest of the run CPU (systemd, dockerd, engines),
    and a full run leaves no simulated host but the rehearsal fleet's. Autouse and set up
    first, so it is torn down after the module's own fixtures."""
    from tests.e2e import stack_helpers

    before = set(stack_helpers.STARTED)
    yield
    started = sorted(stack_helpers.STARTED - before)
    stack_helpers.STARTED.difference_update(started)
    if started and simctl.engine_reachable():
        stack_helpers.remove_later(started)  # in the background; the run's end waits for it


@dataclass
class PyinfraRun:
    returncode: int
    stdout: str
    stderr: str
    results: dict[str, Any] | None

    def changed(self) -> dict[str, list[str]]:
        """Operation name -> hosts on which it changed something (ran commands)."""
        if not self.results:
            return {}
        return {op["name"]: op["success"] for op in self.results["operations"] if op["success"]}

    def failed(self) -> dict[str, list[str]]:
        if not self.results:
            return {}
        return {op["name"]: op["error"] for op in self.results["operations"] if op["error"]}

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def pyinfra(deploy: str, fleet: Path, *args: str, inventory: str = "inventory.py",
            timeout: float = 1200, cwd: Path = REPO) -> PyinfraRun:
    """Run the real CLI from the repo root (or a copy of the product tree), as a user would,
    with --json to read the results."""
    env = {**os.environ, "GPUFLEET_FLEET": str(fleet)}
    proc = subprocess.run(
        [PYINFRA, "-y", "--json", *args, inventory, deploy],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    try:
        results = json.loads(proc.stdout).get("results")
    except json.JSONDecodeError:
        results = None
    return PyinfraRun(proc.returncode, proc.stdout, proc.stderr, results)
