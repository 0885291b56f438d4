"""Canary actions: start, promote, roll back, and the verdict.

    pyinfra inventory.py deploys/canary.py --data action=start      # weight % to the canary
    pyinfra inventory.py deploys/canary.py --data action=status     # promote / hold / roll back
                                          # (recorded in fleet-state/<fleet>/canary.json)
    pyinfra inventory.py deploys/canary.py --data action=promote    # everything to the canary
    pyinfra inventory.py deploys/canary.py --data action=rollback   # nothing to the canary

Canary hosts are the fleet's GPU hosts with settings.inference.variant = "canary" (a new image,
model revision or engine flags, serving the same model name). `start` and `promote` first check
every canary host's weights against their manifest (all files hashed) and a completion from
each replica; the gateway changes only if every canary host is in the run, still active, and
completed that proof in this same run: anything else (`--limit <gateway>`, a canary host
unreachable or failed) is refused, naming the hosts. `rollback` never waits for a proof (it
routes away from the canary). Each gateway change is render, `nginx -t`, atomic rename,
graceful reload. The phase is recorded on the gateway host as pending first and as applied
once nginx reloaded, so the main deploy keeps the routing as the last action left it (and
says so when one was cut short). With settings.canary.auto_rollback, `status` rolls back by
itself when its verdict is "roll back".

Every action that may route holds the gateway host's run lock for the run, and `start` and
`promote` the canary hosts' too (deploys/locking.py): a converge, a drain or another canary
action on them waits or stops, naming who holds it.
"""

from __future__ import annotations

import json
import logging
import time

from pyinfra import host, state

from deploys.inference import engine_check
from deploys.locking import run_lock_done, run_lock_held, say_holder
from deploys.monitoring_host import gateway_change, recorded_drain, recorded_phase, warn_pending
from deploys.preflight import read_host
from deploys.runner import Entry, EntryRun, run_entry
from facts.canary_figures import CanaryFigures
from inventory.controller_files import write_atomically
from inventory.fleet import HostSpec, pyinfra_host_name
from operations.checks import check, completed, completed_hosts, refuse_host
from operations.model_weights import weights_verified
from rules.assessment import assess
from rules.canary_verdict import (
    CanaryProof,
    canary_proof,
    canary_queries,
    duration_seconds,
    judge,
    verdict_record,
)
from rules.gateway import ACTIONS, GATEWAY_LOG, Phase, canary_share, drain_report
from rules.monitoring import is_monitor, prometheus_url, served_name

logger = logging.getLogger("gpufleet")
CHOICES = (*ACTIONS, "status")
# The actions that route (more) to the canary: each needs the canary's proof in its own run.
PROVED_ACTIONS = ("start", "promote")
PROOF_STEP = "canary proof"


def canary_hosts(fleet: list[HostSpec], gateway_spec: HostSpec) -> list[HostSpec]:
    return [s for s in fleet if s.settings.role == "gpu" and s.settings.inference.enabled
            and s.settings.inference.variant == "canary"
            and served_name(s) == served_name(gateway_spec)]


def canary_proved(fleet: list[HostSpec], canaries: list[HostSpec]) -> CanaryProof:
    """At execution: every canary host active in this run, its proof completed in it."""
    fleet_name = {pyinfra_host_name(s): s.name for s in fleet}
    active = {fleet_name.get(h.name, h.name) for h in state.active_hosts}
    proved = {fleet_name.get(n, n) for n in completed_hosts(state, PROOF_STEP)}
    return canary_proof([s.name for s in canaries], active, proved)


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
    check(name="Record that this canary host proved itself in this run",
          verdict=completed(PROOF_STEP, "weights and every replica checked in this run"))


def route(spec: HostSpec, fleet: list[HostSpec], phase: Phase,
          proof_of: list[HostSpec] | None) -> None:
    """Record the phase and route by it; with ``proof_of`` (the canary hosts), only if every
    one of them proved itself in this run: otherwise the gateway host is refused, naming
    them, and nothing changes."""
    def gate() -> bool:
        return proof_of is None or canary_proved(fleet, proof_of).passed

    if proof_of is not None:
        def proof() -> tuple[str | None, str]:
            found = canary_proved(fleet, proof_of)
            return (None if found.passed else found.render()), found.render()

        check(name="Ensure every canary host proved itself in this run", verdict=proof)
    gateway_change(spec, fleet, phase, recorded_drain(), _if=gate)


def status(spec: HostSpec, fleet: list[HostSpec]) -> None:
    if not spec.settings.canary.auto_rollback:  # (a status that may roll back holds it)
        say_holder(then="a canary action or drain would wait for it or stop")
    warn_pending()
    drained = recorded_drain()
    if drained:  # hosts out of rotation (by hand, or a rollout's batch) serve neither side
        host.log_styled(drain_report(drained), log_func=logger.warning)
    cfg = spec.settings.canary
    figures = host.get_fact(CanaryFigures, spec=json.dumps({
        "prometheus": prometheus_url(spec),
        "queries": canary_queries(served_name(spec), cfg.window),
        "log": GATEWAY_LOG, "window_seconds": duration_seconds(cfg.window),
    }, sort_keys=True))
    verdict = judge(figures, cfg, spec.settings.monitoring.alerts.ttft_p99_seconds)
    phase = recorded_phase()
    write_atomically(spec.state_dir / "canary.json", verdict_record(
        verdict, phase, canary_share(phase, cfg.weight), served_name(spec),
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    for line in verdict.render().splitlines():
        host.log_styled(line, fg="red" if verdict.verdict == "roll back" else None,
                        log_func=logger.warning)
    if verdict.verdict == "roll back" and cfg.auto_rollback:
        route(spec, fleet, "rolled-back", None)
    else:
        host.noop(f"canary status: {verdict.verdict}")


def canary(run: EntryRun) -> None:
    # Canary hosts prove themselves first, and the gateway's change (below) checks they passed.
    # pyinfra 3 orders operations by merging each host's own sequence (a topological sort), not
    # by line: operations of different hosts are ordered only through an operation they share.
    # The barrier below is that operation: every host runs it, after the proofs and before the
    # routing, so the gateway never reads the proofs before they are made.
    # The run lock is taken here, not by the runner: a canary host's lock is held from before
    # its proof until the routing is done (one release, shared with the gateway), and the
    # gateway's is taken after the barrier; one lock call site would order it before the
    # barrier, so that the gateway would hold its lock while the proofs run.
    action = host.data.get("action")
    locked = False  # this host's run lock held by this run (deploys/locking.py)
    spec, fleet = run.spec, run.fleet
    is_gateway = is_monitor(spec) and spec.settings.gateway.enabled
    if action not in CHOICES:
        refuse_host(name="Refuse: no canary action",
                    message=f"--data action={action!r}: allowed: {', '.join(CHOICES)}")
    elif action in PROVED_ACTIONS and spec.settings.role == "gpu" and \
            spec.settings.inference.variant == "canary":
        # A canary host proving itself is held against a converge changing it meanwhile.
        locked = run_lock_held()
        if locked:
            prove_canary(spec)
    elif not is_gateway:
        host.noop(f"canary {action}: nothing to do on this host")
    if action in PROVED_ACTIONS:
        check(name="Wait until every canary host's proof has run",
              verdict=lambda: (None, "the canary hosts' proofs come before the routing"))

    if action in CHOICES and is_gateway:
        canaries = canary_hosts(fleet, spec)
        # The gateway's lock for every action that may route (status only with auto_rollback).
        wanted = action != "status" or spec.settings.canary.auto_rollback
        locked = wanted and run_lock_held()
        if wanted and not locked:
            pass  # refused by run_lock_held: the gateway stops here, nothing read or changed
        elif not canaries and action != "rollback":
            refuse_host(name="Refuse: no canary host behind this gateway",
                        message=f"no GPU host serving {served_name(spec)} has "
                                "settings.inference.variant = 'canary'")
        elif action == "status":
            status(spec, fleet)
        else:
            route(spec, fleet, ACTIONS[action], canaries if action in PROVED_ACTIONS else None)
    if locked:
        run_lock_done()


CANARY = Entry("canary", canary)
run_entry(CANARY)
