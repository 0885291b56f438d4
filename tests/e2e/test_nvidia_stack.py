"""End-to-end: the NVIDIA stack on simulated hosts (tests/sim), from bare to verified, with the
preview an operator sees before saying yes.

One story, in order (the tests share the hosts): the preview of bare hosts (answered "no")
changes nothing and shows the reboots to come; converge at the older version of every stand-in
package with a user's own daemon.json in place; the preview of the converged hosts shows no
change and starts no container; a second run changes nothing; `apt-get upgrade` /
`dist-upgrade` move no pinned package; values the fleet stops asking for in daemon.json are
given back; then a pin change, with the hosts' package lists stale, shows its reboot in the
preview and moves the hosts to the newer versions. The hosts are the stack's own
(gpufleet-stack-*), recreated from scratch at the start.
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
# Checks run at execution only: in the preview they are neither a change nor a refusal.
CHECKS = ("Ensure the repositories offer every pinned version to be installed",
          "Ensure the GPUs, CUDA and a GPU container work")


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
    # A minimal image without pciutils: the HGX board must still be seen, NVSwitches and all.
    ok(sh.H100, "rm /usr/bin/lspci")
    # A user's own daemon.json, there before Docker is installed.
    ok(sh.A100, f"mkdir -p /etc/docker && echo '{json.dumps(USER_DAEMON_JSON)}' "
                   "> /etc/docker/daemon.json")
    tree = sh.product_copy(tmp / "tree")
    sh.set_pins(tree, OLD["driver"], OLD["cuda"], OLD["toolkit"])
    yield tree, sh.write_fleet(tmp, HOSTS)
    sh.remove_later(HOSTS)  # the machine is left as it was found


def assert_checks_are_quiet(preview: sh.Preview) -> None:
    for name, counts in preview.rows.items():
        if name.startswith(CHECKS) or name.endswith("is the one running"):
            assert counts == (0, 0), f"a check reads as a change in the preview: {name}"


def test_the_preview_of_bare_hosts_shows_the_reboots_and_changes_nothing(
        fleet: tuple[Path, Path]) -> None:
    before = {host: sh.snapshot(host) for host in HOSTS}
    preview = sh.preview(*fleet)
    assert preview.rc == 0, preview.output[-4000:]
    assert "Unexpected user input: n" in preview.output  # the operator said no
    assert preview.row(f"Ensure driver {OLD['driver']} is installed") == (2, 0)
    # nouveau holds the H100 box's GPUs: a reboot whatever happens; the A100's reboot is
    # tied to the driver install that causes it.
    assert preview.row("Reboot: nouveau is loaded") == (1, 0)
    assert preview.row("Reboot if the driver install changed it: no driver -> 535.161.08") \
        == (0, 1)
    assert preview.row("Restart Docker to apply its new configuration") == (0, 2)
    # NVSwitches read from sysfs (no lspci on the H100 box): Fabric Manager comes with the driver.
    assert preview.row("Ensure nvidia-fabricmanager is enabled at boot") == (1, 0)
    assert_checks_are_quiet(preview)
    assert "rebooting:" not in preview.output and "Beginning operation run" not in preview.output
    assert {host: sh.snapshot(host) for host in HOSTS} == before

    dry = sh.preview(*fleet, "--dry", answer="")
    assert dry.rc == 0 and dry.rows == preview.rows
    assert {host: sh.snapshot(host) for host in HOSTS} == before


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
        # newest 12.1 component offered: see the README's known limits.)
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


def test_the_preview_of_converged_hosts_shows_nothing_and_starts_no_container(
        fleet: tuple[Path, Path]) -> None:
    before = {host: sh.snapshot(host) for host in HOSTS}
    since = {host: sh.host_clock(host) for host in HOSTS}
    preview = sh.preview(*fleet)
    assert preview.rc == 0, preview.output[-4000:]
    assert preview.changes() == [] and preview.conditional() == [], preview.output[-4000:]
    assert_checks_are_quiet(preview)
    for host in HOSTS:
        # The GPU verification starts a container: only ever at execution.
        assert sh.containers_started_since(host, since[host]) == []
        assert sh.snapshot(host) == before[host]


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


def test_daemon_json_values_the_fleet_no_longer_asks_for_are_given_back(
        fleet: tuple[Path, Path], tmp_path: Path) -> None:
    tree, _ = fleet
    asking = sh.write_fleet(tmp_path, [sh.A100], settings={sh.A100: {"docker": {
        "registry_mirrors": ["https://mirror.example.internal"],
        "daemon_json": {"live-restore": True, "log-opts": {"max-size": "50m"}}}}},
        name="asking.toml")
    run = sh.deploy(tree, asking)
    assert run.rc == 0, run.output[-6000:]
    config = json.loads(ok(sh.A100, "cat /etc/docker/daemon.json"))
    assert config["registry-mirrors"] == ["https://mirror.example.internal"]
    assert config["live-restore"] is True and config["log-opts"]["max-size"] == "50m"

    run = sh.deploy(tree, sh.write_fleet(tmp_path, [sh.A100], name="not-asking.toml"))
    assert run.rc == 0, run.output[-6000:]
    config = json.loads(ok(sh.A100, "cat /etc/docker/daemon.json"))
    assert "registry-mirrors" not in config and "live-restore" not in config
    # the user's own value is back, and every other key of theirs is untouched
    assert config["log-opts"] == USER_DAEMON_JSON["log-opts"]
    for key, value in USER_DAEMON_JSON.items():
        assert config[key] == value
    assert config["runtimes"]["nvidia"] == {"args": [], "path": "nvidia-container-runtime"}
    assert ok(sh.A100, "docker info --format '{{.CgroupDriver}}'").strip() == "cgroupfs"


def test_pin_change_with_stale_lists_shows_its_reboot_then_upgrades_and_verifies(
        fleet: tuple[Path, Path]) -> None:
    tree, fleet_file = fleet
    sh.set_pins(tree, NEW["driver"], NEW["cuda"], NEW["toolkit"])
    # The hosts' lists of the NVIDIA repositories are gone (as if fetched before the new
    # versions were published): nothing in the sources changed, yet the new pins need them.
    for host in HOSTS:
        ok(host, "rm -f /var/lib/apt/lists/gpufleet-sim-repo_*")
        assert NEW["driver"] not in ok(host, "apt-cache madison nvidia-driver-535")

    before = {host: sh.snapshot(host) for host in HOSTS}
    preview = sh.preview(tree, fleet_file)
    assert preview.rc == 0, preview.output[-4000:]
    assert preview.row("Ensure apt's package lists are current") == (2, 0)
    assert preview.row(f"Ensure driver {NEW['driver']} is installed") == (2, 0)
    assert preview.row(
        "Reboot if the driver install changed it: driver 535.161.08 -> 535.183.06") == (0, 2)
    assert_checks_are_quiet(preview)
    assert {host: sh.snapshot(host) for host in HOSTS} == before

    run = sh.deploy(tree, fleet_file)
    assert run.rc == 0, run.output[-6000:]
    print(f"\npin change: {run.seconds:.1f} s for {len(HOSTS)} hosts")
    assert run.output.count("refreshing apt package lists: the sources, their keys or the pins "
                            "changed since the last refresh") == len(HOSTS)
    assert run.output.count("rebooting: driver 535.161.08 -> 535.183.06 installed") == len(HOSTS)
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


def test_a_mismatch_on_a_host_without_lspci_is_a_gpu_host_that_needs_a_reboot(
        fleet: tuple[Path, Path]) -> None:
    tree, fleet_file = fleet  # pinned to NEW by the test before
    old, new = OLD["driver"].split("-")[0], NEW["driver"].split("-")[0]
    # The running module is older than the installed driver (an upgrade without a reboot):
    # nvidia-smi answers "Driver/library version mismatch", and there is no lspci to ask.
    ok(sh.H100, f"echo {old} > /sys/module/nvidia/version")
    assert "Driver/library version mismatch" in ok(sh.H100, "nvidia-smi || true")
    assert ok(sh.H100, "command -v lspci || echo none").strip() == "none"

    before = sh.snapshot(sh.H100)
    preview = sh.preview(tree, fleet_file)
    assert preview.rc == 0, preview.output[-4000:]
    assert "[no-gpu]" not in preview.output
    assert "[driver-library-mismatch]" in preview.output
    assert preview.row(f"Reboot: the loaded nvidia module is {old}, the installed driver {new} "
                       "(Driver/library version mismatch)") == (1, 0)
    assert sh.snapshot(sh.H100) == before
    # (The reboot itself, and Fabric Manager after it, are what the pin-change test ran.)
