"""Rolling rebuilds, as pure functions: the fleet cut into batches, and where each host stands.

tools/rollout.py walks the batches: drain the batch from the gateway, converge it (its reboots
together), which checks every replica answers a completion, put it back; the first batch that
fails stops the rollout, and each host's pins are reported from its manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from inventory.fleet import HostSpec
from rules.manifest import pins_digest

# `--data` key telling the converge it runs one batch of a rollout (reboots together).
ROLLOUT_BATCH_DATA = "gpufleet_rollout_batch"


def batch_size(setting: int | str, group_size: int) -> int:
    """A count, or a percentage of the group rounded up; at least 1."""
    if isinstance(setting, str):
        return max(1, math.ceil(group_size * int(setting.rstrip("%")) / 100))
    return max(1, setting)


def batches(specs: list[HostSpec]) -> list[list[HostSpec]]:
    """The GPU hosts, group by group in the fleet file's order, cut by each group's
    settings.rollout.batch (the first host's, as a group sets it). The nodes of a replica
    across hosts stay in one batch: a batch is rounded up to whole replicas."""
    groups: dict[str, list[HostSpec]] = {}
    for spec in specs:
        if spec.settings.role == "gpu":
            groups.setdefault(spec.group, []).append(spec)
    cut: list[list[HostSpec]] = []
    for members in groups.values():
        size = batch_size(members[0].settings.rollout.batch, len(members))
        nodes = members[0].settings.multinode.nodes if members[0].replica else 1
        size = -(-size // nodes) * nodes  # the replicas are the group's hosts N at a time
        cut += [members[i:i + size] for i in range(0, len(members), size)]
    return cut


@dataclass(frozen=True)
class PinState:
    host: str
    pin_set: str | None  # from the host's manifest; None: no manifest
    current: bool  # on the pins the fleet file asks for now

    def render(self) -> str:
        if self.pin_set is None:
            return f"{self.host}: no manifest (never converged by this gpufleet)"
        return f"{self.host}: {self.pin_set}" + (" (the fleet file's pins)" if self.current
                                                 else " (older pins)")


def pin_state(spec: HostSpec, manifest: dict[str, Any] | None) -> PinState:
    if manifest is None:
        return PinState(spec.name, None, False)
    return PinState(spec.name, manifest.get("pin_set"),
                    manifest.get("pins_sha256") == pins_digest(spec.pins))
