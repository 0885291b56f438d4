"""Shared pieces of the end-to-end tests: the simulator, the real pyinfra CLI, host snapshots.

Every test here drives the real `pyinfra` command against simulated hosts (tests/sim/): apt,
dpkg, systemd and Docker inside them are real; only NVIDIA hardware and repositories are
stand-ins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.hosts import ok
from tests.sim import simctl

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
SIM_FLEET = REPO / "inventory" / "sim.toml"
FLEETS = Path(__file__).resolve().parent / "fleets"


@pytest.fixture(scope="session")
def sim() -> None:
    """The simulator, up (idempotent: reuses images and running hosts)."""
    if not simctl.engine_reachable():
        pytest.skip("no Docker engine reachable: run `make test` (it installs and starts one)")
    simctl.up(quiet=True)


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


def pyinfra(deploy: str, fleet: Path = SIM_FLEET, *args: str, inventory: str = "inventory.py",
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


def sim_fleet_variant(directory: Path, extra_toml: str = "", replace: dict[str, str] | None = None
                      ) -> Path:
    """inventory/sim.toml with tables appended (or strings replaced), written to `directory`.

    The simulator's image archive path is made absolute so the copy works from anywhere.
    """
    text = SIM_FLEET.read_text().replace(
        '"../tests/sim/build/images/cuda-base.tar"', f'"{simctl.CUDA_TAR}"'
    )
    for old, new in (replace or {}).items():
        assert old in text, f"{old!r} is not in {SIM_FLEET}"
        text = text.replace(old, new)
    path = directory / "sim-variant.toml"
    path.write_text(text + "\n" + extra_toml)
    return path


# The real torch lock is 2.7 GB per host: fleet-level tests install it on one host only (the
# Python environment's own tests cover the mechanism with small locks).
WITHOUT_PYTHON_ENV = "[settings.python_env]\nenabled = false\n"
PYTHON_ENV_ON_HGX_ONLY = {
    'settings = { gpus = { count = 8, model = "H100 80GB HBM3", memory_gib = 79 } }':
    'settings = { gpus = { count = 8, model = "H100 80GB HBM3", memory_gib = 79 }, '
    'python_env = { enabled = true } }',
}


host_sh = ok


# What "nothing changed on the host" means: the same packages at the same versions and
# states, the same holds, and the same bytes in every file under /etc.
SNAPSHOT = r"""
dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\n' | sort
echo --holds--; apt-mark showhold | sort
echo --etc--; find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum
echo --etc-links--; find /etc -xdev -type l -printf '%p -> %l\n' | sort
"""


def snapshot(container: str) -> str:
    return host_sh(container, SNAPSHOT)
