"""daemon.json merge: the user's keys stay, gpufleet adds only what the fleet file asks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inventory.daemon_json import (
    NVIDIA_RUNTIME,
    DaemonJsonError,
    DaemonJsonWanted,
    merge_daemon_json,
    parse_daemon_json,
    render_daemon_json,
)

USER: dict[str, Any] = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "data-root": "/srv/docker",
    "runtimes": {"custom": {"path": "/usr/local/bin/custom-runc"}},
    "exec-opts": ["native.cgroupdriver=systemd", "native.umask=normal"],
    "registry-mirrors": ["https://mirror.example.internal"],
}


def test_user_keys_stay_and_nvidia_runtime_is_added_as_nvidia_ctk_writes_it() -> None:
    merged = merge_daemon_json(USER, DaemonJsonWanted())
    for key in ("log-driver", "log-opts", "data-root", "registry-mirrors"):
        assert merged[key] == USER[key]
    assert merged["runtimes"] == {"custom": USER["runtimes"]["custom"],
                                  "nvidia": {"args": [], "path": "nvidia-container-runtime"}}
    assert NVIDIA_RUNTIME == {"args": [], "path": "nvidia-container-runtime"}
    assert "default-runtime" not in merged


def test_cgroupfs_protection_replaces_only_the_cgroup_driver_option() -> None:
    merged = merge_daemon_json(USER, DaemonJsonWanted(protection="cgroupfs"))
    assert merged["exec-opts"] == ["native.umask=normal", "native.cgroupdriver=cgroupfs"]


def test_cdi_protection_turns_the_feature_on_and_keeps_other_features() -> None:
    merged = merge_daemon_json({"features": {"buildkit": True}}, DaemonJsonWanted(protection="cdi"))
    assert merged["features"] == {"buildkit": True, "cdi": True}
    assert "exec-opts" not in merged


def test_no_protection_leaves_exec_opts_alone() -> None:
    assert merge_daemon_json(USER, DaemonJsonWanted(protection="none"))["exec-opts"] == \
        USER["exec-opts"]


def test_default_runtime_on_and_back_off() -> None:
    on = merge_daemon_json({}, DaemonJsonWanted(default_runtime_nvidia=True))
    assert on["default-runtime"] == "nvidia"
    off = merge_daemon_json(on, DaemonJsonWanted(default_runtime_nvidia=False))
    assert "default-runtime" not in off
    # A default the user chose that is not nvidia is theirs.
    theirs = merge_daemon_json({"default-runtime": "crun"}, DaemonJsonWanted())
    assert theirs["default-runtime"] == "crun"


def test_registry_mirrors_are_added_after_the_users_without_duplicates() -> None:
    merged = merge_daemon_json(USER, DaemonJsonWanted(registry_mirrors=(
        "https://mirror.example.internal", "https://second.example.internal")))
    assert merged["registry-mirrors"] == ["https://mirror.example.internal",
                                          "https://second.example.internal"]


def test_escape_hatch_wins_and_merges_deeply() -> None:
    merged = merge_daemon_json(USER, DaemonJsonWanted(extra={
        "log-opts": {"max-size": "50m"}, "live-restore": True}))
    assert merged["log-opts"] == {"max-size": "50m", "max-file": "3"}
    assert merged["live-restore"] is True


def test_merge_is_idempotent_and_does_not_mutate_its_input() -> None:
    before = json.loads(json.dumps(USER))
    wanted = DaemonJsonWanted(default_runtime_nvidia=True, registry_mirrors=("https://m.x",),
                              extra={"live-restore": True})
    once = merge_daemon_json(USER, wanted)
    assert merge_daemon_json(once, wanted) == once
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
    merged = merge_daemon_json(user, DaemonJsonWanted())
    managed = {"runtimes", "exec-opts", "default-runtime"}
    for key, value in user.items():
        if key == "default-runtime" and value == "nvidia":
            continue  # the one value the fleet file owns (default_runtime_nvidia)
        assert key in merged
        if key not in managed:
            assert merged[key] == value
    assert merged["runtimes"]["nvidia"] == NVIDIA_RUNTIME
