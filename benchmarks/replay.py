"""Replay: pyinfra connectors that record a real simulated host's answers and play them back,
so that the controller can be measured at 1,000 hosts with no network and no containers.

    # record (the rehearsal fleet, converged; takes the e2e lock): preview, no-op, audit
    flock /tmp/gpufleet-e2e.lock .venv/bin/python benchmarks/replay.py record
    # check that the committed recording still matches what the product sends
    flock /tmp/gpufleet-e2e.lock .venv/bin/python benchmarks/replay.py check

Recording wraps pyinfra's @docker connector: every command the product sends (the exact
command line, after pyinfra adds sudo/env wrapping), every upload and download, with the
host's answer. Replay is a connector that answers the same commands from the recording. A
command (or upload, or download) with no recorded answer raises ReplayMiss: the run fails
loudly, it never succeeds silently on an answer nobody recorded.

A replayed host is named like the recorded one with a clone suffix: container
``gpufleet-sim-a100x2--0007`` (fleet name ``sim-a100x2--0007``) is answered from
``gpufleet-sim-a100x2``'s recording; the suffix is taken out of each command before the
look-up (a command that names the host names it with the suffix).

Both connectors take the place of pyinfra's ``docker`` connector in the process that runs
pyinfra (operations/pyinfra_adapter.py: use_connector): a fleet file keeps its
``@docker/NAME`` targets, and in a replayed run no ``docker`` command can run at all.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyinfra.api.command import StringCommand  # noqa: E402
from pyinfra.api.util import get_file_io  # noqa: E402
from pyinfra.connectors.base import BaseConnector  # noqa: E402
from pyinfra.connectors.docker import DockerConnector  # noqa: E402
from pyinfra.connectors.util import (  # noqa: E402
    CommandOutput,
    OutputLine,
    make_unix_command_for_host,
)

RECORDING = REPO / "benchmarks" / "recordings" / "sim.json"
SIM_FLEET = REPO / "inventory" / "sim.toml"
# The rehearsal fleet's GPU hosts: the hosts the benchmark clones.
RECORDED_HOSTS = ("sim-a100x2", "sim-h100x8")
# Run label -> pyinfra arguments (the preview is what an operator sees without -y: --dry).
RUNS: dict[str, list[str]] = {
    "preview": ["--dry", "inventory.py", "deploys/gpu_host.py"],
    "no-op": ["-y", "inventory.py", "deploys/gpu_host.py"],
    "audit": ["-y", "inventory.py", "deploys/audit.py"],
}
# Runs recorded with the host state read again when execution starts (as it is when planning
# takes longer than operations.host_reading.REUSE_ACROSS_PHASES_SECONDS: at 1,000 hosts), so that
# the replay has that read's answer too. A shorter replayed run simply does not ask for it.
LATE_READ_RUNS = ("no-op",)
CLONE = re.compile(r"--\d{4,}")
BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/=])")
# Environment of a child pyinfra process: which recording, which run, record or replay.
ENV_FILE = "GPUFLEET_REPLAY_FILE"
ENV_RUN = "GPUFLEET_REPLAY_RUN"
ENV_BASELINE = "GPUFLEET_REPLAY_BASELINE"
# The gpufleet release (version, git commit) the recorded hosts' manifests name: the child
# runs as that release, so that a commit made since does not read as a manifest to rewrite.
ENV_RELEASE = "GPUFLEET_REPLAY_RELEASE"
ENV_CANONICAL = "GPUFLEET_REPLAY_CANONICAL"
# Record: read the host state again when execution starts, however soon (LATE_READ_RUNS).
ENV_LATE_READ = "GPUFLEET_REPLAY_LATE_READ"
# Replay: [recorded, replayed] strings to swap in every answer (the SHA-256 of the host's API
# key file, recorded with the rehearsal fleet's key, replayed with the benchmark's own key).
ENV_SWAP = "GPUFLEET_REPLAY_SWAP"
# Where the hosts keep the fleet's API key (rules/serving.py's engines read it from there).
API_KEY_ENV = "/etc/gpufleet/inference/api-key.env"


class ReplayMiss(RuntimeError):
    """The product sent something the recording has no answer for."""


# The run lock's holder record (rules/run_lock.py): who, from where, which pid, since when and
# a fresh token, so it differs in every run. Commands are matched with it left out.
HOLDER = re.compile(r"\{\"boot_id\": .*?\"token\": \"[0-9a-f]+\", \"who\": \"[^\"]*\"\}")


def _key(kind: str, text: str, stdin: Any = None) -> str:
    text = HOLDER.sub("<run lock holder>", text)
    if stdin is None:
        return f"{kind} {text}"
    data = stdin if isinstance(stdin, str) else "\n".join(str(line) for line in stdin)
    return f"{kind} {text} <stdin sha256:{hashlib.sha256(data.encode()).hexdigest()}>"


def _content(filename_or_io: Any) -> bytes:
    with get_file_io(filename_or_io) as file_io:
        data = file_io.read()
    return data.encode() if isinstance(data, str) else data


def _recorded_name(host_name: str) -> str:
    """The recorded host a (cloned) pyinfra host is answered from: the clone suffix off."""
    return CLONE.sub("", host_name)


def command_key(connector: BaseConnector, command: StringCommand, arguments: dict[str, Any]
                ) -> str:
    """The exact command line the host would run (pyinfra's sudo/env wrapping included)."""
    control = {k: arguments.get(k) for k in ("_stdin",)}
    wrapped = {k: v for k, v in arguments.items()
               if k not in ("_get_pty", "_timeout", "_stdin", "_success_exit_codes")}
    line = make_unix_command_for_host(connector.state, connector.host, command, **wrapped)
    return _key("run", line.get_raw_value(), control["_stdin"])


# --- recording -----------------------------------------------------------------------------
class Recorder:
    """What one process's hosts were asked and answered, in order, per host."""

    def __init__(self) -> None:
        self.entries: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(self, host: str, key: str, ok: bool, output: CommandOutput | None = None,
            data: bytes | None = None) -> None:
        # Hosts recorded under other names (the e2e suite's copies) are written down under the
        # names they copy: GPUFLEET_REPLAY_CANONICAL, a JSON list of [name, recorded name].
        for name, canonical in json.loads(os.environ.get(ENV_CANONICAL) or "[]"):
            host, key = host.replace(name, canonical), key.replace(name, canonical)
        entry: dict[str, Any] = {"key": key, "ok": ok}
        if output is not None:
            entry["out"] = [[line.buffer_name, line.line] for line in output.combined_lines]
        if data is not None:
            entry["data"] = data.decode("utf-8", "surrogateescape")
        self.entries[host].append(entry)


RECORDER = Recorder()
# Remote exchanges (commands, uploads, downloads) per pyinfra host, recorded or replayed.
EXCHANGES: dict[str, int] = defaultdict(int)


class RecordingConnector(DockerConnector):
    """pyinfra's @docker connector, with every exchange written down."""

    def run_shell_command(self, command: StringCommand, print_output: bool = False,
                          print_input: bool = False, **arguments: Any
                          ) -> tuple[bool, CommandOutput]:
        key = command_key(self, command, arguments)
        ok, output = super().run_shell_command(command, print_output, print_input, **arguments)
        RECORDER.add(self.host.name, key, ok, output)
        EXCHANGES[self.host.name] += 1
        return ok, output

    def put_file(self, filename_or_io: Any, remote_filename: str,
                 remote_temp_filename: str | None = None, print_output: bool = False,
                 print_input: bool = False, **arguments: Any) -> bool:
        digest = hashlib.sha256(_content(filename_or_io)).hexdigest()
        ok = super().put_file(filename_or_io, remote_filename, remote_temp_filename,
                              print_output, print_input, **arguments)
        RECORDER.add(self.host.name, _key("put", f"{remote_filename} sha256:{digest}"), ok)
        return ok

    def get_file(self, remote_filename: str, filename_or_io: Any,
                 remote_temp_filename: str | None = None, print_output: bool = False,
                 print_input: bool = False, **arguments: Any) -> bool:
        with tempfile.SpooledTemporaryFile() as buffer:
            ok = super().get_file(remote_filename, buffer, remote_temp_filename, print_output,
                                  print_input, **arguments)
            buffer.seek(0)
            data = buffer.read()
        with get_file_io(filename_or_io, "wb") as file_io:
            file_io.write(data)
        RECORDER.add(self.host.name, _key("get", remote_filename), ok, data=data)
        return ok


# --- replay --------------------------------------------------------------------------------
_RECORDINGS: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}


def _table(host: str) -> dict[str, list[dict[str, Any]]]:
    """Key -> the recorded answers, in order, for the recorded host ``host`` in this run."""
    path, run = os.environ[ENV_FILE], os.environ[ENV_RUN]
    if path not in _RECORDINGS:
        recording = json.loads(Path(path).read_text())
        tables: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for name, entries in recording["runs"][run].items():
            table: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for entry in entries:
                table[entry["key"]].append(entry)
            tables[name] = dict(table)
        _RECORDINGS[path] = tables
    return _RECORDINGS[path].get(host, {})


# (the recorded host's name pattern, the swaps, a base64 string in its answers) known to need
# no change in any clone's answer: not decodable, or naming no host and holding no swapped
# string.
_UNCHANGED_BASE64: set[tuple[str, str, str]] = set()


class ReplayConnector(BaseConnector):
    """Answers each command from the recording of the host it clones; no process is run."""

    handles_execution = True

    def __init__(self, state: Any, host: Any) -> None:
        super().__init__(state, host)
        self.recorded = _recorded_name(host.name)
        found = CLONE.search(host.name)
        self.suffix = found.group(0) if found else ""
        # The recorded host's fleet name (@docker/gpufleet-sim-a100x2 -> sim-a100x2), not
        # followed by a clone suffix already.
        fleet_name = self.recorded.rsplit("/", 1)[-1].removeprefix("gpufleet-")
        self.plain_name = re.compile(re.escape(fleet_name) + r"(?![\w-])")
        self.fleet_name = fleet_name
        self.swaps: list[list[str]] = json.loads(os.environ.get(ENV_SWAP) or "[]")
        self.seen: dict[str, int] = defaultdict(int)

    @staticmethod
    def make_names_data(name: str | None = None) -> Iterator[tuple[str, dict, list[str]]]:
        return DockerConnector.make_names_data(name)

    def _as_clone(self, text: str) -> str:
        """A recorded answer as the clone gives it: its own name where the host said its name
        (the manifest's host, ...), and the swapped strings (its key's digests) replaced."""
        text = self._swapped(text)
        if not self.suffix and not self.swaps:
            return text
        # File contents travel base64-encoded (the state read): renamed inside as well.
        text = BASE64.sub(self._as_clone_base64, text)
        if not self.suffix or self.fleet_name not in text:  # most lines name no host
            return text
        return self.plain_name.sub(lambda found: found.group(0) + self.suffix, text)

    def _swapped(self, text: str) -> str:
        for recorded, replayed in self.swaps:
            text = text.replace(recorded, replayed)
        return text

    def _as_clone_base64(self, found: re.Match[str]) -> str:
        # Most encoded contents name no host and hold no swapped digest: known once for all
        # clones of the recorded host (the replay's own cost, not the controller's).
        unchanged_key = (self.plain_name.pattern, repr(self.swaps), found.group(0))
        if unchanged_key in _UNCHANGED_BASE64:
            return found.group(0)
        try:
            decoded = base64.b64decode(found.group(0), validate=True).decode()
        except ValueError:
            _UNCHANGED_BASE64.add(unchanged_key)
            return found.group(0)
        if self._swapped(decoded) == decoded and not self.plain_name.search(decoded):
            _UNCHANGED_BASE64.add(unchanged_key)
            return found.group(0)
        renamed = self._swapped(decoded)
        if self.suffix:
            renamed = self.plain_name.sub(lambda name: name.group(0) + self.suffix, renamed)
        if renamed == decoded:
            return found.group(0)
        return base64.b64encode(renamed.encode()).decode()

    def _answer(self, key: str) -> dict[str, Any]:
        EXCHANGES[self.host.name] += 1
        key = CLONE.sub("", key)
        answers = _table(self.recorded).get(key)
        if not answers:
            raise ReplayMiss(
                f"{self.host.name}: no recorded answer (recorded host {self.recorded}, run "
                f"{os.environ.get(ENV_RUN)}) for: {key[:400]}"
                + (" ..." if len(key) > 400 else "")
                + "\n  refresh the recording: flock /tmp/gpufleet-e2e.lock "
                  ".venv/bin/python benchmarks/replay.py record")
        index = self.seen[key]
        self.seen[key] += 1
        return answers[min(index, len(answers) - 1)]

    def run_shell_command(self, command: StringCommand, print_output: bool = False,
                          print_input: bool = False, **arguments: Any
                          ) -> tuple[bool, CommandOutput]:
        entry = self._answer(command_key(self, command, arguments))
        lines = [OutputLine(buffer, self._as_clone(line)) for buffer, line in entry.get("out", [])]
        return bool(entry["ok"]), CommandOutput(lines)

    def put_file(self, filename_or_io: Any, remote_filename: str,
                 remote_temp_filename: str | None = None, print_output: bool = False,
                 print_input: bool = False, **arguments: Any) -> bool:
        digest = hashlib.sha256(_content(filename_or_io)).hexdigest()
        return bool(self._answer(_key("put", f"{remote_filename} sha256:{digest}"))["ok"])

    def get_file(self, remote_filename: str, filename_or_io: Any,
                 remote_temp_filename: str | None = None, print_output: bool = False,
                 print_input: bool = False, **arguments: Any) -> bool:
        entry = self._answer(_key("get", remote_filename))
        with get_file_io(filename_or_io, "wb") as file_io:
            file_io.write(entry.get("data", "").encode("utf-8", "surrogateescape"))
        return bool(entry["ok"])


# --- the child process: pyinfra in-process, with one of the connectors -----------------------
def child(mode: str, out: str | None, pyinfra_args: list[str]) -> int:
    """Run pyinfra here, ``docker`` answered by the recording (replay) or recorded (record).
    Writes to ``out``: the exit status, this process's CPU seconds and peak RSS, the remote
    exchanges per host, each host's outcome (operations, changed, failed), the recording."""
    import resource

    from pyinfra.context import ctx_state
    from pyinfra_cli.main import main

    from operations.pyinfra_adapter import host_outcomes, use_connector

    use_connector("docker", RecordingConnector if mode == "record" else ReplayConnector)
    if os.environ.get(ENV_RELEASE):
        import rules.manifest

        release = json.loads(os.environ[ENV_RELEASE])
        setattr(rules.manifest, "gpufleet_release", lambda: release)  # noqa: B010
    if os.environ.get(ENV_LATE_READ):
        import operations.host_reading as host_reading

        # The probe's reading never carries over into execution: the state is read again.
        # (Checked: a setattr on a module that no longer has the name would do nothing.)
        assert hasattr(host_reading, "REUSE_ACROSS_PHASES_SECONDS")
        setattr(host_reading, "REUSE_ACROSS_PHASES_SECONDS", -1.0)  # noqa: B010
    if os.environ.get(ENV_BASELINE):
        # Measure pyinfra as it is (its own operation order with inspect.stack(), its own
        # global arguments), as before the adapter's replacements.
        import operations.pyinfra_adapter as adapter

        setattr(adapter, "install_faster_pyinfra", lambda: None)  # noqa: B010
    sys.argv = ["pyinfra", *pyinfra_args]
    profile_path = os.environ.get("GPUFLEET_REPLAY_PROFILE", "")
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        rc = main()
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile_path)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    state = ctx_state.get() if ctx_state.isset() else None
    outcomes = host_outcomes(state) if state is not None else {}
    # The operations in pyinfra's order (names): the same whichever way the order is found.
    order = [sorted(state.get_op_meta(op_hash).names)
             for op_hash in state.get_op_order()] if state is not None else []
    if out:
        Path(out).write_text(json.dumps({
            "rc": int(rc or 0), "cpu": usage.ru_utime + usage.ru_stime,
            "maxrss_kib": usage.ru_maxrss, "exchanges": dict(EXCHANGES),
            "outcomes": outcomes, "order": order, "entries": dict(RECORDER.entries)}))
    return int(rc or 0)


def child_argv(mode: str, out: str, args: list[str]) -> list[str]:
    """The command line of a child pyinfra run (``child`` below) writing its report to
    ``out``; run it from REPO with child_env's environment."""
    return [sys.executable, str(Path(__file__).resolve()), "child", mode, out, "--", *args]


def child_env(fleet: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """What a child run needs in its environment besides the caller's: the fleet file."""
    return {"GPUFLEET_FLEET": str(fleet), **(env or {})}


def child_report(out: str, returncode: int) -> dict[str, Any]:
    """The report a finished child run wrote to ``out`` (removed), with its exit status."""
    try:
        text = Path(out).read_text()
    finally:
        os.unlink(out)
    report: dict[str, Any] = json.loads(text) if text else {}
    report["rc"] = returncode
    return report


def run_child(mode: str, fleet: Path, args: list[str], env: dict[str, str] | None = None
              ) -> tuple[str, dict[str, Any]]:
    """One pyinfra run in a fresh process (so that its CPU and peak RSS are its own):
    (output, the child's report)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    try:
        proc = subprocess.run(child_argv(mode, out, args), cwd=REPO,
                              env={**os.environ, **child_env(fleet, env)},
                              capture_output=True, text=True)
    except BaseException:
        os.unlink(out)
        raise
    return proc.stdout + proc.stderr, child_report(out, proc.returncode)


def record_run(label: str, fleet: Path, limit: list[str], release: dict[str, Any],
               canonical: list[tuple[str, str]] | None = None) -> tuple[str, dict[str, Any]]:
    """One pyinfra run against the real hosts, recorded."""
    return run_child("record", fleet,
                     [*RUNS[label], *[arg for name in limit for arg in ("--limit", name)]],
                     {ENV_RELEASE: json.dumps(release),
                      ENV_CANONICAL: json.dumps(canonical or []),
                      **({ENV_LATE_READ: "1"} if label in LATE_READ_RUNS else {})})


def host_file(fleet: Path, hosts: tuple[str, ...], path: str) -> str:
    """The file ``path``, the same on every one of ``hosts`` (read with docker exec)."""
    from inventory.fleet import load_fleet

    specs = {spec.name: spec for spec in load_fleet(fleet).hosts}
    found = {}
    for name in hosts:
        container = specs[name].target.removeprefix("@docker/")
        proc = subprocess.run(["docker", "exec", container, "cat", path],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"replay: {name} ({container}) has no {path}: converge it first")
        found[name] = proc.stdout
    if len(set(found.values())) != 1:
        raise SystemExit(f"replay: {path} differs between {', '.join(hosts)}: converge them "
                         "with one checkout first")
    return next(iter(found.values()))


def hosts_release(fleet: Path, hosts: tuple[str, ...]) -> dict[str, Any]:
    """The gpufleet release the hosts' manifests name (the same on every host)."""
    from rules.manifest import MANIFEST_PATH

    releases = set()
    for name in hosts:
        try:
            releases.add(json.dumps(json.loads(host_file(fleet, (name,), MANIFEST_PATH))
                                    ["gpufleet"], sort_keys=True))
        except (ValueError, KeyError):
            raise SystemExit(f"replay: {name}'s manifest names no gpufleet release: "
                             "converge it first") from None
    if len(releases) != 1:
        raise SystemExit(f"replay: the hosts were converged by different gpufleet releases: "
                         f"{releases}; converge them with one checkout first")
    release: dict[str, Any] = json.loads(releases.pop())
    return release


def unchanged(report: dict[str, Any], hosts: int) -> str | None:
    """None when the run succeeded on ``hosts`` hosts and none changed (or, in the preview,
    would change); else what differs."""
    outcomes = report.get("outcomes", {})
    problems = [f"exit status {report['rc']}"] if report["rc"] else []
    if len(outcomes) != hosts:
        problems.append(f"{len(outcomes)} host(s) ran, not {hosts}")
    for name, outcome in sorted(outcomes.items()):
        if outcome["changed"] or outcome["failed"]:
            problems.append(f"{name}: changed {outcome['changed'][:3]}, failed "
                            f"{outcome['failed'][:3]}")
            break
    return "; ".join(problems) or None


def record(fleet: Path = SIM_FLEET, hosts: tuple[str, ...] = RECORDED_HOSTS,
           canonical: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Preview, no-op and audit of the converged GPU hosts, recorded. Refuses (SystemExit)
    when the preview shows a change: a recording is of a converged host, and the no-op run
    must not change anything."""
    import pyinfra

    release = hosts_release(fleet, hosts)
    key_env = host_file(fleet, hosts, API_KEY_ENV)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as config:
        # The controller's key for this fleet: the one the hosts have (the rehearsal fleet's
        # converge may have used another config folder than this one).
        from inventory.fleet import load_fleet, safe_name
        from inventory.key_files import generated_key_path

        os.environ["GPUFLEET_CONFIG_DIR"] = config
        key_path = generated_key_path(safe_name(load_fleet(fleet).name))
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path.write_text(key_env.split("=", 1)[1])
        key_path.chmod(0o600)
        for label in RUNS:
            runs[label] = record_one(label, fleet, hosts, release, canonical)
    return {"pyinfra": pyinfra.__version__, "fleet": str(SIM_FLEET.relative_to(REPO)),
            "release": release, "hosts": list(hosts), "runs": runs,
            "api_key_variable": key_env.split("=", 1)[0],
            "api_key_env_sha256": hashlib.sha256(key_env.encode()).hexdigest()}


def record_one(label: str, fleet: Path, hosts: tuple[str, ...], release: dict[str, Any],
               canonical: list[tuple[str, str]] | None) -> dict[str, Any]:
    """One run recorded; refused (SystemExit) unless nothing changed and nothing failed."""
    output, report = record_run(label, fleet, list(hosts), release, canonical)
    problem = unchanged(report, len(hosts))
    if problem:
        raise SystemExit(f"replay: the {label} run of {', '.join(hosts)} (fleet {fleet}): "
                         f"{problem}; the recording needs converged hosts (converge them "
                         f"first: GPUFLEET_FLEET={fleet} .venv/bin/pyinfra -y inventory.py "
                         f"deploys/gpu_host.py):\n{output[-3000:]}")
    entries: dict[str, Any] = report["entries"]
    return entries


def keys(recording: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """What the product sent, run by run, host by host (not the answers: those carry times)."""
    return {label: {host: [entry["key"] for entry in entries]
                    for host, entries in hosts.items()}
            for label, hosts in recording["runs"].items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("record", help="record the rehearsal fleet's GPU hosts into "
                   f"{RECORDING.relative_to(REPO)}")
    sub.add_parser("check", help="record again and compare what the product sends with the "
                   "committed recording")
    run = sub.add_parser("child", help=argparse.SUPPRESS)
    run.add_argument("mode", choices=["record", "replay"])
    run.add_argument("out")
    run.add_argument("pyinfra_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command == "child":
        rest = args.pyinfra_args[1:] if args.pyinfra_args[:1] == ["--"] else args.pyinfra_args
        return child(args.mode, args.out if args.out != "-" else None, rest)
    fresh = record()
    if args.command == "record":
        RECORDING.parent.mkdir(parents=True, exist_ok=True)
        RECORDING.write_text(json.dumps(fresh, indent=1, sort_keys=True) + "\n")
        print(f"replay: recorded {', '.join(fresh['hosts'])} into "
              f"{RECORDING.relative_to(REPO)}")
        return 0
    stale = stale_lines(json.loads(RECORDING.read_text()), fresh)
    for line in stale:
        print(line)
    return 1 if stale else 0


def stale_lines(committed: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """Why the committed recording no longer matches what the product sends (empty: it does)."""
    lines = []
    old, new = keys(committed), keys(fresh)
    for label in sorted(set(old) | set(new)):
        for host in sorted(set(old.get(label, {})) | set(new.get(label, {}))):
            before, after = old.get(label, {}).get(host, []), new.get(label, {}).get(host, [])
            if before != after:
                gone = [k for k in before if k not in after]
                added = [k for k in after if k not in before]
                lines.append(f"{label} {host}: {len(before)} -> {len(after)} exchanges; "
                             f"{len(added)} new, {len(gone)} no longer sent"
                             + (f"; first new: {added[0][:200]}" if added else ""))
    if lines:
        lines.append("the recording is stale: refresh it with `flock /tmp/gpufleet-e2e.lock "
                     ".venv/bin/python benchmarks/replay.py record` and commit "
                     f"{RECORDING.relative_to(REPO)}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
