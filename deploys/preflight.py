"""Preflight: read the host once, refuse it before anything changes when it cannot serve its
model, and hand the later steps their plan.

The verdict is `rules.assessment.assess` (pure, shared with the doctor and the tests); this
step only reads the probe, prints the report and adds the refusal. The refusal is decided
before execution, so the preview (pyinfra without -y) shows it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from pyinfra import host, inventory
from pyinfra.api import Host

from deploys.spec import fleet_specs
from facts.probe import GpuHostProbe, HostProbe
from facts.storage import ReadSpeed
from inventory.fleet import HostSpec
from operations.checks import refuse_host
from operations.host_reading import remember_host_state
from operations.run_context import run_context
from rules.assessment import Assessment, assess, render
from rules.component import Component
from rules.exposure import exposure_findings
from rules.findings import Finding, accept
from rules.host_plan import HostPlan
from rules.monitoring import fleet_replicas
from rules.multinode import (
    manifest_digest,
    node_check,
    node_network_findings,
    peer_findings,
    weights_agreement_findings,
)

logger = logging.getLogger("gpufleet")


def _probe(target: Host, spec: HostSpec) -> HostProbe:
    check = node_check(spec)
    return target.get_fact(GpuHostProbe, weights_path=spec.settings.weights_path,
                           node=check.spec() if check else "")


def _probes(current: Host) -> dict[str, tuple[HostProbe | None, float]]:
    # Every probe of this run by pyinfra host name, with when it was read: a replica's other
    # nodes are read during one node's pass and that reading serves their own pass.
    return run_context(current.state).probes


def read_host(spec: HostSpec) -> HostProbe:
    """The one probe of the host; its state reading serves the operations' change detection.
    A node of a replica spanning hosts may have been read already, by another node's pass."""
    probes = _probes(host)
    known, taken = probes.get(host.name, (None, 0.0))
    if known is not None:
        remember_host_state(known.state, taken)
        return known
    probe = _probe(host, spec)
    probes[host.name] = (probe, time.monotonic())
    remember_host_state(probe.state)
    return probe


def replica_findings(spec: HostSpec, probe: HostProbe) -> list[Finding]:
    """A node of a replica spanning hosts is refused with the replica: when another node
    cannot take part (its own network checks), cannot be read, or (weights found in place,
    settings.weights.source = "present") holds other weights. The other nodes are read once
    per run: their own pass then uses that reading."""
    span = spec.replica
    if span is None:
        return []
    manifests: dict[str, str | None] = {span.me.name: manifest_digest(probe.weights.manifest)}
    unread, refused = [], {}
    for node in span.nodes:
        if node.name == spec.name:
            continue
        peer = _read_peer(node.host)
        if peer is None:
            unread.append(node.name)
            continue
        peer_spec, peer_probe = peer
        manifests[node.name] = manifest_digest(peer_probe.weights.manifest)
        refused[node.name] = node_network_findings(peer_spec, peer_probe.node_network)
    found = peer_findings(span, refused, unread)
    if spec.settings.weights.source == "present":
        found += weights_agreement_findings(span, manifests)
    return found


def _read_peer(name: str) -> tuple[HostSpec, HostProbe] | None:
    target = inventory.get_host(name, None)
    if target is None:
        return None
    peer_spec = HostSpec.model_validate(target.data.gpufleet)
    probes = _probes(target)
    known, _ = probes.get(name, (None, 0.0))
    if known is not None:
        return peer_spec, known
    try:
        probe = _probe(target, peer_spec)
    except Exception as exc:  # an unreachable node is a finding of the replica, not a crash
        logger.warning("gpufleet: could not read %s: %s", name, exc)
        return None
    probes[name] = (probe, time.monotonic())
    return peer_spec, probe


def measured_read_speed(spec: HostSpec) -> int | None:
    """The optional, time-bounded read-speed measurement (one more remote command)."""
    storage = spec.settings.storage
    if not storage.measure_read_speed:
        return None
    result = host.get_fact(ReadSpeed, path=spec.settings.weights_path,
                           seconds=storage.measure_seconds)
    return int(result.bytes_per_second) if result.bytes_per_second else None


def log_report(text: str) -> None:
    for line in text.splitlines():
        color = "red" if line.lstrip().startswith("ERROR") else (
            "yellow" if line.lstrip().startswith("WARNING") else None)
        host.log_styled(line, fg=color, log_func=logger.warning)


def preflight(spec: HostSpec, probe: HostProbe, extra: Iterable[Finding] = (),
              components: Sequence[Component[Any]] = ()) -> HostPlan | None:
    """Print the host's report; refuse the host when there is an error, else return its plan.

    ``extra``: findings of the later steps' own questions (the Python environment's);
    ``components``: those the host runs, each with its own checks.
    Runs while pyinfra collects operations, i.e. before any operation executes on any host.
    """
    extra = [*extra, *(found for component in components
                       for found in component.checks(spec, probe)),
             *replica_findings(spec, probe), *exposure_findings(spec, fleet_specs())]
    assessment: Assessment = assess(spec, probe, measured_read_speed(spec), extra)
    log_report(render(assessment))
    if not assessment.refused and assessment.plan is not None:
        return assessment.plan
    # No plan without errors: the operator accepted a finding the stack cannot go past.
    stopping = assessment.findings.errors or assessment.findings.warnings
    refuse_host(
        name="Refuse: preflight found problems (nothing was changed)",
        message="\n".join(
            ["preflight refused this host; nothing was changed:"]
            + [f"  [{f.code}] {f.what}" for f in stopping]
            + ["See the report above; settings.preflight.downgrade_errors accepts them."]
        ),
    )
    return None


def monitor_preflight(spec: HostSpec, fleet: list[HostSpec]) -> None:
    """A monitoring host has nothing to refuse before its small stack; preflight only says
    what it would leave reachable from other machines."""
    preflight_settings = spec.settings.preflight
    found = accept(exposure_findings(spec, fleet), (), preflight_settings.expected_warnings)
    if len(found):
        log_report("\n".join([f"gpufleet preflight for {spec.name}:", *(
            "  " + line for line in found.render(
                expected_because=preflight_settings.expected_because).splitlines())]))


def replicas_agree(spec: HostSpec, plan: HostPlan) -> bool:
    """In a monitored fleet: the replicas the host will run are those the monitoring host
    scrapes and the gateway routes to (the fleet file's count). Refuses the host if not."""
    wanted = fleet_replicas(spec)
    engine = plan.engine
    planned = len(engine.replicas) if engine is not None and engine.serves_api else 0
    if not spec.settings.inference.enabled or wanted == planned:
        return True
    refuse_host(
        name="Refuse: the host would run another number of replicas than the fleet file says "
             "(nothing was changed)",
        message=f"this host would run {planned} replica(s), but the monitoring host scrapes "
                f"and the gateway routes to {wanted} (from the fleet file's "
                "settings.inference.replicas, or gpus.count / tensor_parallel): set "
                f"settings.inference.replicas = {planned} for this host, or correct gpus.count "
                "and tensor_parallel",
    )
    return False
