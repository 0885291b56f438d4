"""Helpers for the NVIDIA stack's end-to-end tests (and benchmarks/fleet.py).

The stack tests run on their own simulated hosts (`gpufleet-stack-*`, the same image and
hardware as tests/sim/hosts.toml under other names), so other tests resetting the shared
`gpufleet-sim-*` hosts cannot pull the floor from under them. The deploy runs from a copy of
the product tree, so a test can change inventory/pins.toml there exactly as a user would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.e2e.hosts import sh
from tests.sim import simctl

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("deploys", "facts", "inventory", "operations", "templates", "inventory.py",
           "pyproject.toml")
PYINFRA = REPO / ".venv" / "bin" / "pyinfra"
# Hosts of tests/sim/hosts.toml -> the names the stack tests give them.
STACK_HOSTS = {
    "gpufleet-sim-h100x8": "gpufleet-stack-h100x8",
    "gpufleet-sim-a100x2": "gpufleet-stack-a100x2",
    "gpufleet-sim-rtx4090": "gpufleet-stack-rtx4090",
}
H100, A100, RTX = STACK_HOSTS.values()


def start_hosts(names: list[str], fresh: bool = True) -> None:
    """Start (fresh: recreate) the named stack hosts; the repo container is shared."""
    by_name = {STACK_HOSTS[h.name]: h for h in simctl.load_hosts()}
    hosts = [replace(by_name[n], name=n, hardware={**by_name[n].hardware, "hostname": n})
             for n in names]
    images = simctl.ensure_images()
    simctl.ensure_network()
    simctl.ensure_repo(images["repo"])
    if fresh:
        simctl.remove_hosts(names)
    for spec in hosts:
        simctl.ensure_host(spec, images["host"])
    for spec in hosts:
        simctl.wait_for_systemd(spec.name)



def product_copy(dest: Path) -> Path:
    """A copy of the product tree to run the deploy from (its pins.toml may be edited)."""
    for name in PRODUCT:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def set_pins(tree: Path, driver: str, cuda: str, toolkit: str,
             pin_set: str = "r535-cuda121") -> None:
    """Rewrite one pin set's driver / CUDA / container toolkit versions in the copy."""
    path = tree / "inventory" / "pins.toml"
    text = path.read_text()
    for table, version in (("driver", driver), ("cuda", cuda), ("container_toolkit", toolkit)):
        pattern = rf'(\[sets\.{re.escape(pin_set)}\.{table}\][^\[]*?\nversion = )"[^"]*"'
        text, count = re.subn(pattern, rf'\g<1>"{version}"', text, count=1, flags=re.S)
        assert count == 1, f"no {table} version in pin set {pin_set}"
    path.write_text(text)


def _toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, dict) else "{ " + ", ".join(
        f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"


def write_fleet(dest: Path, hosts: list[str], settings: dict[str, Any] | None = None) -> Path:
    """A fleet file for the stack hosts: inventory/sim.toml's settings, absolute paths."""
    sim = (REPO / "inventory" / "sim.toml").read_text()
    # Everything up to the first group: the fleet-wide settings of the simulated fleet.
    head = sim.split("\n[groups.", 1)[0]
    head = head.replace('"../tests/sim/build/', f'"{REPO}/tests/sim/build/')
    # The Python environment (a 2.7 GB lock per host) has its own tests and is not the stack.
    lines = [head.rstrip(), "", "[settings.python_env]", "enabled = false", ""]
    groups = {H100: ("hgx", {"count": 8, "model": "H100 80GB HBM3", "memory_gib": 79}),
              A100: ("pcie", {"count": 2, "model": "A100-PCIE-40GB", "memory_gib": 39}),
              RTX: ("desk", {"count": 1, "model": "RTX 4090"})}
    for name in hosts:
        group, gpus = groups[name]
        extra = dict((settings or {}).get(name, {}))
        extra["gpus"] = gpus
        body = ", ".join(f"{k} = {_toml_value(v)}" for k, v in extra.items())
        lines += [f"[groups.{group}]", f"settings = {{ {body} }}",
                  f"[groups.{group}.hosts.{name}]", f'target = "@docker/{name}"', ""]
    path = dest / "fleet.toml"
    path.write_text("\n".join(lines))
    return path


@dataclass
class DeployRun:
    rc: int
    output: str
    seconds: float

    @property
    def changed_ops(self) -> list[str]:
        """Operation lines pyinfra reports as changed ("[host] Success"), noops excluded."""
        return re.findall(r"^\s*\[(\S+)\] Success\s*$", self.output, re.M)


def deploy(tree: Path, fleet: Path, *extra: str, timeout: float = 1500) -> DeployRun:
    env = {**os.environ, "GPUFLEET_FLEET": str(fleet), "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(PYINFRA), "-y", *extra, "inventory.py", "deploys/gpu_host.py"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=timeout,
    )
    return DeployRun(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0)


def dpkg_versions(host: str, packages: list[str]) -> dict[str, str]:
    out = sh(host, "dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' "
             + " ".join(packages)).stdout
    return {p[0]: p[1] for p in (line.split() for line in out.splitlines())
            if len(p) >= 3 and p[2][1:2] == "i"}


if __name__ == "__main__":  # start the stack hosts by hand: python -m tests.e2e.stack_helpers
    start_hosts(sys.argv[1:] or [H100, A100], fresh=False)
