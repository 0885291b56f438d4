"""The validated fleet spec of the host being deployed (inventory.py puts it in host.data)."""

from __future__ import annotations

from pyinfra import host, inventory
from pyinfra.api.host import Host

from inventory.fleet import HostSpec
from operations.run_context import run_context


def host_spec(current: Host | None = None) -> HostSpec:
    """The host's HostSpec; a clear error when pyinfra runs without the fleet inventory."""
    current = current or host
    data = current.data.get("gpufleet")
    if data is None:
        raise RuntimeError(
            f"{current.name} has no gpufleet spec: run with the fleet inventory, "
            "`pyinfra inventory.py deploys/gpu_host.py`"
        )
    # Validated once per host and run (HostSpec is frozen): kept in the run's context with the
    # data it was validated from, and validated again should that data differ.
    state = getattr(current, "state", None)
    memo = run_context(state).host_specs if state is not None else {}
    known = memo.get(current.name)
    if known is not None and known[0] == data:
        return known[1]
    spec = HostSpec.model_validate(data)
    memo[current.name] = (data, spec)
    return spec


def fleet_specs() -> list[HostSpec]:
    """Every host of the fleet inventory, in the fleet file's order (validated once per run):
    what a monitoring host scrapes and its gateway routes to, whatever `--limit` selects."""
    fleet = run_context(host.state).fleet
    if not fleet:
        fleet.extend(HostSpec.model_validate(h.data.get("gpufleet")) for h in inventory
                     if h.data.get("gpufleet") is not None)
    return list(fleet)
