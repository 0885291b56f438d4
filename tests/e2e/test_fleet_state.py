"""End-to-end: host manifests, the drift audit, and a rebuild from bare proven identical.

This module's own copy of the A100 host, serving the stand-in engine. One story, in order:
converge (the manifest is on the host and in fleet-state/ on the controller) -> the audit
finds no drift -> a hand-edited managed file, an unheld and upgraded package, a stopped service
and a replaced image are each reported by area, with a non-zero exit -> a converge fixes them
and the audit is clean again -> the host is destroyed (container and volumes), recreated bare
and converged again: its manifest is the same, timestamps aside.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rules.manifest import comparable, parse_manifest
from tests.e2e import stack_helpers as sh
from tests.e2e.hosts import ok
from tests.sim import simctl

pytestmark = pytest.mark.sim

HOST = sh.copy_name("state", "gpufleet-sim-a100x2")
BLACKLIST = "/etc/modprobe.d/gpufleet-blacklist-nouveau.conf"
TOOLKIT = ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
           "libnvidia-container-tools", "libnvidia-container1")


@dataclass
class Fleet:
    tree: Path
    fleet: Path
    state_dir: Path

    def audit(self) -> sh.DeployRun:
        return sh.deploy(self.tree, self.fleet, script="deploys/audit.py", timeout=300)

    def converge(self) -> sh.DeployRun:
        run = sh.deploy(self.tree, self.fleet)
        assert run.rc == 0, run.output[-5000:]
        return run


@pytest.fixture(scope="module")
def fleet(sim: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet-state")
    sh.start_converged([HOST])  # the story starts converged; the last test rebuilds from bare
    tree = sh.product_copy(tmp / "tree")
    path = sh.write_fleet(tmp, [HOST], inference=True)
    name = next(line.split('"')[1] for line in path.read_text().splitlines()
                if line.startswith("name = "))
    yield Fleet(tree, path, tmp / "fleet-state" / name)


def host_manifest() -> dict:
    found = parse_manifest(ok(HOST, "cat /etc/gpufleet/manifest.json"))
    assert found is not None
    return found


def test_a_converge_records_the_host_on_the_host_and_the_controller(fleet: Fleet) -> None:
    fleet.converge()
    manifest = host_manifest()
    copy = json.loads((fleet.state_dir / f"{HOST}.json").read_text())
    assert copy == manifest
    assert manifest["pin_set"] == "r535-cuda121" and manifest["host"] == HOST
    assert manifest["packages"]["cuda-toolkit-12-1"] == {"version": "12.1.1-1", "held": True}
    assert manifest["files"][BLACKLIST]["mode"] == "644"
    assert "nvidia-persistenced" in manifest["services"]
    assert manifest["images"]["gpufleet-sim/cuda-base:12.1"].startswith("sha256:")
    assert "--max-model-len" in manifest["engine"]["args"]
    assert manifest["weights"]  # the controller folder's manifest digest


def test_the_audit_of_a_converged_host_finds_no_drift(fleet: Fleet) -> None:
    run = fleet.audit()
    assert run.rc == 0, run.output[-4000:]
    assert "no drift on 1 host(s)" in run.output
    assert json.loads((fleet.state_dir / "audit.json").read_text()) == {HOST: []}


def test_drift_is_reported_by_area_and_a_converge_brings_the_host_back(fleet: Fleet) -> None:
    ok(HOST, f"echo '# tuned by hand' >> {BLACKLIST}")
    ok(HOST, "apt-mark unhold " + " ".join(TOOLKIT) + " >/dev/null && "
             "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
             "--allow-change-held-packages " + " ".join(f"{p}=1.15.0-1" for p in TOOLKIT))
    ok(HOST, "systemctl stop nvidia-persistenced")
    ok(HOST, "docker tag vllm/vllm-openai:v0.4.2 gpufleet-sim/cuda-base:12.1")

    run = fleet.audit()
    assert run.rc != 0
    report = json.loads((fleet.state_dir / "audit.json").read_text())[HOST]
    areas = {entry["area"] for entry in report}
    assert areas == {"files", "packages", "holds", "services", "images"}, report
    text = run.output
    assert f"{BLACKLIST} changed by hand (since " in text
    assert "nvidia-container-toolkit 1.15.0-1 installed, 1.14.6-1 pinned" in text
    assert "nvidia-container-toolkit is not held" in text
    assert "nvidia-persistenced is inactive" in text
    assert "gpufleet-sim/cuda-base:12.1 is another image now" in text
    row = next(line for line in text.splitlines() if line.startswith(HOST + " "))
    assert row.split()[1:] == ["ok", "drift(4)", "drift(4)", "drift(1)", "drift(1)",
                               "drift(1)", "ok", "ok"], row

    fleet.converge()
    again = fleet.audit()
    assert again.rc == 0, again.output[-4000:]
    assert "no drift on 1 host(s)" in again.output


def test_a_host_rebuilt_from_bare_has_the_same_manifest(fleet: Fleet) -> None:
    before = comparable(host_manifest())
    simctl.remove_hosts([HOST])  # the container and its volumes (Docker's data included)
    sh.start_hosts([HOST])
    assert ok(HOST, "test -e /etc/gpufleet/manifest.json || echo bare").strip() == "bare"
    fleet.converge()
    after = comparable(host_manifest())
    assert after == before
