"""Run `python tools/<tool>.py ARGS` (or `python inventory.py`) hundreds of times without paying Python's start and the
tools' imports (pyinfra, pydantic: about a second a run on the 2-core machine) each time.

One server process imports the tools' libraries once; for each run it forks, and the child
does what the interpreter does for `python tools/<tool>.py ARGS` in the given folder and
environment: sys.argv and sys.path[0] set so, stdin from /dev/null, stdout and stderr to files
(block-buffered, as into a pipe), the script run as __main__, SystemExit turned into the exit
status the interpreter gives (a message to stderr and 1 for a non-integer), any other
exception printed by sys.excepthook (a "Traceback") with status 1, exit handlers run. Only
libraries are preloaded, none of which reads the environment or the folder when imported, so
the run sees its own. tests/unit/test_tool_inputs.py checks that a sample of its cases gives
the same status, stdout and stderr here as from a real `python tools/<tool>.py`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What tools/size.py, cost.py, smoke.py and inventory.py import: loaded once, in the server.
PRELOAD = ("argparse", "json", "requests", "packaging.version", "pydantic", "pyinfra",
           "pyinfra.api", "inventory.catalog", "inventory.fleet", "inventory.pins",
           "inventory.schema", "rules.capacity", "rules.compat", "rules.cost", "rules.fleet_checks", "rules.gateway",
           "rules.monitoring", "rules.sizing", "tools.inputs")

_SERVER = r"""
import atexit, json, os, runpy, sys
root, preload = sys.argv[1], sys.argv[2:]
base_path = [p for p in sys.path if p not in ("", root)]  # as for `python tools/x.py`
sys.path.insert(0, root)
for name in preload:
    __import__(name)
del sys.path[0]
requests_in = os.fdopen(os.dup(0), "r")
replies = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)  # nothing the server prints mixes with the replies
for line in requests_in:
    req = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            sys.argv = [req["script"], *req["args"]]
            sys.path[:] = [os.path.dirname(req["script"]), *base_path]
            try:
                runpy.run_path(req["script"], run_name="__main__")
                code = 0
            except SystemExit as exc:
                if exc.code is None:
                    code = 0
                elif isinstance(exc.code, int):
                    code = exc.code
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:
                sys.excepthook(*sys.exc_info())
                code = 1
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
    replies.flush()
"""


class ToolServer:
    """`run(tool, args, cwd, env)` -> what `subprocess.run([python, tools/<tool>.py, *args])`
    returns with capture_output=True, text=True, errors="backslashreplace"."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="forked-tools-")
        env = {k: v for k, v in os.environ.items() if k != "GPUFLEET_FLEET"}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(ROOT), *PRELOAD], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)

    def run(self, tool: str, args: tuple[str, ...], cwd: Path, env: dict[str, str],
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run_script(ROOT / "tools" / f"{tool}.py", args, cwd, env, timeout)

    def run_script(self, path: Path, args: tuple[str, ...], cwd: Path, env: dict[str, str],
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`python PATH ARGS` (any script of the repository: inventory.py too)."""
        script = str(path)
        out, err = Path(self._tmp.name) / "stdout", Path(self._tmp.name) / "stderr"
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({
            "script": script, "args": list(args), "cwd": str(cwd), "env": env,
            "stdout": str(out), "stderr": str(err)}) + "\n")
        self._proc.stdin.flush()
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            raise subprocess.TimeoutExpired([sys.executable, script, *args], timeout)
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the tool server ended ({self._proc.wait()})")
        read = {"encoding": "utf-8", "errors": "backslashreplace"}
        return subprocess.CompletedProcess([sys.executable, script, *args],
                                           json.loads(line)["rc"], out.read_text(**read),
                                           err.read_text(**read))

    def close(self) -> None:
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)  # the server and a child that hangs
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        self._tmp.cleanup()
