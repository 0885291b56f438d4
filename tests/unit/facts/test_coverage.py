"""What the state read and the probe cover is the union of what gpufleet's parts declare
(facts/coverage.py): a component's folder widens it, nothing else lists it."""

from __future__ import annotations

import re
from pathlib import Path

from facts import probe
from facts._shell import SECTION_MARKER
from facts.coverage import CORE, COVERED, Manages, declared, union
from facts.host_state import (
    WATCHED_DIRS,
    WATCHED_FILES,
    WATCHED_SERVICES,
    _files_script,
    host_state_script,
)


def test_the_state_read_and_probe_cover_the_union_of_the_declarations() -> None:
    assert (
        COVERED.dirs, COVERED.files, COVERED.services) == (WATCHED_DIRS, WATCHED_FILES, WATCHED_SERVICES)
    assert union([CORE, *declared().values()]) == COVERED
    # Every section a part declares has its script and parser; the probe runs exactly those.
    assert set(COVERED.sections) <= set(probe.SECTIONS)
    script = probe.probe_script("/models/x")
    assert re.findall(f"{SECTION_MARKER}(\\w+)'", script) == [
        name for name in probe.SECTIONS if name in COVERED.sections]


def test_a_new_component_folder_widens_the_read_and_leaves_the_rest_in_place(
        tmp_path: Path) -> None:
    """A component that writes /etc/widget and runs widget.service declares them in its own
    folder; the union keeps every earlier entry where it was (the state read's command is the
    same text when a component declares nothing new)."""
    folder = tmp_path / "fake_components"
    (folder / "widget").mkdir(parents=True)
    (folder / "widget" / "manages.py").write_text(
        'DIRS = ("/etc/widget", "/etc/default")\nSERVICES = ("widget",)\n')
    (folder / "empty").mkdir()  # no manages.py: not a component
    found = declared(folder)
    assert found == {"widget": Manages(dirs=("/etc/widget", "/etc/default"),
                                       services=("widget",))}
    widened = union([CORE, *found.values()])
    assert widened.dirs == (*CORE.dirs, "/etc/widget")
    assert widened.services == (*CORE.services, "widget")
    assert " /etc/widget;" in _files_script(dirs=widened.dirs)
    assert union([CORE, Manages(sections=("state",))]) == CORE
    assert _files_script(dirs=union([CORE, Manages()]).dirs) == _files_script()
    assert "/etc/widget" not in host_state_script()
