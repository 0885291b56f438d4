"""The controller alone, at 1 to 1,000 hosts: preview, no-op and audit of replayed hosts.

    .venv/bin/python benchmarks/controller.py                    # N = 1, 10, 100, 1000
    .venv/bin/python benchmarks/controller.py --sizes 1,10 --runs no-op
    .venv/bin/python benchmarks/controller.py --profile 100      # cProfile, top entries
    .venv/bin/python benchmarks/controller.py --shards 100       # split by group, merge

Every host is a clone of the rehearsal fleet's converged A100 host, answered by the replay
connector (benchmarks/replay.py) from the committed recording
(benchmarks/recordings/sim.json): no network, no container, so the figures are the
controller's own. Each run is its own process (its CPU time and peak RSS are the run's), and
each must report what the real host reported: nothing changed (nor would in the preview) and
nothing failed, on every host; a command the recording has no answer for fails the run.

Needs the simulator's build outputs (tests/sim/build: the image archives and stand-in weights
the fleet file names), as the recording did.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pstats
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.replay import (  # noqa: E402
    ENV_BASELINE,
    ENV_FILE,
    ENV_RELEASE,
    ENV_RUN,
    ENV_SWAP,
    RECORDING,
    RUNS,
    SIM_FLEET,
    child_argv,
    child_env,
    child_report,
    run_child,
    unchanged,
)
from rules.serving import key_stamp  # noqa: E402

# The recorded hosts' gpufleet release: the replayed runs are that release's, so a commit
# made since the recording does not read as a manifest to rewrite.
RELEASE: dict[str, Any] = (json.loads(RECORDING.read_text())["release"]
                           if RECORDING.exists() else {})
# Which recorded host each group's clones copy (inventory/sim.toml's groups).
CLONED = {"pcie": "sim-a100x2", "hgx": "sim-h100x8"}


def clone_name(recorded: str, index: int) -> str:
    return f"{recorded}--{index:04d}"


def fleet_text(counts: dict[str, int]) -> str:
    """inventory/sim.toml with ``counts[group]`` clones of that group's recorded host, the
    monitoring host kept (it is in the recording's fleet, so the GPU hosts' exporters and
    firewall answers are the same), its relative paths made absolute."""
    text = SIM_FLEET.read_text().replace('"../tests/', f'"{REPO}/tests/')
    head, _, rest = text.partition("# --- an HGX")
    monitor = rest[rest.index("# --- no GPU"):]
    groups = {"pcie": text[text.index("[groups.pcie.settings]"):text.index("[groups.pcie.hosts")],
              "hgx": text[text.index("[groups.hgx.settings]"):text.index("[groups.hgx.hosts")]}
    lines = [head.rstrip(), ""]
    for group, count in counts.items():
        if not count:
            continue
        lines.append(groups[group].rstrip())
        for i in range(1, count + 1):
            name = clone_name(CLONED[group], i)
            lines += [f"[groups.{group}.hosts.{name}]", f'target = "@docker/gpufleet-{name}"', ""]
    lines.append(monitor)
    return "\n".join(lines)


def write_fleet(where: Path, counts: dict[str, int]) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "fleet.toml"
    path.write_text(fleet_text(counts))
    return path


def key_env(config: Path) -> dict[str, str]:
    """The benchmark's own API key for the fleet (never the rehearsal fleet's): a config folder
    holding a fresh one, and the recorded hash of the hosts' key file swapped for its hash in
    the replayed answers (the hosts then hold this key, as after a converge with it)."""
    recording = json.loads(RECORDING.read_text())
    key = secrets.token_urlsafe(32)
    path = config / "keys" / "sim.api-key"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    content = f"{recording['api_key_variable']}={key}\n"
    recorded = recording["api_key_env_sha256"]
    replayed = hashlib.sha256(content.encode()).hexdigest()
    # the key file's digest, and the engine's applied-stamp made from it
    swap = [[recorded, replayed], [key_stamp(recorded), key_stamp(replayed)]]
    return {"GPUFLEET_CONFIG_DIR": str(config), ENV_SWAP: json.dumps(swap)}


def replay_run(label: str, fleet: Path, groups: list[str], profile: Path | None = None,
               baseline: bool = False) -> tuple[list[str], dict[str, str]]:
    """A replayed run of ``groups`` of ``fleet``: (pyinfra's arguments, the environment).
    ``baseline``: with pyinfra as it ships (its own operation order with inspect.stack(),
    its own global arguments): operations/pyinfra_adapter.py's replacements left out."""
    env = {ENV_FILE: str(RECORDING), ENV_RUN: label, ENV_RELEASE: json.dumps(RELEASE),
           **key_env(fleet.parent / "config"),
           **({"GPUFLEET_REPLAY_PROFILE": str(profile)} if profile else {}),
           **({ENV_BASELINE: "1"} if baseline else {})}
    limit = [arg for group in groups for arg in ("--limit", group)]
    return [*RUNS[label], *limit], env


def replay(label: str, fleet: Path, groups: list[str], profile: Path | None = None,
           baseline: bool = False) -> tuple[float, str, dict[str, Any]]:
    """One replayed run of ``groups`` of ``fleet``: (wall seconds, output, report)."""
    args, env = replay_run(label, fleet, groups, profile, baseline)
    t0 = time.monotonic()
    output, report = run_child("replay", fleet, args, env)
    return time.monotonic() - t0, output, report


def side_by_side(label: str, fleets: dict[str, Path]
                 ) -> tuple[float, dict[str, tuple[float, str, dict[str, Any]]]]:
    """The shards' replayed runs (group -> its fleet file, the run limited to that group) as
    processes side by side, through the runner of `gpufleet shards`
    (gpufleet/sharding.py: run_side_by_side): (wall seconds of them all, group -> (wall,
    output, report))."""
    import io

    from gpufleet.sharding import ShardRun, run_side_by_side

    runs, outs = [], []
    for group, fleet in fleets.items():
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            outs.append(tmp.name)
        args, env = replay_run(label, fleet, [group])
        runs.append(ShardRun(group, child_argv("replay", tmp.name, args), REPO,
                             child_env(fleet, env)))
    log = io.StringIO()
    t0 = time.monotonic()
    run_side_by_side(runs, jobs=len(runs), out=log)
    wall = time.monotonic() - t0
    lines = log.getvalue().splitlines()
    return wall, {run.label: (run.seconds,
                              "\n".join(line for line in lines
                                        if line.startswith(f"[{run.label}] ")),
                              child_report(out, run.status if run.status is not None else 1))
                  for run, out in zip(runs, outs, strict=True)}


def state_dir(fleet: Path) -> Path:
    """The controller's files for the benchmark's fleet (named sim, as inventory/sim.toml)."""
    return fleet.parent / "fleet-state" / "sim"


def seed_copies(fleet: Path, counts: dict[str, int]) -> dict[Path, int]:
    """The controller's copies of the host manifests (fleet-state/sim/HOST.json) as the run
    before left them: a no-op is a second run, and the controller keeps a copy of each host's
    manifest from the converge on, so a no-op finds them in place and writes none. One clone
    per group is replayed (no-op) to get its copy, which names the host; each clone's copy is
    that one with its own name. Returns each copy's inode, to tell afterwards whether the run
    wrote it again (the controller writes a file whole, to a new inode: write_atomically)."""
    seeded: dict[Path, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for group, count in counts.items():
            if not count:
                continue
            one = write_fleet(Path(tmp) / group, {group: 1})
            _, output, report = replay("no-op", one, [group])
            if unchanged(report, 1):
                print(output[-4000:])
                raise SystemExit(f"controller: no-op of one {group} host: {unchanged(report, 1)}")
            first = clone_name(CLONED[group], 1)
            text = (state_dir(one) / f"{first}.json").read_text()
            for i in range(1, count + 1):
                path = state_dir(fleet) / f"{clone_name(CLONED[group], i)}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text.replace(first, clone_name(CLONED[group], i)))
                seeded[path] = path.stat().st_ino
    return seeded


def written_again(fleet: Path, seeded: dict[Path, int]) -> list[Path]:
    """The controller's files the run wrote: a seeded copy replaced, or a new host copy."""
    found = sorted(state_dir(fleet).glob("*.json")) if state_dir(fleet).is_dir() else []
    return [path for path in found if path.name != "audit.json"
            and (path not in seeded or path.stat().st_ino != seeded[path])]


def checked(label: str, fleet: Path, counts: dict[str, int], seeded: dict[Path, int],
            output: str, report: dict[str, Any], what: str) -> None:
    """A replayed run of the fleet written with ``counts`` (write_fleet) must report what the
    real hosts reported: nothing changed (nor would in the preview), nothing failed, on every
    host; the no-op, with the controller's copies in place (seed_copies), must also write
    none of them again. Else the benchmark stops (SystemExit), naming the run."""
    problem = unchanged(report, sum(counts.values()))
    if not problem and label == "no-op":
        rewritten = written_again(fleet, seeded)
        if rewritten:
            problem = (f"{len(rewritten)} controller file(s) written by a no-op, e.g. "
                       f"{rewritten[0].name}")
    if problem:
        print(output[-4000:])
        raise SystemExit(f"controller: {what}: {problem}")


def checked_run(label: str, fleet: Path, counts: dict[str, int], what: str,
                baseline: bool = False) -> tuple[float, str, dict[str, Any]]:
    """One replayed run (the no-op's copies seeded first, not timed), checked."""
    seeded = seed_copies(fleet, counts) if label == "no-op" else {}
    wall, output, report = replay(label, fleet, [g for g, c in counts.items() if c],
                                  baseline=baseline)
    checked(label, fleet, counts, seeded, output, report, what)
    return wall, output, report


def measure(sizes: list[int], labels: list[str], baseline: bool = False,
            same_order_at: int | None = None) -> dict[tuple[str, int], dict[str, Any]]:
    """Each run at each size. ``same_order_at``: at that size, also run with pyinfra's own
    operation order and require the very same order of operations."""
    figures: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            fleet = write_fleet(Path(tmp) / f"n{n}", {"pcie": n})
            for label in labels:
                wall, _, report = checked_run(label, fleet, {"pcie": n},
                                                   f"{label} at N={n}", baseline)
                if n == same_order_at and not baseline:
                    theirs = replay(label, fleet, ["pcie"], baseline=True)[2]
                    if theirs["order"] != report["order"]:
                        raise SystemExit(f"controller: {label} at N={n}: the operation order "
                                         "differs from pyinfra's own (inspect.stack())")
                    print(f"  {label:8s} N={n:5d}: the same order of {len(report['order'])} "
                          "operations as pyinfra's own")
                exchanges = report["exchanges"]
                figures[(label, n)] = {
                    "wall": wall, "cpu": report["cpu"], "rss_mib": report["maxrss_kib"] / 1024,
                    "commands": max(exchanges.values()), "commands_min": min(exchanges.values()),
                    "ops": max(o["ops"] for o in report["outcomes"].values())}
                f = figures[(label, n)]
                print(f"  {label:8s} N={n:5d}: wall {wall:7.1f} s, CPU {f['cpu']:7.1f} s "
                      f"({1000 * f['cpu'] / n:6.0f} ms/host), peak RSS {f['rss_mib']:6.0f} MiB, "
                      f"{f['commands']} remote commands/host, no change on all {n}",
                      flush=True)
    return figures


def table(figures: dict[tuple[str, int], dict[str, Any]], sizes: list[int],
          labels: list[str]) -> str:
    lines = ["| run | N | wall (s) | controller CPU (s) | CPU per host (ms) | marginal CPU per "
             "host (ms) | peak RSS (MiB) | wall N/1 | CPU N/1 | remote commands per host |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label in labels:
        base = figures[(label, sizes[0])]
        for n in sizes:
            f = figures[(label, n)]
            marginal = ((f["cpu"] - base["cpu"]) / (n - sizes[0]) * 1000
                        if n > sizes[0] else float("nan"))
            lines.append(
                f"| {label} | {n} | {f['wall']:.1f} | {f['cpu']:.1f} | "
                f"{1000 * f['cpu'] / n:.0f} | "
                + ("–" if marginal != marginal else f"{marginal:.0f}")
                + f" | {f['rss_mib']:.0f} | {f['wall'] / base['wall']:.1f} | "
                f"{f['cpu'] / base['cpu']:.1f} | {f['commands']} |")
    return "\n".join(lines)


def profile(n: int, label: str, top: int, baseline: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fleet = write_fleet(Path(tmp) / "fleet", {"pcie": n})
        stats_path = Path(tmp) / "profile.out"
        wall, output, report = replay(label, fleet, ["pcie"], profile=stats_path,
                                      baseline=baseline)
        problem = unchanged(report, n)
        if problem:
            print(output[-4000:])
            raise SystemExit(f"controller: profile {label} at N={n}: {problem}")
        print(f"{label} of {n} replayed hosts: wall {wall:.1f} s, CPU {report['cpu']:.1f} s "
              f"({1000 * report['cpu'] / n:.0f} ms per host)")
        stats = pstats.Stats(str(stats_path))
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top)


def shards(n: int, labels: list[str]) -> int:
    """N/2 A100 clones (group pcie) and N/2 H100 clones (group hgx): each run by one
    controller, then by two (one shard per group, each its own fleet file and fleet-state,
    run side by side), every run checked as in measure(). The audit's shards are merged,
    and the merge must equal the one controller's audit, host for host."""
    half = {"pcie": n // 2, "hgx": n - n // 2}
    rows = [f"| run of {n:,} replayed hosts | one controller: wall (s) | CPU (s) | peak RSS "
            "(MiB) | load average | shard pcie: wall (s) | CPU (s) | shard hgx: wall (s) | CPU "
            "(s) | two shards side by side: wall (s) | load average |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        whole = write_fleet(Path(tmp) / "whole", half)
        fleets = {group: write_fleet(Path(tmp) / f"shard-{group}", {group: count})
                  for group, count in half.items()}
        for label in labels:
            load_before = os.getloadavg()[0]
            wall, _, report = checked_run(label, whole, half, f"{label}, one controller")
            print(f"{label}: one controller, {n} hosts: wall {wall:.1f} s, CPU "
                  f"{report['cpu']:.1f} s, peak RSS {report['maxrss_kib'] / 1024:.0f} MiB "
                  f"(load average {load_before:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
            row = [label, f"{wall:.1f}", f"{report['cpu']:.1f}",
                   f"{report['maxrss_kib'] / 1024:.0f}",
                   f"{load_before:.1f} → {os.getloadavg()[0]:.1f}"]
            seeded = {group: seed_copies(fleet, {group: half[group]}) if label == "no-op"
                      else {} for group, fleet in fleets.items()}
            load_before = os.getloadavg()[0]
            both, runs = side_by_side(label, fleets)
            for group, (shard_wall, shard_output, shard_report) in runs.items():
                checked(label, fleets[group], {group: half[group]}, seeded[group],
                        shard_output, shard_report, f"{label}, shard {group}")
                print(f"{label}: shard {group}, {half[group]} hosts: wall {shard_wall:.1f} s, "
                      f"CPU {shard_report['cpu']:.1f} s, peak RSS "
                      f"{shard_report['maxrss_kib'] / 1024:.0f} MiB", flush=True)
                row += [f"{shard_wall:.1f}", f"{shard_report['cpu']:.1f}"]
            print(f"{label}: two shards side by side: wall {both:.1f} s (load average "
                  f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}); every host reported no "
                  "change", flush=True)
            rows.append("| " + " | ".join([*row, f"{both:.1f}", f"{load_before:.1f} → "
                                           f"{os.getloadavg()[0]:.1f}"]) + " |")
            if label == "audit":
                same = merged_equals_one(whole, fleets, n) and same
    print()
    print("\n".join(rows))
    return 0 if same else 1


def merged_equals_one(whole: Path, fleets: dict[str, Path], n: int) -> bool:
    """The shards' audit.json files merged (rules/shards.py) against the one controller's."""
    from rules.shards import merge_audits

    one = json.loads((state_dir(whole) / "audit.json").read_text())
    documents = [(str(state_dir(fleet) / "audit.json"),
                  (state_dir(fleet) / "audit.json").read_text()) for fleet in fleets.values()]
    merged = merge_audits(documents)
    same = {h: [vars(d) for d in found] for h, found in merged.items()} == one
    print(f"audit: merged from the shards: {len(merged)} hosts, "
          f"{sum(1 for d in merged.values() if d)} drifted; equals the one controller's: "
          + ("yes" if same and len(merged) == n else "NO"), flush=True)
    return same and len(merged) == n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100,1000",
                        help="host counts (default 1,10,100,1000)")
    parser.add_argument("--runs", default=",".join(RUNS), help="preview,no-op,audit")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="profile one run (--runs' first) at N hosts instead")
    parser.add_argument("--top", type=int, default=25, help="profile entries shown")
    parser.add_argument("--baseline", action="store_true",
                        help="pyinfra as it ships (its own operation order and global "
                        "arguments): the adapter's replacements left out")
    parser.add_argument("--shards", type=int, metavar="N",
                        help="each run (--runs) of N hosts by one controller, then by two "
                        "shards side by side; the audits merged")
    args = parser.parse_args()
    labels = [label for label in args.runs.split(",") if label]
    unknown = [label for label in labels if label not in RUNS]
    if unknown:
        parser.error(f"--runs: {', '.join(unknown)}: allowed {', '.join(RUNS)}")
    if not RECORDING.exists():
        parser.error(f"no recording at {RECORDING.relative_to(REPO)}: make one with "
                     "`flock /tmp/gpufleet-e2e.lock .venv/bin/python benchmarks/replay.py "
                     "record`")
    if args.profile:
        profile(args.profile, labels[0], args.top, args.baseline)
        return 0
    if args.shards:
        return shards(args.shards, labels)
    sizes = sorted({int(size) for size in args.sizes.split(",")})
    figures = measure(sizes, labels, args.baseline,
                      same_order_at=10 if 10 in sizes else sizes[0])
    print()
    print(table(figures, sizes, labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
