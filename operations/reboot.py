"""Reboot a host, saying why, and wait until it is back.

pyinfra's server.reboot decides that a host rebooted from /proc/uptime; this one leaves a
token in /run (a tmpfs, empty after every boot) and waits until the token is gone and systemd
reports the boot finished, which also holds where uptime is not the host's own (containers).
"""

from __future__ import annotations

import logging
import time
import uuid

from pyinfra.api import FunctionCommand, OperationValueError, State, StringCommand, operation
from pyinfra.api.host import Host
from pyinfra.connectors.ssh import SSHConnector

from operations.messages import tell

logger = logging.getLogger("gpufleet")

TOKEN_PATH = "/run/gpufleet-reboot-token"


def reboot_line(reasons: list[str]) -> str:
    """The one line a reboot logs: every reason it serves (the deploy reboots once for all of
    them), in order, each once."""
    return "rebooting: " + "; ".join(dict.fromkeys(reasons))


def _booted(target: Host, token: str) -> bool:
    probe = StringCommand(
        f"if [ \"$(cat {TOKEN_PATH} 2>/dev/null)\" = {token} ]; then echo not-yet; fi; "
        "systemctl is-system-running 2>/dev/null || true"
    )
    try:
        ok, output = target.run_shell_command(probe, _timeout=20)
    except Exception:  # the connection died with the old boot
        return False
    lines = [line.strip() for line in output.stdout_lines]
    return bool(ok) and "not-yet" not in lines and any(
        line in ("running", "degraded") for line in lines)


def wait_for_boot(state: State, host: Host, token: str, delay: int, timeout: int) -> bool:
    """Poll until the host booted again (FunctionCommand body: pyinfra passes `state` and
    `host` by these names); False after `timeout`."""
    target = host
    started = time.monotonic()
    time.sleep(delay)
    deadline = started + delay + timeout
    while time.monotonic() < deadline:
        if _booted(target, token):
            target.log_styled(f"back after the reboot ({time.monotonic() - started:.0f} s)",
                              fg="green", log_func=logger.warning)
            return True
        if isinstance(target.connector, SSHConnector):
            # An SSH session does not survive the reboot: open a new one. (Connectors that
            # start a process per command, like docker exec, need nothing.)
            target.disconnect()
            target.connect(show_errors=False)
        time.sleep(2)
    target.log_styled(f"did not come back within {timeout} s after the reboot", fg="red",
                     log_func=logger.error)
    return False


@operation(is_idempotent=False)
def rebooted(reasons: list[str], timeout: int = 900, delay: int = 5):
    """
    Reboot the host, saying why, and wait until it is back.

    The deploy decides before execution whether a reboot is due (and shows it in the preview);
    tie it to the change that causes it with ``_if=install.did_change``. Pass ``_serial=True``
    so that hosts reboot one at a time.

    + reasons: why the reboot is needed (printed on one line when it happens; must not be
      empty)
    + timeout: seconds to wait for the host to come back
    + delay: seconds before the first check

    **Example:**

    .. code:: python

        rebooted(name="Reboot to load driver 535.183.06",
                 reasons=["driver 535.161.08 -> 535.183.06 installed"],
                 _if=driver_install.did_change, _serial=True)
    """
    if not reasons:
        raise OperationValueError("a reboot needs a reason")
    token = uuid.uuid4().hex
    yield FunctionCommand(tell, (reboot_line(reasons),), {})
    yield StringCommand(f"echo {token} > {TOKEN_PATH}")
    yield StringCommand(
        "nohup sh -c 'sleep 2; systemctl reboot || reboot' </dev/null >/dev/null 2>&1 &")
    yield FunctionCommand(wait_for_boot, (token, delay, timeout), {})
    # Nothing read before the reboot holds now; facts.host_state re-reads after any change.
