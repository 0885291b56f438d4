"""systemd services of the NVIDIA stack, compared with the stack state (no extra fact)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from facts._shell import quote
from facts.host_state import StackQuery, stack_state


@operation()
def service(unit: str, query: StackQuery, enabled: bool = True, running: bool = True):
    """
    Ensure a systemd service is enabled at boot and running.

    + unit: the unit name without .service (must be in ``query.services``)
    + query: the stack's StackQuery
    + enabled: enable it at boot
    + running: start it now (a unit that needs the driver loaded: only after any reboot)

    **Example:**

    .. code:: python

        service(name="Ensure the NVIDIA persistence daemon runs", unit="nvidia-persistenced",
                query=query)
    """
    if unit not in query.services:
        raise ValueError(f"{unit} is not in the stack query")
    state = stack_state(query).service(unit)
    if enabled and not state.is_enabled:
        yield f"systemctl enable {quote(unit)}"
    if running and not state.is_active:
        yield f"systemctl start {quote(unit)}"
    if (not enabled or state.is_enabled) and (not running or state.is_active):
        host.noop(f"{unit} is " + " and ".join(
            w for w, on in (("enabled", enabled), ("running", running)) if on))
