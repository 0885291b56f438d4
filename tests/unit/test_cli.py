"""The `gpufleet` command, run as a user runs it: a subprocess, against a fleet file that needs
no host. Commands that would contact hosts are checked with --print-command (the exact command
line they run); the offline ones (check, size, cost, smoke on a dead address) really run. The
closed-stdin and colour fixes are checked on a real `pyinfra @local` run of a deploy that
changes nothing before the prompt."""

from __future__ import annotations

import os
import pty
import re
import shlex
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

from inventory.toml import load_toml

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
PYINFRA = str(Path(PYTHON).with_name("pyinfra"))
COMMANDS = ("check", "plan", "apply", "doctor", "audit", "rollout", "canary", "drain", "size",
            "cost", "smoke", "report", "shards")

FLEET = """\
[fleet]
name = "cli-test"

[settings]
model = "deepseek-r1-distill-qwen-7b"
precision = "bf16"
weights_path = "/srv/models/deepseek-r1-distill-qwen-7b"
storage = { policy = "warn" }

[groups.pcie.hosts.gpu-a]
target = "@docker/gpufleet-cli-a"

[groups.pcie.hosts.gpu-b]
target = "@docker/gpufleet-cli-b"
"""


def gpufleet(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
             stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "GPUFLEET_FLEET"}
    environ["PYTHONPATH"] = str(REPO)  # what the editable install's .pth adds
    return subprocess.run([PYTHON, "-m", "gpufleet", *args], cwd=cwd, text=True,
                          capture_output=True, env={**environ, **(env or {})}, stdin=stdin,
                          timeout=120)


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return path


def printed(*args: str, fleet: Path | None = None) -> str:
    result = gpufleet(*args, "--print-command", *(["--fleet", str(fleet)] if fleet else []))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.strip()


def in_repo(fleet: Path, *argv: str) -> str:
    return f"cd {shlex.quote(str(REPO))} && GPUFLEET_FLEET={shlex.quote(str(fleet))} " + \
        shlex.join([PYINFRA, *argv])


def test_help_lists_every_command() -> None:
    result = gpufleet("--help")
    assert result.returncode == 0
    listed = {found[1] for line in result.stdout.splitlines()
              if (found := re.match(r"    (\w+)  ", line))}
    assert listed == set(COMMANDS)  # `report`: tests/unit/test_report.py runs it


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_shows_an_example(command: str) -> None:
    result = gpufleet(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example:" in result.stdout
    assert f"  gpufleet {command} " in result.stdout


def test_the_console_script_of_pyproject_runs(tmp_path: Path) -> None:
    """[project.scripts] names a callable; the script pip writes for it (same template) runs."""
    pyproject = load_toml(REPO / "pyproject.toml")
    entry = pyproject["project"]["scripts"]
    module, _, attr = entry["gpufleet"].partition(":")
    assert callable(getattr(import_module(module), attr))
    assert module.split(".")[0] in pyproject["tool"]["setuptools"]["packages"]
    script = tmp_path / "gpufleet"
    script.write_text(f"#!{PYTHON}\nimport sys\nfrom {module} import {attr}\n"
                      f"if __name__ == '__main__':\n    sys.exit({attr}())\n")
    script.chmod(0o755)
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "canary" in result.stdout


def test_check_validates_offline(fleet: Path) -> None:
    result = gpufleet("check", "--fleet", str(fleet))
    assert result.returncode == 0, result.stderr
    assert f"{fleet} is valid: 1 group(s), 2 host(s)" in result.stdout


def test_check_reports_a_bad_fleet_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(FLEET.replace('precision = "bf16"', 'precision = "bf17"'))
    result = gpufleet("check", "--fleet", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "precision" in result.stderr and "bf17" in result.stderr


@pytest.mark.parametrize(("args", "says"), [
    (("check", "--fleet", "nope.toml"), "gpufleet: --fleet nope.toml: no such file"),
    (("frobnicate",), "gpufleet: argument COMMAND: invalid choice: 'frobnicate'"),
    (("canary", "go"), "gpufleet: argument action: invalid choice: 'go'"),
    (("plan", "--yes"), "gpufleet: unrecognized arguments: --yes"),
    (("drain",), "gpufleet: drain takes the GPU hosts to take out of the gateway, or --undo"),
    (("drain", "--restore", "--undo"), "gpufleet: drain --restore takes the GPU hosts to put"),
    (("doctor", "--local", "--model", "x"), "gpufleet: --local needs --model and --precision"),
])
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], says: str) -> None:
    result = gpufleet(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(says), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_plan_is_the_preview_that_asks_nothing(fleet: Path) -> None:
    assert printed("plan", fleet=fleet) == in_repo(
        fleet, "--dry", "inventory.py", "deploys/gpu_host.py")


def test_apply_asks_unless_yes(fleet: Path) -> None:
    assert printed("apply", fleet=fleet) == in_repo(fleet, "inventory.py", "deploys/gpu_host.py")
    assert printed("apply", "--yes", fleet=fleet) == in_repo(
        fleet, "-y", "inventory.py", "deploys/gpu_host.py")


def test_limit_takes_fleet_names_and_groups(fleet: Path) -> None:
    assert printed("apply", "--limit", "gpu-b", "--limit", "pcie", fleet=fleet) == in_repo(
        fleet, "inventory.py", "deploys/gpu_host.py",
        "--limit", "@docker/gpufleet-cli-b", "--limit", "pcie")
    result = gpufleet("plan", "--fleet", str(fleet), "--limit", "gpu-z", "--print-command")
    assert result.returncode == 2
    assert result.stderr == (f"gpufleet: --limit gpu-z: not a host or group of {fleet}; "
                             "hosts: gpu-a, gpu-b; groups: pcie\n")


def test_a_relative_fleet_is_taken_from_where_the_user_is(fleet: Path) -> None:
    result = gpufleet("audit", "--fleet", fleet.name, "--print-command", cwd=fleet.parent)
    assert result.stdout.strip() == in_repo(fleet, "-y", "inventory.py", "deploys/audit.py")
    result = gpufleet("plan", "--print-command", cwd=fleet.parent,
                      env={"GPUFLEET_FLEET": fleet.name})
    assert result.stdout.strip() == in_repo(fleet, "--dry", "inventory.py",
                                            "deploys/gpu_host.py")


def test_doctor_fleet_and_local(fleet: Path) -> None:
    assert printed("doctor", "--limit", "gpu-a", fleet=fleet) == in_repo(
        fleet, "--dry", "inventory.py", "deploys/doctor.py", "--limit", "@docker/gpufleet-cli-a")
    assert printed("doctor", "--local", "--model", "deepseek-r1-distill-llama-70b",
                   "--precision", "int8") == f"cd {shlex.quote(str(REPO))} && " + shlex.join([
                       PYINFRA, "--dry", "@local", "deploys/doctor.py",
                       "--data", "model=deepseek-r1-distill-llama-70b",
                       "--data", "precision=int8"])


@pytest.mark.parametrize("action", ["start", "promote", "rollback", "status"])
def test_canary_actions(fleet: Path, action: str) -> None:
    assert printed("canary", action, fleet=fleet) == in_repo(
        fleet, "inventory.py", "deploys/canary.py", "--data", f"action={action}")
    assert printed("canary", action, "--yes", fleet=fleet) == in_repo(
        fleet, "-y", "inventory.py", "deploys/canary.py", "--data", f"action={action}")


def test_drain_and_undo(fleet: Path) -> None:
    assert printed("drain", "--yes", "gpu-a", "gpu-b", fleet=fleet) == in_repo(
        fleet, "-y", "inventory.py", "deploys/drain.py", "--data", "drain=gpu-a,gpu-b")
    assert printed("drain", "--undo", fleet=fleet) == in_repo(
        fleet, "inventory.py", "deploys/drain.py", "--data", "drain=")
    # one host back (drains add up; a rollout never puts back a host drained by hand)
    assert printed("drain", "--yes", "--restore", "gpu-a", fleet=fleet) == in_repo(
        fleet, "-y", "inventory.py", "deploys/drain.py", "--data", "restore=gpu-a")


def test_rollout(fleet: Path) -> None:
    assert printed("rollout", "--behind-only", fleet=fleet) == (
        f"GPUFLEET_FLEET={shlex.quote(str(fleet))} "
        + shlex.join([PYTHON, str(REPO / "tools/rollout.py"), "--behind-only"]))
    assert printed("rollout", "--allow-outage", fleet=fleet).endswith(
        shlex.join([str(REPO / "tools/rollout.py"), "--allow-outage"]))


SIZE = ("--model", "deepseek-r1-distill-llama-70b", "--precision", "int8", "--gpus",
        "2xa100-80gb", "--context", "8192", "--concurrency", "16")


@pytest.mark.parametrize(("command", "args"), [
    ("size", SIZE),
    ("cost", ("--model", "deepseek-r1-distill-llama-70b", "--precision", "fp8", "--gpus",
              "2xh100", "--requests-per-day", "100000", "--cloud-per-million-tokens", "0.6",
              "--json")),
])
def test_size_and_cost_are_the_tools(command: str, args: tuple[str, ...]) -> None:
    ours = gpufleet(command, *args)
    tool = subprocess.run([PYTHON, str(REPO / "tools" / f"{command}.py"), *args],
                          capture_output=True, text=True, cwd=REPO)
    assert ours.returncode == tool.returncode
    assert ours.returncode in (0, 1), ours.stderr
    assert ours.stdout == tool.stdout and ours.stdout.strip()


def test_size_bad_flag_is_the_tools_one_line() -> None:
    result = gpufleet("size", "--gpus", "0xa100-80gb", "--model", "deepseek-r1-distill-llama-70b")
    assert result.returncode == 2
    assert "--gpus" in result.stderr and "Traceback" not in result.stderr


def test_smoke_on_a_dead_endpoint_fails_in_one_line() -> None:
    result = gpufleet("smoke", "--url", "http://127.0.0.1:9", "--model", "m", "--requests", "0")
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL http://127.0.0.1:9 http://127.0.0.1:9: ")


def test_smoke_gets_the_fleet_as_the_environment(fleet: Path) -> None:
    assert printed("smoke", "--requests", "5", fleet=fleet) == (
        f"GPUFLEET_FLEET={shlex.quote(str(fleet))} "
        + shlex.join([PYTHON, str(REPO / "tools/smoke.py"), "--requests", "5"]))


# -- a real pyinfra run: the prompt with stdin closed, and colour ------------------------------

DEPLOY = """\
import logging

import deploys  # noqa: F401  (every gpufleet deploy file imports the package)
from pyinfra import host
from pyinfra.operations import server

host.log_styled("a gpufleet notice", fg="yellow", log_func=logging.getLogger("gpufleet").warning)
server.shell(name="Say nothing", commands=["true"])
"""


def pyinfra_local(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                  tty: bool = False) -> tuple[int, str]:
    deploy = tmp_path / "deploy.py"
    deploy.write_text(DEPLOY)
    argv = [PYINFRA, *args, "@local", str(deploy)]
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    if not tty:
        result = subprocess.run(argv, cwd=tmp_path, env=environ, text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, timeout=120)
        return result.returncode, result.stdout
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, cwd=tmp_path, env=environ, stdin=subprocess.DEVNULL,
                               stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_a_closed_stdin_gets_one_line_not_a_traceback(tmp_path: Path) -> None:
    code, out = pyinfra_local(tmp_path)
    assert code == 2, out
    assert "Traceback" not in out and "EOFError" not in out
    assert ('gpufleet: pyinfra asks "Detected changes displayed above, skip this step with -y" '
            "but stdin is closed, so nobody can answer: stopped here, nothing was executed. "
            "Add -y (gpufleet: --yes) to execute without asking, or --dry for the preview "
            "alone (gpufleet plan)") in out
    assert not (tmp_path / "pyinfra-debug.log").exists()


def test_no_escape_codes_when_not_a_terminal(tmp_path: Path) -> None:
    code, out = pyinfra_local(tmp_path, "-y")
    assert code == 0, out
    assert "[@local] a gpufleet notice" in out
    assert "\x1b" not in out


def test_colour_on_a_terminal_unless_no_color(tmp_path: Path) -> None:
    code, out = pyinfra_local(tmp_path, "-y", tty=True)
    assert code == 0, out
    notice = next(line for line in out.splitlines() if "a gpufleet notice" in line)
    assert "\x1b[33m" in notice  # yellow, as asked: a terminal keeps its colour
    code, out = pyinfra_local(tmp_path, "-y", tty=True, env={"NO_COLOR": "1"})
    assert code == 0, out
    notice = next(line for line in out.splitlines() if "a gpufleet notice" in line)
    success = next(line for line in out.splitlines() if "Success" in line)
    assert "\x1b[" not in notice and "\x1b[3" not in success  # pyinfra's own lines too
