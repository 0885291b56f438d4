"""Model weights on a host: pushed from the controller, downloaded from a hub, recorded, and
verified against their manifest (templates/weights/weights_tool.py runs on the host).

What to push, download or hash again is decided by the deploy from the probe's listing
(rules.checkpoint); these operations do it, and say how far they got.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from pyinfra.api import (
    FileUploadCommand,
    FunctionCommand,
    OperationValueError,
    State,
    StringCommand,
    operation,
)
from pyinfra.api.host import Host

from facts._shell import quote
from facts.weights_files import MANIFEST_DIR
from operations.apt_pins import with_env_file
from operations.disk_guard import guarded, space_checked
from operations.messages import tell
from rules.checkpoint import PARTIAL, TOOL, manifest_path, name_problem, progress_line
from rules.disk_space import SpaceNeed

_EOF = "GPUFLEET_WEIGHTS_TOOL"


def tool_command(*args: str) -> StringCommand:
    """Run the weights tool on the host with python3, its source on standard input."""
    source = TOOL.read_text()
    if _EOF in source:
        raise OperationValueError("the weights tool must not contain its own heredoc marker")
    return StringCommand(
        "python3 - " + " ".join(quote(a) for a in args) + f" <<'{_EOF}'\n{source}\n{_EOF}")


def _absolute(folder: str) -> None:
    if not PurePosixPath(folder).is_absolute():
        raise OperationValueError(f"the weights folder must be absolute, got {folder!r}")


@operation(is_idempotent=False)
def weights_recorded(folder: str, model_id: str):
    """
    Record a manifest for weights already at ``folder`` (sha256 of every file), trusting them.

    The deploy calls this only when the folder has no manifest yet (settings.weights.source =
    "present"); later runs verify against what it recorded.

    + folder: the weights folder on the host
    + model_id: the catalog model the weights are, written into the manifest

    **Example:**

    .. code:: python

        weights_recorded(name="Record a manifest of the weights", folder="/srv/models/m",
                         model_id="deepseek-r1-distill-qwen-7b")
    """
    _absolute(folder)
    yield tool_command("record", folder, model_id)


@operation(is_idempotent=False)
def weights_verified(folder: str, names: list[str]):
    """
    Ensure the named files match the manifest beside them (sha256), and record them verified.

    Fails the host, naming every bad file, when one differs: before any engine restart.

    + folder: the weights folder on the host
    + names: files to hash again (the deploy picks those whose size or mtime moved)

    **Example:**

    .. code:: python

        weights_verified(name="Ensure the changed weights files match their manifest",
                         folder="/srv/models/m", names=["model-00001-of-00002.safetensors"])
    """
    _absolute(folder)
    if not names:
        raise OperationValueError("nothing to verify: the deploy leaves this operation out")
    yield tool_command("verify", folder, *names)


def _progress(state: State, host: Host, done: int, total: int, started: list[float],
              name: str) -> bool:
    """FunctionCommand body: bytes pushed so far, and the rate and time left once trusted."""
    if not started:
        started.append(time.monotonic())
        return True
    line = progress_line(done, total, done, time.monotonic() - started[0])
    return tell(state, host, f"weights: {name} pushed, {line}", color="green")


def _space(folder: str, need: int, how: str, partials: tuple[str, ...] = ()) -> SpaceNeed:
    return SpaceNeed(path=folder, what="the weights", setting="settings.weights_path",
                     need=need, how=how, partials=partials)


@operation(is_idempotent=False)
def weights_pushed(src: str, folder: str, files: Mapping[str, int], manifest: str):
    """
    Push weights files from a folder on the controller, each to a temporary name, then move
    them all into place (and the new manifest last) once every one is complete and matches the
    manifest's sha256: a push that fails leaves the previous files and manifest as they were.

    Before writing, the filesystem that holds ``folder`` must have room for the files (the old
    ones stay until the end); a disk that fills anyway (ENOSPC) fails the host with the same
    kind of message, the partial files removed.

    + src: the folder on the controller
    + folder: the weights folder on the host
    + files: name -> size of the files to push (the deploy picks the missing or different;
      a complete NAME.gpufleet-partial left by an interrupted push is not pushed again)
    + manifest: the manifest of the whole folder (names, sizes, sha256)

    **Example:**

    .. code:: python

        weights_pushed(name="Push the weights", src="models/qwen7b", folder="/srv/models/m",
                       files={"config.json": 680}, manifest='{"files": {...}}')
    """
    _absolute(folder)
    for name in files:
        problem = name_problem(name)
        if problem:
            raise OperationValueError(f"not a file inside the folder: {name!r} {problem}")
    total = sum(files.values())
    staged = {name: f"{folder}/{name}{PARTIAL}" for name in sorted(files)}
    staged_manifest = f"{manifest_path(folder)}{PARTIAL}"
    need = _space(folder, total + len(manifest.encode()), "the files to push",
                  (*staged.values(), staged_manifest))
    # A full disk removes the partial files; another failure keeps them for the next run,
    # which does not push a complete one again (rules.checkpoint.to_push).
    cleanup = "rm -f " + " ".join(quote(p) for p in (*staged.values(), staged_manifest))
    yield space_checked(need)
    started: list[float] = []
    yield FunctionCommand(_progress, (0, total, started, "start"), {})
    done = 0
    for name, size in sorted(files.items()):
        parent = quote(str(PurePosixPath(staged[name]).parent))
        # rm: the upload must not write through a link planted at the partial name.
        yield guarded(StringCommand(f"install -d -m 0755 {parent} && rm -f "
                                    f"{quote(staged[name])}"), need, cleanup)
        yield guarded(FileUploadCommand(str(Path(src) / name), staged[name]), need, cleanup)
        done += size
        yield FunctionCommand(_progress, (done, total, started, name), {})
    yield guarded(StringCommand(f"install -d -m 0755 {quote(f'{folder}/{MANIFEST_DIR}')}"),
                  need, cleanup)
    yield guarded(FileUploadCommand(io.BytesIO(manifest.encode()), staged_manifest), need,
                  cleanup)
    yield guarded(tool_command("commit", folder), need, cleanup)


@operation(is_idempotent=False)
def weights_downloaded(folder: str, endpoint: str, repo: str, revision: str,
                       token_path: str | None = None, env_file: str | None = None):
    """
    Download a model from a hub at a pinned revision into ``folder``, resumably, checking
    each large file against the sha256 the hub publishes; writes the manifest.

    + folder: the weights folder on the host
    + endpoint: the hub's address (the public hub or a mirror)
    + repo: the model repository, e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-7B
    + revision: the commit id (a branch name would move)
    + token_path: a root-only file on the host holding the hub token, or None
    + env_file: a VAR=value file on the host sourced first (proxies)

    **Example:**

    .. code:: python

        weights_downloaded(name="Download the weights", folder="/srv/models/m",
                           endpoint="https://hub.example.internal",
                           repo="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                           revision="0123456789abcdef0123456789abcdef01234567")
    """
    _absolute(folder)
    args = ["hub", folder, endpoint, repo, revision, *([token_path] if token_path else [])]
    command = tool_command(*args)
    # The tool checks the space once it has the hub's listing, and says what it needed.
    yield guarded(StringCommand(f"install -d -m 0755 {quote(folder)} && "
                                + with_env_file(command.get_raw_value(), env_file)),
                  _space(folder, 0, "the files to download"))
