"""Drift audit: is every host still what its last converge made it, and what the fleet file
says now? Read-only: one remote command per host (the probe with its state read).

    pyinfra -y inventory.py deploys/audit.py

Compares each host's manifest (/etc/gpufleet/manifest.json) with the host as it is: pinned
package versions and holds, managed files changed by hand (with when), services down, images
replaced or gone, the loaded driver module against the installed driver, weights changed since
verified, and the pins the fleet file asks for now. Prints one table for the fleet (host x
area) when pyinfra is done, writes fleet-state/<fleet>/audit.json for machines, and fails every
drifted host, so the exit status is non-zero when anything drifted. The deploy
(deploys/gpu_host.py) brings drifted hosts back.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path

from pyinfra import host

from deploys.runner import Entry, EntryRun, run_entry
from facts.weights_files import WeightsListing
from inventory.controller_files import write_atomically
from operations.checks import refuse_host
from operations.host_reading import host_state
from operations.run_context import run_context
from rules.manifest import (
    MANIFEST_PATH,
    Drift,
    audit_json,
    drift,
    parse_manifest,
    pins_digest,
    render_audit_table,
)
from rules.monitoring import is_monitor

logger = logging.getLogger("gpufleet")


def report(results: dict[str, list[Drift]], path: Path) -> None:
    """At exit: the fleet's table, and the JSON beside the host manifests."""
    print("\n--> Drift audit\n" + render_audit_table(results))
    write_atomically(path, audit_json(results))
    print(f"    (JSON: {path})")


def fleet_results(state_dir: Path) -> dict[str, list[Drift]]:
    """Every host's drift, one table for the run. In the run's context: pyinfra runs this
    file once per host, each time with fresh module globals."""
    context = run_context(host.state)
    if context.audit is None:
        context.audit = {}
        atexit.register(report, context.audit, state_dir / "audit.json")
    return context.audit


def audit(run: EntryRun) -> None:
    """Compare the host with its manifest; fail it when anything drifted."""
    spec = run.spec
    if run.probe is None:  # the monitoring host: its state read alone (no GPU to probe)
        state, weights = host_state(), WeightsListing("absent")
    else:
        state, weights = run.probe.state, run.probe.weights
    found = drift(parse_manifest(state.content(MANIFEST_PATH)), state, weights,
                  pins_digest(spec.pins), spec.pin_set_name)
    fleet_results(spec.state_dir)[spec.name] = found
    if found:
        refuse_host(name="Drift: the host is not what its last converge made it",
                    message="\n".join(f"{d.area}: {d.what}" + (f" (since {d.since})" if d.since
                                                               else "") for d in found)
                    + "\nrun `pyinfra inventory.py deploys/gpu_host.py` to bring it back")
    else:
        host.noop("no drift")


# Read-only: no run lock; a GPU host is read with the probe, the monitoring host's state alone.
AUDIT = Entry("audit", audit, probes=lambda spec, fleet: not is_monitor(spec))
run_entry(AUDIT)
