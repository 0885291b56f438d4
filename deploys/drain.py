"""Take hosts out of the gateway, or put them all back (rolling rebuilds use it per batch).

    pyinfra -y inventory.py deploys/drain.py --data drain=gpu-03,gpu-04   # out of the gateway
    pyinfra -y inventory.py deploys/drain.py --data drain=                # everyone back

Acts on the monitoring host's gateway only: records the drained hosts
(/var/lib/gpufleet/drained.json, which the main deploy keeps) and routes around them: render,
`nginx -t`, atomic rename, graceful reload, so requests in flight on a drained host finish.
"""

from __future__ import annotations

from pyinfra import host

from deploys.monitoring_host import gateway, recorded_phase
from deploys.spec import fleet_specs, host_spec
from operations.checks import refuse_host
from operations.host_files import managed_file
from rules.gateway import DRAIN_STATE, render_drained
from rules.monitoring import is_monitor

spec = host_spec()
fleet = fleet_specs()
raw = host.data.get("drain")
names = frozenset(n.strip() for n in str(raw or "").split(",") if n.strip())
unknown = sorted(names - {s.name for s in fleet if s.settings.role == "gpu"})
if not (is_monitor(spec) and spec.settings.gateway.enabled):
    host.noop("no gateway on this host")
elif raw is None or unknown:
    refuse_host(name="Refuse: which hosts to drain?",
                message=(f"not GPU hosts of this fleet: {', '.join(unknown)}; " if unknown
                         else "") + "--data drain=HOST,HOST (or drain= to put every host back)")
else:
    managed_file(name="Record the drained hosts: " + (", ".join(sorted(names)) or "none"),
                 path=DRAIN_STATE, content=render_drained(names) if names else None)
    gateway(spec, fleet, recorded_phase(), drained=names)
