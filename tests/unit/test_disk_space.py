"""Disk space around the big writes: the host script (df, du, stat, run here for real), the
estimates, the one-line messages, and the guard around a write, run through pyinfra's @local
connector against /dev/full (the kernel's device that answers every write with ENOSPC)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pyinfra.api import Config, FileUploadCommand, Inventory, State, StringCommand
from pyinfra.api.host import Host

from operations.disk_guard import _check_space, _run_guarded
from rules.disk_space import (
    EMPTY_VENV_BYTES,
    FreeSpace,
    SpaceNeed,
    free_space_script,
    human,
    needed,
    needed_mark,
    no_space_left,
    parse_free_space,
    says_no_space,
    shortage,
    venv_need,
)
from rules.faults import cause_of

WEIGHTS = SpaceNeed(path="/srv/models/m", what="the weights", setting="settings.weights_path",
                    need=3 * 10**9, how="the files to push")
SMALL = FreeSpace(folder="/srv/models/m", device="/dev/nvme1n1p1", mount="/srv", free=10**9)


def run_script(need: SpaceNeed) -> FreeSpace:
    out = subprocess.run(["sh", "-c", free_space_script(need)], capture_output=True, text=True,
                         check=True).stdout
    space = parse_free_space(out)
    assert space is not None, out
    return space


def test_the_script_reads_the_nearest_existing_folder_partials_and_the_live_venv(
        tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "lib.so").write_bytes(b"x" * 100_000)
    (tmp_path / "venv").symlink_to(tmp_path / "old")
    (tmp_path / "a.gpufleet-partial").write_bytes(b"y" * 1234)
    need = SpaceNeed(path=str(tmp_path / "not" / "yet"), what="the weights",
                     setting="settings.weights_path", need=10_000, how="x",
                     partials=(str(tmp_path / "a.gpufleet-partial"), str(tmp_path / "b")),
                     live=str(tmp_path / "venv"))
    space = run_script(need)
    vfs = os.statvfs(tmp_path)
    assert space.folder == str(tmp_path)
    assert abs(space.free - vfs.f_bavail * vfs.f_frsize) < 64 * 2**20  # others write too
    assert space.partial_bytes == 1234
    assert space.live_bytes is not None and space.live_bytes >= 100_000
    assert space.mount and space.device


def test_dfs_line_with_a_mount_point_holding_spaces() -> None:
    space = parse_free_space("requested=/mnt/my disk/m/new\nresolved=/mnt/my disk/m\n"
                             "Filesystem     1024-blocks  Used Available Capacity Mounted on\n"
                             "/dev/sdb1 1000 400 600 40% /mnt/my disk\n"
                             "dfi=/dev/sdb1 64 10 0 100% /mnt/my disk\n")
    assert space == FreeSpace(folder="/mnt/my disk/m", device="/dev/sdb1", mount="/mnt/my disk",
                              free=600 * 1024, inodes_free=0)
    # btrfs has no inode limit (0 in every column): not "no free inodes"
    btrfs = parse_free_space("resolved=/\nFilesystem 1024-blocks Used Available Capacity "
                             "Mounted on\n/dev/x 1 1 1 1% /\ndfi=/dev/x 0 0 0 - /\n")
    assert btrfs is not None and btrfs.inodes_free is None
    assert parse_free_space("df: /srv: No such file or directory\n") is None


def test_what_a_step_needs_counts_its_partials_and_the_live_venv() -> None:
    assert needed(replace(WEIGHTS, partials=("p",)), replace(SMALL, partial_bytes=10**9)) == (
        2 * 10**9, "the files to push")
    venv = venv_need("/opt/gpufleet/venv", "/opt/gpufleet/venv.3f2a", None)
    assert (venv.need, venv.live) == (EMPTY_VENV_BYTES, "/opt/gpufleet/venv")
    assert needed(venv, SMALL) == (EMPTY_VENV_BYTES, "estimated: a fresh venv, the lock's "
                                                     "size is not known without a wheelhouse")
    assert needed(venv, replace(SMALL, live_bytes=5 * 10**9)) == (
        int(7.5 * 10**9), "estimated from the live environment's 5.0 GB, plus half for pip's "
                          "downloads")
    wheels = venv_need("/opt/gpufleet/venv", "/opt/gpufleet/venv.3f2a", [2 * 10**9, 7 * 10**8],
                       [7 * 10**8])
    assert wheels.live is None
    assert (wheels.need, wheels.how) == (
        int(5.4 * 10**9) + 7 * 10**8,
        "estimated from the lock's 2.7 GB of wheels, unpacked, and 700.0 MB of them to push")


def test_the_message_before_writing_names_host_path_filesystem_need_free_and_the_setting(
        ) -> None:
    assert shortage("gpu-01", WEIGHTS, replace(SMALL, free=4 * 10**9)) is None
    message = shortage("gpu-01", WEIGHTS, SMALL)
    assert message == (
        "gpufleet: not enough disk space for the weights on gpu-01: /srv/models/m is on "
        "/dev/nvme1n1p1 (mounted on /srv), 3.0 GB needed (the files to push), 1.0 GB free; "
        "nothing was written. Free space there, or set settings.weights_path to a filesystem "
        "with room")
    cause = cause_of([f"[gpu-01] {message}"])
    assert cause.what == (
        "not enough disk space for the weights on gpu-01: /srv/models/m is on /dev/nvme1n1p1 "
        "(mounted on /srv), 3.0 GB needed (the files to push), 1.0 GB free; nothing was written")
    assert cause.todo.startswith("free space on that filesystem (df -h, du -sh), or set "
                                 "settings.weights_path to one with room, then run gpufleet")


def test_the_message_when_the_disk_filled_anyway() -> None:
    message = no_space_left("gpu-01", WEIGHTS, replace(SMALL, free=0, inodes_free=0))
    assert message == (
        "gpufleet: no space left on device while writing the weights on gpu-01: /srv/models/m "
        "is on /dev/nvme1n1p1 (mounted on /srv), 0 bytes free now and no free inodes (df -i) "
        "(the check before writing expected 3.0 GB: the files to push); the partial files were "
        "removed, the previous weights are untouched. Free space there, or set "
        "settings.weights_path to a filesystem with room")
    venv = venv_need("/opt/v", "/opt/v.1", None)
    assert no_space_left("h", venv, None) == (
        "gpufleet: no space left on device while writing the Python environment on h: "
        "/opt/v.1 (its filesystem could not be read); the partial files were removed, the "
        "previous Python environment is untouched. Free space there, or set "
        "settings.python_env.path to a filesystem with room")
    cause = cause_of(["[h] Command IO error: Error response from daemon: Error processing tar "
                      "file(exit status 1): write /srv/models/m/x: no space left on device",
                      f"[h] {message}"])
    assert cause.what.startswith("no space left on device while writing the weights on gpu-01")


@pytest.mark.parametrize("text", [
    # Docker 20.10's daemon (docker cp into a full volume)
    "Error response from daemon: Error processing tar file(exit status 1): write "
    "/srv/models/x.gpufleet-partial: no space left on device",
    # pip 23 (Debian 12's python3.11 venv)
    "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
    # apt 2.6
    "E: Write error - write (28: No space left on device)",
])
def test_full_disks_as_tools_say_it(text: str) -> None:
    assert says_no_space(text)
    assert cause_of([text]).what == f"a disk of the host is full: {text}"


def test_the_hub_downloads_mark() -> None:
    assert needed_mark("x\ngpufleet-space-needed 123 short\n") == (123, True)
    assert needed_mark("gpufleet-space-needed 45\n") == (45, False)
    assert needed_mark("gpufleet: 45 bytes") is None
    assert human(999) == "999 bytes" and human(48_000_000) == "48.0 MB"


# --- the guard, through pyinfra's @local connector ---------------------------------------------
@pytest.fixture
def local() -> Iterator[tuple[State, Host, list[str]]]:
    state = State(Inventory((["@local"], {})), Config())
    host = state.inventory.get_host("@local")
    host.connect()
    said: list[str] = []
    original = host.log_styled

    def log_styled(message: str, **kwargs: object) -> None:
        said.append(message)
        original(message, **kwargs)  # type: ignore[arg-type]

    host.log_styled = log_styled  # type: ignore[method-assign, assignment]
    yield state, host, said


def test_a_write_that_fills_the_disk_cleans_up_and_says_so(
        local: tuple[State, Host, list[str]], tmp_path: Path) -> None:
    state, host, said = local
    partial = tmp_path / "a.gpufleet-partial"
    partial.write_bytes(b"half")
    need = replace(WEIGHTS, path=str(tmp_path), need=10)
    ok = _run_guarded(state, host, StringCommand("head -c 1 /dev/zero > /dev/full"), need,
                      f"rm -f {partial}")
    assert ok is False and not partial.exists()
    assert said[-1].startswith(f"gpufleet: no space left on device while writing the weights on "
                               f"@local: {tmp_path} is on ")
    # an upload that fails on a full disk (here: the local connector copying onto /dev/full)
    upload = FileUploadCommand(str(Path(__file__)), "/dev/full")
    assert _run_guarded(state, host, upload, need, None) is False
    assert said[-1].startswith("gpufleet: no space left on device while writing the weights")


def test_another_failure_is_left_as_it_was(
        local: tuple[State, Host, list[str]], tmp_path: Path) -> None:
    state, host, said = local
    partial = tmp_path / "a.gpufleet-partial"
    partial.write_bytes(b"half")
    need = replace(WEIGHTS, path=str(tmp_path), need=10)
    assert _run_guarded(state, host, StringCommand("echo broken >&2; exit 3"), need,
                        f"rm -f {partial}") is False
    assert not any("space" in line for line in said)
    assert partial.exists()  # kept for the next run
    assert _run_guarded(state, host, StringCommand("true"), need, None) is True


def test_the_check_before_writing(local: tuple[State, Host, list[str]], tmp_path: Path) -> None:
    state, host, said = local
    assert _check_space(state, host, replace(WEIGHTS, path=str(tmp_path / "m"), need=1)) is True
    assert _check_space(state, host, replace(WEIGHTS, path=str(tmp_path / "m"),
                                             need=10**18)) is False
    assert said[-1].startswith(f"gpufleet: not enough disk space for the weights on @local: "
                               f"{tmp_path}/m is on ")
    assert said[-1].endswith("nothing was written. Free space there, or set "
                             "settings.weights_path to a filesystem with room")
