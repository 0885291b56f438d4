"""Settings documented once: docs/settings.md's table is the schema's, every leaf described."""

from __future__ import annotations

import re

from pydantic import Field, create_model

from inventory.schema import Settings
from tools import settings_doc


def test_every_leaf_setting_has_a_description() -> None:
    undescribed = [name for name, info in settings_doc.leaves() if not info.description]
    assert undescribed == []


def test_the_page_is_the_schema_in_schema_order() -> None:
    page = settings_doc.PAGE.read_text()
    assert settings_doc.render(page) == page, "run .venv/bin/python tools/settings_doc.py"
    generated = page.split(settings_doc.BEGIN, 1)[1].split(settings_doc.END, 1)[0]
    documented = re.findall(r"^\| `([\w.]+)` \|", generated, re.M)
    assert documented == [name for name, _ in settings_doc.leaves()]
    assert len(documented) > 100 and "monitoring.alerts.ttft_p99_seconds" in documented


def test_a_changed_default_or_description_makes_the_page_stale() -> None:
    page = settings_doc.PAGE.read_text()
    assert "| `pin_set` | `r535-cuda121` | the set of versions" in page
    for field in (Field(default="other", description="the set of versions from x"),
                  Field(default="r535-cuda121", description="another meaning")):
        changed = create_model("Changed", __base__=Settings, pin_set=(str, field))
        assert settings_doc.render(page, changed) != page
    assert settings_doc.main(["--check"]) == 0


def test_defaults_read_as_a_fleet_file_writes_them() -> None:
    rows = {name: settings_doc.default_text(info) for name, info in settings_doc.leaves()}
    assert rows["weights_path"] == "— (required)"
    assert rows["storage.measure_read_speed"] == "`false`"
    assert rows["tensor_parallel"] == "unset"
    assert rows["inference.ulimits"] == "`{memlock = -1, stack = 67108864}`"
    assert rows["rollout.batch"] == "`1`"
