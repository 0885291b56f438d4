"""Rolling rebuilds, as pure functions: the fleet cut into batches, and where each host stands.

tools/rollout.py walks the batches: drain the batch from the gateway, converge it (its reboots
together), which checks every replica answers a completion, put it back; the first batch that
fails stops the rollout, and each host's pins are reported from its manifest.

A batch never takes a served model to zero unasked: one that holds every replica of a served
model still in rotation (the others drained already, or none: one GPU host, `batch = "100%"`)
is refused before anything changes, unless the operator accepts the outage (``allow_outage``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from inventory.fleet import HostSpec
from rules.manifest import pins_digest
from rules.monitoring import fleet_replicas, served_name

# `--data` key telling the converge (and the drain) it runs one batch of a rollout (reboots
# together; the batch's drain is the rollout's own, put back by the rollout).
ROLLOUT_BATCH_DATA = "gpufleet_rollout_batch"
# `--data` keys of a rollout's drain: the rollout's batches (from this one on), checked
# against the hosts drained already; and the operator's acceptance of an outage.
ROLLOUT_PLAN_DATA = "gpufleet_rollout_plan"
ALLOW_OUTAGE_DATA = "gpufleet_allow_outage"
ALLOW_OUTAGE_FLAG = "--allow-outage"


def batch_size(setting: int | str, group_size: int) -> int:
    """A count, or a percentage of the group rounded up; at least 1."""
    if isinstance(setting, str):
        return max(1, math.ceil(group_size * int(setting.rstrip("%")) / 100))
    return max(1, setting)


def batches(specs: list[HostSpec], *, skip: Collection[str] = (),
            drained: Collection[str] = (), allow_outage: bool = False) -> list[list[HostSpec]]:
    """The batches of ``cut_batches``, without the hosts of ``skip`` (`--behind-only`: those
    already on the pins). A batch that would leave a served model without a replica in
    rotation (``drained``: hosts out of the gateway already) raises :class:`OutageRefused`,
    unless ``allow_outage``."""
    cut = [kept for batch in cut_batches(specs)
           if (kept := [s for s in batch if s.name not in skip])]
    found = outages(specs, [[s.name for s in batch] for batch in cut], drained)
    if found and not allow_outage:
        raise OutageRefused(found)
    return cut


def cut_batches(specs: list[HostSpec]) -> list[list[HostSpec]]:
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


def restored_after(plan: Sequence[Sequence[HostSpec]], number: int,
                   specs: list[HostSpec]) -> list[str]:
    """The hosts batch ``number`` (1-based) of ``plan`` puts back into the gateway: its whole
    batch as cut, the hosts `--behind-only` skipped too (a stopped rollout left them drained);
    after the last batch, every GPU host. Only hosts a rollout drained come back: the
    gateway's drain keeps those drained by hand (rules/gateway.py restore_hosts)."""
    if number == len(plan):
        return [s.name for s in specs if s.settings.role == "gpu"]
    whole = {s.name: [t.name for t in batch] for batch in cut_batches(specs) for s in batch}
    return sorted({name for s in plan[number - 1] for name in whole[s.name]})


@dataclass(frozen=True)
class Outage:
    """A batch holding every replica of a served model still in rotation."""

    batch: int  # 1-based, in the rollout's order
    model: str  # the served model name (what clients ask for)
    hosts: tuple[str, ...]  # the batch's hosts serving it
    drained: tuple[str, ...]  # its other hosts, out of the gateway already

    def render(self) -> str:
        return (f"batch {self.batch} ({', '.join(self.hosts)}) holds every replica of "
                f"{self.model} still in rotation"
                + (f" (drained already: {', '.join(self.drained)})" if self.drained else "")
                + f": {self.model} would answer nothing while the batch converges")


class OutageRefused(Exception):
    """A rollout refused before anything changes: the lines say which model and hosts."""

    def __init__(self, found: Sequence[Outage]) -> None:
        self.outages = list(found)
        self.lines = [
            "rollout refused before any change: a batch would leave a served model without a "
            "replica in rotation:",
            *(f"  - {outage.render()}" for outage in self.outages),
            "  Add hosts serving it, lower settings.rollout.batch, put drained hosts back "
            f"(deploys/drain.py), or accept the outage with {ALLOW_OUTAGE_FLAG}.",
        ]
        super().__init__("\n".join(self.lines))


def serving_hosts(specs: list[HostSpec]) -> dict[str, list[str]]:
    """Served model name -> the GPU hosts that run a replica of it (a replica across hosts:
    its head; a host whose replica count the file does not say counts as serving)."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        if (spec.settings.role == "gpu" and spec.settings.inference.enabled
                and fleet_replicas(spec) != 0):
            out.setdefault(served_name(spec), []).append(spec.name)
    return out


def outages(specs: list[HostSpec], plan: Sequence[Collection[str]],
            drained: Collection[str] = ()) -> list[Outage]:
    """Each batch of ``plan`` (host names) that would take a served model to zero: every
    host serving it is in the batch or already ``drained``, and the batch holds one."""
    found = []
    for number, batch in enumerate(plan, 1):
        for model, hosts in serving_hosts(specs).items():
            held = tuple(h for h in hosts if h in batch)
            if held and all(h in batch or h in drained for h in hosts):
                found.append(Outage(number, model, held,
                                    tuple(h for h in hosts if h not in batch)))
    return found


def render_plan(plan: Sequence[Sequence[str]]) -> str:
    """Batches as one `--data` value: hosts by ",", batches by "/" (host names have neither)."""
    return "/".join(",".join(batch) for batch in plan)


def parse_plan(text: str | None) -> list[list[str]]:
    return [[n for n in batch.split(",") if n] for batch in (text or "").split("/")
            if batch.strip(",")]


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
