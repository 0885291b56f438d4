"""pyinfra inventory for gpufleet: `pyinfra inventory.py deploys/gpu_host.py`.

Reads the fleet file named by $GPUFLEET_FLEET (default inventory/fleet.toml), validates all of
it, and exposes one pyinfra group per fleet group. A fleet file with mistakes stops here, with
one line per problem and no host contacted.
"""

import sys

from inventory.fleet import FleetError, fleet_path_from_env, load_fleet

try:
    _fleet = load_fleet(fleet_path_from_env())
except FleetError as _error:
    print(f"gpufleet: the fleet file has {len(_error.lines)} problem(s); no host was contacted:",
          file=sys.stderr)
    for _line in _error.lines:
        print(f"  - {_line}", file=sys.stderr)
    raise SystemExit(2) from None

# pyinfra takes every public module-level list/tuple as a group of hosts.
globals().update(_fleet.pyinfra_groups())
