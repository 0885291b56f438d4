"""`gpufleet shards`: a fleet split into shards run as controller processes side by side
(gpufleet/sharding.py, gpufleet/cli.py: cmd_shards), and the benchmark's check that a no-op
writes none of the controller's files (benchmarks/controller.py: written_again)."""

from __future__ import annotations

import argparse
import io
import json
import sys
import textwrap
from pathlib import Path

import pytest

import gpufleet.cli as cli
from gpufleet.sharding import (
    Shard,
    ShardRun,
    exit_status,
    merged_audit,
    parse_shard,
    run_side_by_side,
    shard_problems,
)
from inventory.controller_files import write_atomically
from inventory.fleet import load_fleet
from rules.manifest import Drift, audit_json


def fleet_file(folder: Path, groups: dict[str, list[str]], name: str = "lab") -> Path:
    """A fleet file in ``folder``: group -> its hosts (SSH targets, never contacted)."""
    lines = [f'[fleet]\nname = "{name}"\n', "[settings]", 'weights_path = "/srv/models/m"',
             'precision = "bf16"', 'storage = { policy = "warn" }', ""]
    for group, hosts in groups.items():
        for host in hosts:
            lines += [f"[groups.{group}.hosts.{host}]", f'target = "{host}.lab.internal"', ""]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fleet.toml"
    path.write_text("\n".join(lines))
    return path


def test_a_shard_is_a_fleet_file_optionally_limited_to_groups() -> None:
    assert parse_shard("east/fleet.toml") == Shard("east/fleet.toml", "east/fleet.toml")
    assert parse_shard("big/fleet.toml:pcie,hgx") == Shard("big/fleet.toml:pcie,hgx",
                                                           "big/fleet.toml", ("pcie", "hgx"))
    for bad in ("big/fleet.toml:", "big/fleet.toml:pcie,", ":pcie"):
        with pytest.raises(ValueError, match="give a fleet file, or FILE:GROUP"):
            parse_shard(bad)


def test_shards_that_share_a_host_or_a_fleet_state_folder_are_refused(tmp_path: Path) -> None:
    big = load_fleet(fleet_file(tmp_path / "big", {"pcie": ["gpu-01"], "hgx": ["gpu-02"]}))
    other = load_fleet(fleet_file(tmp_path / "other", {"pcie": ["gpu-01"], "l4": ["gpu-03"]}))
    # One fleet file split by group, and a file of its own: each host in one shard.
    assert shard_problems([(parse_shard("big.toml:pcie"), big),
                           (Shard("other.toml:l4", "other.toml", ("l4",)), other)]) == []
    problems = shard_problems([(parse_shard("big.toml"), big),
                               (parse_shard("other.toml"), other),
                               (parse_shard("big.toml:gpu"), big)])
    assert problems == [
        "host gpu-01 (gpu-01) is in two shards: big.toml and other.toml; each host belongs "
        "to exactly one shard (limit a shard to its groups: FILE:GROUP,GROUP)",
        "shard big.toml:gpu: group gpu is not in big.toml; its groups: hgx, pcie",
        f"shards big.toml and big.toml:gpu would both write "
        f"{(tmp_path / 'big' / 'fleet-state' / 'lab').resolve()}: give each shard its own "
        "folder (or fleet name)"]


def test_the_shards_run_at_the_same_time_each_line_tagged(tmp_path: Path) -> None:
    """Each shard waits for the other's file before it ends: only processes running side by
    side both finish in time (one after the other, the first would give up)."""
    def waits_for(mine: str, theirs: str, status: int) -> ShardRun:
        code = textwrap.dedent(f"""
            import pathlib, sys, time
            pathlib.Path({str(tmp_path / mine)!r}).touch()
            deadline = time.monotonic() + 20
            while not pathlib.Path({str(tmp_path / theirs)!r}).exists():
                if time.monotonic() > deadline:
                    print("alone"); sys.exit(9)
                time.sleep(0.05)
            print("together"); print("to stderr", file=sys.stderr); sys.exit({status})
        """)
        return ShardRun(mine, [sys.executable, "-c", code], None, {})

    runs = [waits_for("a", "b", 0), waits_for("b", "a", 3)]
    out = io.StringIO()
    run_side_by_side(runs, jobs=2, out=out)
    assert [run.status for run in runs] == [0, 3]
    assert sorted(out.getvalue().splitlines()) == [
        "[a] to stderr", "[a] together", "[b] to stderr", "[b] together"]
    assert exit_status(runs) == 3
    # One at a time, the first gives up waiting: the same commands prove the concurrency.
    alone = [waits_for("c", "d", 0)]
    alone[0].argv[-1] = alone[0].argv[-1].replace("+ 20", "+ 0.5")
    run_side_by_side(alone, jobs=1, out=io.StringIO())
    assert alone[0].status == 9


def test_the_merged_audit_takes_only_files_written_by_this_run(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "audit.json", tmp_path / "b" / "audit.json"
    write_atomically(a, audit_json({"gpu-01": []}))
    write_atomically(b, audit_json({"gpu-02": [Drift("files", "/etc/x changed")]}))
    runs = [ShardRun("a", [], None, {}, status=0), ShardRun("b", [], None, {}, status=1)]
    text, complete = merged_audit(runs, [a, b])
    assert complete
    assert text.splitlines()[0] == "--> Drift audit, 2 shard(s) merged"
    assert "gpu-02: files: /etc/x changed" in text
    assert text.splitlines()[-1] == "1 of 2 host(s) drifted"
    # A shard whose run started after its file was written (it failed before writing one):
    runs[1].started = b.stat().st_mtime + 60
    text, complete = merged_audit(runs, [a, b])
    assert not complete
    assert "gpu-02" not in text
    assert text.splitlines()[-1] == f"shard b: no audit written by this run ({b}; exit status 1)"


def test_gpufleet_shards_audit_runs_each_shard_and_merges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole command, with each shard's audit stood in by a process that writes the
    audit.json the real one writes (where the shard's fleet-state is) and exits as it does."""
    east = fleet_file(tmp_path / "east", {"pcie": ["gpu-01", "gpu-02"]})
    west = fleet_file(tmp_path / "west", {"hgx": ["gpu-03"], "l4": ["gpu-04"]})
    drift: dict[str, dict[str, list[dict[str, str | None]]]] = {
        "east": {"gpu-01": [], "gpu-02": []},
        "west": {"gpu-03": [{"area": "files", "what": "/etc/x changed", "since": None}]}}
    seen: list[list[str] | None] = []

    def stand_in(args: argparse.Namespace) -> cli.Command:
        fleet = Path(args.fleet).resolve()
        seen.append(args.limit)
        found = drift[fleet.parent.name]
        path = fleet.parent / "fleet-state" / "lab" / "audit.json"
        code = (f"import pathlib; p = pathlib.Path({str(path)!r}); "
                "p.parent.mkdir(parents=True, exist_ok=True); "
                f"p.write_text({json.dumps(found)!r}); print('audited'); "
                f"raise SystemExit({1 if any(found.values()) else 0})")
        return cli.Command([sys.executable, "-c", code])

    monkeypatch.setitem(cli.BUILDERS, "audit", stand_in)
    status = cli.main(["shards", "audit", str(east), f"{west}:hgx"])
    out = capsys.readouterr().out
    assert status == 1  # west's host drifted: its audit failed
    assert seen == [None, ["hgx"]]
    assert f"[{east}] audited" in out and f"[{west}:hgx] audited" in out
    assert f"    {east}: exit status 0" in out and f"    {west}:hgx: exit status 1" in out
    assert "--> Drift audit, 2 shard(s) merged" in out
    assert "gpu-03: files: /etc/x changed" in out
    assert out.rstrip().endswith("1 of 3 host(s) drifted")


def test_gpufleet_shards_refuses_before_running_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    east = fleet_file(tmp_path / "east", {"pcie": ["gpu-01"]})
    west = fleet_file(tmp_path / "west", {"pcie": ["gpu-01"]})
    assert cli.main(["shards", "apply", str(east), str(west)]) == 2
    assert capsys.readouterr().err == (
        "gpufleet: shards apply runs every shard at once and cannot ask each one: preview "
        "with `gpufleet shards plan`, then pass --yes\n")
    assert cli.main(["shards", "apply", "--yes", str(east), str(west)]) == 2
    err = capsys.readouterr().err
    assert "host gpu-01 (gpu-01) is in two shards" in err and "no host was contacted" in err


def test_gpufleet_shards_prints_each_shards_command(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    east = fleet_file(tmp_path / "east", {"pcie": ["gpu-01"]})
    west = fleet_file(tmp_path / "west", {"hgx": ["gpu-02"], "l4": ["gpu-03"]})
    assert cli.main(["shards", "apply", "--yes", "--print-command", str(east),
                     f"{west}:hgx"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" -y inventory.py deploys/gpu_host.py")
    assert f"GPUFLEET_FLEET={east}" in lines[0]
    assert lines[1].endswith(" -y inventory.py deploys/gpu_host.py --limit hgx")


def test_the_benchmarks_no_op_check_sees_a_controller_file_written_again(
        tmp_path: Path) -> None:
    from benchmarks.controller import state_dir, written_again

    fleet = tmp_path / "fleet.toml"
    folder = state_dir(fleet)
    folder.mkdir(parents=True)
    seeded = {}
    for name in ("a", "b"):
        path = folder / f"{name}.json"
        path.write_text("{}\n")
        seeded[path] = path.stat().st_ino
    (folder / "audit.json").write_text("{}\n")
    assert written_again(fleet, seeded) == []
    write_atomically(folder / "b.json", "{}\n")  # the same content, written again
    write_atomically(folder / "c.json", "{}\n")  # a copy the run added
    assert written_again(fleet, seeded) == [folder / "b.json", folder / "c.json"]
