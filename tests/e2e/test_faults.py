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
   unchanged, the other host takes the change; started again, the re-run converges;
6. the disk holding the weights fills up: B's /srv/small is a small filesystem (a 64 MB tmpfs
   Docker volume: `docker cp`, which pyinfra's docker connector uploads with, writes into
   volumes but not into a tmpfs mounted inside the container), B serves the model from
   weights there (its weights_path; preflight's check of free space for the catalog's 15 GB
   model is downgraded to a warning: the stand-in weights are 6 MB); a weights change that
   does not fit is refused before anything is written (the preview writes nothing either),
   one that fits when checked but whose disk another writer fills during the push fails on
   ENOSPC with its partial files removed; both times the previous weights and manifest stay,
   byte for byte, and the engine keeps serving; with the space freed, the re-run converges;
7. the disk holding the Python environment fills up: C's /opt/gpufleet is a small filesystem
   (a 192 MB tmpfs volume), small test locks stand in for the torch lock (as in
   test_python_env.py); a lock change that does not fit is refused before anything is
   written, one whose estimate falls short fails on ENOSPC in pip with the half-built venv
   removed; both times the previous venv still imports; with the space freed, the re-run
   converges;
8. `systemctl daemon-reload` while a GPU container runs: on A (whose own devices cgroup allows
   NVIDIA's major number, as a real server's does) the stand-in hook grants the container its
   GPUs as libnvidia-container does on cgroup v1, behind systemd's back; with
   settings.docker.gpu_device_protection = "none" and Docker on the systemd cgroup driver, a
   daemon-reload takes them away (nvidia-smi in the container: "Failed to initialize NVML:
   Unknown Error"); with "cgroupfs" (the default) the container keeps them. Skipped where the
   simulated hosts run cgroup v2 (the stand-in grants nothing there).

One converge serves faults 1-3, then a pin change with the lock held past the bound, then the
re-run; 4 and 5 use two of the hosts, 6, 7 and 8 one each. Every wait is bounded: the user's
package gives up its lock after 300 s whatever happens, a reboot is given up after 60 s, the
repository copy must answer within 30 s, the racing writer of 6 fills the disk within 120 s.

A starts bare: fault 1's wait shows only where the converge has apt work to do under the held
lock (a converged host at the same pins has none), and A's whole converge from bare runs
there. B and C start from the converged snapshot (stack_helpers.start_converged: the standard
test fleet's converge at the default pins, inference on): none of their faults is the converge
from bare (A's here, and test_gpu_host's and test_nvidia_stack's): B's interrupted dpkg is
found by the probe whatever the host's state, a lost host is read again by the next run, and
the pin change, the reboot, the repository and the full disks start from a converged host as
in a fleet. The snapshot's engines keep running on B and C (this fleet has inference off, and
the product leaves an engine alone where the step is off); fault 6's converge reconfigures B's
to serve from its small disk.
"""

from __future__ import annotations

import hashlib
import json
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

from inventory.pins import load_pins
from tests.e2e import stack_helpers as sh
from tests.e2e.hosts import ok
from tests.e2e.hosts import sh as run_in
from tests.sim import simctl
from tests.sim.weights import write_weights

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


# Small filesystems (faults 6 and 7): tmpfs Docker volumes, mounted where gpufleet writes.
# (Preflight reads the free space at weights_path on every run: tests 1-5 keep /srv/models.)
SMALL_DISKS = {B: ("gpufleet-faults-models", "/srv/small", "64m"),
               C: ("gpufleet-faults-venv", "/opt/gpufleet", "192m")}


def host_flags() -> dict[str, tuple[str, ...]]:
    """Create the small filesystems; the `docker run` flags that mount them, and A's devices
    cgroup rule (fault 8)."""
    flags: dict[str, tuple[str, ...]] = {A: ("--device-cgroup-rule", "c 195:* rwm")}
    for host, (volume, path, size) in SMALL_DISKS.items():
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)
        subprocess.run(["docker", "volume", "create", "--driver", "local", "--opt", "type=tmpfs",
                        "--opt", "device=tmpfs", "--opt", f"o=size={size}", volume],
                       check=True, capture_output=True)
        flags[host] = ("-v", f"{volume}:{path}")
    return flags


@pytest.fixture(scope="module")
def tree(sim: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    simctl.remove_hosts(HOSTS)  # (a volume in use cannot be created again)
    flags = host_flags()
    sh.start_converged([B, C], run_args=flags)  # (see above: A bare, B and C converged)
    sh.start_hosts([A], fresh=True, run_args=flags)
    for host in HOSTS:
        ok(host, SLEEPER)
    start_repo_copy()
    yield sh.product_copy(tmp_path_factory.mktemp("faults") / "tree")
    subprocess.run(["docker", "unpause", C], capture_output=True)
    subprocess.run(["docker", "rm", "-f", FAULTS_REPO], capture_output=True)
    sh.remove_later(HOSTS, then=lambda: [  # the machine is left as it was found
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)
        for volume, _, _ in SMALL_DISKS.values()])  # (in use until the hosts are gone)


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
    # (with -vvv Docker's "is paused" goes straight to the terminal: the failed read is named,
    # the run lock's, which every run reads first)
    assert re.search(r"      cause: the host did not answer: .*(?:is paused|could not load fact: "
                     r"facts\.(?:lock_record\.LockRecords|probe\.GpuHostProbe))", summary), \
        summary
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
        # the other hosts went on: C, lost in the first run, and B took the pin change
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


# --- 6. the disk holding the weights fills up ---------------------------------------------------
MODEL = "deepseek-r1-distill-qwen-7b"
WEIGHTS = f"/srv/small/{MODEL}"
EXTRA, SHARD2 = "extra.safetensors", "model-00002-of-00002.safetensors"


def serving_fleet(tmp: Path, weights: Path) -> Path:
    """B alone, serving the model from its small disk, the weights pushed from ``weights``
    (this module's copy). Preflight wants free space for the catalog's model (15 GB) at
    weights_path: a warning here, where the stand-in weights are 6 MB."""
    path = sh.write_fleet(tmp, [B], inference=True, name="serving.toml", settings={
        B: {"weights_path": WEIGHTS, "preflight": {"downgrade_errors": ["disk-space-short"]}}})
    text, count = re.subn(r'(\[settings\.weights\][^\[]*?\ncontroller_path = )"[^"]*"',
                          rf'\g<1>"{weights}"', path.read_text(), count=1, flags=re.S)
    assert count == 1, text
    path.write_text(text)
    return path


def fill(host: str, folder: str, leave: int) -> None:
    """Fill ``folder``'s filesystem with one file, leaving about ``leave`` bytes free."""
    ok(host, f"rm -f {folder}/filler; free=$(df -Pk {folder} | awk 'NR == 2 {{print $4}}'); "
             f"head -c $((free * 1024 - {leave})) /dev/zero > {folder}/filler")


def free_bytes(host: str, folder: str) -> int:
    return int(ok(host, f"df -Pk {folder} | awk 'NR == 2 {{print $4}}'")) * 1024


def weights_state(host: str) -> str:
    """Every file of the weights folder (the manifest and verification record included) with
    its sha256, and whatever else lies there (a partial file would show)."""
    return ok(host, f"cd {WEIGHTS} && find . -type f -print0 | sort -z | xargs -0 sha256sum")


def engines(host: str) -> str:
    return ok(host, "docker ps --filter name=gpufleet-inference-engine --format '{{.Names}} "
                    "{{.ID}} {{.Status}}' | cut -d' ' -f1,2 | sort")


def answers(host: str) -> None:
    body = json.dumps({"model": MODEL, "max_tokens": 3,
                       "messages": [{"role": "user", "content": "hi"}]})
    # The key (generated: the engine listens beyond loopback) read on the host, from its file.
    key = "$(sed -n 's/^VLLM_API_KEY=//p' /etc/gpufleet/inference/api-key.env)"
    out = ok(host, f"curl -fsS -m 20 -H 'Content-Type: application/json' -d '{body}' "
                   f"-H \"Authorization: Bearer {key}\" http://127.0.0.1:8000/v1/chat/completions")
    assert json.loads(out)["usage"]["completion_tokens"] == 3, out


def test_a_full_weights_disk_keeps_the_previous_weights_and_the_engine_serving(
        tree: Path, tmp_path: Path) -> None:
    weights = write_weights(MODEL, tmp_path / MODEL)
    serving = serving_fleet(tmp_path, weights)
    started = time.monotonic()
    first = sh.deploy(tree, serving, timeout=900)
    assert first.rc == 0, first.output[-5000:]
    print(f"\nB serving: {time.monotonic() - started:.0f} s")
    ok(B, f"test $(stat -f -c %T {WEIGHTS}) = tmpfs")
    before, serving_engines = weights_state(B), engines(B)
    answers(B)

    # A new version of one shard and an extra file: 11.5 MB to push.
    (weights / SHARD2).write_bytes(bytes(reversed((weights / SHARD2).read_bytes())))
    (weights / EXTRA).write_bytes(b"\x07" * 8 * 2**20)

    # (a) It does not fit: refused before anything is written; the preview writes nothing.
    fill(B, "/srv/small", 2**20)
    preview = sh.preview(tree, serving)
    assert preview.row("Push the weights")[0] == 1, preview.output[-3000:]
    assert weights_state(B) == before
    refused = sh.deploy(tree, serving, timeout=600)
    assert refused.rc != 0, refused.output[-5000:]
    summary = summary_of(refused.output)
    assert f"    @docker/{B}\n      step:  Inference engine | Push the weights from " in summary
    assert re.search(
        rf"      cause: not enough disk space for the weights on @docker/{B}: {WEIGHTS} is on "
        r"tmpfs \(mounted on /srv/small\), 11\.5 MB needed \(the files to push\), 1\.\d MB free; "
        r"nothing was written\n", summary), summary
    assert ("      do:    free space on that filesystem (df -h, du -sh), or set "
            "settings.weights_path to one with room, then run gpufleet again") in summary
    assert weights_state(B) == before
    assert engines(B) == serving_engines
    answers(B)
    print(f"weights, does not fit:\n{summary}")

    # (b) It fits when checked, but another writer fills the disk while the first file is
    # pushed: the next upload fails on ENOSPC (Docker's daemon: "no space left on device"). Once
    # the first file's partial copy is removed its 8.4 MB are free again, not the 11.5 MB the
    # push needs, as the message says.
    fill(B, "/srv/small", 24 * 10**6)
    partial = f"{WEIGHTS}/{EXTRA}.gpufleet-partial"
    ok(B, "rm -f /root/racer.done")
    subprocess.run(["docker", "exec", "-d", B, "bash", "-c",
                    f"for i in $(seq 6000); do [ \"$(stat -c %s {partial} 2>/dev/null)\" = "
                    f"{8 * 2**20} ] && break; sleep 0.02; done; "
                    "cat /dev/zero > /srv/small/racer 2>/dev/null; touch /root/racer.done"],
                   check=True)
    raced = sh.deploy(tree, serving, timeout=600)
    assert raced.rc != 0, raced.output[-5000:]
    ok(B, "test -e /root/racer.done")
    summary = summary_of(raced.output)
    assert re.search(
        rf"      cause: no space left on device while writing the weights on @docker/{B}: "
        rf"{WEIGHTS} is on tmpfs \(mounted on /srv/small\), 8\.\d MB free now \(the check "
        r"before writing expected 11\.5 MB: the files to push\); the partial files were removed, "
        r"the previous weights are untouched\n", summary), summary
    assert "no space left on device" in raced.output.split("--> gpufleet fault summary")[0]
    assert weights_state(B) == before  # no partial file left, nothing replaced
    assert engines(B) == serving_engines
    answers(B)
    print(f"weights, the disk filled during the push:\n{summary}")

    # (c) Space freed: the re-run converges to the new weights.
    ok(B, "rm -f /srv/small/filler /srv/small/racer")
    rerun = sh.deploy(tree, serving, timeout=600)
    assert rerun.rc == 0, rerun.output[-5000:]
    assert "gpufleet fault summary" not in rerun.output
    after = weights_state(B)
    for name in (EXTRA, SHARD2):
        digest = hashlib.sha256((weights / name).read_bytes()).hexdigest()
        assert f"{digest}  ./{name}\n" in after, after
    assert ".gpufleet-partial" not in after
    answers(B)


# --- 7. the disk holding the Python environment fills up ----------------------------------------
VENV = "/opt/gpufleet/venv"
LOCK_NAME = load_pins().sets["r535-cuda121"].python.lock  # small locks stand in for it
CA = "/etc/ssl/certs/ca-certificates.crt"
# The Python environment step alone (as tests/e2e/test_python_env.py drives it), after the
# network step: pip trusts the controller's CA through the system store it installs.
VENV_DEPLOY = """\
from pathlib import Path
from pyinfra import state
from deploys.fault_summary import install_fault_summary
from deploys.host_network import host_network
from deploys.python_env import python_env
from deploys.spec import host_spec
install_fault_summary(state)
host_network(spec=host_spec())
python_env(locks_dir=Path({locks!r}), check_pins=False)
"""


def small_lock(root: Path, requirements: str) -> Path:
    """A hash-locked file in the torch lock's format, for CPython 3.11 (as test_python_env)."""
    folder = root / LOCK_NAME
    folder.mkdir(parents=True)
    (folder / "requirements.in").write_text(requirements)
    subprocess.run(
        [str(Path(sys.executable).with_name("uv")), "pip", "compile", "requirements.in",
         "--generate-hashes", "--python-version", "3.11", "--python-platform",
         "x86_64-manylinux_2_28", "--only-binary", ":all:", "--no-config", "--quiet",
         "-o", "cp311-x86_64.txt"],
        cwd=folder, env={**os.environ, "SSL_CERT_FILE": CA}, check=True, timeout=300)
    return root


def venv_deploy(tree: Path, tmp: Path, locks: Path) -> sh.DeployRun:
    deploy_file = tmp / f"venv-{locks.name}.py"
    deploy_file.write_text(VENV_DEPLOY.format(locks=str(locks)))
    fleet_file = sh.write_fleet(tmp, [C], name="venv.toml", settings={
        C: {"python_env": {"enabled": True, "path": VENV}}})
    return sh.deploy(tree, fleet_file, timeout=600, script=str(deploy_file))


def imports(host: str, module: str) -> str:
    return ok(host, f"{VENV}/bin/python -c 'import {module}; print({module}.__version__)'").strip()


def test_a_full_venv_disk_keeps_the_previous_environment(tree: Path, tmp_path: Path) -> None:
    small = small_lock(tmp_path / "small", "six==1.16.0\n")
    other = small_lock(tmp_path / "other", "six==1.17.0\nidna==3.10\n")
    big = small_lock(tmp_path / "big", "numpy==1.26.4\n")  # an 18 MB wheel, 60 MB installed
    first = venv_deploy(tree, tmp_path, small)
    assert first.rc == 0, first.output[-5000:]
    live = ok(C, f"readlink {VENV}").strip()
    assert imports(C, "six") == "1.16.0"
    listing = ok(C, "ls -a /opt/gpufleet")
    live_size = int(ok(C, f"du -sk {live}").split()[0]) * 1024
    print(f"\nvenv of the small lock: {live_size / 1e6:.1f} MB")

    # (a) Another lock that does not fit: refused before anything is written.
    fill(C, "/opt/gpufleet", 4 * 10**6)
    refused = venv_deploy(tree, tmp_path, other)
    assert refused.rc != 0, refused.output[-5000:]
    summary = summary_of(refused.output)
    assert re.search(
        rf"      cause: not enough disk space for the Python environment on @docker/{C}: "
        rf"{VENV}\.[0-9a-f]{{12}} is on tmpfs \(mounted on /opt/gpufleet\), [\d.]+ MB needed "
        r"\(estimated from the live environment's [\d.]+ MB, plus half for pip's downloads\), "
        r"[34]\.\d MB free; nothing was written\n", summary), summary
    assert ("      do:    free space on that filesystem (df -h, du -sh), or set "
            "settings.python_env.path to one with room") in summary
    assert ok(C, "ls -a /opt/gpufleet | grep -v '^filler$'") == listing
    assert ok(C, f"readlink {VENV}").strip() == live and imports(C, "six") == "1.16.0"
    print(f"venv, does not fit:\n{summary}")

    # (b) A lock bigger than the estimate (the live venv's size, half of it again): the check
    # passes, pip runs out of space; the half-built venv and pip's downloads are removed.
    fill(C, "/opt/gpufleet", 40 * 10**6)
    free = free_bytes(C, "/opt/gpufleet")
    filled = venv_deploy(tree, tmp_path, big)
    assert filled.rc != 0, filled.output[-5000:]
    summary = summary_of(filled.output)
    assert re.search(
        rf"      cause: no space left on device while writing the Python environment on "
        rf"@docker/{C}: {VENV}\.[0-9a-f]{{12}} is on tmpfs \(mounted on /opt/gpufleet\), "
        r"[34]\d\.\d MB free now \(the check before writing expected [\d.]+ MB: estimated from "
        r"the live environment's [\d.]+ MB, plus half for pip's downloads\); the partial files "
        r"were removed, the previous Python environment is untouched\n", summary), summary
    assert "No space left on device" in filled.output.split("--> gpufleet fault summary")[0]
    assert ok(C, "ls -a /opt/gpufleet | grep -v '^filler$'") == listing
    assert free_bytes(C, "/opt/gpufleet") == free  # nothing left behind
    assert ok(C, f"readlink {VENV}").strip() == live and imports(C, "six") == "1.16.0"
    print(f"venv, pip filled the disk:\n{summary}")

    # (c) Space freed: the re-run converges; the previous venv is kept beside the new one.
    ok(C, "rm -f /opt/gpufleet/filler")
    rerun = venv_deploy(tree, tmp_path, big)
    assert rerun.rc == 0, rerun.output[-5000:]
    assert imports(C, "numpy") == "1.26.4"
    assert ok(C, f"readlink {VENV}").strip() != live
    assert ok(C, f"{live}/bin/python -c 'import six; print(six.__version__)'").strip() == "1.16.0"


# --- 8. systemctl daemon-reload while a GPU container runs ----------------------------------------
GPU_JOB = ("docker rm -f gpu-job >/dev/null 2>&1; docker run -d --name gpu-job --runtime nvidia "
           "-e NVIDIA_VISIBLE_DEVICES=all gpufleet-sim/cuda-base:12.1 sleep infinity")


def test_a_daemon_reload_keeps_gpu_containers_on_their_gpus_only_with_the_protection(
        tree: Path, tmp_path: Path) -> None:
    if ":devices:" not in ok(A, "cat /proc/1/cgroup"):
        pytest.skip("the simulated hosts run cgroup v2: the stand-in hook grants GPUs on cgroup "
                    "v1 only (on v2 libnvidia-container writes an eBPF program, not simulated)")
    url = f"http://{FAULTS_REPO}/libnvidia-container/stable/deb/{{arch}}"
    seen = {}
    try:
        for protection in ("none", "cgroupfs"):
            docker: dict[str, object] = {"gpu_device_protection": protection}
            if protection == "none":  # what Docker picks on cgroup v2, and Kubernetes asks for
                docker["daemon_json"] = {"exec-opts": ["native.cgroupdriver=systemd"]}
            fleet_file = sh.write_fleet(tmp_path, [A], name=f"{protection}.toml", settings={
                A: {"docker": docker, "repos": {"container_toolkit": {"url": url}}}})
            run = sh.deploy(tree, fleet_file, timeout=600)
            assert run.rc == 0, run.output[-5000:]
            driver = ok(A, "docker info --format '{{.CgroupDriver}}'").strip()
            assert driver == ("systemd" if protection == "none" else "cgroupfs")
            ok(A, GPU_JOB)
            before = ok(A, "docker exec gpu-job nvidia-smi -L")
            assert before.count("NVIDIA A100-PCIE-40GB") == 2, before
            ok(A, "systemctl daemon-reload")
            after = run_in(A, "docker exec gpu-job nvidia-smi -L")
            seen[protection] = (after.returncode, (after.stdout + after.stderr).strip())
            print(f"\nprotection {protection!r} (Docker's {driver} cgroup driver), after "
                  f"daemon-reload: {seen[protection]}")
    finally:
        run_in(A, "docker rm -f gpu-job")
    assert seen["none"] == (255, "Failed to initialize NVML: Unknown Error"), seen
    assert seen["cgroupfs"][0] == 0 and seen["cgroupfs"][1].count("NVIDIA A100") == 2, seen
