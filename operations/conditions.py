"""Operations that follow a change: run only when an earlier operation changed the host.

The preview (pyinfra without -y) already knows which operations will change something; a
follower of operations that will not is left out, so the preview never lists a restart or a
reboot that cannot happen. Otherwise (and always with -y, where nothing is known before
execution) the follower is added with ``_if``: pyinfra shows it as a conditional change tied
to its cause, and runs it only if the cause did change the host.
"""

from __future__ import annotations

from typing import Any

from pyinfra.api.operation import OperationMeta

from operations.pyinfra_adapter import change_detected


def may_change(op: OperationMeta) -> bool:
    """False only when the change-detection pass found that ``op`` changes nothing."""
    # None means the detection was not run (-y).
    return change_detected(op) is not False


def after_change(*ops: OperationMeta) -> dict[str, Any] | None:
    """Global arguments for a follower of ``ops``; None when none of them can change."""
    causes = [op for op in ops if may_change(op)]
    if not causes:
        return None
    return {"_if": lambda: any(op.did_change() for op in causes)}
