"""Fleet benchmark on the simulated fleet: converge time, no-op re-run time (and their ratio),
remote commands per host by step, the preview's (pyinfra --dry) and the doctor's.

    make bench                                        # fresh hosts: converge, no-op, doctor
    .venv/bin/python benchmarks/fleet.py --no-fresh   # reuse converged hosts: no-op + doctor

Runs on the stack test hosts (tests/e2e/stack_helpers.py), not the shared gpufleet-sim-*
ones, with the Python environment off (its figures are in inventory/locks/README.md).
Commands are counted by wrapping pyinfra's Host.run_shell_command in the pyinfra process:
every fact and every shell command is one call, i.e. one round trip.
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

def child(report: str, deploy: str, preview: bool = False) -> int:
    """Run pyinfra in this process with Host.run_shell_command counted per host."""
    from pyinfra.api.host import Host
    from pyinfra_cli.main import main

    counts: Counter[str] = Counter()
    original = Host.run_shell_command

    def counted(self: Host, *args: Any, **kwargs: Any) -> Any:
        # The step is the deploy an operation belongs to ("NVIDIA driver | Ensure ...");
        # commands outside operations are the facts read while the deploy file loads.
        step = "load-time facts (probe, plan)"
        op_hash = self.executing_op_hash
        if op_hash:
            names = sorted(self.state.get_op_meta(op_hash).names)
            step = names[0].split(" | ", 1)[0] if names else "?"
        counts[f"{self.name}\t{step}"] += 1
        return original(self, *args, **kwargs)

    Host.run_shell_command = counted  # type: ignore[method-assign]
    # The preview is what an operator sees without -y: change detection only (--dry).
    sys.argv = ["pyinfra", "--dry" if preview else "-y", "inventory.py", deploy]
    try:
        rc = main()
    except SystemExit as exc:
        rc = int(exc.code or 0)
    Path(report).write_text(json.dumps(dict(counts)))
    return int(rc or 0)


def run(tree: Path, fleet: Path, deploy: str = "deploys/gpu_host.py", preview: bool = False
        ) -> tuple[int, float, dict[str, int], str]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        report = tmp.name
    env = {**os.environ, "GPUFLEET_FLEET": str(fleet)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", report,
                           "--deploy", deploy, *(["--preview"] if preview else [])],
                          cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    counts = json.loads(Path(report).read_text() or "{}")
    os.unlink(report)
    return proc.returncode, seconds, counts, proc.stdout + proc.stderr


def per_host(counts: dict[str, int]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for key, n in counts.items():
        name, step = key.split("\t")
        row = table.setdefault(name, {})
        row[step] = row.get(step, 0) + n
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", metavar="REPORT")
    parser.add_argument("--deploy", default="deploys/gpu_host.py")
    parser.add_argument("--preview", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-fresh", action="store_true", help="reuse the hosts as they are")
    parser.add_argument("--monitored", action="store_true",
                        help="add a monitoring host (Prometheus, Alertmanager, gateway): "
                             "exporters on the GPU hosts")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.deploy, args.preview)

    from tests.e2e import stack_helpers as sh

    hosts = [sh.H100, sh.A100] + ([sh.MONITOR] if args.monitored else [])
    sh.start_hosts(hosts, fresh=not args.no_fresh)
    with tempfile.TemporaryDirectory() as tmp:
        tree = sh.product_copy(Path(tmp))
        # A monitored fleet must say how many replicas each GPU host runs.
        replicas = {sh.H100: {"inference": {"replicas": 8}},
                    sh.A100: {"inference": {"replicas": 2}}} if args.monitored else None
        fleet = sh.write_fleet(Path(tmp), hosts, inference=True, settings=replicas)
        runs = []
        if not args.no_fresh:
            runs.append(("preview of bare hosts", *run(tree, fleet, preview=True)))
            runs.append(("converge", *run(tree, fleet)))
        runs.append(("preview of converged hosts", *run(tree, fleet, preview=True)))
        runs.append(("no-op re-run", *run(tree, fleet)))
        runs.append(("doctor", *run(tree, fleet, "deploys/doctor.py")))
    seconds_by_label = {}
    for label, rc, seconds, counts, output in runs:
        seconds_by_label[label] = seconds
        print(f"{label}: exit {rc}, {seconds:.1f} s for {len(hosts)} hosts in parallel")
        for name, row in sorted(per_host(counts).items()):
            print(f"  {name}: {sum(row.values())} remote commands")
            for step, n in sorted(row.items(), key=lambda item: -item[1]):
                print(f"    {n:4d}  {step}")
        if rc != 0:
            print(output[-4000:])
            return rc
    if "converge" in seconds_by_label:
        ratio = seconds_by_label["no-op re-run"] / seconds_by_label["converge"]
        print(f"no-op re-run / converge time: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
