"""Docker's configuration and images: /etc/docker/daemon.json merged into (rules.daemon_json),
and images loaded from `docker save` archives where no registry is reachable.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import uuid
from functools import lru_cache

from pyinfra import host
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand, operation

from facts._shell import quote
from facts.host_state import require_watched
from operations.desired import desired
from operations.host_files import write_file_command
from operations.host_reading import host_state
from operations.messages import fail_host
from rules.daemon_json import (
    DaemonJsonError,
    DaemonJsonWanted,
    merge_daemon_json,
    parse_claims,
    parse_daemon_json,
    render_claims,
    render_daemon_json,
)

logger = logging.getLogger("gpufleet")


@operation()
def daemon_json(path: str, record: str, wanted: DaemonJsonWanted):
    """
    Ensure daemon.json holds what the fleet asks for, keeping every key the user wrote, and
    give back what gpufleet put there earlier and the fleet no longer asks for.

    The first change keeps a copy of the user's file as ``daemon.json.before-gpufleet``. A file
    that is not a JSON object stops the host: guessing would lose the user's settings.

    + path: /etc/docker/daemon.json
    + record: where gpufleet records its claims (the values it owns and what they replaced)
    + wanted: what the fleet file asks for (runtime, default runtime, mirrors, protection)

    **Example:**

    .. code:: python

        daemon_json(name="Ensure Docker knows the nvidia runtime",
                    path="/etc/docker/daemon.json",
                    record="/etc/gpufleet/docker-daemon-json.claims.json",
                    wanted=DaemonJsonWanted())
    """
    require_watched(path)
    require_watched(record)
    state = host_state()
    text = state.content(path)
    try:
        current = parse_daemon_json(text)
        owned = parse_claims(state.content(record))
    except DaemonJsonError as exc:
        yield FunctionCommand(fail_host, (
            f"{path} cannot be merged: {exc}.\n"
            "Fix the file by hand (it is left untouched), then re-run the deploy.",), {})
        return
    merged, claims = merge_daemon_json(current, owned, wanted)
    if text is not None and merged == current and claims == owned:
        host.noop(f"{path} has the nvidia runtime and gpufleet's settings")
        return
    if text is None or merged != current:
        if text is not None and text.strip():
            backup = quote(path + ".before-gpufleet")
            yield f"[ -e {backup} ] || cp -p {quote(path)} {backup}"
        yield write_file_command(path, render_daemon_json(merged))
    if claims != owned:
        yield write_file_command(record, render_claims(path, claims))


def archive_image_id(archive: str, image: str) -> str | None:
    """The id (sha256:...) of ``image`` in a `docker save` archive on the controller, from the
    archive's manifest.json; None when the archive cannot tell (then presence is enough).
    Read once per archive file (a changed file is read again)."""
    try:
        found = os.stat(archive)
    except OSError:
        return None
    return _archive_image_id_of(archive, image, found.st_ino, found.st_size, found.st_mtime_ns)


# Keyed by the archive file's identity (inode, size, mtime) as well: every host's plan asks
# for the same archives, and finding manifest.json reads the headers of the whole archive
# (tens of members over hundreds of MB). A memo of the file's content, not run data.
@lru_cache(maxsize=64)
def _archive_image_id_of(archive: str, image: str, inode: int, size: int,
                         mtime_ns: int) -> str | None:
    return _read_archive_image_id(archive, image)


def _read_archive_image_id(archive: str, image: str) -> str | None:
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            entries = json.load(member) if member else []
    except (OSError, tarfile.TarError, KeyError, ValueError):
        return None
    for entry in entries if isinstance(entries, list) else []:
        if image in (entry.get("RepoTags") or []):
            config = str(entry.get("Config", ""))  # "<hex>.json" or "blobs/sha256/<hex>"
            digest = config.rsplit("/", 1)[-1].removesuffix(".json")
            return f"sha256:{digest}" if len(digest) == 64 else None
    return None


@operation()
def image_from_archive(image: str, archive: str):
    """
    Ensure a Docker image is present, loading it from a `docker save` archive on the
    controller when it is not, or when another image has taken its name (sites without
    registry access).

    + image: the image reference that must exist
    + archive: path of the archive on the controller

    **Example:**

    .. code:: python

        image_from_archive(name="Ensure the GPU test image is present",
                           image="nvidia/cuda:12.1.1-base-ubuntu22.04",
                           archive="images/cuda-base.tar")
    """
    desired().images.add(image)
    state = host_state()
    have, want = state.image_ids.get(image), archive_image_id(archive, image)
    if image in state.images and (want is None or have is None or have == want):
        host.noop(f"image {image} is present")
        return
    if image in state.images:
        host.log_styled(f"{image} is another image ({have}) than the archive's ({want}): "
                        "loading it again", fg="yellow", log_func=logger.warning)
    # A unique name per attempt, removed whatever happens; leftovers of an interrupted
    # upload are removed first.
    remote = f"/var/tmp/gpufleet-image-{uuid.uuid4().hex[:12]}.tar"
    yield StringCommand("rm -f /var/tmp/gpufleet-image-*.tar")
    yield FileUploadCommand(archive, remote)
    yield StringCommand(f"trap 'rm -f {quote(remote)}' EXIT && docker load -i {quote(remote)}")


@operation()
def image_pulled(image: str):
    """
    Ensure a Docker image is present, pulling it from its registry when it is not.

    + image: repository:tag, or repository@sha256:digest (the host then runs exactly that)

    **Example:**

    .. code:: python

        image_pulled(name="Ensure the serving image is present",
                     image="vllm/vllm-openai:v0.4.2")
    """
    desired().images.add(image)
    if image in host_state().images:
        host.noop(f"image {image} is present")
        return
    yield StringCommand(f"docker pull {quote(image)}")
