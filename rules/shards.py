"""A fleet run by several controllers: one shard per group (or set of groups), each with its
own fleet file and fleet-state, and one drift audit merged from the shards' audit.json files.

A host is in exactly one shard; a host found in two shards' audits is refused, naming both
files (two controllers converging one host would undo each other's work).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from rules.manifest import Drift


class ShardError(ValueError):
    """The shards' audits cannot be merged: one line saying why."""


def merge_audits(documents: Iterable[tuple[str, str]]) -> dict[str, list[Drift]]:
    """(source, audit.json text) of each shard -> one audit: host -> its drift."""
    merged: dict[str, list[Drift]] = {}
    seen: dict[str, str] = {}
    for source, text in documents:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ShardError(f"{source}: not an audit (JSON: {error.msg}, line "
                             f"{error.lineno})") from None
        if not isinstance(document, dict):
            raise ShardError(f"{source}: not an audit (a JSON object of host -> drift)")
        for host, found in document.items():
            if host in seen:
                raise ShardError(f"host {host} is in two shards: {seen[host]} and {source}; "
                                 "each host belongs to exactly one shard")
            if not isinstance(found, list) or not all(
                    isinstance(d, dict) and isinstance(d.get("area"), str)
                    and isinstance(d.get("what"), str) for d in found):
                raise ShardError(f"{source}: host {host}: drift must be a list of "
                                 "{area, what, since}")
            seen[host] = source
            merged[host] = [Drift(d["area"], d["what"], d.get("since")) for d in found]
    return dict(sorted(merged.items()))
