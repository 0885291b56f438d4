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

from deploys.preflight import read_host
from deploys.spec import host_spec
from facts.host_state import host_state
from facts.weights_files import WeightsListing
from operations.checks import refuse_host
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
RESULTS: dict[str, list[Drift]] = {}
REPORTS: list[Path] = []


def report() -> None:
    """At exit: the fleet's table, and the JSON beside the host manifests."""
    if not RESULTS:
        return
    print("\n--> Drift audit\n" + render_audit_table(RESULTS))
    for path in REPORTS[:1]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(audit_json(RESULTS))
        print(f"    (JSON: {path})")


spec = host_spec()
if is_monitor(spec):
    state, weights = host_state(), WeightsListing("absent")
else:
    probe = read_host(spec)
    state, weights = probe.state, probe.weights
found = drift(parse_manifest(state.content(MANIFEST_PATH)), state, weights,
              pins_digest(spec.pins), spec.pin_set_name)
if not RESULTS:
    atexit.register(report)
    REPORTS.append(spec.state_dir / "audit.json")
RESULTS[spec.name] = found
if found:
    refuse_host(name="Drift: the host is not what its last converge made it",
                message="\n".join(f"{d.area}: {d.what}" + (f" (since {d.since})" if d.since
                                                           else "") for d in found)
                + "\nrun `pyinfra inventory.py deploys/gpu_host.py` to bring it back")
else:
    host.noop("no drift")
