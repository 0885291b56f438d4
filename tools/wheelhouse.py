#!/usr/bin/env python3
"""Fetch the locked wheels once on the controller, so N hosts do not each download gigabytes.

    .venv/bin/python tools/wheelhouse.py                          # every lock file of the pins
    .venv/bin/python tools/wheelhouse.py --lock torch210-cu121 --python 3.11 --machine x86_64

Writes ``.wheelhouse/<lock>/cp3XX-<machine>/`` (git-ignored): the one wheel per locked package
a host of that Python and machine installs, and ``manifest.json`` (the lock's digest and every
file's sha256, computed here). pip downloads with ``--require-hashes --no-deps``, so a file
that is not byte-for-byte the locked one is refused; files already present and matching are
kept. With ``python_env.wheelhouse = true`` the deploy pushes these files to each host and
installs with ``--no-index``; the host checks every hash again.

Index: pip's default, or ``--index-url`` (the fleet's mirror). pip configuration files of this
machine are ignored (PIP_CONFIG_FILE=/dev/null): a global constraint or extra index must not
change what is fetched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
sys.path.insert(0, str(REPO))

from inventory.controller_files import write_atomically  # noqa: E402
from inventory.pins import PINS_FILE, load_pins  # noqa: E402
from inventory.python_locks import (  # noqa: E402
    LOCKS_DIR,
    WHEELHOUSE_DIR,
    WHEELHOUSE_MANIFEST,
    LockError,
    LockFile,
    load_lock,
    lock_targets,
    pip_platform_tags,
    wheelhouse_dir,
    wheelhouse_wheels,
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(lock: LockFile, root: Path, index_url: str | None = None) -> tuple[Path, int]:
    """Fill the wheelhouse of one lock file. Returns (folder, bytes downloaded now)."""
    folder = wheelhouse_dir(lock, root)
    folder.mkdir(parents=True, exist_ok=True)
    before = {p.name: p.stat().st_size for p in folder.glob("*.whl")}
    major, minor = lock.python.split(".")
    command = [
        sys.executable, "-m", "pip", "download",
        "--disable-pip-version-check", "--no-cache-dir",
        "--require-hashes", "--no-deps", "--only-binary", ":all:",
        "--implementation", "cp", "--python-version", f"{major}{minor}",
        "--abi", f"cp{major}{minor}",
        *[arg for tag in pip_platform_tags(lock.machine) for arg in ("--platform", tag)],
        "--dest", str(folder), "-r", str(lock.path),
    ]
    if index_url:
        command += ["--index-url", index_url]
    # --isolated and PIP_CONFIG_FILE=/dev/null: neither PIP_* variables (PIP_FIND_LINKS...) nor
    # any pip.conf of this machine may add sources or constraints.
    command += ["--isolated", "--cert", os.environ.get("PIP_CERT", SYSTEM_CA_BUNDLE)]
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)
    subprocess.run(command, env=env, check=True)

    files: dict[str, str] = {}
    for wheel in sorted(folder.glob("*.whl")):
        files[wheel.name] = sha256_of(wheel)
    accepted = {h for package in lock.packages.values() for h in package.hashes}
    stray = sorted(name for name, digest in files.items() if digest not in accepted)
    for name in stray:  # e.g. the wheels of an older version of the lock
        (folder / name).unlink()
        del files[name]
    manifest = {"lock": lock.lock, "file": lock.path.name, "digest": lock.digest,
                "files": files}
    write_atomically(folder / WHEELHOUSE_MANIFEST,
                     json.dumps(manifest, indent=1, sort_keys=True))
    wheelhouse_wheels(lock, root)  # raises when a package has no wheel
    downloaded = sum(
        p.stat().st_size for p in folder.glob("*.whl") if before.get(p.name) != p.stat().st_size
    )
    return folder, downloaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", help="lock name (default: every lock named in the pin file)")
    parser.add_argument("--python", help="only this CPython minor version, e.g. 3.11")
    parser.add_argument("--machine", help="only this machine, e.g. x86_64")
    parser.add_argument("--index-url", help="a mirror (simple index); default: pip's")
    parser.add_argument("--locks-dir", type=Path, default=LOCKS_DIR)
    parser.add_argument("--root", type=Path, default=WHEELHOUSE_DIR)
    args = parser.parse_args(argv)

    locks = [args.lock] if args.lock else sorted(
        {pin_set.python.lock for pin_set in load_pins(PINS_FILE).sets.values()})
    for name in locks:
        for python, machine in lock_targets(name, args.locks_dir):
            if (args.python and python != args.python) or (
                    args.machine and machine != args.machine):
                continue
            lock = load_lock(name, python, machine, args.locks_dir)
            started = time.monotonic()
            folder, downloaded = fetch(lock, args.root, args.index_url)
            total = sum(p.stat().st_size for p in folder.glob("*.whl"))
            print(f"{folder}: {len(lock.packages)} wheels, {total / 1e6:.1f} MB "
                  f"({downloaded / 1e6:.1f} MB downloaded now) in "
                  f"{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (LockError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"wheelhouse: {exc}") from None
