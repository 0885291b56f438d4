"""load_fleet is its stages, each a function of its own (issue 25: it was 161 lines)."""

from __future__ import annotations

import inspect

import pytest

from inventory import fleet as fleet_module
from inventory.fleet import FleetError, FleetFile, Problem, _entries, _fleet_file, _setting_layers


def test_load_fleet_reads_as_its_stages() -> None:
    lines = inspect.getsource(fleet_module.load_fleet).splitlines()
    assert len(lines) <= 40, len(lines)
    body = "\n".join(lines)
    for stage in ("_pins_and_catalog", "_fleet_file", "_models", "_entries", "_setting_layers",
                  "_host_specs", "with_replica_spans"):
        assert f"{stage}(" in body, stage


def test_the_shape_stage_stops_at_once_on_an_empty_file() -> None:
    with pytest.raises(FleetError, match="empty: a fleet file needs"):
        _fleet_file({}, "f.toml")


def test_a_bad_group_value_is_reported_once_at_its_layer() -> None:
    raw = {"fleet": {"name": "f"}, "settings": {"weights_path": "/srv/models/m"},
           "groups": {"g": {"settings": {"precision": "fp12"},
                            "hosts": {"a": {"target": "10.0.0.1"},
                                      "b": {"target": "10.0.0.2"}}}}}
    problems: list[Problem] = []
    groups, hosts, broken = _entries(FleetFile.model_validate(raw), problems)
    assert problems == [] and [h[1] for h in hosts] == ["a", "b"] and broken == set()
    _setting_layers(FleetFile.model_validate(raw), groups, hosts, problems)
    assert [(p.where, p.field) for p in problems] == [("group g", "settings.precision")]
