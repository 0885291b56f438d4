"""Fleet benchmark on the simulated fleet: converge time, no-op re-run time (and their ratio),
remote commands per host by step, the preview's (pyinfra --dry) and the doctor's.

    make bench                                        # fresh hosts: converge, no-op, doctor,
                                                      # audit, and the controller's CPU
    .venv/bin/python benchmarks/fleet.py --no-fresh   # reuse converged hosts
    .venv/bin/python benchmarks/fleet.py --monitored  # with a monitoring host
    .venv/bin/python benchmarks/fleet.py --scale 8    # 1 host, then 8: the ratios 8 / 1

Runs on the stack test hosts (tests/e2e/stack_helpers.py), not the shared gpufleet-sim-*
ones, with the Python environment off (its figures are in inventory/locks/README.md).
Commands are counted by wrapping pyinfra's Host.run_shell_command in the pyinfra process:
every fact and every shell command is one call, i.e. one round trip.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


# The controller's CPU time (user + system) of each run, in order.
CPU_SECONDS: list[float] = []


def run(tree: Path, fleet: Path, deploy: str = "deploys/gpu_host.py", preview: bool = False
        ) -> tuple[int, float, dict[str, int], str]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        report = tmp.name
    env = {**os.environ, "GPUFLEET_FLEET": str(fleet)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", report,
                           "--deploy", deploy, *(["--preview"] if preview else [])],
                          cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
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


def measure(hosts: list[str], settings: dict[str, Any] | None, fresh: bool
            ) -> dict[str, tuple[float, float, dict[str, int]]] | None:
    """Run the sequence on ``hosts`` and print it; label -> (seconds, controller CPU seconds,
    remote commands per host). None when a run failed."""
    from tests.e2e import stack_helpers as sh

    sh.start_hosts(hosts, fresh=fresh)
    CPU_SECONDS.clear()
    with tempfile.TemporaryDirectory() as tmp:
        tree = sh.product_copy(Path(tmp))
        fleet = sh.write_fleet(Path(tmp), hosts, inference=True, settings=settings)
        runs = []
        if fresh:
            runs.append(("preview of bare hosts", *run(tree, fleet, preview=True)))
            runs.append(("converge", *run(tree, fleet)))
        runs.append(("preview of converged hosts", *run(tree, fleet, preview=True)))
        runs.append(("no-op re-run", *run(tree, fleet)))
        runs.append(("doctor", *run(tree, fleet, "deploys/doctor.py")))
        runs.append(("audit", *run(tree, fleet, "deploys/audit.py")))
    figures = {}
    for (label, rc, seconds, counts, output), cpu in zip(runs, CPU_SECONDS, strict=True):
        table = per_host(counts)
        figures[label] = (seconds, cpu, {name: sum(row.values()) for name, row in table.items()})
        print(f"{label}: exit {rc}, {seconds:.1f} s for {len(hosts)} hosts in parallel; "
              f"controller CPU {cpu:.2f} s = {1000 * cpu / len(hosts):.0f} ms per host")
        for name, row in sorted(table.items()):
            print(f"  {name}: {sum(row.values())} remote commands")
            for step, n in sorted(row.items(), key=lambda item: -item[1]):
                print(f"    {n:4d}  {step}")
        if rc != 0:
            print(output[-4000:])
            return None
    if "converge" in figures:
        ratio = figures["no-op re-run"][0] / figures["converge"][0]
        print(f"no-op re-run / converge time: {ratio:.2f}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", metavar="REPORT")
    parser.add_argument("--deploy", default="deploys/gpu_host.py")
    parser.add_argument("--preview", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-fresh", action="store_true", help="reuse the hosts as they are")
    parser.add_argument("--monitored", action="store_true",
                        help="add a monitoring host (Prometheus, Alertmanager, gateway): "
                             "exporters on the GPU hosts")
    parser.add_argument("--scale", type=int, metavar="N",
                        help="1 host, then N identical A100 hosts: the ratios N / 1")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.deploy, args.preview)

    from tests.e2e import stack_helpers as sh

    if args.scale:
        one = measure([sh.copy_name("scale1", "gpufleet-sim-a100x2")], None, not args.no_fresh)
        many = measure([sh.copy_name(f"scale{i}", "gpufleet-sim-a100x2")
                        for i in range(1, args.scale + 1)], None, not args.no_fresh)
        if one is None or many is None:
            return 1
        print(f"\n{args.scale} hosts / 1 host:")
        for label in one:
            t1, c1, cmds1 = one[label]
            tn, cn, cmds = many[label]
            # What one more host costs the controller, apart from pyinfra's start-up (imports,
            # the fleet file, the pins), which a run pays once whatever the fleet's size.
            extra = (cn - c1) / (args.scale - 1)
            print(f"  {label}: time {tn / t1:.2f} x ({t1:.1f} s -> {tn:.1f} s), remote "
                  f"commands per host {max(cmds1.values())} -> {max(cmds.values())}, "
                  f"controller CPU {c1:.2f} s -> {cn:.2f} s: {1000 * extra:.0f} ms per "
                  "further host")
        return 0
    hosts = [sh.H100, sh.A100] + ([sh.MONITOR] if args.monitored else [])
    # A monitored fleet must say how many replicas each GPU host runs.
    replicas = {sh.H100: {"inference": {"replicas": 8}},
                sh.A100: {"inference": {"replicas": 2}}} if args.monitored else None
    return 0 if measure(hosts, replicas, not args.no_fresh) is not None else 1


if __name__ == "__main__":
    sys.exit(main())
