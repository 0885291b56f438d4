"""Operations of the host-side Python environment: install a lock into a fresh venv and swap.

Public API
----------
``locked_venv(...)``: build a venv beside the live one from a hash-locked requirements file,
verify it, then point the venv path (a symlink) at it.
``InstallSource``: where pip takes the files from (an index, or a pushed wheelhouse).
"""

from __future__ import annotations

import io
import json
import re
import shlex
from collections.abc import Generator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationValueError, StringCommand, operation

from facts.venv_state import MARKER_NAME, VERIFY_SCRIPT, PythonEnvState, WheelhouseFiles
from operations.disk_guard import guarded, space_checked
from rules.disk_space import venv_need
from rules.python_env_plan import InstallSource, summary
from rules.render import render

TEMPLATE = "python_env/install.sh.j2"


def _pip_args(source: InstallSource) -> list[str]:
    args: list[str] = []
    if source.wheels is not None:
        args += ["--no-index", "--find-links", str(source.host_wheelhouse)]
    elif source.index_url:
        args += ["--index-url", source.index_url]
    if source.cert:
        args += ["--cert", source.cert]
    return args


@operation(is_idempotent=False)
def locked_venv(
    path: str,
    new: str,
    interpreter: str,
    lock_file: Path,
    lock_label: str,
    marker: Mapping[str, Any],
    source: InstallSource,
) -> Generator[Any, None, None]:
    """
    Build a venv at ``new`` from a hash-locked requirements file, verify it, point ``path`` at it.

    + path: the venv path users run (a symlink gpufleet manages, e.g. /opt/gpufleet/venv)
    + new: the folder to build in, beside the live one (never the live one)
    + interpreter: the host's Python to create the venv with, e.g. ``python3.11``
    + lock_file: the lock on the controller (pip requirements, every line hashed)
    + lock_label: how messages name the lock, e.g. ``torch210-cu121/cp311-x86_64.txt``
    + marker: written into the venv once verified (lock digest + what verify.py checks)
    + source: the index or the pushed wheelhouse pip installs from, proxies and CA bundle

    The deploy decides whether to call this (the marker's digest differs from the lock's, or the
    live venv fails verification); called, it always rebuilds. pip runs with ``--require-hashes
    --no-deps --only-binary :all:`` and ignores the host's pip configuration. The old venv
    stays live until the new one imports and verifies; the one before it is removed.

    Before writing anything, the filesystem of ``new`` must have room for it (rules.disk_space
    .venv_need: the wheels' sizes with a wheelhouse, else the live venv's size); a disk that
    fills anyway fails the host with the same kind of message, the half-built venv removed.

    **Example:**

    .. code:: python

        locked_venv(
            name="Ensure the torch210-cu121 environment is installed at /opt/gpufleet/venv",
            path="/opt/gpufleet/venv",
            new="/opt/gpufleet/venv.3f2a9c1b07de",
            interpreter="python3.11",
            lock_file=Path("inventory/locks/torch210-cu121/cp311-x86_64.txt"),
            lock_label="torch210-cu121/cp311-x86_64.txt",
            marker={"lock": "torch210-cu121", "digest": "3f2a...", "dists": {...}},
            source=InstallSource(),
        )
    """
    if not re.fullmatch(r"[A-Za-z0-9._/+-]+", lock_label):
        raise OperationValueError(f"lock_label {lock_label!r}: letters, digits, . _ / + - only")
    if PurePosixPath(new).parent != PurePosixPath(path).parent or new == path:
        raise OperationValueError(f"new ({new}) must be a sibling of path ({path})")
    parent = str(PurePosixPath(path).parent)
    q = shlex.quote

    push: list[Path] = []
    wheelhouse = None
    if source.wheels is not None:
        wheelhouse = source.host_wheelhouse
        if not wheelhouse:
            raise OperationValueError("a wheelhouse install needs host_wheelhouse")
        # What an earlier (maybe interrupted) push left there; pip re-checks every hash.
        present = host.get_fact(WheelhouseFiles, path=wheelhouse)
        push = [wheel for wheel in source.wheels
                if present.get(wheel.name) != wheel.stat().st_size]
    # Nothing is written before the new venv (and the wheels to push) fit beside the live one.
    need = venv_need(path, new, None if source.wheels is None else
                     [wheel.stat().st_size for wheel in source.wheels],
                     [wheel.stat().st_size for wheel in push])
    yield space_checked(need)

    yield StringCommand("mkdir", "-p", q(parent))
    if source.wheels is not None and wheelhouse:
        yield StringCommand("mkdir", "-p", q(wheelhouse))
        for wheel in push:
            # A wheel cut short by a full disk is removed (its size would not match anyway).
            target = f"{wheelhouse}/{wheel.name}"
            yield guarded(FileUploadCommand(str(wheel), target), need, f"rm -f {q(target)}")

    requirements = f"{new}.requirements.txt"
    marker_path = f"{new}.marker.json"
    verify_path = f"{new}.verify.py"
    cleanup = f"rm -f {q(requirements)} {q(marker_path)} {q(verify_path)}"
    yield guarded(FileUploadCommand(str(lock_file), requirements), need, cleanup)
    yield guarded(FileUploadCommand(io.BytesIO(json.dumps(marker, sort_keys=True).encode()),
                                    marker_path), need, cleanup)
    yield guarded(FileUploadCommand(str(VERIFY_SCRIPT), verify_path), need, cleanup)

    # The script removes the half-built venv itself when anything fails (a full disk too).
    yield guarded(StringCommand(render(TEMPLATE, **{
        "path": q(path),
        "new": q(new),
        "requirements": q(requirements),
        "marker": q(marker_path),
        "verify": q(verify_path),
        "interpreter": q(interpreter),
        "env_file": q(source.env_file) if source.env_file else "",
        "pip_args": " ".join(q(arg) for arg in _pip_args(source)),
        "wheelhouse": q(source.host_wheelhouse or "") if source.wheels is not None else "",
        "lock_label": lock_label,
        "marker_name": MARKER_NAME,
    })), need)


@operation(is_idempotent=False)
def report_environment(path: str, candidates: tuple[str, ...]) -> Generator[Any, None, None]:
    """
    Log what the freshly built environment reports (Python, torch, CUDA, transformers, GPUs).

    + path: the venv path
    + candidates: interpreter names, as given to the PythonEnvState fact

    Reads the host only when executing (never in the change-detection pass) and changes nothing.

    **Example:**

    .. code:: python

        report_environment(name="Report the Python environment",
                           path="/opt/gpufleet/venv", candidates=("python3", "python3.11"))
    """
    if not host.state.is_executing:
        return
    state = host.get_fact(PythonEnvState, path=path, candidates=candidates)
    verify = state.verify or {"problems": ["no verification result"]}
    host.noop(f"{path}: {summary(verify)}" if not verify.get("problems")
              else f"{path}: verification problems: {'; '.join(verify['problems'])}")
    yield from ()
