"""`gpufleet shards ACTION SHARD...`: one fleet run as several controllers side by side.

A fleet too large for one controller process (pyinfra runs every host's plan on one core) is
split into shards (docs/scale.md, "Beyond one controller"): each shard is a fleet file,
optionally limited to some of its groups (``FILE:GROUP,GROUP``), with its own fleet-state/
folder. This runs the same gpufleet command (plan, apply --yes, audit) for every shard as its
own process, at most ``--jobs`` at a time, each output line prefixed with its shard, and exits
with the highest exit status of the shards (0 when every shard succeeded). The audit's shards
are merged into one table (rules/shards.py: merge_audits).

Before anything runs, the shards are checked together: no host is acted on by two shards
(two controllers converging one host would undo each other's work), and no two shards share
a fleet-state folder (each controller writes its own files).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from inventory.fleet import Fleet, pyinfra_host_name
from rules.manifest import render_audit_table
from rules.shards import ShardError, merge_audits


@dataclass(frozen=True)
class Shard:
    """One shard: its fleet file as given (``label``), and the groups it is limited to."""

    label: str
    fleet_file: str
    groups: tuple[str, ...] = ()


def parse_shard(text: str) -> Shard:
    """``FILE`` or ``FILE:GROUP[,GROUP...]``. Raises ValueError with one line."""
    path, colon, groups = text.rpartition(":") if ":" in text else (text, "", "")
    names = tuple(name.strip() for name in groups.split(",")) if colon else ()
    if not path.strip() or (colon and not all(names)):
        raise ValueError(f"shard {text!r}: give a fleet file, or FILE:GROUP[,GROUP...] with "
                         "no empty group name")
    return Shard(text, path, names)


def acted_on(fleet: Fleet, groups: Sequence[str]) -> dict[str, str]:
    """The hosts a shard's run acts on (all of its fleet file's, or its groups'): pyinfra
    name -> fleet name."""
    return {pyinfra_host_name(spec): spec.name for spec in fleet.hosts
            if not groups or spec.group in groups}


def shard_problems(shards: Sequence[tuple[Shard, Fleet]]) -> list[str]:
    """What keeps these shards from running side by side, one line each: a group its fleet
    file lacks, a host acted on by two shards, two shards writing one fleet-state folder."""
    problems: list[str] = []
    owner: dict[str, str] = {}
    state_dirs: dict[Path, str] = {}
    for shard, fleet in shards:
        known = sorted({spec.group for spec in fleet.hosts})
        for group in shard.groups:
            if group not in known:
                problems.append(f"shard {shard.label}: group {group} is not in "
                                f"{shard.fleet_file}; its groups: {', '.join(known)}")
        for target, name in acted_on(fleet, shard.groups).items():
            if target in owner:
                problems.append(f"host {name} ({target}) is in two shards: {owner[target]} "
                                f"and {shard.label}; each host belongs to exactly one shard "
                                "(limit a shard to its groups: FILE:GROUP,GROUP)")
            else:
                owner[target] = shard.label
        if fleet.hosts:
            folder = fleet.hosts[0].state_dir.resolve()
            if folder in state_dirs:
                problems.append(f"shards {state_dirs[folder]} and {shard.label} would both "
                                f"write {folder}: give each shard its own folder (or fleet "
                                "name)")
            else:
                state_dirs[folder] = shard.label
    return problems


@dataclass
class ShardRun:
    """One shard's process: what it ran, its exit status, when it started and ended."""

    label: str
    argv: list[str]
    cwd: Path | None
    env: dict[str, str]
    status: int | None = None
    started: float = 0.0
    seconds: float = 0.0


def run_side_by_side(runs: Sequence[ShardRun], jobs: int, out: TextIO) -> None:
    """Run each shard's command as its own process, at most ``jobs`` at once; each line of
    its output (stdout and stderr) written to ``out`` as it comes, prefixed ``[label]``. No
    shard reads the terminal (stdin is /dev/null): nothing may ask a question."""
    lock = threading.Lock()
    slots = threading.Semaphore(max(1, jobs))

    def one(run: ShardRun) -> None:
        with slots:
            run.started = time.time()
            t0 = time.monotonic()
            try:
                proc = subprocess.Popen(run.argv, cwd=run.cwd, env={**os.environ, **run.env},
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, errors="replace")
            except OSError as error:
                with lock:
                    out.write(f"[{run.label}] cannot run {run.argv[0]}: {error.strerror}\n")
                run.status, run.seconds = 127, time.monotonic() - t0
                return
            assert proc.stdout is not None
            for line in proc.stdout:
                with lock:
                    out.write(f"[{run.label}] {line}" if line.endswith("\n")
                              else f"[{run.label}] {line}\n")
                    out.flush()
            run.status = proc.wait()
            run.seconds = time.monotonic() - t0

    threads = [threading.Thread(target=one, args=(run,), daemon=True) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def exit_status(runs: Sequence[ShardRun]) -> int:
    """The shards' highest exit status: 0 only when every shard's run succeeded."""
    return max((run.status if run.status is not None else 1 for run in runs), default=0)


def merged_audit(runs: Sequence[ShardRun], audit_files: Sequence[Path]) -> tuple[str, bool]:
    """One drift table from the audit.json each shard's run wrote (in order with ``runs``):
    (text, whether every shard's audit was there and merged). A shard whose file is older
    than its run (the run failed before writing it) is named, never merged from a stale file."""
    documents: list[tuple[str, str]] = []
    missing: list[str] = []
    for run, path in zip(runs, audit_files, strict=True):
        try:
            fresh = path.stat().st_mtime >= run.started - 1
        except OSError:
            fresh = False
        if fresh:
            documents.append((str(path), path.read_text()))
        else:
            missing.append(f"shard {run.label}: no audit written by this run ({path}; exit "
                           f"status {run.status})")
    try:
        merged = merge_audits(documents)
    except ShardError as error:
        return str(error), False
    text = (f"--> Drift audit, {len(documents)} shard(s) merged\n" + render_audit_table(merged)
            + "".join(f"\n{line}" for line in missing))
    return text, not missing
