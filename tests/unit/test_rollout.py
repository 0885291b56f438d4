"""Rolling rebuilds: batches per group, the gateway without the drained batch, pin states."""

from __future__ import annotations

from pathlib import Path

import pytest

from inventory.fleet import FleetError, load_fleet
from rules.fleet_checks import fleet_problems
from rules.gateway import parse_drained, render_drained, render_gateway, routing
from rules.manifest import pins_digest
from rules.monitoring import is_monitor
from rules.rollout import batch_size, batches, pin_state
from tests.unit.test_multinode import fleet_text, load

FLEET = """
[settings]
weights_path = "/srv/models/m"
tensor_parallel = 1
inference = { bind = "0.0.0.0" }
monitoring = { bind = "0.0.0.0", dcgm_registry = "mirror.example.internal" }

[groups.a]
settings = { gpus = { count = 2 }, rollout = { batch = 2 } }
[groups.a.hosts.a1]
[groups.a.hosts.a2]
[groups.a.hosts.a3]
[groups.a.hosts.a4]
[groups.a.hosts.a5]

[groups.b]
settings = { gpus = { count = 1 }, rollout = { batch = "50%" } }
[groups.b.hosts.b1]
[groups.b.hosts.b2]
[groups.b.hosts.b3]

[groups.mon]
settings = { role = "monitor" }
[groups.mon.hosts.mon]
"""


def hosts(tmp_path: Path, text: str = FLEET) -> list:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return load_fleet(path, checks=fleet_problems).hosts


@pytest.mark.parametrize("setting,group,size", [(1, 8, 1), (2, 8, 2), ("25%", 8, 2),
                                                ("25%", 3, 1), ("50%", 3, 2), ("100%", 4, 4)])
def test_batch_sizes(setting: int | str, group: int, size: int) -> None:
    assert batch_size(setting, group) == size


def test_batches_follow_each_groups_setting_and_skip_the_monitoring_host(tmp_path: Path) -> None:
    cut = [[s.name for s in batch] for batch in batches(hosts(tmp_path))]
    assert cut == [["a1", "a2"], ["a3", "a4"], ["a5"], ["b1", "b2"], ["b3"]]


@pytest.mark.parametrize("value", [0, "0%", "150%", "half", 2.5])
def test_a_bad_batch_is_refused_with_what_is_allowed(tmp_path: Path, value: object) -> None:
    text = FLEET.replace("rollout = { batch = 2 }", f"rollout = {{ batch = {value!r} }}"
                         .replace("'", '"'))
    with pytest.raises(FleetError) as err:
        hosts(tmp_path, text)
    assert any("settings.rollout.batch" in line for line in err.value.lines), err.value.lines


def test_the_gateway_routes_around_drained_hosts(tmp_path: Path) -> None:
    specs = hosts(tmp_path)
    gateway = next(s for s in specs if is_monitor(s))
    route = routing(gateway, specs, "off", frozenset({"a1", "a2"}))
    assert not any(server.startswith(("a1:", "a2:")) for server in route.stable)
    assert "a3:8000" in route.stable
    assert "server a1:8000" not in render_gateway(gateway, route)
    assert parse_drained(render_drained(frozenset({"a2", "a1"}))) == {"a1", "a2"}
    for garbage in (None, "", "[", '{"hosts": "a1"}'):
        assert parse_drained(garbage) == frozenset()


def test_pin_state_comes_from_the_manifest(tmp_path: Path) -> None:
    spec = hosts(tmp_path)[0]
    now = {"pin_set": "r535-cuda121", "pins_sha256": pins_digest(spec.pins)}
    assert pin_state(spec, now).render() == "a1: r535-cuda121 (the fleet file's pins)"
    old = {"pin_set": "r535-cuda121", "pins_sha256": "0" * 64}
    assert pin_state(spec, old).render() == "a1: r535-cuda121 (older pins)"
    assert "no manifest" in pin_state(spec, None).render()


def test_the_nodes_of_a_replica_across_hosts_stay_in_one_batch(tmp_path: Path) -> None:
    specs = load(tmp_path, fleet_text(hosts=6, group="rollout = { batch = 1 }"))
    assert [[s.name for s in batch] for batch in batches(specs)] == [
        ["node-0", "node-1"], ["node-2", "node-3"], ["node-4", "node-5"]]
    specs = load(tmp_path, fleet_text(hosts=6, group='rollout = { batch = "50%" }'))
    assert [len(batch) for batch in batches(specs)] == [4, 2]
