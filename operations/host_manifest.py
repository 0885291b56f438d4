"""The host manifest: the last operation of a converge (what the run made the host be)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import operation

from inventory.controller_files import write_atomically
from operations.desired import desired
from operations.host_files import write_file_command
from operations.host_reading import host_state
from rules.manifest import (
    MANIFEST_PATH,
    carry_over,
    comparable,
    parse_manifest,
    render_manifest,
)


@operation()
def host_manifest(meta: dict[str, Any], controller_copy: str, partial: bool = False):
    """
    Ensure the host's manifest records what this run made it be; keep a copy on the controller.

    Runs last: what every earlier operation recorded (``desired()``), with the versions and
    image ids the host has now, and ``meta`` (pin set, engine, lock and weights digests). The
    file changes only when its content does (its ``written_at`` aside), so a run that changes
    nothing leaves it alone. At execution the controller's copy (``controller_copy``,
    fleet-state/<fleet>/<host>.json) is brought up to date as well.

    + meta: the plan's part of the manifest (JSON values)
    + controller_copy: path on the controller
    + partial: the run took only some steps (deploys/serve.py): the entries of the others are
      kept as the host's current manifest records them

    **Example:**

    .. code:: python

        host_manifest(name="Ensure the host manifest records this converge",
                      meta={"pin_set": "r535-cuda121"},
                      controller_copy="fleet-state/sim/gpu-01.json")
    """
    state = host_state()
    record = desired()
    body = {
        **meta,
        "packages": {name: {"version": version or state.installed.get(name),
                            "held": name in record.held}
                     for name, version in sorted(record.packages.items())},
        "files": dict(sorted(record.files.items())),
        "services": sorted(record.services),
        "images": {ref: state.image_ids.get(ref) for ref in sorted(record.images)},
        "keyrings": dict(sorted(record.keyrings.items())),
    }
    current = parse_manifest(state.content(MANIFEST_PATH))
    if partial:
        body = carry_over(current, body)
    if comparable(current) == comparable(parse_manifest(render_manifest(body))):
        assert current is not None
        _keep_copy(controller_copy, render_manifest({k: v for k, v in current.items()
                                                     if k != "gpufleet_manifest"}))
        host.noop(f"{MANIFEST_PATH} is up to date")
        return
    when = datetime.fromtimestamp(state.now or 0, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    content = render_manifest({**body, "written_at": when})
    _keep_copy(controller_copy, content)
    yield write_file_command(MANIFEST_PATH, content)


def _keep_copy(path: str, content: str) -> None:
    """The controller's copy, written at execution only (the preview changes nothing)."""
    if not host.state.is_executing:
        return
    target = Path(path)
    if target.exists() and target.read_text() == content:
        return
    write_atomically(target, content)
