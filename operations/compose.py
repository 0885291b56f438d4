"""The serving engine's Compose project under its systemd unit: started, or brought up to the
current compose file (Compose recreates only the services whose definition changed)."""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import OperationValueError, StringCommand, operation

from facts._shell import quote
from facts.host_state import require_watched
from operations.host_files import write_file_command
from operations.host_reading import host_state


@operation()
def compose_applied(unit: str, compose: str, project: str, compose_path: str, stamp: str,
                    digest: str):
    """
    Ensure the unit runs the current compose file.

    Not active: start the unit (it brings the project up). Active with another compose file
    than the one last applied: bring the project up again, which recreates only the services
    whose definition changed; no `daemon-reload`, no restart of Docker or of other replicas
    that did not change. The applied file's digest is recorded in ``stamp``.

    + unit: the systemd unit (without .service)
    + compose: how to call Compose: "/usr/bin/docker-compose" or "/usr/bin/docker compose"
    + project / compose_path: the Compose project name and file
    + stamp: file recording the digest of the compose file last applied
    + digest: the current compose file's digest (rules.serving.compose_digest: with its API key's)

    **Example:**

    .. code:: python

        compose_applied(name="Ensure the engine runs the current compose file",
                        unit="gpufleet-inference", compose="/usr/bin/docker-compose",
                        project="gpufleet-inference",
                        compose_path="/etc/gpufleet/inference/docker-compose.yml",
                        stamp="/etc/gpufleet/inference/applied.digest", digest="3f2a...")
    """
    require_watched(stamp)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", project):
        raise OperationValueError(f"not a Compose project name: {project!r}")
    if compose not in ("/usr/bin/docker-compose", "/usr/bin/docker compose"):
        raise OperationValueError(f"unknown Compose command: {compose!r}")
    state = host_state()
    active = state.service(unit).is_active
    applied = (state.content(stamp) or "").strip()
    if active and applied == digest:
        host.noop(f"{unit} runs the current compose file")
        return
    if not active:
        yield StringCommand(f"systemctl start {quote(unit)}")
    else:
        yield StringCommand(f"{compose} --project-name {quote(project)} --file "
                            f"{quote(compose_path)} up --detach --remove-orphans")
    yield write_file_command(stamp, digest + "\n")
