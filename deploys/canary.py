"""Canary actions: start, promote, roll back, and the verdict.

    pyinfra inventory.py deploys/canary.py --data action=start      # weight % to the canary
    pyinfra inventory.py deploys/canary.py --data action=status     # promote / hold / roll back
    pyinfra inventory.py deploys/canary.py --data action=promote    # everything to the canary
    pyinfra inventory.py deploys/canary.py --data action=rollback   # nothing to the canary

Canary hosts are the fleet's GPU hosts with settings.inference.variant = "canary" (a new image,
model revision or engine flags, serving the same model name). `start` first checks every
canary host's weights against their manifest (all files hashed) and a completion from each
replica; the gateway changes only if every canary host passed. Each gateway change is render,
`nginx -t`, atomic rename, graceful reload. The phase is recorded on the gateway host, so the
main deploy keeps the routing as the last action left it. With
settings.canary.auto_rollback, `status` rolls back by itself when its verdict is "roll back".
"""

from __future__ import annotations

import json
import logging

from pyinfra import host, state

from deploys.inference import engine_check
from deploys.monitoring_host import gateway
from deploys.preflight import read_host
from deploys.spec import fleet_specs, host_spec
from facts.canary_figures import CanaryFigures
from inventory.fleet import HostSpec, pyinfra_host_name
from operations.checks import refuse_host
from operations.host_files import managed_file
from operations.model_weights import weights_verified
from rules.assessment import assess
from rules.canary_verdict import canary_queries, duration_seconds, judge
from rules.gateway import (
    ACTIONS,
    CANARY_STATE,
    GATEWAY_LOG,
    Phase,
    render_canary_state,
)
from rules.monitoring import is_monitor, prometheus_url, served_name

logger = logging.getLogger("gpufleet")
CHOICES = (*ACTIONS, "status")


def canary_hosts(fleet: list[HostSpec], gateway_spec: HostSpec) -> list[HostSpec]:
    return [s for s in fleet if s.settings.role == "gpu" and s.settings.inference.enabled
            and s.settings.inference.variant == "canary"
            and served_name(s) == served_name(gateway_spec)]


def canary_passed(names: set[str]) -> bool:
    """At execution: no canary host failed (its weights or its answers) in this run."""
    return not any(h.name in names for h in state.failed_hosts)


def prove_canary(spec: HostSpec) -> None:
    """On a canary host: every weights file matches its manifest, every replica answers."""
    probe = read_host(spec)
    manifest = probe.weights.manifest
    if manifest is None:
        refuse_host(name="Refuse: the canary's weights have no manifest",
                    message=f"{spec.settings.weights_path} has no manifest: run the main "
                            "deploy on this host first")
        return
    weights_verified(name="Ensure every canary weights file matches its manifest",
                     folder=spec.settings.weights_path, names=sorted(manifest["files"]))
    assessment = assess(spec, probe)
    if assessment.refused or assessment.plan is None or assessment.plan.engine is None:
        refuse_host(name="Refuse: the canary host does not pass preflight",
                    message="the canary host cannot serve: `pyinfra inventory.py "
                            "deploys/gpu_host.py --limit HOST` shows its preflight report")
        return
    engine_check(assessment.plan.engine)


def route(spec: HostSpec, fleet: list[HostSpec], phase: Phase, gate: set[str]) -> None:
    """Record the phase and route by it, only if every canary host passed."""
    managed_file(name=f"Record the canary phase: {phase}", path=CANARY_STATE,
                 content=render_canary_state(phase), _if=lambda: canary_passed(gate))
    gateway(spec, fleet, phase, _if=lambda: canary_passed(gate))


def status(spec: HostSpec, fleet: list[HostSpec], gate: set[str]) -> None:
    cfg = spec.settings.canary
    figures = host.get_fact(CanaryFigures, spec=json.dumps({
        "prometheus": prometheus_url(spec),
        "queries": canary_queries(served_name(spec), cfg.window),
        "log": GATEWAY_LOG, "window_seconds": duration_seconds(cfg.window),
    }, sort_keys=True))
    verdict = judge(figures, cfg, spec.settings.monitoring.alerts.ttft_p99_seconds)
    for line in verdict.render().splitlines():
        host.log_styled(line, fg="red" if verdict.verdict == "roll back" else None,
                        log_func=logger.warning)
    if verdict.verdict == "roll back" and cfg.auto_rollback:
        route(spec, fleet, "rolled-back", gate)
    else:
        host.noop(f"canary status: {verdict.verdict}")


# Canary hosts prove themselves first: pyinfra runs operations in the order of these lines,
# on every host, so the gateway's change (below) comes after them and checks they passed.
action = host.data.get("action")
spec = host_spec()
fleet = fleet_specs()
is_gateway = is_monitor(spec) and spec.settings.gateway.enabled
if action not in CHOICES:
    refuse_host(name="Refuse: no canary action",
                message=f"--data action={action!r}: allowed: {', '.join(CHOICES)}")
elif action == "start" and spec.settings.role == "gpu" and \
        spec.settings.inference.variant == "canary":
    prove_canary(spec)
elif not is_gateway:
    host.noop(f"canary {action}: nothing to do on this host")

if action in CHOICES and is_gateway:
    canaries = canary_hosts(fleet, spec)
    gate = {pyinfra_host_name(s) for s in canaries}
    if not canaries and action != "rollback":
        refuse_host(name="Refuse: no canary host behind this gateway",
                    message=f"no GPU host serving {served_name(spec)} has "
                            "settings.inference.variant = 'canary'")
    elif action == "status":
        status(spec, fleet, gate)
    else:
        route(spec, fleet, ACTIONS[action], gate if action == "start" else set())
