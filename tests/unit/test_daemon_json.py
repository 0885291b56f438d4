"""daemon.json merge: the user's keys stay, gpufleet adds only what the fleet file asks, and
takes back exactly its own claims when the fleet stops asking."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.daemon_json import (
    NVIDIA_RUNTIME,
    DaemonJsonError,
    DaemonJsonWanted,
    merge_daemon_json,
    parse_daemon_json,
    render_daemon_json,
)


def merge(current: dict[str, Any], wanted: DaemonJsonWanted,
          owned: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return merge_daemon_json(current, owned or [], wanted)[0]


USER: dict[str, Any] = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "data-root": "/srv/docker",
    "runtimes": {"custom": {"path": "/usr/local/bin/custom-runc"}},
    "exec-opts": ["native.cgroupdriver=systemd", "native.umask=normal"],
    "registry-mirrors": ["https://mirror.example.internal"],
}


def test_user_keys_stay_and_nvidia_runtime_is_added_as_nvidia_ctk_writes_it() -> None:
    merged = merge(USER, DaemonJsonWanted())
    for key in ("log-driver", "log-opts", "data-root", "registry-mirrors"):
        assert merged[key] == USER[key]
    assert merged["runtimes"] == {"custom": USER["runtimes"]["custom"],
                                  "nvidia": {"args": [], "path": "nvidia-container-runtime"}}
    assert NVIDIA_RUNTIME == {"args": [], "path": "nvidia-container-runtime"}
    assert "default-runtime" not in merged


def test_cgroupfs_protection_replaces_only_the_cgroup_driver_option_in_place() -> None:
    merged = merge(USER, DaemonJsonWanted(protection="cgroupfs"))
    assert merged["exec-opts"] == ["native.cgroupdriver=cgroupfs", "native.umask=normal"]


def test_cdi_protection_turns_the_feature_on_and_keeps_other_features() -> None:
    merged = merge({"features": {"buildkit": True}}, DaemonJsonWanted(protection="cdi"))
    assert merged["features"] == {"buildkit": True, "cdi": True}
    assert "exec-opts" not in merged


def test_no_protection_leaves_exec_opts_alone() -> None:
    assert merge(USER, DaemonJsonWanted(protection="none"))["exec-opts"] == \
        USER["exec-opts"]


def test_default_runtime_on_and_back_off() -> None:
    on, claims = merge_daemon_json({}, [], DaemonJsonWanted(default_runtime_nvidia=True))
    assert on["default-runtime"] == "nvidia"
    off = merge(on, DaemonJsonWanted(default_runtime_nvidia=False), claims)
    assert "default-runtime" not in off
    # A default the user chose is theirs, nvidia included: gpufleet never claimed it.
    assert merge({"default-runtime": "crun"}, DaemonJsonWanted())["default-runtime"] == "crun"
    assert merge({"default-runtime": "nvidia"}, DaemonJsonWanted())["default-runtime"] == "nvidia"


def test_turning_a_setting_off_restores_what_the_user_had() -> None:
    user = {"default-runtime": "crun", "log-opts": {"max-size": "10m"}}
    wanted = DaemonJsonWanted(default_runtime_nvidia=True, extra={"log-opts": {"max-size": "50m"}})
    on, claims = merge_daemon_json(user, [], wanted)
    assert on["default-runtime"] == "nvidia" and on["log-opts"] == {"max-size": "50m"}
    off, left = merge_daemon_json(on, claims, DaemonJsonWanted())
    assert off["default-runtime"] == "crun" and off["log-opts"] == {"max-size": "10m"}
    assert [c["path"] for c in left] == [["runtimes", "nvidia"], ["exec-opts"]]


def test_a_value_the_user_changed_after_gpufleet_set_it_is_theirs() -> None:
    on, claims = merge_daemon_json({}, [], DaemonJsonWanted(extra={"live-restore": True}))
    on["live-restore"] = False  # changed by hand on the host
    assert merge(on, DaemonJsonWanted(), claims)["live-restore"] is False


def test_a_mirror_the_user_had_too_stays_when_the_fleet_drops_it() -> None:
    user = {"registry-mirrors": ["https://mine.example.internal"]}
    wanted = DaemonJsonWanted(registry_mirrors=("https://mine.example.internal",
                                                "https://fleet.example.internal"))
    on, claims = merge_daemon_json(user, [], wanted)
    assert on["registry-mirrors"] == ["https://mine.example.internal",
                                      "https://fleet.example.internal"]
    assert merge(on, DaemonJsonWanted(), claims)["registry-mirrors"] == \
        ["https://mine.example.internal"]


def test_leaving_cgroupfs_puts_the_users_cgroup_driver_back() -> None:
    on, claims = merge_daemon_json(USER, [], DaemonJsonWanted(protection="cgroupfs"))
    off = merge(on, DaemonJsonWanted(protection="none"), claims)
    assert off["exec-opts"] == USER["exec-opts"]


def test_claims_are_stable_across_runs() -> None:
    wanted = DaemonJsonWanted(default_runtime_nvidia=True, registry_mirrors=("https://m.x",),
                              protection="cgroupfs", extra={"live-restore": True})
    once, claims = merge_daemon_json(USER, [], wanted)
    again, claims_again = merge_daemon_json(once, claims, wanted)
    assert (again, claims_again) == (once, claims)


def test_registry_mirrors_are_added_after_the_users_without_duplicates() -> None:
    merged = merge(USER, DaemonJsonWanted(registry_mirrors=(
        "https://mirror.example.internal", "https://second.example.internal")))
    assert merged["registry-mirrors"] == ["https://mirror.example.internal",
                                          "https://second.example.internal"]


def test_escape_hatch_wins_and_merges_deeply() -> None:
    merged = merge(USER, DaemonJsonWanted(extra={
        "log-opts": {"max-size": "50m"}, "live-restore": True}))
    assert merged["log-opts"] == {"max-size": "50m", "max-file": "3"}
    assert merged["live-restore"] is True


def test_merge_is_idempotent_and_does_not_mutate_its_input() -> None:
    before = json.loads(json.dumps(USER))
    wanted = DaemonJsonWanted(default_runtime_nvidia=True, registry_mirrors=("https://m.x",),
                              extra={"live-restore": True})
    once, claims = merge_daemon_json(USER, [], wanted)
    assert merge(once, wanted, claims) == once
    assert before == USER


@pytest.mark.parametrize("text", [None, "", "  \n"])
def test_missing_or_empty_file_is_an_empty_config(text: str | None) -> None:
    assert parse_daemon_json(text) == {}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"text"'])
def test_a_file_we_cannot_merge_is_an_error_not_a_rewrite(text: str) -> None:
    with pytest.raises(DaemonJsonError):
        parse_daemon_json(text)


def test_render_is_stable_json() -> None:
    text = render_daemon_json({"b": 1, "a": {"d": 2, "c": 3}})
    assert text == render_daemon_json(json.loads(text))
    assert json.loads(text) == {"b": 1, "a": {"d": 2, "c": 3}}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=12), _json, max_size=6))
def test_every_user_key_survives_any_merge(user: dict) -> None:
    merged = merge(user, DaemonJsonWanted())
    managed = {"runtimes", "exec-opts"}
    for key, value in user.items():
        assert key in merged
        if key not in managed:
            assert merged[key] == value
    assert merged["runtimes"]["nvidia"] == NVIDIA_RUNTIME


_wanted = st.builds(
    DaemonJsonWanted,
    default_runtime_nvidia=st.booleans(),
    protection=st.sampled_from(["cgroupfs", "cdi", "none"]),
    registry_mirrors=st.lists(st.sampled_from(["https://a.x", "https://b.x"]), unique=True,
                              max_size=2).map(tuple),
    extra=st.dictionaries(st.sampled_from(["live-restore", "debug", "log-level"]),
                          st.booleans() | st.sampled_from(["info", "warn"]), max_size=2),
)
_user = st.fixed_dictionaries({}, optional={
    "default-runtime": st.sampled_from(["runc", "crun", "nvidia"]),
    "exec-opts": st.lists(st.sampled_from(["native.cgroupdriver=systemd",
                                           "native.cgroupdriver=cgroupfs", "native.umask=normal"]),
                          unique=True, max_size=2),
    "registry-mirrors": st.lists(st.sampled_from(["https://a.x", "https://c.x"]), unique=True,
                                 max_size=2),
    "live-restore": st.booleans(),
    "log-level": st.sampled_from(["debug", "info"]),
    "features": st.fixed_dictionaries({"buildkit": st.booleans()}),
})


@given(_user, _wanted, _wanted)
def test_changing_the_fleet_file_is_the_same_as_having_asked_for_the_new_one_first(
        user: dict, first: DaemonJsonWanted, then: DaemonJsonWanted) -> None:
    """What gpufleet gives back is exactly what it took: going through any earlier settings
    leaves the same file as applying the new settings to the user's own file."""
    via, via_claims = merge_daemon_json(user, [], first)
    via, via_claims = merge_daemon_json(via, via_claims, then)
    direct = merge_daemon_json(user, [], then)[0]
    # (A mirror added by a later run goes after those already there: order aside, the same.)
    def unordered(config: dict) -> dict:
        return {**config, "registry-mirrors": sorted(config.get("registry-mirrors", []))}
    assert unordered(via) == unordered(direct)
    assert merge_daemon_json(via, via_claims, then)[0] == via
