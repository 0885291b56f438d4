"""Lock files of the host-side Python environment: loading, digests, checks against the pins.

A lock is a folder ``inventory/locks/<name>/`` (the name is ``python.lock`` of a pin set):

    requirements.in          companions of torch/transformers (hand-written)
    constraints.txt          known-bad versions excluded, each with its reason (hand-written)
    pinned.in                torch/transformers at the pin set's versions (generated)
    cp310-x86_64.txt         the lock for CPython 3.10 on x86_64 Linux (generated)
    cp311-x86_64.txt         ... for CPython 3.11

A lock file is a pip requirements file in which every requirement is ``name==version`` with
one or more ``--hash=sha256:...`` options: what ``pip install --require-hashes --no-deps``
installs without resolving anything on the host. ``tools/lock_python.py`` writes them.

Public API
----------
``LOCKS_DIR``, ``LOCK_TARGETS`` (uv platform per machine), ``LockedPackage``, ``LockFile``,
``LockError``, ``lock_file_name(python, machine)``, ``parse_lock(text)``,
``load_lock(lock, python, machine)``, ``lock_targets(lock)``, ``pin_problems(lock, pins)``.
Wheelhouse (locked wheels fetched once on the controller): ``WHEELHOUSE_DIR``,
``pip_platform_tags(machine)``, ``wheelhouse_dir(lock)``, ``wheelhouse_wheels(lock)``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from packaging.utils import canonicalize_name

from inventory.pins import PythonPins

LOCKS_DIR = Path(__file__).with_name("locks")

# Machine (uname -m) -> the platform uv resolves a lock for. manylinux_2_28 = glibc >= 2.28:
# Debian 10+, Ubuntu 20.04+, RHEL 8+. aarch64 is absent on purpose: the torch 2.1.0 wheels the
# default index has for aarch64 Linux are CPU-only builds (torch.version.cuda is None), so no
# lock could honour "the CUDA 12.1 build" there.
LOCK_TARGETS: dict[str, str] = {"x86_64": "x86_64-manylinux_2_28"}

_LOCK_NAME = re.compile(r"^cp3(?P<minor>\d+)-(?P<machine>[a-z0-9_]+)\.txt$")
_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:(?P<digest>[0-9a-f]{64})")


class LockError(ValueError):
    """A lock file is missing or is not a fully pinned, fully hashed requirements file."""


@dataclass(frozen=True)
class LockedPackage:
    name: str  # canonical (PEP 503) name, e.g. "huggingface-hub"
    version: str
    hashes: tuple[str, ...]  # sha256 hex digests of every file of that version


@dataclass(frozen=True)
class LockFile:
    lock: str  # the lock's name, e.g. "torch210-cu121"
    python: str  # "3.11"
    machine: str  # "x86_64"
    path: Path
    text: str
    packages: dict[str, LockedPackage]

    @property
    def digest(self) -> str:
        """sha256 of the file's bytes: a host re-installs exactly when this changes."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def version(self, name: str) -> str | None:
        package = self.packages.get(canonicalize_name(name))
        return package.version if package else None


def lock_file_name(python: str, machine: str) -> str:
    """``("3.11", "x86_64")`` -> ``"cp311-x86_64.txt"``."""
    major, _, minor = python.partition(".")
    return f"cp{major}{minor}-{machine}.txt"


def _logical_lines(text: str) -> list[str]:
    """Requirement lines with backslash continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse_lock(text: str) -> dict[str, LockedPackage]:
    """Parse a lock file. Raises LockError on any line that is not ``name==version --hash=...``.

    Options (``--index-url`` and friends) are refused too: where packages come from is a fleet
    setting, not part of the lock, so the same bytes can come from a mirror or a wheelhouse.
    """
    packages: dict[str, LockedPackage] = {}
    for line in _logical_lines(text):
        match = _REQUIREMENT.match(line)
        if not match:
            raise LockError(f"not an exact pin (name==version): {line[:80]!r}")
        hashes = tuple(m.group("digest") for m in _HASH.finditer(line))
        if not hashes:
            raise LockError(f"no --hash=sha256 for {match.group('name')}")
        name = canonicalize_name(match.group("name"))
        if name in packages:
            raise LockError(f"{name} is listed twice")
        packages[name] = LockedPackage(name, match.group("version"), hashes)
    if not packages:
        raise LockError("the lock lists no package")
    return packages


def lock_targets(lock: str, locks_dir: Path | None = None) -> list[tuple[str, str]]:
    """The (python, machine) pairs a lock has files for, e.g. ``[("3.10", "x86_64"), ...]``."""
    folder = (locks_dir or LOCKS_DIR) / lock
    targets = []
    for path in sorted(folder.glob("cp3*-*.txt")):
        match = _LOCK_NAME.match(path.name)
        if match:
            targets.append((f"3.{match.group('minor')}", match.group("machine")))
    return sorted(targets, key=lambda t: (t[1], int(t[0].split(".")[1])))


def load_lock(lock: str, python: str, machine: str, locks_dir: Path | None = None) -> LockFile:
    """Read and validate one lock file. Raises LockError (missing file, bad content)."""
    path = (locks_dir or LOCKS_DIR) / lock / lock_file_name(python, machine)
    if not path.is_file():
        have = ", ".join(f"Python {p} on {m}" for p, m in lock_targets(lock, locks_dir))
        raise LockError(
            f"lock {lock!r} has no file for Python {python} on {machine} ({path}); "
            f"it has: {have or 'nothing'}"
        )
    text = path.read_text()
    try:
        packages = _parsed_once(text)
    except LockError as exc:
        raise LockError(f"{path}: {exc}") from None
    return LockFile(lock, python, machine, path, text, packages)


def _parsed_once(text: str) -> dict[str, LockedPackage]:
    """parse_lock(text), parsed once per distinct text (each caller gets a dict of its own):
    every host's plan loads the same lock file."""
    return dict(_parse_lock_memo(text))


@lru_cache(maxsize=16)
def _parse_lock_memo(text: str) -> dict[str, LockedPackage]:
    """A memo of a pure function (the key is the whole input), not run data."""
    return parse_lock(text)


def pin_problems(lock: LockFile, pins: PythonPins) -> list[str]:
    """Where a lock file disagrees with the pin set's python table (empty: it matches)."""
    problems = []
    if lock.lock != pins.lock:
        problems.append(f"lock {lock.lock!r} is not the pin set's lock {pins.lock!r}")
    for name, wanted in (("torch", pins.torch), ("transformers", pins.transformers)):
        found = lock.version(name)
        if found != wanted:
            problems.append(
                f"{lock.path.name} has {name} {found or '(absent)'}, the pin set says {wanted}"
            )
    return problems


# --------------------------------------------------------------------------------------------
# The controller-side wheelhouse: tools/wheelhouse.py fills it, the deploy pushes from it.
# --------------------------------------------------------------------------------------------

WHEELHOUSE_DIR = Path(__file__).resolve().parents[1] / ".wheelhouse"  # git-ignored
WHEELHOUSE_MANIFEST = "manifest.json"
_MANYLINUX = re.compile(r"^(?P<arch>[a-z0-9_]+)-manylinux_2_(?P<glibc>\d+)$")


def pip_platform_tags(machine: str) -> list[str]:
    """pip ``--platform`` tags a host of this lock target accepts, newest first.

    pip does not expand ``manylinux_2_28`` to the older tags a glibc 2.28 host also runs, so
    the wheelhouse download lists them all (the legacy aliases included).
    """
    match = _MANYLINUX.match(LOCK_TARGETS[machine])
    if not match:
        raise LockError(f"no manylinux floor for {machine}: {LOCK_TARGETS[machine]}")
    arch, floor = match.group("arch"), int(match.group("glibc"))
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(floor, 4, -1)]
    return [*tags, f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def wheelhouse_dir(lock: LockFile, root: Path | None = None) -> Path:
    """``.wheelhouse/<lock>/cp311-x86_64/``: one folder per lock file."""
    return (root or WHEELHOUSE_DIR) / lock.lock / lock.path.stem


def wheelhouse_wheels(lock: LockFile, root: Path | None = None) -> tuple[Path, ...]:
    """The wheel files of a complete wheelhouse for ``lock``, one per locked package.

    Trusts the manifest tools/wheelhouse.py wrote after hashing every file (re-hashing
    gigabytes per deploy is slow); the host checks every hash again with --require-hashes.
    Raises LockError naming the command that fixes it.
    """
    folder = wheelhouse_dir(lock, root)
    fix = (f"fetch it with: .venv/bin/python tools/wheelhouse.py --lock {lock.lock} "
           f"--python {lock.python} --machine {lock.machine}")
    try:
        manifest = json.loads((folder / WHEELHOUSE_MANIFEST).read_text())
    except (OSError, ValueError):
        raise LockError(
            f"no wheelhouse for {lock.lock}/{lock.path.name} at {folder}; {fix}"
        ) from None
    if manifest.get("digest") != lock.digest:
        raise LockError(f"the wheelhouse at {folder} was fetched for another version of "
                        f"{lock.path.name}; {fix}")
    files: dict[str, str] = manifest.get("files", {})
    covered: set[str] = set()
    wheels = []
    for name, sha256 in sorted(files.items()):
        package = canonicalize_name(name.split("-", 1)[0])
        locked = lock.packages.get(package)
        path = folder / name
        if locked is None or sha256 not in locked.hashes or not path.is_file():
            raise LockError(f"the wheelhouse at {folder} has a file the lock does not accept "
                            f"or lost it: {name}; {fix}")
        covered.add(package)
        wheels.append(path)
    missing = sorted(set(lock.packages) - covered)
    if missing:
        raise LockError(f"the wheelhouse at {folder} lacks {', '.join(missing)}; {fix}")
    return tuple(wheels)
