"""/etc/docker/daemon.json, merged and never overwritten, with what gpufleet owns recorded.

The user's keys stay. gpufleet adds only what the fleet file asks for: the `nvidia` runtime in
the shape `nvidia-ctk runtime configure --runtime=docker` writes, an optional
`default-runtime`, registry mirrors, the daemon-reload protection (cgroupfs driver or CDI) and
the keys of the `settings.docker.daemon_json` escape hatch, which win over everything (the
fleet's validation refuses escape-hatch keys that would undo the rest or open the host, unless
`settings.docker.daemon_json_unchecked` names them: DockerSettings.daemon_json_problems).

Every value gpufleet puts there is a *claim*, recorded beside the file (dockerd refuses unknown
keys in daemon.json itself). When the fleet stops asking for a value, the next run takes back
exactly its own claim: the value the user had before is restored, and a value the user has
changed since is theirs and stays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from inventory.validation import CGROUP_DRIVER_OPT

# What `nvidia-ctk runtime configure --runtime=docker` writes (NVIDIA container toolkit docs).
NVIDIA_RUNTIME: dict[str, Any] = {"args": [], "path": "nvidia-container-runtime"}

Protection = Literal["cgroupfs", "cdi", "none"]
_ABSENT = {"__gpufleet__": "absent"}  # JSON-able marker: the key did not exist before


class DaemonJsonError(ValueError):
    """The existing file (or gpufleet's record) cannot be merged safely."""


@dataclass(frozen=True)
class DaemonJsonWanted:
    """What the fleet file wants in daemon.json (settings.docker)."""

    default_runtime_nvidia: bool = False
    protection: Protection = "cgroupfs"
    registry_mirrors: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


def _parse_object(text: str | None, what: str) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DaemonJsonError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DaemonJsonError(f"{what}: the top level is a {type(value).__name__}, not an object")
    return value


def parse_daemon_json(text: str | None) -> dict[str, Any]:
    """The current file as a dict; a missing or empty file is {}. Raises DaemonJsonError."""
    return _parse_object(text, "daemon.json")


def parse_claims(text: str | None) -> list[dict[str, Any]]:
    """gpufleet's record of its claims; none when there is no record."""
    claims = _parse_object(text, "gpufleet's daemon.json record").get("claims", [])
    if not isinstance(claims, list) or not all(
            isinstance(c, dict) and isinstance(c.get("path"), list) for c in claims):
        raise DaemonJsonError("gpufleet's daemon.json record has no valid claims list")
    return claims


def wanted_claims(wanted: DaemonJsonWanted) -> list[dict[str, Any]]:
    """The values the fleet file asks for, as claims (without what they replace)."""
    claims: list[dict[str, Any]] = [{"path": ["runtimes", "nvidia"], "value": NVIDIA_RUNTIME}]
    if wanted.default_runtime_nvidia:
        claims.append({"path": ["default-runtime"], "value": "nvidia"})
    claims += [{"path": ["registry-mirrors"], "item": m} for m in wanted.registry_mirrors]
    if wanted.protection == "cgroupfs":
        # With the systemd cgroup driver, `systemctl daemon-reload` can reset the device
        # cgroup of running containers and cut them off their GPUs; cgroupfs avoids it.
        claims.append({"path": ["exec-opts"], "item": CGROUP_DRIVER_OPT + "cgroupfs",
                       "drops_prefix": CGROUP_DRIVER_OPT})
    elif wanted.protection == "cdi":
        # CDI injects device nodes without the device cgroup the reload resets (Docker >= 25).
        claims.append({"path": ["features", "cdi"], "value": True})
    claims += [{"path": list(path), "value": value} for path, value in _leaves(wanted.extra)]
    return claims


def _leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()
            ) -> list[tuple[tuple[str, ...], Any]]:
    """Tables merge key by key: one claim per leaf (lists and scalars are leaves)."""
    found = []
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            found += _leaves(value, (*prefix, key))
        else:
            found.append(((*prefix, key), value))
    return found


def _get(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return _ABSENT
        node = node[key]
    return node


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """Set a value at a path (creating tables); _ABSENT removes it and tables left empty."""
    if value == _ABSENT:
        parents = [tree]
        for key in path[:-1]:
            child = parents[-1].get(key)
            if not isinstance(child, dict):
                return
            parents.append(child)
        parents[-1].pop(path[-1], None)
        for depth in range(len(path) - 1, 0, -1):
            if parents[depth]:
                break
            parents[depth - 1].pop(path[depth - 1], None)
        return
    node = tree
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = json.loads(json.dumps(value))


def _same_target(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a["path"] == b["path"] and a.get("item") == b.get("item")


def _release(merged: dict[str, Any], claim: Mapping[str, Any]) -> None:
    """Take back one claim gpufleet no longer makes, unless the user changed the value."""
    path = claim["path"]
    if "item" in claim:
        items = _get(merged, path)
        if not isinstance(items, list) or claim["item"] not in items:
            return
        kept = list(items)
        if not claim.get("preexisting"):  # the user's own entry stays
            kept.remove(claim["item"])
        # What gpufleet replaced goes back where it was.
        for index, value in sorted(claim.get("replaced", [])):
            kept.insert(min(index, len(kept)), value)
        _set(merged, path, _ABSENT if not kept and claim.get("created") else kept)
        return
    if _get(merged, path) == claim.get("value"):
        _set(merged, path, claim.get("before", _ABSENT))


def _claim_item(merged: dict[str, Any], claim: Mapping[str, Any],
                earlier: Mapping[str, Any] | None) -> dict[str, Any]:
    """Put one list item in place (where the entries it replaces were); returns the claim."""
    path, item = claim["path"], claim["item"]
    items = _get(merged, path)
    have = list(items) if isinstance(items, list) else []
    prefix = claim.get("drops_prefix")
    replaced = [[index, entry] for index, entry in enumerate(have)
                if prefix and isinstance(entry, str) and entry.startswith(prefix) and entry != item]
    result: list[Any] = []
    for entry in have:
        if [have.index(entry), entry] in replaced:
            if item not in result and item not in have:
                result.append(item)  # in the place of what it replaces
            continue
        result.append(entry)
    if item not in result:
        result.append(item)
    _set(merged, path, result)
    record: dict[str, Any] = {"path": list(path), "item": item}
    previous = list(earlier.get("replaced", [])) if earlier else []
    if replaced or previous:
        record["replaced"] = previous or replaced  # the first replacement is the user's
    if (earlier.get("preexisting") if earlier else item in have):
        record["preexisting"] = True
    if (earlier.get("created") if earlier else not isinstance(items, list)):
        record["created"] = True  # gpufleet made the list: taking its last item removes it
    return record


def merge_daemon_json(
    current: Mapping[str, Any], owned: Sequence[Mapping[str, Any]], wanted: DaemonJsonWanted
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the daemon.json to write, the claims to record). Pure.

    Claims recorded earlier and no longer wanted are released first; then every wanted value
    is set, remembering what it replaces (the first time only: a re-claim keeps the user's
    original value, not gpufleet's own).
    """
    merged: dict[str, Any] = json.loads(json.dumps(current))  # a deep copy we may change
    wanted_now = wanted_claims(wanted)
    for old in owned:
        if not any(_same_target(old, new) and old.get("value") == new.get("value")
                   for new in wanted_now):
            _release(merged, old)
    claims = []
    for claim in wanted_now:
        earlier = next((c for c in owned if _same_target(c, claim)
                        and c.get("value") == claim.get("value")), None)
        if "item" in claim:
            claims.append(_claim_item(merged, claim, earlier))
        else:
            path = claim["path"]
            before = earlier.get("before", _ABSENT) if earlier else _get(merged, path)
            _set(merged, path, claim["value"])
            claims.append({**claim, "before": before})
    return merged, claims


def render_daemon_json(config: Mapping[str, Any]) -> str:
    """Stable text: the same config always renders to the same bytes."""
    return json.dumps(config, indent=4, sort_keys=True) + "\n"


def render_claims(path: str, claims: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps({
        "comment": "Managed by gpufleet: the values it put in this file, and what each "
                   "replaced. Do not edit; it is how a later run gives them back.",
        "file": path, "claims": list(claims),
    }, indent=2, sort_keys=True) + "\n"
