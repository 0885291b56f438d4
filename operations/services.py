"""systemd services, compared with the one state read (no extra fact)."""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import OperationValueError, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server

from facts._shell import quote
from operations.conditions import after_change
from operations.desired import desired
from operations.host_reading import host_state


def require_unit_name(unit: str) -> None:
    """The unit goes into a command line: anything but a unit name is an argument error."""
    if not re.fullmatch(r"[A-Za-z0-9@._-]+", unit):
        raise OperationValueError(f"not a systemd unit name: {unit!r}")


@operation()
def service(unit: str, enabled: bool = True, running: bool = True):
    """
    Ensure a systemd service is enabled at boot and running.

    + unit: the unit name without .service
    + enabled: enable it at boot
    + running: start it now (a unit that needs the driver loaded: only when no reboot is due)

    **Example:**

    .. code:: python

        service(name="Ensure the NVIDIA persistence daemon runs", unit="nvidia-persistenced")
    """
    require_unit_name(unit)
    if running or enabled:  # enabled at boot: running once the host is up
        desired().services.add(unit)
    state = host_state().service(unit)
    todo = []
    if enabled and not state.is_enabled:
        todo.append(f"systemctl enable {quote(unit)}")
    if running and not state.is_active:
        if state.active in ("failed", "activating"):
            # A unit that failed (or is restarting after failures) may have hit systemd's
            # start limit, which refuses a plain start ("Start request repeated too quickly"):
            # an exporter that gave up at boot while what it watches was down, say.
            todo.append(f"systemctl reset-failed {quote(unit)}")
        todo.append(f"systemctl start {quote(unit)}")
    if not todo:
        host.noop(f"{unit} is " + " and ".join(
            w for w, on in (("enabled", enabled), ("running", running)) if on))
        return
    yield from todo


@operation()
def service_stopped(unit: str):
    """
    Ensure a systemd service is stopped and not started at boot; its unit file stays, so that
    turning it on again is one run, and what it keeps on disk (volumes, weights) is untouched.

    + unit: the unit name without .service

    **Example:**

    .. code:: python

        service_stopped(name="Ensure no engine runs on this host", unit="gpufleet-inference")
    """
    require_unit_name(unit)
    state = host_state().service(unit)
    todo = []
    if state.enabled == "enabled":
        todo.append(f"systemctl disable {quote(unit)}")
    if state.active in ("active", "activating", "reloading"):
        todo.append(f"systemctl stop {quote(unit)}")
    if not todo:
        host.noop(f"{unit} is stopped" + ("" if state.enabled else " (not installed)"))
        return
    yield from todo


def restarted_after(unit: str, *causes: OperationMeta) -> None:
    """Restart ``unit`` when one of ``causes`` changed it (its command line, its image)."""
    follow = after_change(*causes)
    if follow is not None:
        server.shell(name=f"Restart {unit} with its new command line",
                     commands=[f"systemctl restart {quote(unit)}"], **follow)


def reloaded_after(unit: str, *causes: OperationMeta) -> None:
    """Reload ``unit`` (graceful) when one of ``causes`` changed its configuration."""
    follow = after_change(*causes)
    if follow is not None:
        server.shell(name=f"Reload {unit} (graceful: nothing in flight is dropped)",
                     commands=[f"systemctl reload {quote(unit)}"], **follow)
