"""End-to-end over SSH, the way real fleets are reached: a non-root user with passwordless
sudo, a key made by the test, sshd inside the simulated host (its port published on the
controller's loopback). Converge (with the reboot a fresh driver needs), a run that changes
nothing, and a pin change that reboots the host again — every command through SSH and sudo.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import stack_helpers as sh
from tests.e2e.hosts import ok
from tests.sim import simctl

pytestmark = pytest.mark.sim

HOST = sh.copy_name("ssh", "gpufleet-sim-a100x2")
USER = "ops"
OLD = {"driver": "535.161.08-1", "cuda": "12.1.0-1", "toolkit": "1.14.6-1"}
NEW = {"driver": "535.183.06-1", "cuda": "12.1.1-1", "toolkit": "1.15.0-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ssh_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """(product tree at the old pins, fleet file, HOME with the test's known_hosts)."""
    if not simctl.engine_reachable():
        pytest.skip("no Docker engine: the simulator cannot run")
    tmp = tmp_path_factory.mktemp("ssh")
    port = free_port()
    sh.start_hosts([HOST], fresh=True,
                   run_args={HOST: ("-p", f"127.0.0.1:{port}:22")})
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpufleet-e2e",
                    "-f", str(key)], check=True)
    public = (tmp / "id_ed25519.pub").read_text().strip()
    ok(HOST, f"id {USER} >/dev/null 2>&1 || useradd -m -s /bin/bash {USER}; "
             f"install -d -m 0700 -o {USER} -g {USER} /home/{USER}/.ssh && "
             f"echo '{public}' > /home/{USER}/.ssh/authorized_keys && "
             f"chown {USER}:{USER} /home/{USER}/.ssh/authorized_keys && "
             f"chmod 0600 /home/{USER}/.ssh/authorized_keys && "
             f"echo '{USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{USER} && "
             f"chmod 0440 /etc/sudoers.d/{USER} && systemctl enable --now ssh")
    tree = sh.product_copy(tmp / "tree")
    sh.set_pins(tree, OLD["driver"], OLD["cuda"], OLD["toolkit"])
    fleet = sh.write_fleet(tmp, [HOST], connect={HOST: {
        "target": "127.0.0.1", "ssh_port": port, "ssh_user": USER, "ssh_key": str(key),
        "sudo": True}})
    home = tmp / "home"  # the test's own ~/.ssh/known_hosts (pyinfra accepts new host keys)
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    (home / ".ssh" / "known_hosts").touch(mode=0o600)
    yield tree, fleet, home
    sh.remove_later([HOST])  # the machine is left as it was found


def deploy(tree: Path, fleet: Path, home: Path) -> sh.DeployRun:
    previous = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        return sh.deploy(tree, fleet)
    finally:
        if previous is not None:
            os.environ["HOME"] = previous


def test_converges_over_ssh_with_sudo_including_the_reboot(
        ssh_fleet: tuple[Path, Path, Path]) -> None:
    run = deploy(*ssh_fleet)
    assert run.rc == 0, run.output[-6000:]
    print(f"\nconverge over SSH: {run.seconds:.1f} s")
    assert f"[{HOST}]" in run.output  # the fleet's name for the host, reached over SSH
    assert "rebooting: no driver -> 535.161.08 installed" in run.output
    assert "back after the reboot" in run.output
    assert ok(HOST, "cat /sys/module/nvidia/version").strip() == "535.161.08"
    assert ok(HOST, "docker run --rm --gpus all gpufleet-sim/cuda-base:12.1 nvidia-smi -L"
              ).count("GPU ") == 2
    # every file was written as root through sudo, not as the SSH user
    owners = ok(HOST, "stat -c '%U' /etc/apt/sources.list.d/gpufleet-cuda.sources "
                      "/etc/docker/daemon.json /etc/apt/keyrings/gpufleet-cuda.gpg").split()
    assert owners == ["root", "root", "root"]


def test_the_second_run_over_ssh_changes_nothing(ssh_fleet: tuple[Path, Path, Path]) -> None:
    run = deploy(*ssh_fleet)
    assert run.rc == 0, run.output[-6000:]
    assert run.changed_ops == [], run.output[-6000:]
    print(f"\nno-op over SSH: {run.seconds:.1f} s")


def test_a_pin_change_over_ssh_reboots_and_verifies(ssh_fleet: tuple[Path, Path, Path]) -> None:
    tree, fleet, home = ssh_fleet
    sh.set_pins(tree, NEW["driver"], NEW["cuda"], NEW["toolkit"])
    run = deploy(tree, fleet, home)
    assert run.rc == 0, run.output[-6000:]
    assert "rebooting: driver 535.161.08 -> 535.183.06 installed" in run.output
    assert "back after the reboot" in run.output
    assert ok(HOST, "cat /sys/module/nvidia/version").strip() == "535.183.06"
    again = deploy(tree, fleet, home)
    assert again.rc == 0 and again.changed_ops == [], again.output[-6000:]
