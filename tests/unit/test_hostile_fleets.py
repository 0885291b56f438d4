"""Hostile fleet files (tests/fixtures/hostile_fleets) are refused offline, for the right reason.

Each file holds one hostile value (a key that opens Docker's API, an nginx or Compose
injection, credentials in a URL, a system folder as weights_path, ...) in an otherwise valid
fleet. `load_fleet` with the fleet checks must refuse it with one line per problem; every line
names a field the file's `# field:` lines allow (so the file is refused for what it is about,
not by accident) and every `# says:` text appears. The real `python inventory.py FILE` refuses
them all the same way: exit 2, no traceback, no secret echoed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inventory.fleet import FleetError, load_fleet
from rules.fleet_checks import fleet_problems

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "fixtures" / "hostile_fleets"
FILES = sorted(CORPUS.glob("*.toml"))
SECRET = "hunter2-secret"


def _directives(path: Path, name: str) -> list[str]:
    prefix = f"# {name}:"
    return [line[len(prefix):].strip() for line in path.read_text().splitlines()
            if line.startswith(prefix)]


def test_the_corpus_is_there() -> None:
    assert len(FILES) >= 20
    for path in FILES:
        assert _directives(path, "field") and _directives(path, "says"), path.name


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_hostile_fleet_is_refused_for_its_reason(path: Path) -> None:
    with pytest.raises(FleetError) as caught:
        load_fleet(path, checks=fleet_problems)
    lines = caught.value.lines
    fields = _directives(path, "field")
    for line in lines:
        assert "\n" not in line and SECRET not in line, line
        assert any(f": {field} = " in line for field in fields), (
            f"{path.name}: a problem about something else: {line}")
    for text in _directives(path, "says"):
        assert any(text in line for line in lines), f"{path.name}: no line says {text!r}: {lines}"


def test_the_cli_refuses_each_in_one_line_per_problem() -> None:
    for path in FILES:
        result = subprocess.run([sys.executable, "inventory.py", str(path)], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode == 2, (path.name, output)
        assert "Traceback" not in output and SECRET not in output, (path.name, output)
        assert "no host was contacted" in result.stderr
