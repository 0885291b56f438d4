"""Faults apt meets on a host: the apt/dpkg lock wait (run for real on this machine's
/proc/locks), the interrupted dpkg reading, unattended-upgrades' blacklist."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facts.apt import parse_dpkg_journal, parse_dpkg_unfinished
from facts.host_state import parse_host_state
from operations.apt_lock import after_apt_lock, apt_get, wait_script
from rules.packages import PinnedPackages, unattended_upgrades_blacklist
from rules.render import render_unattended_upgrades_blacklist


# --- the lock wait, for real ---------------------------------------------------------------------
@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A lock file held (fcntl, as apt and dpkg lock) by another process for up to 60 s."""
    lock = tmp_path / "lock-frontend"
    lock.touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({str(lock)!r}, 'w'); fcntl.lockf(f, fcntl.LOCK_EX)\n"
         "print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    yield lock, holder
    holder.kill()
    holder.wait(10)


def wait(lock: Path, seconds: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", wait_script((str(lock),))
                           + f"gpufleet_wait_for_apt_lock {seconds}"],
                          capture_output=True, text=True, timeout=seconds + 30)


def test_giving_up_names_the_holder_and_what_to_do(
        held_lock: tuple[Path, subprocess.Popen[str]]) -> None:
    lock, holder = held_lock
    run = wait(lock, 0)
    assert run.returncode == 1
    first = run.stderr.splitlines()[0]
    assert first.startswith("gpufleet: gave up after 0 s waiting for the apt/dpkg lock, held by ")
    assert f"(pid {holder.pid}: {sys.executable} -c import fcntl" in first
    assert "Let that process finish" in run.stderr
    assert "settings.apt.lock_timeout_seconds" in run.stderr


def test_the_wait_goes_on_once_the_holder_lets_go(
        held_lock: tuple[Path, subprocess.Popen[str]]) -> None:
    lock, holder = held_lock
    started = time.monotonic()
    waiting = subprocess.Popen(["sh", "-c", wait_script((str(lock),))
                                + "gpufleet_wait_for_apt_lock 60"],
                               stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    assert waiting.poll() is None, "it did not wait"
    assert holder.stdin is not None
    holder.stdin.write("\n")  # the holder lets go and exits
    holder.stdin.flush()
    _, stderr = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, stderr
    lines = stderr.splitlines()
    assert lines[0].startswith("gpufleet: waiting for the apt/dpkg lock (up to 60 s), held by ")
    assert f"(pid {holder.pid}: " in lines[0]
    assert lines[-1] == "gpufleet: the apt/dpkg lock is free after 5 s"
    assert time.monotonic() - started < 15


def test_a_free_lock_costs_no_wait(tmp_path: Path) -> None:
    (tmp_path / "lock").touch()
    started = time.monotonic()
    run = wait(tmp_path / "lock", 60)
    assert (run.returncode, run.stderr) == (0, "")
    assert time.monotonic() - started < 3


def test_a_lock_that_waits_is_not_a_holder(
        held_lock: tuple[Path, subprocess.Popen[str]]) -> None:
    """A second process queued on the same lock ("->" in /proc/locks) is not named."""
    lock, holder = held_lock
    waiter = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl; f = open({str(lock)!r}, 'w'); "
         "fcntl.lockf(f, fcntl.LOCK_EX)"])
    try:
        time.sleep(0.5)
        run = wait(lock, 0)
        assert f"pid {holder.pid}:" in run.stderr and f"pid {waiter.pid}:" not in run.stderr
    finally:
        waiter.kill()
        waiter.wait(10)


def test_every_apt_command_waits_with_the_fleets_bound() -> None:
    script = after_apt_lock("apt-mark hold x", 20)
    assert script.endswith("gpufleet_wait_for_apt_lock 20 && { apt-mark hold x; }")
    assert "/var/lib/dpkg/lock-frontend" in script and "/var/lib/apt/lists/lock" in script
    assert apt_get(20) == "apt-get -o DPkg::Lock::Timeout=20"
    with pytest.raises(ValueError):
        after_apt_lock("true", -1)


def test_the_lock_script_is_posix_sh() -> None:
    """dash (Debian's /bin/sh) parses it: no bashisms."""
    dash = subprocess.run(["sh", "-n", "-c", after_apt_lock("true", 5)], capture_output=True,
                          text=True)
    assert dash.returncode == 0, dash.stderr


# --- an interrupted dpkg -------------------------------------------------------------------------
def test_unfinished_packages_and_the_journal_are_read() -> None:
    # dpkg-query's db:Status-Abbrev letters (dpkg-query(1)): iU unpacked, iF half-configured
    dpkg = ("curl 7.88.1-10+deb12u5 ii \nhello 2.10-3 iU \nlibfoo 1.0 iF \n"
            "gone 1.0 rc \nnvidia-driver-535 535.183.06-1 hi \n")
    assert parse_dpkg_unfinished(dpkg) == {"hello": "unpacked", "libfoo": "half-configured"}
    assert parse_dpkg_journal("0000\n0001\ntmp.i\n") == 2
    assert parse_dpkg_journal("") == 0
    state = parse_host_state(["__gpufleet_state=dpkg", *dpkg.splitlines(), "__gpufleet_rc=0",
                              "__gpufleet_state=dpkg_journal", "0000", "__gpufleet_rc=0"])
    assert state.dpkg_interrupted and state.dpkg_journal == 1
    assert "hello" not in state.installed
    assert not parse_host_state([]).dpkg_interrupted


# --- unattended-upgrades -------------------------------------------------------------------------
def test_unattended_upgrades_is_kept_off_every_pinned_family() -> None:
    pinned = PinnedPackages(
        driver={"cuda-drivers-535": "1", "nvidia-driver-535": "1",
                "libnvidia-compute-535": "1"},
        cuda={"cuda-toolkit-12-1": "12.1.1-1"},
        container_toolkit={"nvidia-container-toolkit": "1", "libnvidia-container1": "1"})
    patterns = unattended_upgrades_blacklist(pinned)
    assert patterns == ("cuda-", "libnvidia-", "nvidia-")
    text = render_unattended_upgrades_blacklist("r535-cuda121", patterns)
    assert 'Unattended-Upgrade::Package-Blacklist {\n    "cuda-";\n    "libnvidia-";\n' in text
    assert text.rstrip().endswith("};")
    with pytest.raises(ValueError):
        render_unattended_upgrades_blacklist("x", ['nvidia-"; }; Evil "'])
