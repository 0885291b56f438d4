"""System facts: OS release, architecture, kernel and headers, CUDA toolkit, Python interpreters.

Public API
----------
Facts: ``SystemInfo``, ``CudaToolkit``, ``PythonInterpreters``.
Parsers: ``parse_os_release``, ``parse_system_info``, ``parse_nvcc_version``,
``parse_python_interpreters``.
Shell snippets (reused by ``facts.probe``): ``SYSTEM_SCRIPT``, ``NVCC_SCRIPT``, ``PYTHON_SCRIPT``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Literal

from pyinfra.api import FactBase

from facts._shell import (
    NOCMD_MARKER,
    RC_NOT_FOUND,
    CommandResult,
    clip,
    never_raises,
    split_rc,
    wrap,
)

# --------------------------------------------------------------------------------------------
# OS release, architecture, kernel
# --------------------------------------------------------------------------------------------

SYSTEM_SCRIPT = "\n".join(
    [
        "if [ -r /etc/os-release ]; then f=/etc/os-release; else f=/usr/lib/os-release; fi",
        "echo '@os-release'; cat \"$f\"; echo '@end'",
        "printf 'machine=%s\\n' \"$(uname -m)\"",
        "printf 'kernel=%s\\n' \"$(uname -r)\"",
        "if command -v dpkg >/dev/null 2>&1; then"
        " printf 'dpkg_arch=%s\\n' \"$(dpkg --print-architecture)\"; fi",
        'if [ -e "/lib/modules/$(uname -r)/build" ]; then echo kernel_headers=yes;'
        " else echo kernel_headers=no; fi",
    ]
)


@dataclass(frozen=True)
class OsRelease:
    """The fields of /etc/os-release we decide on (all strings as written, unquoted)."""

    id: str | None
    version_id: str | None
    codename: str | None
    pretty_name: str | None
    id_like: tuple[str, ...] = ()
    fields: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def parse_os_release(text: str) -> OsRelease:
    """Parse os-release (shell-style assignments, optional quotes). Never raises."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
            values[key.strip()] = parts[0] if parts else ""
        except ValueError:  # unbalanced quotes: keep the text as it stands
            values[key.strip()] = value.strip().strip("\"'")
    codename = values.get("VERSION_CODENAME") or values.get("UBUNTU_CODENAME")
    if not codename:
        # Debian 11 and older Ubuntu also put it in VERSION: "11 (bullseye)".
        match = re.search(r"\(([a-z]+)\)", values.get("VERSION", ""))
        codename = match.group(1) if match else None
    return OsRelease(
        id=values.get("ID") or None,
        version_id=values.get("VERSION_ID") or None,
        codename=codename or None,
        pretty_name=values.get("PRETTY_NAME") or None,
        id_like=tuple(values.get("ID_LIKE", "").split()),
        fields=values,
    )


@dataclass(frozen=True)
class SystemInfoResult:
    """OS, architecture and running kernel. ``status`` is ``ok`` or ``unknown``."""

    status: Literal["ok", "unknown"]
    os: OsRelease | None = None
    machine: str | None = None  # uname -m: x86_64, aarch64
    dpkg_architecture: str | None = None  # amd64, arm64; None where dpkg is absent
    kernel: str | None = None
    kernel_headers_installed: bool | None = None
    reason: str = ""
    raw: str = ""


@never_raises(SystemInfoResult)
def parse_system_info(text: str, exit_code: int | None = None) -> SystemInfoResult:
    """Parse ``SYSTEM_SCRIPT`` output. Never raises."""
    raw = clip(text)
    os_lines: list[str] = []
    labels: dict[str, str] = {}
    in_os = False
    for line in text.splitlines():
        if line == "@os-release":
            in_os = True
        elif line == "@end":
            in_os = False
        elif in_os:
            os_lines.append(line)
        else:
            key, sep, value = line.partition("=")
            if sep:
                labels[key.strip()] = value.strip()
    os_release = parse_os_release("\n".join(os_lines))
    if os_release.id is None or "kernel" not in labels:
        return SystemInfoResult("unknown", reason="os-release or uname missing", raw=raw)
    headers = labels.get("kernel_headers")
    return SystemInfoResult(
        "ok",
        os=os_release,
        machine=labels.get("machine") or None,
        dpkg_architecture=labels.get("dpkg_arch") or None,
        kernel=labels.get("kernel") or None,
        kernel_headers_installed={"yes": True, "no": False}.get(headers or ""),
        raw=raw,
    )


class SystemInfo(FactBase[SystemInfoResult]):
    """OS release, architecture (``uname -m`` and dpkg's), kernel, kernel headers present.

    .. code:: python

        SystemInfoResult(status="ok", os=OsRelease(id="ubuntu", version_id="22.04",
                         codename="jammy", ...), machine="x86_64", dpkg_architecture="amd64",
                         kernel="5.15.0-91-generic", kernel_headers_installed=True)
    """

    def command(self) -> str:
        return wrap(SYSTEM_SCRIPT)

    @staticmethod
    def default() -> SystemInfoResult:
        return SystemInfoResult("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> SystemInfoResult:
        result = split_rc(output)
        return parse_system_info(result.text, result.exit_code)


# --------------------------------------------------------------------------------------------
# CUDA toolkit
# --------------------------------------------------------------------------------------------

# The toolkit's own nvcc wins over whatever PATH offers (distro nvidia-cuda-toolkit, conda).
NVCC_SCRIPT = "\n".join(
    [
        "if [ -x /usr/local/cuda/bin/nvcc ]; then n=/usr/local/cuda/bin/nvcc;",
        "elif command -v nvcc >/dev/null 2>&1; then n=$(command -v nvcc);",
        f"else echo '{NOCMD_MARKER}nvcc'; exit {RC_NOT_FOUND}; fi",
        "printf 'nvcc_path=%s\\n' \"$n\"",
        '"$n" --version',
    ]
)


@dataclass(frozen=True)
class CudaToolkitResult:
    """CUDA toolkit found through nvcc: ``ok``, ``not_installed`` or ``unknown``."""

    status: Literal["ok", "not_installed", "unknown"]
    version: str | None = None  # "12.1"
    build: str | None = None  # "12.1.105"
    nvcc_path: str | None = None
    reason: str = ""
    raw: str = ""


_NVCC_RELEASE = re.compile(r"release (?P<version>\d+\.\d+), V(?P<build>\d+\.\d+\.\d+)")


@never_raises(CudaToolkitResult)
def parse_nvcc_version(text: str, exit_code: int | None = None) -> CudaToolkitResult:
    """Parse ``nvcc --version`` (optionally after a ``nvcc_path=`` line). Never raises."""
    raw = clip(text)
    if CommandResult(text, exit_code).missing_tool or exit_code == RC_NOT_FOUND:
        return CudaToolkitResult("not_installed", reason="no nvcc found", raw=raw)
    path = re.search(r"^nvcc_path=(.*)$", text, re.MULTILINE)
    match = _NVCC_RELEASE.search(text)
    if not match:
        return CudaToolkitResult(
            "unknown",
            nvcc_path=path.group(1) if path else None,
            reason="no 'release X.Y, VX.Y.Z' line in nvcc output",
            raw=raw,
        )
    return CudaToolkitResult(
        "ok",
        version=match.group("version"),
        build=match.group("build"),
        nvcc_path=path.group(1).strip() if path else None,
        raw=raw,
    )


class CudaToolkit(FactBase[CudaToolkitResult]):
    """CUDA toolkit version from ``/usr/local/cuda/bin/nvcc --version`` (else nvcc on PATH).

    .. code:: python

        CudaToolkitResult(status="ok", version="12.1", build="12.1.105",
                          nvcc_path="/usr/local/cuda/bin/nvcc")
    """

    def command(self) -> str:
        return wrap(NVCC_SCRIPT)

    @staticmethod
    def default() -> CudaToolkitResult:
        return CudaToolkitResult("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> CudaToolkitResult:
        result = split_rc(output)
        return parse_nvcc_version(result.text, result.exit_code)


# --------------------------------------------------------------------------------------------
# Python interpreters
# --------------------------------------------------------------------------------------------

PYTHON_CANDIDATES = ("python3", "python3.8", "python3.9", "python3.10", "python3.11", "python3.12")
PYTHON_SCRIPT = "\n".join(
    [
        f"for p in {' '.join(PYTHON_CANDIDATES)}; do",
        '  if command -v "$p" >/dev/null 2>&1; then'
        ' printf \'%s=%s\\n\' "$p" "$("$p" --version 2>&1)"; fi',
        "done",
    ]
)

_PY_VERSION = re.compile(r"Python (?P<version>\d+\.\d+(?:\.\d+)?\S*)")


@dataclass(frozen=True)
class PythonInterpretersResult:
    """Python interpreters on PATH: name -> full version ("python3.10" -> "3.10.12").

    An empty mapping with ``status="ok"`` means "none installed"; ``unknown`` means the probe
    itself could not be read.
    """

    status: Literal["ok", "unknown"]
    interpreters: dict[str, str] = field(default_factory=dict, hash=False)
    reason: str = ""
    raw: str = ""

    @property
    def python3_version(self) -> str | None:
        return self.interpreters.get("python3")

    @property
    def minor_versions(self) -> tuple[str, ...]:
        """Distinct X.Y versions available, e.g. ("3.10", "3.11")."""
        found = {".".join(v.split(".")[:2]) for v in self.interpreters.values()}
        return tuple(sorted(found, key=lambda v: tuple(int(p) for p in v.split("."))))


@never_raises(PythonInterpretersResult)
def parse_python_interpreters(text: str, exit_code: int | None = None) -> PythonInterpretersResult:
    """Parse ``PYTHON_SCRIPT`` output (``name=Python X.Y.Z`` lines). Never raises."""
    raw = clip(text)
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        match = _PY_VERSION.search(value)
        if sep and name.startswith("python") and match:
            found[name.strip()] = match.group("version")
    if exit_code is None and not found:  # no status line: the output was cut
        return PythonInterpretersResult("unknown", reason="no output from the probe", raw=raw)
    if exit_code not in (None, 0):
        return PythonInterpretersResult(
            "unknown", found, reason=f"probe exited {exit_code}", raw=raw
        )
    return PythonInterpretersResult("ok", found, raw=raw)


class PythonInterpreters(FactBase[PythonInterpretersResult]):
    """Which of python3, python3.8 … python3.12 exist, and their versions.

    .. code:: python

        PythonInterpretersResult(status="ok",
                                 interpreters={"python3": "3.10.12", "python3.10": "3.10.12"})
    """

    def command(self) -> str:
        return wrap(PYTHON_SCRIPT)

    @staticmethod
    def default() -> PythonInterpretersResult:
        return PythonInterpretersResult("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> PythonInterpretersResult:
        result = split_rc(output)
        return parse_python_interpreters(result.text, result.exit_code)
