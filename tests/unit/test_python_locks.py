"""The committed lock files: fully hashed, known-bad versions excluded, in step with the pins."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from packaging.version import Version

from inventory.catalog import find_model
from inventory.pins import load_pins
from inventory.python_locks import (
    LOCK_TARGETS,
    LOCKS_DIR,
    WHEELHOUSE_MANIFEST,
    LockError,
    load_lock,
    lock_file_name,
    lock_targets,
    parse_lock,
    pin_problems,
    pip_platform_tags,
    wheelhouse_dir,
    wheelhouse_wheels,
)
from inventory.schema import Settings

PINS = load_pins()
LOCK_NAMES = sorted({s.python.lock for s in PINS.sets.values()})
LOCK_FILES = sorted(LOCKS_DIR.glob("*/cp3*-*.txt"))


def test_every_pinned_lock_has_files_for_python_310_and_311_on_x86_64() -> None:
    for name in LOCK_NAMES:
        assert ("3.10", "x86_64") in lock_targets(name)
        assert ("3.11", "x86_64") in lock_targets(name)


@pytest.mark.parametrize("path", LOCK_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_requirement_carries_a_sha256_hash(path: Path) -> None:
    # Read independently of parse_lock: cut the file into requirement blocks by hand.
    blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())
    requirements = [b for b in blocks if re.match(r"^[A-Za-z0-9][^\n]*==", b)]
    assert len(requirements) >= 20  # torch + CUDA wheels + transformers + companions
    for block in requirements:
        name = block.split("==", 1)[0]
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), f"{name} has no hash"
    assert len(parse_lock(path.read_text())) == len(requirements)


@pytest.mark.parametrize("path", LOCK_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_known_bad_versions_are_excluded(path: Path) -> None:
    packages = parse_lock(path.read_text())
    assert packages["torch"].version == "2.1.0"
    assert Version(packages["numpy"].version) < Version("2")
    assert Version(packages["sympy"].version) < Version("1.13")
    # Every CUDA library wheel at the 12.1 release (cuDNN/NCCL/cuBLAS have their own numbers).
    assert packages["nvidia-cuda-runtime-cu12"].version.startswith("12.1.")
    assert packages["nvidia-nvjitlink-cu12"].version.startswith("12.1.")


@pytest.mark.parametrize("set_name", sorted(PINS.sets))
def test_each_lock_file_matches_its_pin_set(set_name: str) -> None:
    python = PINS.sets[set_name].python
    for version, machine in lock_targets(python.lock):
        lock = load_lock(python.lock, version, machine)
        assert pin_problems(lock, python) == []
        assert lock.version("transformers") == python.transformers


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_pinned_in_is_generated_from_the_pins(name: str) -> None:
    python = next(s.python for s in PINS.sets.values() if s.python.lock == name)
    lines = [line for line in (LOCKS_DIR / name / "pinned.in").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines == [f"torch=={python.torch}", f"transformers=={python.transformers}"]


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_every_constraint_says_why(name: str) -> None:
    previous = ""
    for line in (LOCKS_DIR / name / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert previous.startswith("#"), f"{line!r} has no comment above it"
        previous = line


def test_the_default_model_loads_with_every_pin_sets_transformers() -> None:
    model = find_model(Settings.model_fields["model"].default)
    for pin_set in PINS.sets.values():
        assert Version(pin_set.python.transformers) >= Version(model.min_transformers)


def test_pin_problems_names_a_mismatch() -> None:
    python = PINS.sets["r535-cuda121"].python
    lock = load_lock(python.lock, "3.11", "x86_64")
    wrong = python.model_copy(update={"transformers": "4.35.0"})
    problems = pin_problems(lock, wrong)
    assert len(problems) == 1 and "4.35.0" in problems[0] and python.transformers in problems[0]


# --- parser -----------------------------------------------------------------------------------
GOOD = """\
# header
six==1.17.0 \\
    --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274 \\
    --hash=sha256:ff70335d468e7eb6ec65b95b99d3a2836546063f63acc5171de367e834932a81
    # via -r requirements.in
Huggingface_Hub==0.36.2 \\
    --hash=sha256:0000000000000000000000000000000000000000000000000000000000000000
"""


def test_parse_lock_reads_continuations_and_canonical_names() -> None:
    packages = parse_lock(GOOD)
    assert list(packages) == ["six", "huggingface-hub"]
    assert len(packages["six"].hashes) == 2 and packages["huggingface-hub"].version == "0.36.2"


@pytest.mark.parametrize("text, fragment", [
    ("six==1.17.0\n", "no --hash"),
    ("six>=1.16 --hash=sha256:" + "0" * 64 + "\n", "not an exact pin"),
    ("--index-url https://mirror.invalid/simple\n" + GOOD, "not an exact pin"),
    (GOOD + "six==1.16.0 --hash=sha256:" + "1" * 64 + "\n", "listed twice"),
    ("# nothing\n", "no package"),
])
def test_parse_lock_refuses(text: str, fragment: str) -> None:
    with pytest.raises(LockError, match=fragment):
        parse_lock(text)


def test_digest_is_the_sha256_of_the_file(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    path = tmp_path / "x" / lock_file_name("3.11", "x86_64")
    path.write_text(GOOD)
    lock = load_lock("x", "3.11", "x86_64", tmp_path)
    assert lock.digest == hashlib.sha256(GOOD.encode()).hexdigest()
    path.write_text(GOOD + "\n")
    assert load_lock("x", "3.11", "x86_64", tmp_path).digest != lock.digest


def test_missing_lock_file_lists_what_exists(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "cp310-x86_64.txt").write_text(GOOD)
    with pytest.raises(LockError, match=r"no file for Python 3\.12 .* it has: Python 3\.10 on"):
        load_lock("x", "3.12", "x86_64", tmp_path)


def test_pip_platform_tags_cover_the_manylinux_floor_and_older_only() -> None:
    tags = pip_platform_tags("x86_64")
    assert LOCK_TARGETS["x86_64"].endswith("manylinux_2_28")
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags


# --- controller wheelhouse ----------------------------------------------------------------------
SIX_WHEEL = b"not really a wheel, but its hash is what the lock says"


def _wheelhouse(tmp_path: Path) -> tuple[Path, Path]:
    digest = hashlib.sha256(SIX_WHEEL).hexdigest()
    (tmp_path / "locks" / "x").mkdir(parents=True)
    (tmp_path / "locks" / "x" / "cp311-x86_64.txt").write_text(
        f"six==1.17.0 \\\n    --hash=sha256:{digest}\n")
    return tmp_path / "locks", tmp_path / "wh"


def _fill(lock_root: Path, wh: Path, files: dict[str, bytes], digest: str | None = None) -> None:
    lock = load_lock("x", "3.11", "x86_64", lock_root)
    folder = wheelhouse_dir(lock, wh)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / WHEELHOUSE_MANIFEST).write_text(json.dumps({
        "digest": digest or lock.digest,
        "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()},
    }))


def test_wheelhouse_complete(tmp_path: Path) -> None:
    locks, wh = _wheelhouse(tmp_path)
    _fill(locks, wh, {"six-1.17.0-py2.py3-none-any.whl": SIX_WHEEL})
    wheels = wheelhouse_wheels(load_lock("x", "3.11", "x86_64", locks), wh)
    assert [w.name for w in wheels] == ["six-1.17.0-py2.py3-none-any.whl"]


@pytest.mark.parametrize("files, digest, fragment", [
    (None, None, "no wheelhouse"),
    ({"six-1.17.0-py2.py3-none-any.whl": SIX_WHEEL}, "0" * 64, "another version"),
    ({"six-1.17.0-py2.py3-none-any.whl": b"tampered"}, None, "does not accept"),
    ({}, None, "lacks six"),
])
def test_wheelhouse_incomplete_says_how_to_fetch(
    tmp_path: Path, files: dict[str, bytes] | None, digest: str | None, fragment: str
) -> None:
    locks, wh = _wheelhouse(tmp_path)
    if files is not None:
        _fill(locks, wh, files, digest)
    with pytest.raises(LockError, match=fragment) as error:
        wheelhouse_wheels(load_lock("x", "3.11", "x86_64", locks), wh)
    assert "tools/wheelhouse.py --lock x --python 3.11" in str(error.value)
