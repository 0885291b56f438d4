"""Hostile fleet files (tests/fixtures/hostile_fleets) are refused offline, for the right reason.

Each file holds one hostile value (a key that opens Docker's API, an nginx or Compose
injection, credentials in a URL, a system folder as weights_path, ...) in an otherwise valid
fleet. `load_fleet` with the fleet checks must refuse it with one line per problem; every line
names a field the file's `# field:` lines allow (so the file is refused for what it is about,
not by accident) and every `# says:` text appears. The real `python inventory.py FILE` refuses
them all the same way: exit 2, no traceback, no secret echoed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inventory.fleet import FleetError, load_fleet
from rules.assessment import unchecked_daemon_json
from rules.daemon_json import DaemonJsonWanted, merge_daemon_json
from rules.fleet_checks import fleet_problems
from tests.unit.forked_tools import ToolServer

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "fixtures" / "hostile_fleets"
FILES = sorted(CORPUS.glob("*.toml"))
SECRET = "hunter2-secret"


def _directives(path: Path, name: str) -> list[str]:
    prefix = f"# {name}:"
    return [line[len(prefix):].strip() for line in path.read_text().splitlines()
            if line.startswith(prefix)]


def test_the_corpus_is_there() -> None:
    assert len(FILES) >= 20
    for path in FILES:
        assert _directives(path, "field") and _directives(path, "says"), path.name


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_hostile_fleet_is_refused_for_its_reason(path: Path) -> None:
    with pytest.raises(FleetError) as caught:
        load_fleet(path, checks=fleet_problems)
    lines = caught.value.lines
    fields = _directives(path, "field")
    for line in lines:
        assert "\n" not in line and SECRET not in line, line
        assert any(f": {field} = " in line for field in fields), (
            f"{path.name}: a problem about something else: {line}")
    for text in _directives(path, "says"):
        assert any(text in line for line in lines), f"{path.name}: no line says {text!r}: {lines}"


def test_the_cli_refuses_each_in_one_line_per_problem() -> None:
    # Forked from one process that has imported the libraries (tests/unit/forked_tools.py):
    # a second of interpreter start per file saved; the first file also through a new
    # interpreter, which must say the same.
    server = ToolServer()
    try:
        results = [server.run_script(REPO / "inventory.py", (str(path),), REPO,
                                     dict(os.environ)) for path in FILES]
    finally:
        server.close()
    new = subprocess.run([sys.executable, "inventory.py", str(FILES[0])], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert (new.returncode, new.stdout, new.stderr) == (
        results[0].returncode, results[0].stdout, results[0].stderr)
    for path, result in zip(FILES, results, strict=True):
        output = result.stdout + result.stderr
        assert result.returncode == 2, (path.name, output)
        assert "Traceback" not in output and SECRET not in output, (path.name, output)
        assert "no host was contacted" in result.stderr


def _fleet(tmp_path: Path, docker: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(f"""
[settings]
weights_path = "/srv/models/m"
docker = {docker}
[groups.g.hosts.h1]
target = "10.0.0.1"
""")
    return path


@pytest.mark.parametrize("docker", [
    '{ daemon_json = { tls = true, tlsverify = true, runtimes = { crun = { path = "crun" } } } }',
    '{ daemon_json = { exec-opts = ["native.umask=normal", "native.cgroupdriver=cgroupfs"] } }',
    '{ gpu_device_protection = "cdi", daemon_json = { exec-opts = ["native.cgroupdriver=systemd"] '
    '} }',
    '{ gpu_device_protection = "none", daemon_json = { exec-opts = ["native.cgroupdriver=systemd"]'
    ' } }',
    '{ gpu_device_protection = "cdi", daemon_json = { features = { cdi = true } } }',
    '{ daemon_json = { log-driver = "json-file", log-opts = { max-size = "100m" } } }',
])
def test_daemon_json_keys_that_keep_gpufleets_guarantees_are_accepted(tmp_path: Path,
                                                                        docker: str) -> None:
    (spec,) = load_fleet(_fleet(tmp_path, docker), checks=fleet_problems).hosts
    assert unchecked_daemon_json(spec) == []


def test_the_expert_override_accepts_exactly_what_it_names_and_warns(tmp_path: Path) -> None:
    docker = ('{ daemon_json_unchecked = ["hosts", "tls"], daemon_json = { hosts = '
              '["unix:///var/run/docker.sock", "tcp://10.0.0.1:2376"], tls = false } }')
    (spec,) = load_fleet(_fleet(tmp_path, docker), checks=fleet_problems).hosts
    warnings = unchecked_daemon_json(spec)
    assert [(f.severity, f.code) for f in warnings] == [("warning", "daemon-json-unchecked")] * 2
    assert "'hosts', accepted unchecked: opens Docker's API" in warnings[0].what
    assert "'tls', accepted unchecked: switches TLS off" in warnings[1].what
    # And the merge writes them as given (the override is not a no-op).
    merged, _ = merge_daemon_json({}, [], DaemonJsonWanted(extra=spec.settings.docker.daemon_json))
    assert merged["tls"] is False and "tcp://10.0.0.1:2376" in merged["hosts"]
