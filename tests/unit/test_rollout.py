"""Rolling rebuilds: batches per group, the gateway without the drained batch, pin states."""

from __future__ import annotations

from pathlib import Path

import pytest

from facts.name_resolution import NameLookup
from inventory.fleet import FleetError, load_fleet
from rules.fleet_checks import fleet_problems
from rules.gateway import (
    HAND,
    ROLLOUT,
    drain_hosts,
    drain_report,
    parse_drained,
    render_drained,
    render_gateway,
    restore_hosts,
    routing,
    upstreams,
)
from rules.manifest import pins_digest
from rules.monitoring import is_monitor
from rules.rollout import (
    OutageRefused,
    PinState,
    batch_size,
    batches,
    outages,
    parse_plan,
    pin_state,
    render_plan,
    restored_after,
)
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
    # every host's name resolves on the gateway host: a1 is left out by the drain alone
    answers = {name: NameLookup("resolved", (f"10.0.0.{i}",))
               for i, name in enumerate(("a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3"), 11)}
    conf = render_gateway(gateway, route, upstreams(route, answers))
    assert "# a1:8000" not in conf and "server 10.0.0.11:" not in conf
    assert "    server 10.0.0.13:8000 max_fails=3 fail_timeout=10s;  # a3:8000\n" in conf
    state = {"a2": ROLLOUT, "a1": HAND}
    assert parse_drained(render_drained(state)) == state
    for garbage in (None, "", "[", '{"hosts": "a1"}', "[1]"):
        assert parse_drained(garbage) == {}


def test_a_drained_file_without_drainers_counts_as_drained_by_hand() -> None:
    # the format before drainers were recorded: a rollout's restore never puts these back
    old = parse_drained('{"hosts": ["a1", "a2"]}\n')
    assert old == {"a1": HAND, "a2": HAND}
    assert restore_hosts(old, ["a1", "a2"], ROLLOUT) == old
    assert parse_drained('{"hosts": ["a1"], "by": {"a1": "someone"}}') == {"a1": HAND}


def test_a_rollout_batch_drains_and_restores_only_its_own_hosts() -> None:
    by_hand = drain_hosts({}, ["b3"], HAND)  # a bad GPU, taken out by hand
    during = drain_hosts(by_hand, ["a1", "a2"], ROLLOUT)
    assert during == {"b3": HAND, "a1": ROLLOUT, "a2": ROLLOUT}  # additive: b3 stays out
    assert restore_hosts(during, ["a1", "a2"], ROLLOUT) == {"b3": HAND}
    # a hand-drained host in the batch: drained again by the batch, still the hand's
    with_b3 = drain_hosts(by_hand, ["b3", "b1"], ROLLOUT)
    assert with_b3 == {"b3": HAND, "b1": ROLLOUT}
    assert restore_hosts(with_b3, ["b3", "b1"], ROLLOUT) == {"b3": HAND}
    # drained by hand while its batch converges: the batch's restore leaves it out too
    assert restore_hosts(drain_hosts(during, ["a1"], HAND), ["a1", "a2"], ROLLOUT) == {
        "b3": HAND, "a1": HAND}
    # by hand, any host comes back
    assert restore_hosts(during, ["b3", "a1"], HAND) == {"a2": ROLLOUT}
    assert drain_report(during) == ("drained from the gateway: a1 (by a rollout batch), "
                                    "a2 (by a rollout batch), b3 (by hand)")
    assert drain_report({}) == "no host is drained from the gateway"


ONE_MODEL = """
[settings]
weights_path = "/srv/models/m"
tensor_parallel = 1
inference = { bind = "0.0.0.0" }
monitoring = { bind = "0.0.0.0", dcgm_registry = "mirror.example.internal" }

[groups.a]
settings = { gpus = { count = 2 }, rollout = { batch = BATCH } }
HOSTS
[groups.mon]
settings = { role = "monitor", gateway = { enabled = true } }
[groups.mon.hosts.mon]
"""


def fleet_of(tmp_path: Path, count: int, batch: str = "1") -> list:
    text = ONE_MODEL.replace("BATCH", batch).replace(
        "HOSTS", "".join(f"[groups.a.hosts.g{i}]\n" for i in range(1, count + 1)))
    return hosts(tmp_path, text)


@pytest.mark.parametrize("count,batch,held", [(1, "1", "g1"), (3, '"100%"', "g1, g2, g3")])
def test_a_batch_holding_every_replica_of_a_served_model_is_refused(
        tmp_path: Path, count: int, batch: str, held: str) -> None:
    specs = fleet_of(tmp_path, count, batch)
    model = specs[0].model.id
    with pytest.raises(OutageRefused) as refused:
        batches(specs)
    text = "\n".join(refused.value.lines)
    assert f"batch 1 ({held}) holds every replica of {model} still in rotation" in text
    assert "--allow-outage" in text
    # the operator accepts the outage: the same batches
    assert [[s.name for s in b] for b in batches(specs, allow_outage=True)] == [
        held.split(", ")]


def test_hosts_drained_already_count_as_out_of_rotation(tmp_path: Path) -> None:
    specs = fleet_of(tmp_path, 3)
    assert [len(b) for b in batches(specs, drained={"g2"})] == [1, 1, 1]  # g3 or g1 serves
    with pytest.raises(OutageRefused) as refused:
        batches(specs, drained={"g2", "g3"})  # by hand: g1's batch would leave nothing
    assert [(o.batch, o.hosts, o.drained) for o in refused.value.outages] == [
        (1, ("g1",), ("g2", "g3"))]
    assert "(drained already: g2, g3)" in refused.value.lines[1]


def test_a_batch_without_the_models_last_replica_passes(tmp_path: Path) -> None:
    specs = fleet_of(tmp_path, 2, "1")
    assert outages(specs, [["g1"], ["g2"]]) == []
    assert outages(specs, [["g1"]], drained={"g1"}) == []  # g2 still serves
    assert outages(specs, [["g2"]], drained={"g1"})[0].hosts == ("g2",)
    assert outages(specs, [[]], drained={"g1", "g2"}) == []  # a batch of none takes nothing


def test_behind_only_skips_hosts_before_the_check(tmp_path: Path) -> None:
    # one host of three current, batch = "100%": the batch left (g2, g3) leaves g1 in rotation
    specs = fleet_of(tmp_path, 3, '"100%"')
    assert [[s.name for s in b] for b in batches(specs, skip={"g1"})] == [["g2", "g3"]]
    assert batches(fleet_of(tmp_path, 1), skip={"g1"}) == []


def test_the_plan_travels_as_one_data_value() -> None:
    plan = [["a1", "a2"], ["a3"]]
    assert parse_plan(render_plan(plan)) == plan
    assert parse_plan(None) == parse_plan("") == []


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


def test_the_tool_refuses_before_contacting_any_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import tools.rollout as tool

    fleet_of(tmp_path, 1)  # writes tmp_path/fleet.toml
    ran: list[tuple[str, list[str], tuple[str, ...]]] = []

    def pyinfra(script: str, limit: list[str], *data: str) -> int:
        ran.append((script, limit, data))
        return 0

    monkeypatch.setattr(tool, "pyinfra", pyinfra)
    monkeypatch.setattr(tool, "report", lambda fleet: None)
    monkeypatch.setenv("GPUFLEET_FLEET", str(tmp_path / "fleet.toml"))
    assert tool.main([]) == 2
    err = capsys.readouterr().err
    assert "rollout refused before any change" in err and "batch 1 (g1) holds every replica" in err
    assert ran == []
    assert tool.main(["--allow-outage"]) == 0
    # every host's run lock, from before the first change to the end
    assert ran[0] == ("deploys/lock.py", ["g1", "mon"], ("lock=take", "lock_wait=0"))
    assert ran[-1] == ("deploys/lock.py", ["g1", "mon"], ("lock=release",))
    drain, converge, restore = ran[1:4]
    assert drain[0] == "deploys/drain.py" and drain[2][0] == "drain=g1"
    assert "gpufleet_allow_outage=yes" in drain[2] and "gpufleet_rollout_plan=g1" in drain[2]
    assert converge[0] == "deploys/gpu_host.py"
    assert restore == ("deploys/drain.py", drain[1], ("restore=g1", "gpufleet_rollout_batch=1"))


def test_a_batch_puts_back_its_whole_batch_and_the_last_one_every_host_a_rollout_drained(
        tmp_path: Path) -> None:
    # batches of two; --behind-only skipped a2 and a3 (current: a stopped rollout's batch
    # converged a3 but left it drained)
    specs = hosts(tmp_path)
    plan = batches(specs, skip={"a2", "a3"})
    assert [[s.name for s in b] for b in plan] == [["a1"], ["a4"], ["a5"], ["b1", "b2"],
                                                    ["b3"]]
    assert restored_after(plan, 1, specs) == ["a1", "a2"]
    assert restored_after(plan, 2, specs) == ["a3", "a4"]
    assert restored_after(plan, 5, specs) == [s.name for s in specs if s.settings.role == "gpu"]
    # the gateway's drain puts back only what a rollout drained: by hand stays
    state = {"a3": ROLLOUT, "b3": HAND}
    assert restore_hosts(state, restored_after(plan, 5, specs), ROLLOUT) == {"b3": HAND}


def test_with_nothing_to_converge_the_tool_still_puts_back_what_a_rollout_drained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.rollout as tool

    fleet_of(tmp_path, 2)
    ran: list[tuple[str, tuple[str, ...]]] = []

    def pyinfra(script: str, limit: list[str], *data: str) -> int:
        ran.append((script, data))
        return 0

    monkeypatch.setattr(tool, "pyinfra", pyinfra)
    monkeypatch.setattr(tool, "report", lambda fleet: None)
    monkeypatch.setattr(tool, "pin_state", lambda spec, manifest: PinState(spec.name, "p", True))
    monkeypatch.setenv("GPUFLEET_FLEET", str(tmp_path / "fleet.toml"))
    assert tool.main(["--behind-only"]) == 0
    assert ran == [("deploys/lock.py", ("lock=take", "lock_wait=0")),
                   ("deploys/drain.py", ("restore=g1,g2", "gpufleet_rollout_batch=0")),
                   ("deploys/lock.py", ("lock=release",))]


def test_the_rollout_holds_every_hosts_lock_and_gives_it_back_even_when_a_batch_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import os

    import tools.rollout as tool
    from rules.run_lock import HOLDER_ENV, parse_holder

    fleet_of(tmp_path, 2)
    ran: list[tuple[str, tuple[str, ...], str | None]] = []
    limits: list[list[str]] = []
    fail = {"deploys/lock.py:lock=take"}

    def pyinfra(script: str, limit: list[str], *data: str) -> int:
        ran.append((script, data, os.environ.get(HOLDER_ENV)))
        limits.append(list(limit))
        return 1 if f"{script}:{data[0]}" in fail else 0

    monkeypatch.setattr(tool, "pyinfra", pyinfra)
    monkeypatch.setattr(tool, "report", lambda fleet: None)
    monkeypatch.setenv("GPUFLEET_FLEET", str(tmp_path / "fleet.toml"))
    monkeypatch.delenv(HOLDER_ENV, raising=False)
    # Another run holds a lock: nothing but the take and giving back what it did take.
    assert tool.main([]) == 1
    assert [(script, data[0]) for script, data, _ in ran] == [
        ("deploys/lock.py", "lock=take"), ("deploys/lock.py", "lock=release")]
    assert "another run holds a host's lock" in capsys.readouterr().err
    # A failed batch: the lock is given back all the same, under the holder every run got.
    ran.clear()
    fail.clear()
    fail.add("deploys/gpu_host.py:gpufleet_rollout_batch=1")
    limits.clear()
    capsys.readouterr()
    assert tool.main([]) == 1
    assert ran[-1][:2] == ("deploys/lock.py", ("lock=release",))
    # ... but not to the failed batch's hosts: one that did not come back from its reboot
    # is not contacted again (the resumed rollout takes its lock over)
    batch = next(limit for (script, _, _), limit in zip(ran, limits, strict=True)
                 if script == "deploys/gpu_host.py")
    assert batch and not set(batch) & set(limits[-1]), (batch, limits[-1])
    assert f"the run locks of {', '.join(batch)} stay on them" in capsys.readouterr().err
    holders = {record for _, _, record in ran}
    assert len(holders) == 1 and parse_holder(holders.pop()) is not None
    assert HOLDER_ENV not in os.environ  # not left to whatever runs next in this process


@pytest.mark.parametrize("value", ["-1", "3601"])
def test_a_lock_wait_out_of_bounds_is_refused_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        value: str) -> None:
    import tools.rollout as tool

    fleet_of(tmp_path, 2)
    monkeypatch.setattr(tool, "pyinfra", lambda *a: pytest.fail("contacted a host"))
    monkeypatch.setenv("GPUFLEET_FLEET", str(tmp_path / "fleet.toml"))
    assert tool.main(["--lock-wait", value]) == 2
    assert capsys.readouterr().err == (
        f"rollout: --lock-wait {value}: allowed: whole seconds from 0 to 3600\n")
