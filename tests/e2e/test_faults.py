"""Faults real fleets throw, on this module's own three copies of the A100 host
(gpufleet-faults-a100x2, gpufleet-faultsb-a100x2, gpufleet-faultsc-a100x2):

1. another apt process holds the dpkg lock (a real `apt-get install` of a user's package whose
   configuration takes a while): the converge waits, says who holds it, and goes on once it
   is released; held past settings.apt.lock_timeout_seconds the host fails naming the holder,
   holds nothing it had unheld and kills nothing, and the re-run converges;
2. an interrupted dpkg (a real `dpkg -i` killed while configuring: apt then refuses with
   "dpkg was interrupted"): detected by the probe and finished with `dpkg --configure -a`;
3. one of three hosts does not answer (its container paused): the other two converge, the
   fault summary names the lost host, the exit status is non-zero; the re-run converges it;
4. a reboot that never comes back (Docker told not to start the container again): with
   driver.reboot_timeout_seconds = 60, tools/rollout.py (batches of one host) fails that
   host naming the reboot and the wait, stops there (the next host is not changed or
   rebooted), unholds nothing; the host started again, `--behind-only` finishes the rollout;
5. the NVIDIA repository stops answering: one host's container toolkit source points at this
   module's own copy of the stand-in repository (gpufleet-faults-repo, on the simulator's
   network; the shared gpufleet-sim-repo serves other modules and is never stopped); stopped
   during a pin change, that host fails with the URL and apt's error, holds and versions
   unchanged, the other host takes the change; started again, the re-run converges.

One converge serves faults 1-3, then a pin change with the lock held past the bound, then the
re-run; 4 and 5 use two of the hosts. Every wait is bounded: the user's package gives up its
lock after 300 s whatever happens, a reboot is given up after 60 s, the repository copy must
answer within 30 s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import stack_helpers as sh
from tests.e2e.hosts import ok
from tests.e2e.hosts import sh as run_in
from tests.sim import simctl

pytestmark = pytest.mark.sim

A, B, C = (f"gpufleet-{prefix}-a100x2" for prefix in ("faults", "faultsb", "faultsc"))
HOSTS = [A, B, C]
DRIVER = ["cuda-drivers-535", "nvidia-driver-535", "nvidia-utils-535"]
TOOLKIT = ["nvidia-container-toolkit", "libnvidia-container1"]
OLD_TOOLKIT, NEW_TOOLKIT = "1.14.6-1", "1.15.0-1"
OLD_PINS = ("535.161.08-1", "12.1.0-1", OLD_TOOLKIT)  # driver, CUDA, container toolkit
FAULTS_REPO = "gpufleet-faults-repo"  # this module's own copy of the stand-in repository
RELEASE = "/root/faults-release"

# TEST STAND-IN for a user's package whose configuration takes a while (a real .deb, installed
# by the real apt-get): its postinst runs until /root/faults-release exists, 300 s at most.
SLEEPER = r"""
set -e
d=$(mktemp -d); mkdir -p "$d/DEBIAN"
printf 'Package: faults-sleeper\nVersion: 1.0\nArchitecture: all\nMaintainer: gpufleet tests\n'\
'Description: TEST STAND-IN: a package whose configuration holds the dpkg lock\n' \
  > "$d/DEBIAN/control"
cat > "$d/DEBIAN/postinst" <<'EOF'
#!/bin/sh
echo $$ > /root/faults-postinst.pid
touch /root/faults-postinst-started
i=0
while [ ! -e /root/faults-release ] && [ $i -lt 300 ]; do sleep 1; i=$((i + 1)); done
exit 0
EOF
chmod 755 "$d/DEBIAN/postinst"
dpkg-deb --build "$d" /root/faults-sleeper.deb >/dev/null
rm -rf "$d"
"""
# A real apt-get holding the lock: its pid is the one gpufleet must name.
HOLDER = (
    "rm -f /root/faults-release /root/faults-postinst-started; "
    "echo $$ > /root/faults-holder.pid; exec env DEBIAN_FRONTEND=noninteractive "
    "apt-get install -y --reinstall /root/faults-sleeper.deb > /root/faults-holder.log 2>&1"
)


def start_holder(host: str) -> int:
    """Start the user's apt-get on ``host``; return its pid once it holds the lock."""
    subprocess.run(["docker", "exec", "-d", host, "bash", "-c", HOLDER], check=True)
    ok(host, "for i in $(seq 120); do [ -e /root/faults-postinst-started ] && exit 0; "
             "sleep 0.5; done; cat /root/faults-holder.log; exit 1", timeout=90)
    return int(ok(host, "cat /root/faults-holder.pid"))


def release_holder(host: str, pid: int) -> None:
    ok(host, f"touch {RELEASE}; for i in $(seq 60); do [ -d /proc/{pid} ] || exit 0; "
             "sleep 0.5; done; exit 1", timeout=60)


def holds_and_versions(host: str) -> str:
    return ok(host, "apt-mark showhold | sort; dpkg-query -W " + " ".join(DRIVER + TOOLKIT))


@pytest.fixture(scope="module")
def tree(sim: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    sh.start_hosts(HOSTS, fresh=True)
    for host in HOSTS:
        ok(host, SLEEPER)
    start_repo_copy()
    yield sh.product_copy(tmp_path_factory.mktemp("faults") / "tree")
    subprocess.run(["docker", "unpause", C], capture_output=True)
    subprocess.run(["docker", "rm", "-f", FAULTS_REPO], capture_output=True)
    simctl.remove_hosts(HOSTS)  # the machine is left as it was found


def fleet(tmp: Path, lock_timeout: int) -> Path:
    return sh.write_fleet(tmp, HOSTS, settings={
        A: {"apt": {"lock_timeout_seconds": lock_timeout}}})


def summary_of(output: str) -> str:
    assert "--> gpufleet fault summary:" in output, output[-5000:]
    return output.split("--> gpufleet fault summary:", 1)[1]


def test_a_held_lock_an_interrupted_dpkg_and_a_lost_host_in_one_converge(
        tree: Path, tmp_path: Path) -> None:
    # B: a real dpkg killed while it configured a package.
    ok(B, f"rm -f {RELEASE} /root/faults-postinst-started; "
          "dpkg -i /root/faults-sleeper.deb >/dev/null 2>&1 & d=$!; "
          "for i in $(seq 60); do [ -e /root/faults-postinst-started ] && break; sleep 0.5; done; "
          f"kill -9 $d $(cat /root/faults-postinst.pid); touch {RELEASE}", timeout=60)
    refused = run_in(B, "apt-get check 2>&1")  # what apt says before gpufleet runs
    assert "dpkg was interrupted, you must manually run 'dpkg --configure -a'" in refused.stdout
    # A: the user's apt-get holds the lock as the converge starts; released 25 s later.
    holder = start_holder(A)
    # C: does not answer.
    subprocess.run(["docker", "pause", C], check=True)
    timer = threading.Timer(25, release_holder, (A, holder))
    timer.start()
    try:
        run = sh.deploy(tree, fleet(tmp_path, 120), "-vvv", timeout=900)  # -vvv: command output
    finally:
        timer.join()
    out = run.output
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)

    assert run.rc != 0, out[-5000:]
    summary = summary_of(out)
    assert summary.startswith(" 1 of 3 host(s) failed; the others were not affected\n")
    assert f"    @docker/{C}\n      step:  reading the host, before any change" in summary
    # (with -vvv Docker's "is paused" goes straight to the terminal: the failed probe is named)
    assert re.search(r"      cause: the host did not answer: .*(?:is paused|could not load fact: "
                     r"facts\.probe\.GpuHostProbe)", summary), summary
    assert "      do:    check that the host is up" in summary
    # pyinfra's own error lines are kept above the summary
    assert "could not load fact" in out.split("--> gpufleet fault summary:")[0]

    # A waited for the lock, naming the holder, and converged; the user's package finished.
    assert re.search(rf"\[@docker/{A}\]\s+gpufleet: waiting for the apt/dpkg lock \(up to 120 "
                     rf"s\), held by apt-get \(pid {holder}: apt-get install -y --reinstall "
                     r"/root/faults-sleeper.deb\)", plain), out[-5000:]
    assert re.search(rf"\[@docker/{A}\]\s+gpufleet: the apt/dpkg lock is free after", plain)
    # B's interrupted run was found by the probe and finished.
    assert re.search(rf"\[@docker/{B}\]\s+dpkg left work unfinished \(faults-sleeper "
                     r"\(half-configured\)", plain), out[-5000:]
    for host in (A, B):
        assert sh.dpkg_versions(host, ["faults-sleeper"]) == {"faults-sleeper": "1.0"}
        assert set(DRIVER) <= set(ok(host, "apt-mark showhold").split())
        assert sh.dpkg_versions(host, TOOLKIT) == dict.fromkeys(TOOLKIT, OLD_TOOLKIT)
        assert ok(host, "ls /var/lib/dpkg/updates").strip() == ""
        # unattended-upgrades is told to leave the pinned families alone (apt parses it)
        blacklist = ok(host, "apt-config dump Unattended-Upgrade::Package-Blacklist")
        for family in ("nvidia-", "libnvidia-", "cuda-"):
            assert f'"{family}";' in blacklist, blacklist


def test_a_lock_held_past_the_bound_fails_the_host_naming_the_holder_and_a_rerun_converges(
        tree: Path, tmp_path: Path) -> None:
    subprocess.run(["docker", "unpause", C], check=True)
    sh.set_pins(tree, "535.183.06-1", "12.1.1-1", NEW_TOOLKIT)
    before = holds_and_versions(A)
    holder = start_holder(A)
    try:
        started = time.monotonic()
        run = sh.deploy(tree, fleet(tmp_path, 20), timeout=900)
        assert run.rc != 0, run.output[-5000:]
        summary = summary_of(run.output)
        assert summary.startswith(" 1 of 3 host(s) failed; the others were not affected\n")
        assert f"    @docker/{A}\n      step:  NVIDIA apt repositories | " in summary, summary
        assert (f"      cause: waited 20 s for the apt/dpkg lock, held by apt-get (pid {holder}: "
                "apt-get install -y --reinstall /root/faults-sleeper.deb)") in summary
        # pyinfra's lines for the failed command stay, with gpufleet's own
        assert "gpufleet: gave up after 20 s waiting for the apt/dpkg lock" in run.output
        # nothing held was unheld, nothing moved, the user's apt-get was left running
        assert holds_and_versions(A) == before
        assert run_in(A, f"test -d /proc/{holder}").returncode == 0
        # the other hosts went on: C, lost in the first run, converged; B took the pin change
        for host in (B, C):
            assert sh.dpkg_versions(host, TOOLKIT) == dict.fromkeys(TOOLKIT, NEW_TOOLKIT)
            assert set(DRIVER + TOOLKIT) <= set(ok(host, "apt-mark showhold").split())
        print(f"lock past the bound: {time.monotonic() - started:.0f} s\n{summary}")
    finally:
        release_holder(A, holder)

    rerun = sh.deploy(tree, fleet(tmp_path, 20), timeout=900)
    assert rerun.rc == 0, rerun.output[-5000:]
    assert "gpufleet fault summary" not in rerun.output
    assert sh.dpkg_versions(A, TOOLKIT) == dict.fromkeys(TOOLKIT, NEW_TOOLKIT)
    assert set(DRIVER + TOOLKIT) <= set(ok(A, "apt-mark showhold").split())
    assert sh.dpkg_versions(A, ["faults-sleeper"]) == {"faults-sleeper": "1.0"}


def start_repo_copy() -> None:
    """This module's own copy of the stand-in repository (the shared gpufleet-sim-repo serves
    other modules at the same time and is never stopped), on the simulator's network."""
    image = simctl.ensure_shared()["repo"]
    subprocess.run(["docker", "rm", "-f", FAULTS_REPO], capture_output=True)
    subprocess.run(["docker", "run", "-d", "--name", FAULTS_REPO, "--hostname", FAULTS_REPO,
                    "--network", simctl.NETWORK, "--label", f"{simctl.LABEL}=repo", image],
                   check=True, capture_output=True)
    repo_up()


def fleet_of_two(tmp: Path) -> Path:
    """A and B (tests 4 and 5): reboots given up after 60 s, the smallest allowed; A's
    container toolkit source on the module's repository copy (B's on the shared one)."""
    url = f"http://{FAULTS_REPO}/libnvidia-container/stable/deb/{{arch}}"
    short = {"reboot_timeout_seconds": 60}
    return sh.write_fleet(tmp, [A, B], settings={
        A: {"driver": short, "repos": {"container_toolkit": {"url": url}}},
        B: {"driver": short}})


def pid1_start(host: str) -> str:
    """When the host's init started: a simulated host shares the kernel (its boot_id does not
    change on a reboot), its PID 1 does (as tests/e2e/test_rollout.py reads it)."""
    return ok(host, "cut -d' ' -f22 /proc/1/stat").strip()


def rollout(tree: Path, fleet_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not (tree / "tools" / "rollout.py").exists():
        (tree / "tools").mkdir(exist_ok=True)
        shutil.copy2(sh.REPO / "tools" / "rollout.py", tree / "tools" / "rollout.py")
    env = {**os.environ, "GPUFLEET_FLEET": str(fleet_file), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(tree / "tools" / "rollout.py"), *args],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=900)


def test_a_reboot_that_does_not_come_back_fails_the_host_and_stops_the_rollout(
        tree: Path, tmp_path: Path) -> None:
    # A's simulated reboot does not return: `systemctl reboot` stops PID 1 and Docker, told
    # not to restart it, leaves the container stopped (a host hanging at shutdown or boot).
    subprocess.run(["docker", "unpause", C], capture_output=True)
    sh.set_pins(tree, *OLD_PINS)  # a driver pin change: a reboot per host
    two = fleet_of_two(tmp_path)
    holds_before = ok(A, "apt-mark showhold | sort")
    b_boot, b_versions = pid1_start(B), sh.dpkg_versions(B, DRIVER)
    subprocess.run(["docker", "update", "--restart=no", A], check=True, capture_output=True)
    try:
        started = time.monotonic()
        run = rollout(tree, two)  # settings.rollout.batch = 1: A, then B
        took = time.monotonic() - started
        out = run.stdout + run.stderr
        assert run.returncode == 1, out[-5000:]
        assert f"rollout: batch 1 ({A}) failed" in out and "stopped here" in out, out[-5000:]
        assert "resume with: tools/rollout.py --behind-only" in out
        assert "==> batch 2/2" not in out
        summary = summary_of(out)
        assert summary.startswith(" 1 of 1 host(s) failed\n"), summary
        assert f"    @docker/{A}\n      step:  NVIDIA driver | Reboot" in summary, summary
        assert ("      cause: the host did not come back within 60 s after the reboot"
                in summary), summary
        assert "settings.driver.reboot_timeout_seconds sets the wait" in summary
        assert 60 <= took < 240, took
        # the rollout stopped there: B was not touched, not rebooted
        assert pid1_start(B) == b_boot
        assert sh.dpkg_versions(B, DRIVER) == b_versions
        print(f"reboot that does not return: rollout stopped after {took:.0f} s\n{summary}")
    finally:
        subprocess.run(["docker", "start", A], check=True, capture_output=True)
        subprocess.run(["docker", "update", "--restart=always", A], check=True,
                       capture_output=True)
    simctl.wait_for_systemd(A)
    # nothing held was unheld: the driver went in held, as before
    assert ok(A, "apt-mark showhold | sort") == holds_before
    assert sh.dpkg_versions(A, DRIVER) == dict.fromkeys(DRIVER, OLD_PINS[0])

    resumed = rollout(tree, two, "--behind-only")
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-5000:]
    assert "gpufleet fault summary" not in out
    for host in (A, B):
        assert sh.dpkg_versions(host, DRIVER) == dict.fromkeys(DRIVER, OLD_PINS[0])
        assert ok(host, "cat /sys/module/nvidia/version").strip() == OLD_PINS[0].split("-")[0]
    assert pid1_start(B) != b_boot  # B's turn came: it rebooted into the pinned driver


def test_a_repository_that_stops_answering_fails_the_host_with_the_url_and_apt_error(
        tree: Path, tmp_path: Path) -> None:
    two = fleet_of_two(tmp_path)
    if FAULTS_REPO not in ok(A, "cat /etc/apt/sources.list.d/*"):  # (the test run alone)
        converged = sh.deploy(tree, two, timeout=900)
        assert converged.rc == 0, converged.output[-5000:]
    assert FAULTS_REPO in ok(A, "cat /etc/apt/sources.list.d/*")

    subprocess.run(["docker", "stop", FAULTS_REPO], check=True, capture_output=True)
    sh.set_pins(tree, OLD_PINS[0], OLD_PINS[1], NEW_TOOLKIT)
    # apt keeps the .debs it fetched (1.15.0's are still there from the earlier run): without
    # them, as on a host whose cache was cleaned, the install has to reach the repository.
    ok(A, "apt-get clean")
    before = holds_and_versions(A)
    started = time.monotonic()
    run = sh.deploy(tree, two, timeout=900)
    took = time.monotonic() - started
    assert run.rc != 0, run.output[-5000:]
    summary = summary_of(run.output)
    assert summary.startswith(" 1 of 2 host(s) failed; the others were not affected\n")
    assert f"    @docker/{A}\n      step:  " in summary, summary
    assert re.search(rf"      cause: apt could not fetch http://{FAULTS_REPO}/\S+: \S", summary), \
        summary
    assert f"      do:    check that the host reaches {FAULTS_REPO} " in summary, summary
    # nothing held was unheld, nothing moved on A; B took the change
    assert holds_and_versions(A) == before
    assert sh.dpkg_versions(B, TOOLKIT) == dict.fromkeys(TOOLKIT, NEW_TOOLKIT)
    assert set(DRIVER + TOOLKIT) <= set(ok(B, "apt-mark showhold").split())
    print(f"repository down: {took:.0f} s\n{summary}")

    subprocess.run(["docker", "start", FAULTS_REPO], check=True, capture_output=True)
    repo_up()
    rerun = sh.deploy(tree, two, timeout=900)
    assert rerun.rc == 0, rerun.output[-5000:]
    assert "gpufleet fault summary" not in rerun.output
    assert sh.dpkg_versions(A, TOOLKIT) == dict.fromkeys(TOOLKIT, NEW_TOOLKIT)
    assert set(DRIVER + TOOLKIT) <= set(ok(A, "apt-mark showhold").split())


def repo_up() -> None:
    """Wait (30 s at most) until the module's repository copy serves its key."""
    for _ in range(60):
        if subprocess.run(["docker", "exec", FAULTS_REPO, "curl", "-fsS", "-o", "/dev/null",
                           "http://localhost/keys/gpufleet-sim-test.asc"],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"{FAULTS_REPO} does not serve its files after 30 s")
