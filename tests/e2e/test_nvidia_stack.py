"""End-to-end: the NVIDIA stack on simulated hosts (tests/sim), from bare to verified.

One story, in order (the tests share the hosts): converge at the older version of every
stand-in package with a user's own daemon.json in place, a second run changes nothing,
`apt-get upgrade` / `dist-upgrade` move no pinned package although newer ones are offered,
then a pin change in pins.toml moves the hosts to the newer versions (with the reboot the new
driver needs) and verifies them. The hosts are the stack's own (gpufleet-stack-*), recreated
from scratch at the start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import stack_helpers as sh
from tests.e2e.hosts import ok
from tests.sim import simctl

pytestmark = pytest.mark.sim

OLD = {"driver": "535.161.08-1", "cuda": "12.1.0-1", "toolkit": "1.14.6-1"}
NEW = {"driver": "535.183.06-1", "cuda": "12.1.1-1", "toolkit": "1.15.0-1"}
DRIVER = ["cuda-drivers-535", "nvidia-driver-535", "nvidia-utils-535", "libnvidia-compute-535",
          "nvidia-compute-utils-535", "nvidia-dkms-535"]
TOOLKIT = ["nvidia-container-toolkit", "nvidia-container-toolkit-base",
           "libnvidia-container-tools", "libnvidia-container1"]
HOSTS = [sh.H100, sh.A100]
USER_DAEMON_JSON = {"log-opts": {"max-size": "10m", "max-file": "3"}, "debug": False,
                    "labels": ["owner=ml-platform"]}


def pinned(versions: dict[str, str], host: str) -> dict[str, str]:
    wanted = {**dict.fromkeys(DRIVER, versions["driver"]), "cuda-toolkit-12-1": versions["cuda"],
              **dict.fromkeys(TOOLKIT, versions["toolkit"])}
    if host == sh.H100:
        wanted["nvidia-fabricmanager-535"] = versions["driver"]
    return wanted


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    if not simctl.engine_reachable():
        pytest.skip("no Docker engine: the simulator cannot run")
    tmp = tmp_path_factory.mktemp("stack")
    sh.start_hosts(HOSTS, fresh=True)
    # A user's own daemon.json, there before Docker is installed.
    ok(sh.A100, f"mkdir -p /etc/docker && echo '{json.dumps(USER_DAEMON_JSON)}' "
                   "> /etc/docker/daemon.json")
    tree = sh.product_copy(tmp / "tree")
    sh.set_pins(tree, OLD["driver"], OLD["cuda"], OLD["toolkit"])
    yield tree, sh.write_fleet(tmp, HOSTS)


def test_converges_from_bare_hosts(fleet: tuple[Path, Path]) -> None:
    run = sh.deploy(*fleet)
    assert run.rc == 0, run.output[-6000:]
    print(f"\nconverge: {run.seconds:.1f} s for {len(HOSTS)} hosts")
    assert "rebooting: nouveau is loaded" in run.output  # the H100 box boots with nouveau
    for host in HOSTS:
        want = pinned(OLD, host)
        assert sh.dpkg_versions(host, list(want)) == want
        held = set(ok(host, "apt-mark showhold").split())
        assert set(want) <= held
        assert ok(host, "cat /sys/module/nvidia/version").strip() == "535.161.08"
        assert "nouveau" not in ok(host, "ls /sys/module")
        assert "nvidia" in ok(host, "docker info --format '{{json .Runtimes}}'")
        assert ok(host, "docker info --format '{{.CgroupDriver}}'").strip() == "cgroupfs"
        assert ok(host, "systemctl is-active nvidia-persistenced").strip() == "active"
        login = ok(host, "bash -lc 'nvcc --version; echo LD=$LD_LIBRARY_PATH'")
        # (The toolkit metapackage depends on its components with ">=", so nvcc itself is the
        # newest 12.1 component offered: see the closing note.)
        assert "release 12.1," in login and "LD=/usr/local/cuda-12.1/lib64" in login
        assert ok(host, "docker run --rm --gpus all gpufleet-sim/cuda-base:12.1 "
                           "nvidia-smi -L").count("GPU ") == (8 if host == sh.H100 else 2)
    assert ok(sh.H100, "systemctl is-active nvidia-fabricmanager").strip() == "active"
    assert "nvidia-fabricmanager" not in ok(sh.A100, "dpkg -l | grep fabric || true")


def test_users_daemon_json_keys_are_kept(fleet: tuple[Path, Path]) -> None:
    config = json.loads(ok(sh.A100, "cat /etc/docker/daemon.json"))
    for key, value in USER_DAEMON_JSON.items():
        assert config[key] == value
    assert config["runtimes"]["nvidia"] == {"args": [], "path": "nvidia-container-runtime"}
    before = json.loads(ok(sh.A100, "cat /etc/docker/daemon.json.before-gpufleet"))
    assert before == USER_DAEMON_JSON


def test_second_run_changes_nothing(fleet: tuple[Path, Path]) -> None:
    run = sh.deploy(*fleet)
    assert run.rc == 0, run.output[-6000:]
    print(f"\nno-op: {run.seconds:.1f} s for {len(HOSTS)} hosts")
    assert run.changed_ops == [], run.output[-6000:]
    assert "No changes" in run.output


def test_apt_upgrade_moves_no_pinned_package(fleet: tuple[Path, Path]) -> None:
    for host in HOSTS:
        want = pinned(OLD, host)
        # Newer versions are offered: without the pins and holds apt would take them.
        offered = ok(host, "apt-get update -q >/dev/null && apt-cache madison "
                              "nvidia-driver-535 cuda-toolkit-12-1 nvidia-container-toolkit")
        for version in (NEW["driver"], NEW["cuda"], NEW["toolkit"]):
            assert version in offered
        ok(host, "DEBIAN_FRONTEND=noninteractive apt-get -y -q upgrade && "
                    "DEBIAN_FRONTEND=noninteractive apt-get -y -q dist-upgrade")
        assert sh.dpkg_versions(host, list(want)) == want
        # apt's own view: the candidate is the pin, not the newest offered.
        policy = ok(host, "apt-cache policy nvidia-driver-535")
        assert f"Candidate: {OLD['driver']}" in policy


def test_pin_change_upgrades_and_verifies(fleet: tuple[Path, Path]) -> None:
    tree, fleet_file = fleet
    sh.set_pins(tree, NEW["driver"], NEW["cuda"], NEW["toolkit"])
    run = sh.deploy(tree, fleet_file)
    assert run.rc == 0, run.output[-6000:]
    print(f"\npin change: {run.seconds:.1f} s for {len(HOSTS)} hosts")
    assert run.output.count("(Driver/library version mismatch)") == len(HOSTS)
    for host in HOSTS:
        want = pinned(NEW, host)
        assert sh.dpkg_versions(host, list(want)) == want
        assert set(want) <= set(ok(host, "apt-mark showhold").split())
        assert ok(host, "cat /sys/module/nvidia/version").strip() == "535.183.06"
        assert "Pin: version 535.183.06-1" in ok(
            host, "cat /etc/apt/preferences.d/gpufleet-nvidia-driver.pref")
    assert ok(sh.H100, "systemctl is-active nvidia-fabricmanager").strip() == "active"
    again = sh.deploy(tree, fleet_file)
    assert again.rc == 0 and again.changed_ops == [], again.output[-6000:]
