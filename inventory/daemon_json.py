"""/etc/docker/daemon.json, merged and never overwritten.

The user's keys stay. gpufleet adds only what the fleet file asks for: the `nvidia` runtime in
the shape `nvidia-ctk runtime configure --runtime=docker` writes, an optional
`default-runtime`, registry mirrors, the daemon-reload protection (cgroupfs driver or CDI) and
the keys of the `settings.docker.daemon_json` escape hatch, which win over everything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from inventory.merge import deep_merge

# What `nvidia-ctk runtime configure --runtime=docker` writes (NVIDIA container toolkit docs).
NVIDIA_RUNTIME: dict[str, Any] = {"args": [], "path": "nvidia-container-runtime"}
CGROUP_DRIVER_OPT = "native.cgroupdriver="

Protection = Literal["cgroupfs", "cdi", "none"]


class DaemonJsonError(ValueError):
    """The existing daemon.json cannot be merged safely (not JSON, or not an object)."""


@dataclass(frozen=True)
class DaemonJsonWanted:
    """What the fleet file wants in daemon.json (settings.docker)."""

    default_runtime_nvidia: bool = False
    protection: Protection = "cgroupfs"
    registry_mirrors: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


def parse_daemon_json(text: str | None) -> dict[str, Any]:
    """The current file as a dict; a missing or empty file is {}. Raises DaemonJsonError."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DaemonJsonError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DaemonJsonError(f"the top level is a {type(value).__name__}, not an object")
    return value


def merge_daemon_json(current: Mapping[str, Any], wanted: DaemonJsonWanted) -> dict[str, Any]:
    """The daemon.json to write: `current` with gpufleet's keys merged in. Pure."""
    merged: dict[str, Any] = json.loads(json.dumps(current))  # a deep copy we may change

    runtimes = merged.get("runtimes")
    merged["runtimes"] = {**(runtimes if isinstance(runtimes, dict) else {}),
                          "nvidia": dict(NVIDIA_RUNTIME)}

    if wanted.default_runtime_nvidia:
        merged["default-runtime"] = "nvidia"
    elif merged.get("default-runtime") == "nvidia":
        # The fleet file owns this one value: turning the setting off goes back to runc.
        del merged["default-runtime"]

    if wanted.registry_mirrors:
        mirrors = merged.get("registry-mirrors")
        have = list(mirrors) if isinstance(mirrors, list) else []
        merged["registry-mirrors"] = have + [m for m in wanted.registry_mirrors if m not in have]

    if wanted.protection == "cgroupfs":
        # With the systemd cgroup driver, `systemctl daemon-reload` can reset the device
        # cgroup of running containers and cut them off their GPUs; cgroupfs avoids it.
        opts = merged.get("exec-opts")
        kept = [o for o in (opts if isinstance(opts, list) else [])
                if not (isinstance(o, str) and o.startswith(CGROUP_DRIVER_OPT))]
        merged["exec-opts"] = [*kept, CGROUP_DRIVER_OPT + "cgroupfs"]
    elif wanted.protection == "cdi":
        # CDI injects device nodes without the device cgroup the reload resets (Docker >= 25).
        features = merged.get("features")
        merged["features"] = {**(features if isinstance(features, dict) else {}), "cdi": True}

    return deep_merge(merged, wanted.extra)


def render_daemon_json(config: Mapping[str, Any]) -> str:
    """Stable text: the same config always renders to the same bytes."""
    return json.dumps(config, indent=4, sort_keys=True) + "\n"
