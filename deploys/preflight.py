"""Preflight: read the host once, refuse it before anything changes when it cannot serve its
model, and hand the later steps their plan.

The verdict is `rules.assessment.assess` (pure, shared with the doctor and the tests); this
step only reads the probe, prints the report and adds the refusal. The refusal is decided
before execution, so the preview (pyinfra without -y) shows it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pyinfra import host

from facts.host_state import remember_host_state
from facts.probe import GpuHostProbe, HostProbe
from facts.storage import ReadSpeed
from inventory.fleet import HostSpec
from operations.checks import refuse_host
from rules.assessment import Assessment, assess, render
from rules.findings import Finding
from rules.host_plan import HostPlan
from rules.monitoring import fleet_replicas

logger = logging.getLogger("gpufleet")


def read_host(spec: HostSpec) -> HostProbe:
    """The one probe of the host; its state reading serves the operations' change detection."""
    probe = host.get_fact(GpuHostProbe, weights_path=spec.settings.weights_path)
    remember_host_state(probe.state)
    return probe


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


def preflight(spec: HostSpec, probe: HostProbe,
              extra: Iterable[Finding] = ()) -> HostPlan | None:
    """Print the host's report; refuse the host when there is an error, else return its plan.

    ``extra``: findings of the later steps' own questions (the Python environment's).
    Runs while pyinfra collects operations, i.e. before any operation executes on any host.
    """
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


def replicas_agree(spec: HostSpec, plan: HostPlan) -> bool:
    """In a monitored fleet: the replicas the host will run are those the monitoring host
    scrapes and the gateway routes to (the fleet file's count). Refuses the host if not."""
    wanted = fleet_replicas(spec)
    planned = len(plan.engine.replicas) if plan.engine is not None else 0
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
