"""`gpufleet COMMAND`: one front door over the pyinfra deploys and the operator tools.

Each command is the pyinfra or tools/ command it names in its help, run from the checkout with
`--fleet FILE` as $GPUFLEET_FLEET and `--limit` as pyinfra's (fleet host names are turned into
pyinfra's). The pyinfra commands keep working as they are; this only saves remembering them.
`--print-command` prints the command line instead of running it (nothing is contacted).

Bad input gets one line and exit status 2, like the rest of gpufleet.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from gpufleet.sharding import Shard
    from inventory.fleet import Fleet

REPO = Path(__file__).resolve().parents[1]
FLEET_ENV = "GPUFLEET_FLEET"
CANARY_ACTIONS = ("start", "promote", "rollback", "status")
# The tools whose own flags pass through unchanged: `gpufleet size --model ...`.
PASSTHROUGH = {"size": "tools/size.py", "cost": "tools/cost.py", "smoke": "tools/smoke.py",
               "report": "tools/report.py"}
# Those of them that read a fleet file: --fleet is taken here and passed as $GPUFLEET_FLEET.
FLEET_TOOLS = ("smoke", "report")
# The commands `gpufleet shards` runs for each shard (the others ask questions or are about
# one fleet as a whole).
SHARD_ACTIONS = ("plan", "apply", "audit")


class UsageError(Exception):
    """Bad input: one line for the user (and one per problem below it), exit status 2."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.lines = [message, *(f"  - {line}" for line in problems)]


def _fail(message: str, problems: Sequence[str] = ()) -> NoReturn:
    raise UsageError(message, problems)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's message names the argument
        _fail(f"{message} (see {self.prog} --help)")


@dataclass
class Command:
    """What a subcommand runs: argv, from which folder (None: the caller's), extra env."""

    argv: list[str]
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        """The command as one shell line (what --print-command prints)."""
        words = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [
            shlex.quote(a) for a in self.argv]
        return (f"cd {shlex.quote(str(self.cwd))} && " if self.cwd else "") + " ".join(words)


def _pyinfra() -> str:
    """pyinfra beside this interpreter (the checkout's .venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("pyinfra")
    if beside.is_file():
        return str(beside)
    found = shutil.which("pyinfra")
    if not found:
        _fail("pyinfra is not installed beside this Python or on PATH: run `make venv` and "
              "use .venv/bin/gpufleet")
    return found


def _fleet(args: argparse.Namespace) -> Path | None:
    """The fleet file, absolute (the commands run from the checkout): --fleet, else
    $GPUFLEET_FLEET, else None (inventory.py's own default, inventory/fleet.toml)."""
    given = getattr(args, "fleet", None)
    if given is not None:
        if not given.strip():
            _fail("--fleet is empty: give a fleet file's path")
        path = Path(given).expanduser()
        if not path.is_file():
            _fail(f"--fleet {given}: no such file")
        return path.resolve()
    value = os.environ.get(FLEET_ENV)
    if value and value.strip():
        return Path(value).expanduser().resolve()
    return None  # unset, or set but empty: inventory.py reports the empty one


def _fleet_env(fleet: Path | None) -> dict[str, str]:
    return {FLEET_ENV: str(fleet)} if fleet else {}


def _limits(fleet: Path | None, names: Sequence[str]) -> list[str]:
    """`--limit` values as pyinfra knows them: a fleet host's name becomes its pyinfra name
    (@docker/NAME for simulated hosts); groups, pyinfra names and patterns pass as they are.
    An unknown name is refused here, naming what the fleet has."""
    if not names:
        return []
    from inventory.fleet import FleetError, fleet_path_from_env, load_fleet, pyinfra_host_name
    from rules.fleet_checks import fleet_problems

    try:
        loaded = load_fleet(fleet or REPO / fleet_path_from_env(), checks=fleet_problems)
    except FleetError as error:
        _fail(f"the fleet file has {len(error.lines)} problem(s); no host was contacted:",
              error.lines)
    hosts = {spec.name: pyinfra_host_name(spec) for spec in loaded.hosts}
    groups = sorted({spec.group for spec in loaded.hosts})
    known = set(hosts.values()) | set(groups)
    out = []
    for name in names:
        if name in hosts:
            out.append(hosts[name])
        elif name in known or any(c in name for c in "*?["):
            out.append(name)
        else:
            _fail(f"--limit {name}: not a host or group of {loaded.source}; hosts: "
                  f"{', '.join(hosts)}; groups: {', '.join(groups)}")
    return out


def _pyinfra_command(args: argparse.Namespace, deploy: str, *flags: str,
                     data: Sequence[str] = ()) -> Command:
    fleet = _fleet(args)
    argv = [_pyinfra(), *flags, "inventory.py", deploy]
    for name in _limits(fleet, getattr(args, "limit", None) or []):
        argv += ["--limit", name]
    for item in data:
        argv += ["--data", item]
    return Command(argv, cwd=REPO, env=_fleet_env(fleet))


def _yes(args: argparse.Namespace) -> tuple[str, ...]:
    """-y only when asked: without it pyinfra shows what would change and asks."""
    return ("-y",) if args.yes else ()


def cmd_check(args: argparse.Namespace) -> Command:
    fleet = _fleet(args)
    return Command([sys.executable, "inventory.py", *([str(fleet)] if fleet else [])], cwd=REPO)


def cmd_plan(args: argparse.Namespace) -> Command:
    # --dry: the same preview as pyinfra without -y, then stop instead of asking.
    return _pyinfra_command(args, "deploys/gpu_host.py", "--dry")


def cmd_apply(args: argparse.Namespace) -> Command:
    return _pyinfra_command(args, "deploys/gpu_host.py", *_yes(args))


def cmd_doctor(args: argparse.Namespace) -> Command:
    if not args.local:
        for flag in ("model", "precision", "weights_path"):
            if getattr(args, flag) is not None:
                _fail(f"--{flag.replace('_', '-')} is for --local (this machine, no fleet "
                      "file); a fleet's hosts are checked against their fleet settings")
        return _pyinfra_command(args, "deploys/doctor.py", "--dry")
    if args.fleet or args.limit:
        _fail("--local checks this machine without a fleet file: drop --fleet and --limit")
    if not args.model or not args.precision:
        _fail("--local needs --model and --precision (what this machine should serve)")
    data = [f"model={args.model}", f"precision={args.precision}"]
    if args.weights_path:
        data.append(f"weights_path={args.weights_path}")
    argv = [_pyinfra(), "--dry", "@local", "deploys/doctor.py"]
    for item in data:
        argv += ["--data", item]
    return Command(argv, cwd=REPO)


def cmd_audit(args: argparse.Namespace) -> Command:
    return _pyinfra_command(args, "deploys/audit.py", "-y")  # read-only: nothing to confirm


def cmd_rollout(args: argparse.Namespace) -> Command:
    fleet = _fleet(args)
    argv = [sys.executable, str(REPO / "tools" / "rollout.py")]
    if args.behind_only:
        argv.append("--behind-only")
    if args.allow_outage:
        argv.append("--allow-outage")
    return Command(argv, env=_fleet_env(fleet))


def cmd_canary(args: argparse.Namespace) -> Command:
    return _pyinfra_command(args, "deploys/canary.py", *_yes(args),
                            data=[f"action={args.action}"])


def cmd_drain(args: argparse.Namespace) -> Command:
    if bool(args.hosts) == bool(args.undo):
        _fail("drain takes the GPU hosts to take out of the gateway, or --undo to put every "
              "host back (not both); --restore HOST... puts those hosts back")
    if args.restore and not args.hosts:
        _fail("drain --restore takes the GPU hosts to put back into the gateway")
    names = [n for item in args.hosts for n in item.split(",") if n.strip()]
    key = "restore" if args.restore else "drain"
    return _pyinfra_command(args, "deploys/drain.py", *_yes(args),
                            data=[f"{key}={','.join(names)}"])


def cmd_tool(args: argparse.Namespace, extra: list[str]) -> Command:
    fleet = _fleet(args) if args.command in FLEET_TOOLS else None
    return Command([sys.executable, str(REPO / PASSTHROUGH[args.command]), *extra],
                   env=_fleet_env(fleet))


EXAMPLES = {
    "check": "gpufleet check --fleet my-fleet.toml",
    "plan": "gpufleet plan --fleet my-fleet.toml --limit gpu-01",
    "apply": "gpufleet apply --fleet my-fleet.toml            # shows the changes, then asks\n"
             "  gpufleet apply --fleet my-fleet.toml --yes      # no question",
    "doctor": "gpufleet doctor --fleet my-fleet.toml\n"
              "  gpufleet doctor --local --model deepseek-r1-distill-llama-70b --precision int8",
    "audit": "gpufleet audit --fleet my-fleet.toml",
    "rollout": "gpufleet rollout --fleet my-fleet.toml [--behind-only]",
    "canary": "gpufleet canary start --fleet my-fleet.toml\n"
              "  gpufleet canary status --fleet my-fleet.toml",
    "drain": "gpufleet drain --fleet my-fleet.toml --yes gpu-03 gpu-04\n"
             "  gpufleet drain --fleet my-fleet.toml --yes --restore gpu-03   # that one back\n"
             "  gpufleet drain --fleet my-fleet.toml --yes --undo   # every host back",
    "size": "gpufleet size --model deepseek-r1-distill-llama-70b --precision int8 "
            "--gpus 2xa100-80gb --context 8192 --concurrency 16",
    "cost": "gpufleet cost --model deepseek-r1-distill-llama-70b --precision fp8 --gpus 2xh100 "
            "--requests-per-day 100000 --cloud-per-million-tokens 0.6",
    "smoke": "gpufleet smoke --fleet inventory/sim.toml --requests 20 --seconds 30",
    "report": "gpufleet report --fleet inventory/sim.toml --out fleet.html --gpus 1xa100-40gb "
              "--requests-per-day 100000 --cloud-per-million-tokens 0.6",
    "shards": "gpufleet shards plan east/fleet.toml west/fleet.toml\n"
              "  gpufleet shards apply --yes east/fleet.toml west/fleet.toml\n"
              "  gpufleet shards audit big/fleet.toml:pcie big-hgx/fleet.toml:hgx",
}

RUNS = {
    "check": "python inventory.py FLEET_FILE",
    "plan": "pyinfra --dry inventory.py deploys/gpu_host.py (the preview, no question)",
    "apply": "pyinfra [-y] inventory.py deploys/gpu_host.py",
    "doctor": "pyinfra --dry inventory.py deploys/doctor.py (read-only)",
    "audit": "pyinfra -y inventory.py deploys/audit.py (read-only)",
    "rollout": "tools/rollout.py",
    "canary": "pyinfra [-y] inventory.py deploys/canary.py --data action=ACTION",
    "drain": "pyinfra [-y] inventory.py deploys/drain.py --data drain=HOST,...",
    "size": "tools/size.py (its flags)",
    "cost": "tools/cost.py (its flags)",
    "smoke": "tools/smoke.py (its flags)",
    "report": "tools/report.py (its flags: the cost tool's, --out)",
    "shards": "gpufleet plan | apply --yes | audit for each shard, as processes side by side\n"
              "(docs/scale.md); a SHARD is a fleet file, or FILE:GROUP,GROUP to limit it",
}

SUMMARY = {
    "check": "validate the fleet file offline (no host contacted)",
    "plan": "preview what apply would change (changes nothing)",
    "apply": "converge the fleet (asks first unless --yes)",
    "doctor": "does each host fit its model: what it has, what it needs (read-only)",
    "audit": "drift audit against the manifests and the fleet file (read-only)",
    "rollout": "roll the fleet's pins through a batch at a time",
    "canary": "canary start | promote | rollback | status",
    "drain": "take GPU hosts out of the gateway (drains add up), --restore some, --undo all",
    "size": "will a model fit these GPUs, how many for a load (offline)",
    "cost": "owning against renting for a load (offline)",
    "smoke": "a completion from every endpoint and a short latency probe",
    "report": "one offline HTML page: hosts, drift, serving, canary, capacity and cost charts",
    "shards": "plan, apply or audit a fleet split into shards, one controller each, at once",
}


def parser() -> argparse.ArgumentParser:
    main = _Parser(prog="gpufleet", description=(__doc__ or "").split("\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog="Run `gpufleet COMMAND --help` for a command's options and an "
                          "example.\nExample: gpufleet check --fleet my-fleet.toml")
    sub = main.add_subparsers(dest="command", metavar="COMMAND", required=True,
                              parser_class=_Parser)

    def add(name: str, *, fleet: bool = True, limit: bool = False, yes: bool = False,
            passthrough: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=SUMMARY[name], add_help=not passthrough,
                           description=f"{SUMMARY[name]}.\nRuns: {RUNS[name]}",
                           epilog=f"Example:\n  {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if fleet:
            p.add_argument("--fleet", metavar="FILE",
                           help=f"fleet file (default: ${FLEET_ENV}, else inventory/fleet.toml)")
        if limit:
            p.add_argument("--limit", action="append", metavar="NAME",
                           help="only this host or group (fleet or pyinfra name; repeatable)")
        if yes:
            p.add_argument("--yes", "-y", action="store_true",
                           help="do it without showing the changes and asking first")
        p.add_argument("--print-command", action="store_true",
                       help="print the command it would run, run nothing")
        return p

    add("check")
    add("plan", limit=True)
    add("apply", limit=True, yes=True)
    doctor = add("doctor", limit=True)
    doctor.add_argument("--local", action="store_true",
                        help="this machine (pyinfra @local), no fleet file")
    doctor.add_argument("--model", help="with --local: catalog model id")
    doctor.add_argument("--precision", help="with --local: e.g. int8, fp8, bf16")
    doctor.add_argument("--weights-path", help="with --local: where the weights go")
    add("audit", limit=True)
    rollout = add("rollout")
    rollout.add_argument("--behind-only", action="store_true",
                         help="skip hosts whose manifest already has the fleet file's pins")
    rollout.add_argument("--allow-outage", action="store_true",
                         help="go on where a batch holds every replica of a served model "
                              "still in rotation (that model answers nothing meanwhile)")
    canary = add("canary", yes=True)
    canary.add_argument("action", choices=CANARY_ACTIONS)
    drain = add("drain", yes=True)
    drain.add_argument("hosts", nargs="*", metavar="HOST", help="fleet names of GPU hosts")
    drain.add_argument("--restore", action="store_true",
                       help="put these hosts back (a rollout never puts back a host drained "
                            "by hand)")
    drain.add_argument("--undo", action="store_true", help="put every host back")
    for name in PASSTHROUGH:
        add(name, fleet=name in FLEET_TOOLS, passthrough=True)
    shards = add("shards", fleet=False, yes=True)
    shards.add_argument("action", choices=SHARD_ACTIONS)
    shards.add_argument("shards", nargs="+", metavar="SHARD",
                        help="a fleet file, or FILE:GROUP[,GROUP...] (its run limited to "
                             "those groups); each host in exactly one shard")
    shards.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="at most N shards at once (default: this machine's cores)")
    return main


BUILDERS = {
    "check": cmd_check, "plan": cmd_plan, "apply": cmd_apply, "doctor": cmd_doctor,
    "audit": cmd_audit, "rollout": cmd_rollout, "canary": cmd_canary, "drain": cmd_drain,
}


def build(argv: Sequence[str]) -> tuple[Command, bool]:
    """The command for `gpufleet ARGV`, and whether only to print it."""
    p = parser()
    args, extra = p.parse_known_args(list(argv))
    if args.command in PASSTHROUGH:
        if {"-h", "--help"} & set(extra):
            # The tool's own flags, then this command's example.
            print(f"gpufleet {args.command}: {SUMMARY[args.command]}; the flags are "
                  f"{PASSTHROUGH[args.command]}'s, below.\n\nExample:\n  "
                  f"{EXAMPLES[args.command]}\n", flush=True)
            return Command([sys.executable, str(REPO / PASSTHROUGH[args.command]), "--help"]
                           ), False
        return cmd_tool(args, extra), args.print_command
    if extra:
        _fail(f"unrecognized arguments: {' '.join(extra)} "
              f"(see gpufleet {args.command} --help)")
    return BUILDERS[args.command](args), args.print_command


def cmd_shards(args: argparse.Namespace) -> int:
    """Each shard's gpufleet command (the same builders as for one fleet), checked together,
    then run side by side (gpufleet/sharding.py); the audits merged into one table."""
    from gpufleet.sharding import (
        ShardRun,
        exit_status,
        merged_audit,
        parse_shard,
        run_side_by_side,
        shard_problems,
    )
    from inventory.fleet import FleetError, load_fleet
    from rules.fleet_checks import fleet_problems

    if args.action == "apply" and not args.yes:
        _fail("shards apply runs every shard at once and cannot ask each one: preview with "
              "`gpufleet shards plan`, then pass --yes")
    if args.jobs < 1:
        _fail(f"--jobs {args.jobs}: give 1 or more")
    shards: list[tuple[Shard, Fleet]] = []
    runs: list[ShardRun] = []
    for text in args.shards:
        try:
            shard = parse_shard(text)
        except ValueError as error:
            _fail(str(error))
        path = _fleet(argparse.Namespace(fleet=shard.fleet_file))
        assert path is not None  # a fleet file given
        try:
            fleet = load_fleet(path, checks=fleet_problems)
        except FleetError as error:
            _fail(f"shard {text}: the fleet file has {len(error.lines)} problem(s); no host "
                  "was contacted:", error.lines)
        shards.append((shard, fleet))
    problems = shard_problems(shards)
    if problems:
        _fail(f"the shards cannot run side by side ({len(problems)} problem(s)); no host was "
              "contacted:", problems)
    for shard, _ in shards:
        command = BUILDERS[args.action](argparse.Namespace(
            fleet=shard.fleet_file, limit=list(shard.groups) or None, yes=args.yes))
        runs.append(ShardRun(shard.label, command.argv, command.cwd, command.env))
    if args.print_command:
        for run_ in runs:
            print(Command(run_.argv, run_.cwd, run_.env).shell())
        return 0
    try:
        run_side_by_side(runs, args.jobs, sys.stdout)
    except KeyboardInterrupt:  # the shards got the terminal's Ctrl-C too
        print("gpufleet: shards interrupted", file=sys.stderr)
        return 130
    print("\n--> Shards")
    for run_ in runs:
        print(f"    {run_.label}: exit status {run_.status}, {run_.seconds:.1f} s")
    status = exit_status(runs)
    if args.action == "audit":
        text, complete = merged_audit(runs, [fleet.hosts[0].state_dir / "audit.json"
                                             for _, fleet in shards])
        print("\n" + text)
        if not complete:
            status = max(status, 1)
    return status


def run(command: Command) -> NoReturn:
    """Become the command: its prompts, output and exit status are the user's."""
    sys.stdout.flush()
    sys.stderr.flush()
    if command.cwd:
        os.chdir(command.cwd)
    env = {**os.environ, **command.env}
    try:
        os.execve(command.argv[0], command.argv, env)
    except OSError as exc:
        _fail(f"cannot run {command.argv[0]}: {exc.strerror}")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        if not (REPO / "inventory.py").is_file():
            _fail(f"no gpufleet checkout at {REPO}: install it editable from the checkout "
                  "(make venv, or pip install -e .)")
        words = list(sys.argv[1:] if argv is None else argv)
        if words[:1] == ["shards"]:
            return cmd_shards(parser().parse_args(words))
        command, print_only = build(words)
        if print_only:
            print(command.shell())
            return 0
        run(command)
    except UsageError as error:
        print("gpufleet: " + "\n".join(error.lines), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
