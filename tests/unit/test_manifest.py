"""The host manifest and the drift audit: each kind of drift is found, by area, and a host
that is what its manifest says has none."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from facts.host_state import HostStateResult, parse_image_ids, parse_images
from facts.weights_files import WeightsListing
from rules.manifest import (
    carry_over,
    comparable,
    drift,
    parse_manifest,
    render_audit_table,
    render_manifest,
)

PINS = "a" * 64
UNIT = "[Unit]\nDescription=x\n"
IMAGE = "vllm/vllm-openai:v0.4.2"
IMAGE_ID = "sha256:" + "1" * 64


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


MANIFEST: dict[str, Any] = {
    "gpufleet_manifest": 1, "written_at": "2026-12-01T10:00:00Z", "pin_set": "r535-cuda121",
    "pins_sha256": PINS,
    "packages": {"cuda-drivers-535": {"version": "535.183.06-1", "held": True},
                 "curl": {"version": "7.88.1-10+deb12u5", "held": False}},
    "files": {"/etc/systemd/system/gpufleet-inference.service":
              {"sha256": sha(UNIT), "mode": "644", "owner": "root:root"},
              "/etc/apt/apt.conf.d/90gpufleet-proxy": None},
    "services": ["gpufleet-inference"],
    "images": {IMAGE: IMAGE_ID},
    "weights": None,
}


def state(**changes: Any) -> HostStateResult:
    data: dict[str, Any] = {
        "installed": {"cuda-drivers-535": "535.183.06-1", "curl": "7.88.1-10+deb12u5"},
        "held": ["cuda-drivers-535"],
        "files": {"/etc/systemd/system/gpufleet-inference.service":
                  {"content": UNIT, "mtime": 1796119200}},
        "services": {"gpufleet-inference": ["enabled", "active"]},
        "images": [IMAGE], "image_ids": {IMAGE: IMAGE_ID},
    }
    data.update(changes)
    return HostStateResult.from_dict(data)


NO_WEIGHTS = WeightsListing("absent")


def audit(host: HostStateResult, manifest: dict[str, Any] | None = MANIFEST,
          weights: WeightsListing = NO_WEIGHTS, pins: str = PINS) -> list[tuple[str, str]]:
    return [(d.area, d.what) for d in drift(manifest, host, weights, pins, "r535-cuda121")]


def test_a_host_that_is_its_manifest_has_no_drift() -> None:
    assert audit(state()) == []


@pytest.mark.parametrize("changes,area,words", [
    ({"files": {"/etc/systemd/system/gpufleet-inference.service":
                {"content": UNIT + "# edited\n", "mtime": 1796122800}}},
     "files", "gpufleet-inference.service changed by hand"),
    ({"files": {}}, "files", "gpufleet-inference.service is missing"),
    ({"held": []}, "holds", "cuda-drivers-535 is not held"),
    ({"installed": {"cuda-drivers-535": "535.216.01-1", "curl": "7.88.1-10+deb12u5"}},
     "packages", "cuda-drivers-535 535.216.01-1 installed, 535.183.06-1 pinned"),
    ({"services": {"gpufleet-inference": ["enabled", "failed"]}}, "services",
     "gpufleet-inference is failed"),
    ({"image_ids": {IMAGE: "sha256:" + "2" * 64}}, "images", f"{IMAGE} is another image now"),
    ({"image_ids": {}}, "images", f"{IMAGE} is gone"),
])
def test_each_kind_of_drift_is_found_in_its_area(changes: dict[str, Any], area: str,
                                                 words: str) -> None:
    found = audit(state(**changes))
    assert [a for a, _ in found] == [area], found
    assert words in found[0][1]


def test_a_hand_edit_says_since_when() -> None:
    host = state(files={"/etc/systemd/system/gpufleet-inference.service":
                        {"content": "x", "mtime": 1796122800}})
    (found,) = drift(MANIFEST, host, NO_WEIGHTS, PINS, "r535-cuda121")
    assert found.since == "2026-12-01 11:00 UTC"


def test_a_file_gpufleet_removed_coming_back_is_drift() -> None:
    host = state(files={"/etc/systemd/system/gpufleet-inference.service": {"content": UNIT},
                        "/etc/apt/apt.conf.d/90gpufleet-proxy": {"content": "Acquire {}"}})
    assert audit(host) == [("files", "/etc/apt/apt.conf.d/90gpufleet-proxy is back "
                                     "(gpufleet removed it)")]


def test_new_pins_in_the_fleet_file_are_reported_as_pending() -> None:
    (found,) = audit(state(), pins="b" * 64)
    assert found[0] == "pins" and "run the deploy" in found[1]


def test_no_manifest_is_reported() -> None:
    assert audit(state(), manifest=None)[0][0] == "pins"


def test_weights_changed_since_verified() -> None:
    manifest = {**MANIFEST, "weights_manifest_sha256": "c" * 64}
    weights = WeightsListing("ok", files={"a.safetensors": (10, "2.0")},
                             manifest={"files": {"a.safetensors": {}, "b.safetensors": {}}},
                             verified={"a.safetensors": (10, "1.0")})
    (found,) = audit(state(), manifest=manifest, weights=weights)
    assert found == ("weights", "changed since verified: a.safetensors; missing: b.safetensors")


def test_the_manifest_round_trips_and_compares_without_its_timestamp() -> None:
    text = render_manifest({k: v for k, v in MANIFEST.items() if k != "gpufleet_manifest"})
    again = render_manifest({**{k: v for k, v in MANIFEST.items() if k != "gpufleet_manifest"},
                             "written_at": "2027-01-01T00:00:00Z"})
    assert parse_manifest(text) == MANIFEST
    assert comparable(parse_manifest(text)) == comparable(parse_manifest(again))
    for garbage in (None, "", "{", "[]", '{"gpufleet_manifest": 99}'):
        assert parse_manifest(garbage) is None


def test_image_ids_come_from_the_state_read() -> None:
    text = (f"vllm/vllm-openai v0.4.2 <none> {IMAGE_ID}\n"
            "<none> <none> <none> sha256:" + "3" * 64 + "\n"
            "old-format line\n")
    assert parse_image_ids(text) == {IMAGE: IMAGE_ID}
    assert parse_images(text) == frozenset({IMAGE})


def test_the_fleet_table_has_a_cell_per_host_and_area() -> None:
    table = render_audit_table({"gpu-01": [], "gpu-02": drift(MANIFEST, state(held=[]),
                                                                NO_WEIGHTS, PINS, "x")})
    lines = table.splitlines()
    assert lines[0].split() == ["host", "pins", "packages", "holds", "files", "services",
                                "images", "driver", "weights"]
    assert lines[1].split() == ["gpu-01"] + ["ok"] * 8
    assert lines[2].split()[3] == "drift(1)"
    assert "gpu-02: holds: cuda-drivers-535 is not held (apt may upgrade it)" in table
    assert lines[-1] == "1 of 2 host(s) drifted"


def test_a_secret_file_is_recorded_by_mode_and_owner_never_by_a_digest() -> None:
    # The manifest is 0644 on the host and copied to the controller: a sha256 of a key or a
    # proxy password there could be guessed offline. The audit still checks mode and owner.
    from facts.host_state import API_KEY_PATH
    from operations.desired import desired
    from operations.host_files import managed_file
    from tests.unit.test_operations import Run

    key = "VLLM_API_KEY=" + "k" * 40 + "\n"
    run = Run({"HostState": {}}, executing=True)
    run.commands(managed_file._inner, [], {"path": API_KEY_PATH, "content": key, "mode": "600",
                                           "secret": True})
    with run.context():
        recorded = desired().files[API_KEY_PATH]
    assert recorded == {"secret": True, "mode": "600", "owner": "root:root"}
    text = render_manifest({"files": {API_KEY_PATH: recorded}})
    assert sha(key) not in text and "kkkk" not in text
    manifest = {**MANIFEST, "files": {**MANIFEST["files"], API_KEY_PATH: recorded}}
    files = {"/etc/systemd/system/gpufleet-inference.service": {"content": UNIT}}
    rotated = state(files={**files, API_KEY_PATH: {"content": "VLLM_API_KEY=other\n",
                                                   "mode": "600"}})
    assert audit(rotated, manifest) == []
    opened = state(files={**files, API_KEY_PATH: {"content": key, "mode": "644"}})
    assert audit(opened, manifest) == [("files", f"{API_KEY_PATH} is 644 root:root, wanted "
                                                 "600 root:root")]


def test_a_run_of_some_steps_keeps_the_others_entries_and_drops_the_old_engine_image() -> None:
    """deploys/serve.py takes only the serving steps: its manifest is what they recorded over
    what the last converge recorded for the driver, Docker, the venv..., so the audit after
    it neither loses the others nor reports the served compose file as changed by hand."""
    previous = {
        "engine": {"image": "vllm:old"},
        "packages": {"nvidia-driver-535": {"version": "535.1", "held": True}},
        "files": {"/etc/docker/daemon.json": {"sha256": "d"}, "/etc/compose.yaml": {"sha256": "a"}},
        "services": ["docker"],
        "images": {"vllm:old": "sha256:1", "dcgm:1": "sha256:2"},
        "keyrings": {"/k.gpg": "F"},
    }
    body = {
        "engine": {"image": "vllm:new"}, "packages": {},
        "files": {"/etc/compose.yaml": {"sha256": "b"}}, "services": ["gpufleet-inference"],
        "images": {"vllm:new": "sha256:3", "dcgm:1": "sha256:2"}, "keyrings": {},
    }
    merged = carry_over(previous, body)
    assert merged["engine"] == {"image": "vllm:new"}
    assert merged["packages"] == previous["packages"] and merged["keyrings"] == {"/k.gpg": "F"}
    assert merged["files"] == {"/etc/compose.yaml": {"sha256": "b"},
                               "/etc/docker/daemon.json": {"sha256": "d"}}
    assert merged["services"] == ["docker", "gpufleet-inference"]
    assert merged["images"] == {"dcgm:1": "sha256:2", "vllm:new": "sha256:3"}
    assert carry_over(None, body) == body
