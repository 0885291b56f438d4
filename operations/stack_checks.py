"""Checks that must run at execution time, when earlier operations have done their work."""

from __future__ import annotations

from collections.abc import Callable

from pyinfra import host
from pyinfra.api import FunctionCommand, operation

from deploys.common import refuse


@operation()
def check(verdict: Callable[[], tuple[str | None, str]]):
    """
    Stop the host when ``verdict()`` (called at execution time) returns a refusal message.

    ``verdict`` returns ``(refusal or None, what was checked)``; the second part is the
    "No changes" note of a passing check.

    **Example:**

    .. code:: python

        check(name="Ensure the installed driver supports CUDA 12.1",
              verdict=lambda: (None, "driver 535.183.06 >= 530.30.02"))
    """
    message, note = verdict()
    if message:
        yield FunctionCommand(refuse, (message,), {})
    else:
        host.noop(note)
