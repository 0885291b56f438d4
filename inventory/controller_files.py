"""Every file gpufleet writes on the controller is written whole or not at all.

A run cut short (Ctrl-C, a killed CI job, a full disk, a power cut) must never leave a
truncated manifest, audit or cache behind for the next run to trust: the content goes to a
temporary file in the same folder, is flushed to disk, and is renamed over the old file, which
POSIX makes atomic. The folder is flushed too, so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path | str, content: str | bytes, mode: int | None = None) -> None:
    """Replace `path` with `content` in one step. `mode` defaults to the old file's mode, or
    0644 for a new file; 0600 keeps a secret unreadable from its first byte on disk."""
    target = Path(path)
    data = content.encode() if isinstance(content, str) else content
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                         suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # a folder that cannot be opened for reading: the rename stands, unflushed
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems refuse fsync on a folder
    finally:
        os.close(descriptor)
