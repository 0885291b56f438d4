#!/usr/bin/env python3
"""Roll a pin change (or a rebuild) through the fleet a batch at a time.

    GPUFLEET_FLEET=my-fleet.toml .venv/bin/python tools/rollout.py [--behind-only]

The GPU hosts are cut into batches per group (settings.rollout.batch: a count, or a percentage
of the group). For each batch, in the fleet file's order:

  1. drain it from the gateway (when the fleet has one): requests in flight finish, new ones go
     to the other hosts;
  2. converge it: `pyinfra -y inventory.py deploys/gpu_host.py --limit ...`, whose last checks
     are the GPUs, a GPU container and a chat completion from every replica; the batch's
     reboots happen together;
  3. put it back into the gateway: only hosts a rollout drained, the batch's own (and after
     the last batch, any a stopped rollout left drained); a host drained by hand
     (`deploys/drain.py`) stays drained until someone puts it back.

A batch that would leave a served model without a replica in rotation (it holds every host
serving the model, the others drained already, or there are none: one GPU host, or
`batch = "100%"`) is refused before anything changes, naming the model and the hosts: the
gateway would answer nothing for it while the batch converges. `--allow-outage` accepts that.
The fleet file is checked first; the gateway's drain checks again with the hosts drained there.

Once every batch is back, the fleet's other hosts (the monitoring host with the gateway) are
converged too, so that the whole fleet records the new pins and the drift audit finds none.

The first batch that fails stops the rollout: it stays drained, and every host's pins are
listed from its manifest (fleet-state/<fleet>/<host>.json). `--behind-only` skips hosts whose
manifest already has the fleet file's pins (to resume a stopped rollout).

The rollout holds every host's run lock from its first change to its end, failed or not
(deploys/lock.py, rules/run_lock.py): the runs it starts go on under it, anyone else's
converge, canary action or drain on those hosts waits or stops, naming the rollout.
`--lock-wait SECONDS` waits that long for a run holding a lock (0: stop at once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inventory.fleet import Fleet, FleetError, HostSpec, load_fleet, pyinfra_host_name  # noqa: E402
from operations.host_lock import controller_holder  # noqa: E402
from rules.fleet_checks import fleet_problems  # noqa: E402
from rules.manifest import parse_manifest  # noqa: E402
from rules.monitoring import is_monitor  # noqa: E402
from rules.rollout import (  # noqa: E402
    ALLOW_OUTAGE_DATA,
    ALLOW_OUTAGE_FLAG,
    ROLLOUT_BATCH_DATA,
    ROLLOUT_PLAN_DATA,
    OutageRefused,
    batches,
    pin_state,
    render_plan,
    restored_after,
)
from rules.run_lock import HOLDER_ENV, LOCK_WAIT_DATA, parse_wait  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def pyinfra(script: str, limit: list[str], *data: str) -> int:
    args = [PYINFRA, "-y", "inventory.py", script]
    for name in limit:
        args += ["--limit", name]
    for item in data:
        args += ["--data", item]
    print(f"--> {' '.join(args[1:])}", flush=True)
    return subprocess.run(args, cwd=REPO, env=os.environ.copy()).returncode


def manifest_of(spec: HostSpec) -> dict | None:
    path = spec.state_dir / f"{spec.name}.json"
    try:
        return parse_manifest(path.read_text())
    except OSError:
        return None


def report(fleet: Fleet) -> None:
    print("--> Where each host stands (from its manifest):")
    for spec in fleet.hosts:
        print("    " + pin_state(spec, manifest_of(spec)).render())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, help="fleet file (default: $GPUFLEET_FLEET)")
    parser.add_argument("--behind-only", action="store_true",
                        help="skip hosts whose manifest already has the fleet file's pins")
    parser.add_argument(ALLOW_OUTAGE_FLAG, action="store_true",
                        help="go on even where a batch holds every replica of a served model "
                             "still in rotation (one GPU host, batch = \"100%%\", the others "
                             "drained): that model answers nothing while the batch converges")
    parser.add_argument("--lock-wait", type=int, default=0, metavar="SECONDS",
                        help="wait up to this long for another run holding a host's lock "
                             "(default: stop at once, naming it)")
    args = parser.parse_args(argv)
    problem = parse_wait(args.lock_wait)[1]
    if problem:
        print("rollout: " + problem.replace(f"--data {LOCK_WAIT_DATA}=", "--lock-wait "),
              file=sys.stderr)
        return 2
    if args.fleet:
        os.environ["GPUFLEET_FLEET"] = str(args.fleet.resolve())
    path = Path(os.environ.get("GPUFLEET_FLEET") or REPO / "inventory" / "fleet.toml")
    try:
        fleet = load_fleet(path, checks=fleet_problems)
    except FleetError as error:
        print("\n".join(["rollout: the fleet file has problems; no host was contacted:",
                         *error.lines]), file=sys.stderr)
        return 2
    gateways = [pyinfra_host_name(s) for s in fleet.hosts
                if is_monitor(s) and s.settings.gateway.enabled]
    skip = {s.name for s in fleet.hosts
            if args.behind_only and pin_state(s, manifest_of(s)).current}
    try:
        plan = batches(fleet.hosts, skip=skip, allow_outage=args.allow_outage)
    except OutageRefused as refused:
        print("\n".join(refused.lines), file=sys.stderr)
        return 2
    # Every host's run lock, for the whole rollout: the runs below find it held under this
    # rollout's token (passed in the environment) and go on; anyone else's run waits or stops.
    holder = controller_holder([Path(sys.argv[0]).name, *(argv if argv is not None
                                                          else sys.argv[1:])])
    os.environ[HOLDER_ENV] = holder.render()
    everyone = [pyinfra_host_name(s) for s in fleet.hosts]
    try:
        if pyinfra("deploys/lock.py", everyone, "lock=take",
                   f"{LOCK_WAIT_DATA}={args.lock_wait}"):
            pyinfra("deploys/lock.py", everyone, "lock=release")  # those it did take
            print("rollout: another run holds a host's lock (named above); nothing was "
                  "changed", file=sys.stderr)
            return 1
        failed: list[str] = []
        try:
            return roll(fleet, plan, gateways, args, failed)
        finally:
            # A failed batch's hosts are not contacted again: one that did not come back from
            # its reboot is down. Their locks stay, held by this process, which is gone once
            # this ends: the resumed rollout (--behind-only) takes them over and says so.
            if failed:
                print(f"rollout: the run locks of {', '.join(failed)} stay on them; "
                      "`tools/rollout.py --behind-only` takes them over", file=sys.stderr)
            back = [name for name in everyone if name not in failed]
            if back and pyinfra("deploys/lock.py", back, "lock=release"):
                print("rollout: could not give every host's run lock back (named above)",
                      file=sys.stderr)
    finally:
        os.environ.pop(HOLDER_ENV, None)


def roll(fleet: Fleet, plan: list[list[HostSpec]], gateways: list[str],
         args: argparse.Namespace, failed: list[str]) -> int:
    """Converge ``plan`` batch by batch; a failed batch's pyinfra host names go to ``failed``."""
    started = time.monotonic()
    for number, batch in enumerate(plan, 1):
        names = [s.name for s in batch]
        print(f"==> batch {number}/{len(plan)}: {', '.join(names)}"
              + (" (drained from the gateway)" if gateways else ""), flush=True)
        # The gateway checks this batch and the later ones against the hosts drained there
        # (by hand, say) before it drains anything.
        ahead = render_plan([[s.name for s in later] for later in plan[number - 1:]])
        if gateways and pyinfra("deploys/drain.py", gateways, f"drain={','.join(names)}",
                                f"{ROLLOUT_BATCH_DATA}={number}", f"{ROLLOUT_PLAN_DATA}={ahead}",
                                *([f"{ALLOW_OUTAGE_DATA}=yes"] if args.allow_outage else [])):
            print(f"rollout: could not drain batch {number}; nothing of it was changed",
                  file=sys.stderr)
            return 1
        rc = pyinfra("deploys/gpu_host.py", [pyinfra_host_name(s) for s in batch],
                     f"{ROLLOUT_BATCH_DATA}={number}")
        if rc != 0:
            failed.extend(pyinfra_host_name(s) for s in batch)
            print(f"rollout: batch {number} ({', '.join(names)}) failed (pyinfra exit {rc}); "
                  "stopped here" + (": the batch stays drained from the gateway" if gateways
                                    else "") + ". Fix what the fault summary above says, then "
                  "resume with: tools/rollout.py --behind-only", file=sys.stderr)
            report(fleet)
            return 1
        back = restored_after(plan, number, fleet.hosts)
        if gateways and pyinfra("deploys/drain.py", gateways, f"restore={','.join(back)}",
                                f"{ROLLOUT_BATCH_DATA}={number}"):
            print(f"rollout: batch {number} converged but could not be put back into the "
                  "gateway", file=sys.stderr)
            return 1
    if not plan and gateways:  # nothing to converge: still put back what a stopped rollout left
        back = [s.name for s in fleet.hosts if s.settings.role == "gpu"]
        if pyinfra("deploys/drain.py", gateways, f"restore={','.join(back)}",
                   f"{ROLLOUT_BATCH_DATA}=0"):
            print("rollout: could not put the hosts a rollout drained back into the gateway",
                  file=sys.stderr)
            return 1
    # The monitoring host records the pin set too: converge it last, once the GPU hosts are
    # back (a reload of Prometheus and nginx at most; nothing is drained).
    others = [s for s in fleet.hosts if s.settings.role != "gpu"
              and not (args.behind_only and pin_state(s, manifest_of(s)).current)]
    if others:
        names = [s.name for s in others]
        print(f"==> the other hosts: {', '.join(names)}", flush=True)
        if pyinfra("deploys/gpu_host.py", [pyinfra_host_name(s) for s in others]):
            print(f"rollout: every batch is done, but converging {', '.join(names)} failed; "
                  "run the rollout again with --behind-only", file=sys.stderr)
            report(fleet)
            return 1
    print(f"==> rollout done: {len(plan)} batch(es) in {time.monotonic() - started:.0f} s")
    report(fleet)
    print(json.dumps({"batches": [[s.name for s in b] for b in plan]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
