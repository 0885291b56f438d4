"""Docker and NVIDIA Container Toolkit facts.

"Docker not installed", "daemon not running" and "permission denied" are distinct answers: the
first two are states a deploy fixes, the last means this user cannot check.

Public API
----------
Facts: ``DockerInfo``, ``ContainerToolkit``.
Parsers: ``parse_docker_info``, ``parse_nvidia_ctk_version``.
Shell snippets (reused by ``facts.probe``): ``DOCKER_INFO_SCRIPT``, ``NVIDIA_CTK_SCRIPT``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

from pyinfra.api import FactBase

from facts._shell import (
    RC_NOT_FOUND,
    CommandResult,
    clip,
    never_raises,
    require_tool,
    split_rc,
    wrap,
)

# One labelled line per value; {{println}} ends each line inside the Go template.
DOCKER_INFO_FORMAT = (
    "runtimes={{json .Runtimes}}{{println}}"
    "default_runtime={{.DefaultRuntime}}{{println}}"
    "cgroup_driver={{.CgroupDriver}}{{println}}"
    "server_version={{.ServerVersion}}"
)
DOCKER_INFO_SCRIPT = f"{require_tool('docker')}\ndocker info --format '{DOCKER_INFO_FORMAT}'"

DockerStatus = Literal["ok", "not_installed", "daemon_down", "permission_denied", "unknown"]


@dataclass(frozen=True)
class DockerInfoResult:
    """Runtimes known to dockerd (name -> binary path), default runtime, cgroup driver."""

    status: DockerStatus
    runtimes: dict[str, str | None] = field(default_factory=dict, hash=False)
    default_runtime: str | None = None
    cgroup_driver: str | None = None  # "cgroupfs" or "systemd"
    server_version: str | None = None
    reason: str = ""
    raw: str = ""

    @property
    def has_nvidia_runtime(self) -> bool:
        return "nvidia" in self.runtimes


@never_raises(DockerInfoResult)
def parse_docker_info(text: str, exit_code: int | None = None) -> DockerInfoResult:
    """Parse ``docker info --format DOCKER_INFO_FORMAT`` (stderr folded in). Never raises."""
    raw = clip(text)
    if CommandResult(text, exit_code).missing_tool or exit_code == RC_NOT_FOUND:
        return DockerInfoResult("not_installed", reason="docker CLI is not installed", raw=raw)
    if "permission denied while trying to connect to the Docker daemon" in text:
        return DockerInfoResult(
            "permission_denied", reason="this user may not talk to dockerd", raw=raw
        )
    if "Cannot connect to the Docker daemon" in text or "Is the docker daemon running" in text:
        return DockerInfoResult("daemon_down", reason="dockerd is not running", raw=raw)
    labels: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("runtimes", "default_runtime", "cgroup_driver", "server_version"):
            labels[key] = value.strip()
    if "runtimes" not in labels:
        return DockerInfoResult("unknown", reason="docker info printed no runtimes", raw=raw)
    decoded = json.loads(labels["runtimes"] or "null") or {}
    if not isinstance(decoded, dict):
        return DockerInfoResult("unknown", reason="runtimes is not a JSON object", raw=raw)
    runtimes: dict[str, str | None] = {}
    for name, spec in decoded.items():
        path = spec.get("path") if isinstance(spec, dict) else None
        runtimes[str(name)] = str(path) if path else None
    return DockerInfoResult(
        "ok",
        runtimes=runtimes,
        default_runtime=labels.get("default_runtime") or None,
        cgroup_driver=labels.get("cgroup_driver") or None,
        server_version=labels.get("server_version") or None,
        raw=raw,
    )


class DockerInfo(FactBase[DockerInfoResult]):
    """Docker runtimes, default runtime and cgroup driver from ``docker info``.

    .. code:: python

        DockerInfoResult(status="ok", runtimes={"nvidia": "nvidia-container-runtime",
                         "runc": "runc"}, default_runtime="runc", cgroup_driver="systemd",
                         server_version="24.0.7")
    """

    def command(self) -> str:
        return wrap(DOCKER_INFO_SCRIPT)

    @staticmethod
    def default() -> DockerInfoResult:
        return DockerInfoResult("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> DockerInfoResult:
        result = split_rc(output)
        return parse_docker_info(result.text, result.exit_code)


NVIDIA_CTK_SCRIPT = f"{require_tool('nvidia-ctk')}\nnvidia-ctk --version"

_CTK_VERSION = re.compile(r"NVIDIA Container Toolkit CLI version (?P<version>\d+\.\d+\.\d+\S*)")


@dataclass(frozen=True)
class ContainerToolkitResult:
    """NVIDIA Container Toolkit CLI version: ``ok``, ``not_installed`` or ``unknown``."""

    status: Literal["ok", "not_installed", "unknown"]
    version: str | None = None
    commit: str | None = None
    reason: str = ""
    raw: str = ""


@never_raises(ContainerToolkitResult)
def parse_nvidia_ctk_version(text: str, exit_code: int | None = None) -> ContainerToolkitResult:
    """Parse ``nvidia-ctk --version``. Never raises."""
    raw = clip(text)
    if CommandResult(text, exit_code).missing_tool or exit_code == RC_NOT_FOUND:
        return ContainerToolkitResult("not_installed", reason="nvidia-ctk not found", raw=raw)
    match = _CTK_VERSION.search(text)
    if not match:
        return ContainerToolkitResult("unknown", reason="no version line", raw=raw)
    commit = re.search(r"^commit:\s*(\S+)", text, re.MULTILINE)
    return ContainerToolkitResult(
        "ok", match.group("version"), commit.group(1) if commit else None, raw=raw
    )


class ContainerToolkit(FactBase[ContainerToolkitResult]):
    """NVIDIA Container Toolkit version from ``nvidia-ctk --version``.

    .. code:: python

        ContainerToolkitResult(status="ok", version="1.14.6", commit="5605d19...")
    """

    def command(self) -> str:
        return wrap(NVIDIA_CTK_SCRIPT)

    @staticmethod
    def default() -> ContainerToolkitResult:
        return ContainerToolkitResult("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> ContainerToolkitResult:
        result = split_rc(output)
        return parse_nvidia_ctk_version(result.text, result.exit_code)
