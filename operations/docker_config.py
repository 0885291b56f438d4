"""/etc/docker/daemon.json merged into, never overwritten (inventory.daemon_json)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import FunctionCommand, operation
from pyinfra.api.command import FileUploadCommand

from deploys.common import refuse
from facts._shell import quote
from facts.host_state import StackQuery, stack_state
from inventory.daemon_json import (
    DaemonJsonError,
    DaemonJsonWanted,
    merge_daemon_json,
    parse_daemon_json,
    render_daemon_json,
)
from operations.host_files import write_file_command


@operation()
def daemon_json(path: str, wanted: DaemonJsonWanted, query: StackQuery):
    """
    Ensure daemon.json holds gpufleet's keys, keeping every key the user wrote.

    The first change keeps a copy of the user's file as ``daemon.json.before-gpufleet``. A file
    that is not a JSON object stops the host: guessing would lose the user's settings.

    + path: /etc/docker/daemon.json (must be in ``query.files``)
    + wanted: what the fleet file asks for (runtime, default runtime, mirrors, protection)
    + query: the stack's StackQuery

    **Example:**

    .. code:: python

        daemon_json(name="Ensure Docker knows the nvidia runtime",
                    path="/etc/docker/daemon.json", wanted=DaemonJsonWanted(), query=query)
    """
    if path not in query.files:
        raise ValueError(f"{path} is not in the stack query")
    text = stack_state(query).files.get(path)
    try:
        current = parse_daemon_json(text)
    except DaemonJsonError as exc:
        yield FunctionCommand(refuse, (
            f"{path} cannot be merged: {exc}.\n"
            f"Fix the file by hand (it is left untouched), then re-run the deploy.",), {})
        return
    merged = merge_daemon_json(current, wanted)
    if text is not None and merged == current:
        host.noop(f"{path} has the nvidia runtime and gpufleet's settings")
        return
    if text is not None and text.strip():
        backup = quote(path + ".before-gpufleet")
        yield f"[ -e {backup} ] || cp -p {quote(path)} {backup}"
    yield write_file_command(path, render_daemon_json(merged))


@operation()
def image_from_archive(image: str, archive: str, query: StackQuery):
    """
    Ensure a Docker image is present, loading it from a `docker save` archive on the
    controller when it is not (sites without registry access).

    + image: the image reference that must exist (must be in ``query.images``)
    + archive: path of the archive on the controller
    + query: the stack's StackQuery

    **Example:**

    .. code:: python

        image_from_archive(name="Ensure the GPU test image is present",
                           image="nvidia/cuda:12.1.1-base-ubuntu22.04",
                           archive="images/cuda-base.tar", query=query)
    """
    if image not in query.images:
        raise ValueError(f"{image} is not in the stack query")
    if stack_state(query).images.get(image):
        host.noop(f"image {image} is present")
        return
    remote = "/var/tmp/gpufleet-image.tar"
    yield FileUploadCommand(archive, remote)
    yield f"docker load -i {remote} && rm -f {remote}"
