"""What every gpufleet deploy step shares: the host's validated spec and how to stop a host."""

from __future__ import annotations

import logging

from pyinfra import host
from pyinfra.api import FunctionCommand, State, operation
from pyinfra.api.host import Host

from inventory.fleet import HostSpec

logger = logging.getLogger("gpufleet")


def host_spec(current: Host | None = None) -> HostSpec:
    """The validated fleet spec of the host being deployed (set by inventory.py)."""
    current = current or host
    data = current.data.get("gpufleet")
    if data is None:
        raise RuntimeError(
            f"{current.name} has no gpufleet spec: run with the fleet inventory, "
            "`pyinfra inventory.py deploys/gpu_host.py`"
        )
    return HostSpec.model_validate(data)


def refuse(state: State, host: Host, message: str) -> bool:
    """A FunctionCommand body that fails the host with `message` (see stop_host)."""
    for line in message.splitlines():
        host.log_styled(line, fg="red", log_func=logger.error)
    return False  # a failed command: pyinfra stops this host and exits non-zero


@operation(is_idempotent=False)
def stop_host(message: str):
    """
    Stop this host here with a message for the operator; other hosts carry on.

    + message: what is wrong, measured vs required, and how to fix it

    **Example:**

    .. code:: python

        stop_host(
            name="Refuse: the driver is too old for CUDA 12.1",
            message="driver 525.60.13 < 530.30.02 required by CUDA 12.1; use pin set ...",
        )
    """
    yield FunctionCommand(refuse, (message,), {})
