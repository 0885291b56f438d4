"""Controller files are written whole or not at all (inventory/controller_files.py)."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from inventory import controller_files
from inventory.controller_files import write_atomically

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("components", "deploys", "facts", "inventory", "operations", "rules", "tools")


def test_writes_new_and_replaces_old_keeping_mode(tmp_path: Path) -> None:
    target = tmp_path / "state" / "gpu-01.json"
    write_atomically(target, "one")
    assert target.read_text() == "one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    target.chmod(0o640)
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    write_atomically(target, "three", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["gpu-01.json"]  # no temporary left


def test_a_write_cut_short_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "audit.json"
    target.write_text('{"complete": true}')

    def power_cut(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(controller_files.os, "fsync", power_cut)
    with pytest.raises(OSError):
        write_atomically(target, '{"complete": fal')
    assert target.read_text() == '{"complete": true}'
    assert os.listdir(tmp_path) == ["audit.json"]


def test_a_secret_is_never_readable_by_others(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The mode is set before the first byte is written, not after the rename."""
    seen: list[int] = []
    real_write = os.fdopen

    def spy(fd: int, *args: object, **kwargs: object) -> Any:
        stream = real_write(fd, *args, **kwargs)  # type: ignore[call-overload]
        original = stream.write

        def write(data: bytes) -> int:
            seen.append(stat.S_IMODE(os.fstat(stream.fileno()).st_mode))
            return original(data)

        stream.write = write
        return stream

    monkeypatch.setattr(controller_files.os, "fdopen", spy)
    write_atomically(tmp_path / "api-key", "k" * 40, mode=0o600)
    assert seen == [0o600]


def _plain_writes(path: Path) -> list[str]:
    """Calls of .write_text/.write_bytes, or open() for writing, in one product file."""
    name = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("write_text", "write_bytes"):
            found.append(f"{name}:{node.lineno}: .{func.attr}()")
        elif isinstance(func, ast.Name) and func.id == "open" and len(node.args) > 1:
            mode = node.args[1]
            if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax"):
                found.append(f"{name}:{node.lineno}: open(..., {mode.value!r})")
    return found


def test_every_controller_write_goes_through_write_atomically() -> None:
    """Product code run on the controller writes no file in place (templates/ runs on hosts)."""
    found = [line for package in PRODUCT for path in sorted((REPO / package).rglob("*.py"))
             if path.name != "controller_files.py" for line in _plain_writes(path)]
    assert found == []


def test_the_scan_finds_plain_writes(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from pathlib import Path\nPath('x').write_text('y')\nopen('z', 'w')\n"
                      "open('r')\n")
    assert [line.split(": ", 1)[1] for line in _plain_writes(sample)] == [
        ".write_text()", "open(..., 'w')"]
