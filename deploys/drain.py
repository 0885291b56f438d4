"""Take hosts out of the gateway, or put them back (rolling rebuilds use it per batch).

    pyinfra -y inventory.py deploys/drain.py --data drain=gpu-03,gpu-04   # out of the gateway
    pyinfra -y inventory.py deploys/drain.py --data restore=gpu-03        # that one back
    pyinfra -y inventory.py deploys/drain.py --data drain=                # everyone back

Acts on the monitoring host's gateway only: routes around the drained hosts (render, `nginx
-t`, atomic rename, graceful reload, so requests in flight on a drained host finish) and records
them with who drained each (/var/lib/gpufleet/drained.json, which the main deploy keeps) once
nginx reloaded; until then the change is recorded as pending (rules/gateway.py).
Drains add up: draining a host keeps the others drained. tools/rollout.py drains and restores
its batch with --data gpufleet_rollout_batch=N: it puts back only the hosts a rollout drained,
so a host drained by hand stays drained through a rollout until someone restores it. Every run
lists the drained hosts and who drained each. A drain holds the gateway host's run lock
(deploys/locking.py): two drains, or a drain and a canary action, never interleave. A
rollout's drain is refused, before anything changes, when a batch would leave a served model
without a replica in rotation (counting the hosts drained already), unless the rollout was
given --allow-outage.
"""

from __future__ import annotations

import logging

from pyinfra import host

from deploys.monitoring_host import gateway_change, recorded_drain, recorded_phase, warn_pending
from deploys.runner import Entry, EntryRun, run_entry
from inventory.fleet import HostSpec
from operations.checks import refuse_host
from rules.gateway import HAND, ROLLOUT, drain_hosts, drain_report, restore_hosts
from rules.monitoring import is_monitor
from rules.rollout import (
    ALLOW_OUTAGE_DATA,
    ALLOW_OUTAGE_FLAG,
    ROLLOUT_BATCH_DATA,
    ROLLOUT_PLAN_DATA,
    outages,
    parse_plan,
)

logger = logging.getLogger("gpufleet")


def names_of(raw: object) -> frozenset[str]:
    return frozenset(n.strip() for n in str(raw or "").split(",") if n.strip())


def unknown_hosts(fleet: list[HostSpec]) -> list[str]:
    """The names asked for that are not GPU hosts of this fleet."""
    asked = names_of(host.data.get("drain")) | names_of(host.data.get("restore"))
    return sorted(asked - {s.name for s in fleet if s.settings.role == "gpu"})


def has_gateway(spec: HostSpec) -> bool:
    return is_monitor(spec) and spec.settings.gateway.enabled


def asked_once(fleet: list[HostSpec]) -> bool:
    """Exactly one of drain= and restore=, naming only GPU hosts of this fleet."""
    raw_drain, raw_restore = host.data.get("drain"), host.data.get("restore")
    return (raw_drain is None) != (raw_restore is None) and not unknown_hosts(fleet)


def gateway_locks(spec: HostSpec, fleet: list[HostSpec]) -> bool:
    """The gateway's lock, for a well-formed request: one change of its routing at a time."""
    return has_gateway(spec) and asked_once(fleet)


def drain(run: EntryRun) -> None:
    spec, fleet = run.spec, run.fleet
    raw_drain, raw_restore = host.data.get("drain"), host.data.get("restore")
    # pyinfra reads a --data value as a number where it can (batch 0: the rollout's last sweep)
    by = ROLLOUT if host.data.get(ROLLOUT_BATCH_DATA) is not None else HAND
    names, back = names_of(raw_drain), names_of(raw_restore)
    unknown = unknown_hosts(fleet)
    if not has_gateway(spec):
        host.noop("no gateway on this host")
        return
    if not asked_once(fleet):
        refuse_host(name="Refuse: which hosts to drain or restore?",
                    message=(f"not GPU hosts of this fleet: {', '.join(unknown)}; " if unknown
                             else "") + "--data drain=HOST,HOST (out of the gateway), "
                    "--data restore=HOST,HOST (back), or drain= (every host back); one of them")
        return
    recorded = recorded_drain()
    # A rollout's batches, from this one on, against the hosts out of the gateway already.
    plan = parse_plan(str(host.data.get(ROLLOUT_PLAN_DATA) or ""))
    found = outages(fleet, plan, set(recorded)) if by == ROLLOUT and names else []
    if found and not host.data.get(ALLOW_OUTAGE_DATA):
        refuse_host(name="Refuse: the rollout would leave a served model without a replica",
                    message="\n".join([
                        "nothing was drained: a batch would leave a served model without a "
                        "replica in rotation (put drained hosts back: deploys/drain.py --data "
                        "restore=HOST, or accept the outage: tools/rollout.py "
                        f"{ALLOW_OUTAGE_FLAG}):", *(o.render() for o in found)]))
        return
    if raw_restore is not None:
        state = restore_hosts(recorded, back, by)
    elif names:
        state = drain_hosts(recorded, names, by)
    else:  # drain= : every host back (by hand; a rollout always names its batch)
        state = {} if by == HAND else dict(recorded)
    warn_pending()  # replaced by this change
    host.log_styled(drain_report(state), log_func=logger.warning)
    gateway_change(spec, fleet, recorded_phase(), state)


# Only the gateway host holds its lock (a drain changes nothing elsewhere); no probe.
DRAIN = Entry("drain", drain, locks=gateway_locks)
run_entry(DRAIN)
