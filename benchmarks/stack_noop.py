"""Converge and no-op times of the NVIDIA stack on the simulated fleet, and the remote commands
per host of a no-op run (total, and those of the stack's five steps).

    .venv/bin/python benchmarks/stack_noop.py            # fresh hosts: converge, then no-op
    .venv/bin/python benchmarks/stack_noop.py --no-fresh # reuse converged hosts: no-op only

Runs on the stack test hosts (tests/e2e/stack_helpers.py), not the shared gpufleet-sim-*
ones. Commands are counted by wrapping pyinfra's Host.run_shell_command in the pyinfra
process (every fact and every shell command is one call: one round trip).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STACK_DEPLOYS = ("NVIDIA driver", "CUDA toolkit", "Docker engine", "NVIDIA container toolkit",
                 "Verify the GPU stack")


def child(report: str) -> int:
    """Run pyinfra in this process with Host.run_shell_command counted per host."""
    from pyinfra.api.host import Host
    from pyinfra_cli.main import main

    counts: Counter[str] = Counter()
    original = Host.run_shell_command

    def counted(self: Host, *args: Any, **kwargs: Any) -> Any:
        names: set[str] = set()
        op_hash = self.executing_op_hash
        if op_hash:
            names = self.state.get_op_meta(op_hash).names
        step = "stack" if any(n.startswith(STACK_DEPLOYS) for n in names) else "other"
        counts[f"{self.name}\t{step}"] += 1
        return original(self, *args, **kwargs)

    Host.run_shell_command = counted  # type: ignore[method-assign]
    sys.argv = ["pyinfra", "-y", "inventory.py", "deploys/gpu_host.py"]
    try:
        rc = main()
    except SystemExit as exc:
        rc = int(exc.code or 0)
    Path(report).write_text(json.dumps(dict(counts)))
    return int(rc or 0)


def run(tree: Path, fleet: Path) -> tuple[int, float, dict[str, int], str]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        report = tmp.name
    env = {**os.environ, "GPUFLEET_FLEET": str(fleet)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", report],
                          cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    counts = json.loads(Path(report).read_text() or "{}")
    os.unlink(report)
    return proc.returncode, seconds, counts, proc.stdout + proc.stderr


def per_host(counts: dict[str, int]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for key, n in counts.items():
        name, step = key.split("\t")
        row = table.setdefault(name, {"stack": 0, "other": 0})
        row[step] += n
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", metavar="REPORT")
    parser.add_argument("--no-fresh", action="store_true", help="reuse the hosts as they are")
    args = parser.parse_args()
    if args.child:
        return child(args.child)

    from tests.e2e import stack_helpers as sh

    hosts = [sh.H100, sh.A100]
    sh.start_hosts(hosts, fresh=not args.no_fresh)
    with tempfile.TemporaryDirectory() as tmp:
        tree = sh.product_copy(Path(tmp))
        fleet = sh.write_fleet(Path(tmp), hosts)
        runs = []
        if not args.no_fresh:
            runs.append(("converge", *run(tree, fleet)))
        runs.append(("no-op", *run(tree, fleet)))
    for label, rc, seconds, counts, output in runs:
        print(f"{label}: exit {rc}, {seconds:.1f} s for {len(hosts)} hosts")
        for name, row in sorted(per_host(counts).items()):
            print(f"  {name}: {row['stack'] + row['other']} remote commands "
                  f"({row['stack']} in the NVIDIA stack's steps, {row['other']} before it)")
        if rc != 0:
            print(output[-4000:])
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
