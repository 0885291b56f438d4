"""What an operation says to the operator while it runs: FunctionCommand bodies that log a
line on the host's output (pyinfra hides commands' own output unless asked with -v)."""

from __future__ import annotations

import logging

from pyinfra.api import State
from pyinfra.api.host import Host

logger = logging.getLogger("gpufleet")


def tell(state: State, host: Host, message: str, color: str = "yellow") -> bool:
    """Say ``message`` for this host (at execution only: the preview runs no command)."""
    for line in message.splitlines():
        host.log_styled(line, fg=color, log_func=logger.warning)
    return True


def fail_host(state: State, host: Host, message: str) -> bool:
    """Fail the host with ``message`` in red: pyinfra stops this host and exits non-zero."""
    for line in message.splitlines():
        host.log_styled(line, fg="red", log_func=logger.error)
    return False
