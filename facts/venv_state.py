"""Facts of the host-side Python environment: interpreters, the managed venv, its verification.

One round trip tells the deploy everything it decides on, so a converged host costs one remote
command: interpreter versions, whether each can create a venv (``ensurepip`` is a separate
distro package on Debian/Ubuntu), what is at the venv path, the marker of the lock installed
there and, when there is one, the result of running ``templates/python_env/verify.py`` inside
the venv (imports torch and transformers, checks every locked version, CUDA).

Public API
----------
Facts: ``PythonEnvState``, ``WheelhouseFiles``.
Parsers: ``parse_python_env_state``, ``parse_verify_line``, ``parse_wheelhouse_listing``.
Names shared with the operation: ``MARKER_NAME``, ``VERIFY_SCRIPT``, ``VERIFY_PREFIX``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pyinfra.api import FactBase

from facts._shell import clip, never_raises, quote, section_script, split_sections
from facts.system import PYTHON_SCRIPT, parse_python_interpreters

# Written into a venv after its install and verification succeeded: the lock's digest and the
# expectations verify.py checks. A venv without it is an unfinished install.
MARKER_NAME = "gpufleet-lock.json"
VERIFY_SCRIPT = Path(__file__).resolve().parents[1] / "templates" / "python_env" / "verify.py"
VERIFY_PREFIX = "GPUFLEET_VERIFY "
# Importing torch with CUDA can take a while on a cold page cache; a hung import is a finding.
VERIFY_TIMEOUT_S = 300

PathKind = Literal["absent", "link", "other"]


@dataclass(frozen=True)
class PythonEnvStateResult:
    """What the deploy needs to converge the venv at ``path``.

    .. code:: python

        PythonEnvStateResult(
            status="ok", machine="x86_64", apt=True,
            interpreters={"python3": "3.11.2", "python3.11": "3.11.2"},
            venv_capable=("python3", "python3.11"),
            path_kind="link", link_target="/opt/gpufleet/venv.3f2a9c1b07de",
            marker={"lock": "torch210-cu121", "digest": "3f2a...", ...},
            verify={"python": "3.11.2", "torch": {...}, "problems": []},
        )
    """

    status: Literal["ok", "unknown"]
    machine: str | None = None
    apt: bool = False
    interpreters: dict[str, str] = field(default_factory=dict)
    venv_capable: tuple[str, ...] = ()
    path_kind: PathKind = "absent"
    link_target: str | None = None
    marker: dict[str, Any] | None = None
    verify: dict[str, Any] | None = None
    reason: str | None = None
    raw: str = ""


def _script(path: str, candidates: tuple[str, ...]) -> str:
    p = quote(path)
    marker = quote(f"{path}/{MARKER_NAME}")
    names = " ".join(quote(c) for c in candidates)
    host = "\n".join([
        "printf 'machine=%s\\n' \"$(uname -m)\"",
        "if command -v apt-get >/dev/null 2>&1; then echo apt=yes; fi",
        f"for p in {names}; do",
        "  if command -v \"$p\" >/dev/null 2>&1 &&"
        " \"$p\" -c 'import ensurepip, venv' >/dev/null 2>&1; then echo \"venv_capable=$p\"; fi",
        "done",
    ])
    venv = "\n".join([
        f"if [ -L {p} ]; then echo \"link=$(readlink {p})\";",
        f"elif [ -e {p} ]; then echo kind=other; else echo kind=absent; fi",
        f"if [ -r {marker} ]; then echo '@marker'; cat {marker}; echo; fi",
    ])
    verify_body = VERIFY_SCRIPT.read_text()
    verify = "\n".join([
        f"if [ -x {p}/bin/python ] && [ -r {marker} ]; then",
        f"  timeout {VERIFY_TIMEOUT_S} {p}/bin/python - \"$(cat {marker})\" <<'GPUFLEET_EOF'",
        verify_body.rstrip("\n"),
        "GPUFLEET_EOF",
        "fi",
    ])
    return "\n".join([
        section_script("python", PYTHON_SCRIPT),
        section_script("host", host),
        section_script("venv", venv),
        section_script("verify", verify),
    ])


def parse_verify_line(text: str) -> dict[str, Any] | None:
    """The JSON of verify.py's ``GPUFLEET_VERIFY {...}`` line; None when it printed none."""
    for line in text.splitlines():
        if line.startswith(VERIFY_PREFIX):
            try:
                value = json.loads(line[len(VERIFY_PREFIX):])
            except json.JSONDecodeError:
                return {"problems": [f"unreadable verification output: {line[:200]}"]}
            return value if isinstance(value, dict) else None
    return None


@never_raises(PythonEnvStateResult)
def parse_python_env_state(lines: list[str]) -> PythonEnvStateResult:
    """Parse the output of ``PythonEnvState``'s command. Never raises."""
    raw = clip("\n".join(lines))
    sections = split_sections(lines)
    if "venv" not in sections or "host" not in sections:
        return PythonEnvStateResult("unknown", reason="incomplete output", raw=raw)
    interpreters = parse_python_interpreters(
        sections["python"].text, sections["python"].exit_code
    ).interpreters if "python" in sections else {}

    machine, apt, capable = None, False, []
    for line in sections["host"].text.splitlines():
        key, _, value = line.partition("=")
        if key == "machine":
            machine = value.strip() or None
        elif key == "apt":
            apt = value.strip() == "yes"
        elif key == "venv_capable":
            capable.append(value.strip())

    kind: PathKind = "absent"
    target = None
    marker: dict[str, Any] | None = None
    venv_lines = sections["venv"].text.splitlines()
    for index, line in enumerate(venv_lines):
        if line.startswith("link="):
            kind, target = "link", line[len("link="):]
        elif line == "kind=other":
            kind = "other"
        elif line == "@marker":
            try:
                loaded = json.loads("\n".join(venv_lines[index + 1:]) or "null")
            except json.JSONDecodeError:
                loaded = {"unreadable": True}
            marker = loaded if isinstance(loaded, dict) else {"unreadable": True}
            break

    verify = None
    if "verify" in sections and sections["verify"].text.strip():
        verify = parse_verify_line(sections["verify"].text)
        if verify is None:
            rc = sections["verify"].exit_code
            verify = {"problems": [
                f"verification printed no result (exit status {rc}): "
                f"{clip(sections['verify'].text, 600)}"
            ]}
    return PythonEnvStateResult(
        "ok", machine=machine, apt=apt, interpreters=interpreters,
        venv_capable=tuple(capable), path_kind=kind, link_target=target,
        marker=marker, verify=verify, raw=raw,
    )


class PythonEnvState(FactBase[PythonEnvStateResult]):
    """Interpreters, venv support, the managed venv at ``path`` and its verification.

    .. code:: python

        host.get_fact(PythonEnvState, path="/opt/gpufleet/venv",
                      candidates=("python3", "python3.10", "python3.11"))
    """

    def command(self, path: str, candidates: tuple[str, ...]) -> str:
        return _script(path, tuple(candidates))

    @staticmethod
    def default() -> PythonEnvStateResult:
        return PythonEnvStateResult("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> PythonEnvStateResult:
        return parse_python_env_state(list(output))


# --------------------------------------------------------------------------------------------
# The host-side wheelhouse (only read when wheels are about to be pushed)
# --------------------------------------------------------------------------------------------


def parse_wheelhouse_listing(lines: list[str]) -> dict[str, int]:
    """``SIZE NAME`` lines (find -printf) -> {file name: size in bytes}. Never raises."""
    files: dict[str, int] = {}
    for line in lines:
        size, _, name = line.strip().partition(" ")
        if size.isdigit() and name.endswith(".whl") and "/" not in name:
            files[name] = int(size)
    return files


class WheelhouseFiles(FactBase[dict[str, int]]):
    """Wheel files in a folder on the host and their sizes (empty when there is no folder).

    .. code:: python

        {"six-1.17.0-py2.py3-none-any.whl": 11050}
    """

    def command(self, path: str) -> str:
        p = quote(path)
        return (
            f"if [ -d {p} ]; then find {p} -maxdepth 1 -type f -name '*.whl' -printf '%s %f\\n'; fi"
        )

    @staticmethod
    def default() -> dict[str, int]:
        return {}

    def process(self, output: list[str]) -> dict[str, int]:
        return parse_wheelhouse_listing(list(output))
