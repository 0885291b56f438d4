"""End-to-end checks of the Docker-based GPU host simulator (tests/sim/simctl.py).

These prove the simulator behaves like the real thing where it matters to the deploys:
systemd hosts, a signed apt repository (and a wrong keyring is refused), two versions of
every stand-in NVIDIA package, nvidia-smi answering per the host's driver state, reboots that
keep the filesystem, the "kernel" refusing unsigned modules under Secure Boot and honouring a
nouveau blacklist only after update-initramfs, and GPU containers through the stand-in hook.
Hosts that a test changes are recreated from scratch first, so the tests are repeatable; they
are this module's own copies (gpufleet-simtest-*), never the rehearsal fleet.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.e2e.hosts import ok, sh
from tests.e2e.stack_helpers import copy_name, copy_specs, remove_later, start_hosts
from tests.sim import simctl

pytestmark = pytest.mark.sim

# This module's own copies of the simulated hosts: the rehearsal fleet is never touched.
H100, A100, RTX = (copy_name("simtest", n) for n in
                   ("gpufleet-sim-h100x8", "gpufleet-sim-a100x2", "gpufleet-sim-rtx4090"))
KEYRING = "/usr/share/keyrings/gpufleet-sim-test.gpg"
CUDA_URL = "http://gpufleet-sim-repo/cuda/repos/debian12/x86_64/"
CTK_URL = "http://gpufleet-sim-repo/libnvidia-container/stable/deb/amd64/"
OLD, NEW = "535.161.08", "535.183.06"
FACTS_QUERY = ("--query-gpu=index,name,uuid,memory.total,memory.used,compute_cap,"
               "driver_version,pci.bus_id,persistence_mode,mig.mode.current")
DRIVER_PIECES = ("cuda-drivers-535", "nvidia-driver-535", "nvidia-utils-535",
                 "libnvidia-compute-535", "nvidia-compute-utils-535", "nvidia-dkms-535")



def reboot(host: str) -> float:
    """`systemctl reboot` inside the host; returns seconds until systemd is up again."""
    before = json.loads(subprocess.run(["docker", "inspect", host], capture_output=True,
                                       text=True, check=True).stdout)[0]["State"]["StartedAt"]
    t0 = time.monotonic()
    sh(host, "systemctl reboot")
    deadline = t0 + 60
    while time.monotonic() < deadline:
        st = simctl.container_state(host)
        if st and st["State"]["StartedAt"] != before and st["State"]["Running"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"{host} did not come back within 60 s after `systemctl reboot`")
    simctl.wait_for_systemd(host, timeout=60)
    return time.monotonic() - t0


def add_repos(host: str, keyring_source: str = "served") -> None:
    """Configure both stand-in repos with a signed-by keyring, as a deploy would."""
    fetch = ("curl -fsS http://gpufleet-sim-repo/keys/gpufleet-sim-test.asc | gpg --dearmor"
             if keyring_source == "served"
             else "cat /usr/share/keyrings/debian-archive-keyring.gpg")  # a wrong, real keyring
    ok(host, f"{fetch} > {KEYRING} && "
             f"echo 'deb [signed-by={KEYRING}] {CUDA_URL} /' > /etc/apt/sources.list.d/cuda.list && "
             f"echo 'deb [signed-by={KEYRING}] {CTK_URL} /' "
             "> /etc/apt/sources.list.d/nvidia-container-toolkit.list")


def install(host: str, *pkgs: str) -> None:
    ok(host, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
             + " ".join(pkgs))


def driver(version: str) -> list[str]:
    return [f"{p}={version}-1" for p in DRIVER_PIECES]


@pytest.fixture(scope="session")
def sim() -> Iterator[dict[str, simctl.HostSpec]]:
    if not simctl.engine_reachable():
        pytest.skip("Docker engine unreachable (`docker info` fails): the simulator needs one")
    start_hosts([H100, A100, RTX], fresh=False)
    yield copy_specs([H100, A100, RTX])
    remove_later([H100, A100, RTX])  # the machine is left as it was found




def test_hosts_are_bare_debian_with_systemd(sim: dict[str, simctl.HostSpec]) -> None:
    start_hosts([RTX], fresh=True)
    for name in sim:
        assert ok(name, "ps -p 1 -o comm=").strip() == "systemd"
        assert sh(name, "systemctl is-system-running").stdout.strip() in ("running", "degraded")
        assert ok(name, ". /etc/os-release; echo $VERSION_ID").strip() == "12"
    installed = ok(RTX, "dpkg-query -W -f '${Package}\\n'").split()
    assert not [p for p in installed if "nvidia" in p or "cuda" in p or "docker" in p]
    assert sh(RTX, "command -v nvidia-smi").returncode != 0


def test_hardware_stand_ins_match_hosts_toml(sim: dict[str, simctl.HostSpec]) -> None:
    h100 = sim[H100].hardware
    # The real lspci reads the simulated /sys/bus/pci/devices tree (names from its pci.ids).
    lines = ok(H100, "lspci -Dnn -d 10de:").splitlines()
    gpu_lines = [ln for ln in lines if "3D controller [0302]" in ln]
    assert len(gpu_lines) == len(h100["gpus"]) == 8
    first = next(ln for ln in lines if ln.startswith(h100["gpus"][0]["pci_bus_id"]))
    assert first.startswith(f"{h100['gpus'][0]['pci_bus_id']} 3D controller [0302]: NVIDIA "
                            "Corporation GH100")
    assert first.endswith("[10de:2330] (rev a1)") and "H100" in first
    assert sum("Bridge [0680]" in ln and "[10de:22a3]" in ln for ln in lines) == 4
    assert ok(H100, "lspci -Dnn -d 10de:22a3").count("\n") == 4
    assert ok(H100, "lspci -d 8086:") == ""  # the filter really filters
    rtx = ok(RTX, "lspci -Dnn -d 10de:").strip()
    assert rtx.startswith("0000:01:00.0 VGA compatible controller [0300]: NVIDIA Corporation")
    assert ok(A100, "lspci -nD -d 10de:").splitlines()[0] == "0000:17:00.0 0302: 10de:20f1 (rev a1)"
    # What the product's probe reads: the kernel's files, pciutils or not.
    assert ok(H100, "cat /sys/bus/pci/devices/0000:05:00.0/class").strip() == "0x068000"
    assert ok(A100, "cat /sys/bus/pci/devices/0000:17:00.0/vendor").strip() == "0x10de"

    assert ok(H100, "mokutil --sb-state").strip() == "SecureBoot disabled"
    assert ok(RTX, "mokutil --sb-state").strip() == "SecureBoot enabled"
    no_efi = sh(A100, "mokutil --sb-state")
    assert no_efi.returncode == 1
    assert "EFI variables are not supported on this system" in no_efi.stderr
    assert ok(A100, "test -s /usr/local/share/gpufleet-sim/controller-ca.crt && echo y") == "y\n"


def test_signed_repo_offers_two_versions_and_rejects_a_wrong_keyring(
        sim: dict[str, simctl.HostSpec]) -> None:
    start_hosts([RTX], fresh=True)
    add_repos(RTX, keyring_source="wrong")
    bad = sh(RTX, "apt-get update")
    assert bad.returncode != 0
    assert "NO_PUBKEY" in bad.stdout + bad.stderr or "not signed" in bad.stdout + bad.stderr

    add_repos(RTX)
    good = sh(RTX, "apt-get update")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "W: GPG error" not in good.stderr
    fpr = (simctl.KEYS_DIR / "FINGERPRINT").read_text().strip()
    assert fpr in ok(RTX, f"gpg --show-keys --with-colons {KEYRING}").replace(":", " ")
    expected = {
        **{p: {f"{OLD}-1", f"{NEW}-1"} for p in (*DRIVER_PIECES, "nvidia-fabricmanager-535")},
        "cuda-toolkit-12-1": {"12.1.0-1", "12.1.1-1"},
        "cuda-nvcc-12-1": {"12.1.66-1", "12.1.105-1"},
        **{p: {"1.14.6-1", "1.15.0-1"} for p in (
            "nvidia-container-toolkit", "nvidia-container-toolkit-base",
            "libnvidia-container-tools", "libnvidia-container1")},
    }
    madison = ok(RTX, "apt-cache madison " + " ".join(expected))
    offered: dict[str, set[str]] = {}
    for line in madison.splitlines():
        name, version, _ = (part.strip() for part in line.split("|"))
        offered.setdefault(name, set()).add(version)
    assert offered == expected


def test_driver_lifecycle_and_nvidia_smi_states(sim: dict[str, simctl.HostSpec]) -> None:
    start_hosts([A100], fresh=True)
    add_repos(A100)
    ok(A100, "apt-get update -q")
    install(A100, *driver(OLD), "cuda-toolkit-12-1=12.1.1-1")

    # Installed but not loaded yet: the real "couldn't communicate" error.
    before = sh(A100, "nvidia-smi")
    assert before.returncode == 9
    assert before.stdout.startswith("NVIDIA-SMI has failed because it couldn't communicate "
                                    "with the NVIDIA driver.")
    assert "release 12.1, V12.1.105" in ok(A100, "/usr/local/cuda/bin/nvcc --version")

    reboot(A100)
    rows = ok(A100, f"nvidia-smi {FACTS_QUERY} --format=csv,noheader,nounits").splitlines()
    gpus = sim[A100].hardware["gpus"]
    assert rows == [
        f"{g['index']}, NVIDIA A100-PCIE-40GB, {g['uuid']}, 40960, 0, 8.0, {OLD}, "
        f"0000{g['pci_bus_id'].upper()}, Enabled, Disabled" for g in gpus
    ]
    assert ok(A100, "nvidia-smi --query-gpu=index,name,memory.total --format=csv").splitlines()[0] \
        == "index, name, memory.total [MiB]"
    assert ok(A100, "cat /sys/module/nvidia/version").strip() == OLD

    # Upgrade without reboot: the userspace moves, the loaded module does not.
    install(A100, *driver(NEW))
    mismatch = sh(A100, "nvidia-smi")
    assert mismatch.returncode == 18
    assert mismatch.stdout.strip() == "Failed to initialize NVML: Driver/library version mismatch"
    reboot(A100)
    assert ok(A100, "nvidia-smi --query-gpu=driver_version --format=csv,noheader").split() \
        == [NEW, NEW]


def test_secure_boot_refuses_unsigned_module(sim: dict[str, simctl.HostSpec]) -> None:
    start_hosts([RTX], fresh=True)
    add_repos(RTX)
    ok(RTX, "apt-get update -q")
    install(RTX, *driver(OLD))
    reboot(RTX)
    assert sh(RTX, "nvidia-smi").returncode == 9
    assert "Key was rejected by service" in ok(RTX, "cat /var/log/gpufleet-sim-kernel.log")

    # The signed precompiled flavour loads under Secure Boot.
    ok(RTX, "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q nvidia-dkms-535 nvidia-driver-535"
            " cuda-drivers-535")
    install(RTX, f"linux-modules-nvidia-535-server-generic={OLD}-1")
    reboot(RTX)
    assert ok(RTX, "nvidia-smi -L").strip().startswith("GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-")


def test_nouveau_needs_blacklist_and_initramfs_and_reboot_keeps_files(
        sim: dict[str, simctl.HostSpec]) -> None:
    start_hosts([H100], fresh=True)
    assert ok(H100, "test -d /sys/module/nouveau && echo loaded").strip() == "loaded"
    ok(H100, "echo 'blacklist nouveau' > /etc/modprobe.d/blacklist-nouveau.conf && "
             "echo marker > /root/marker")
    seconds = reboot(H100)
    assert seconds < 30, f"reboot took {seconds:.1f} s"
    assert ok(H100, "cat /root/marker").strip() == "marker"
    # Blacklisted in /etc/modprobe.d only: the initramfs still loads nouveau.
    assert sh(H100, "test -d /sys/module/nouveau").returncode == 0
    ok(H100, "update-initramfs -u")
    reboot(H100)
    assert sh(H100, "test -d /sys/module/nouveau").returncode != 0


def test_gpu_container_through_the_stand_in_toolkit(sim: dict[str, simctl.HostSpec]) -> None:
    start_hosts([H100], fresh=True)
    add_repos(H100)
    ok(H100, "apt-get update -q")
    ok(H100, "echo 'blacklist nouveau' > /etc/modprobe.d/blacklist-nouveau.conf && "
             "update-initramfs -u")
    install(H100, *driver(OLD), f"nvidia-fabricmanager-535={OLD}-1", "docker.io",
            *(f"{p}=1.14.6-1" for p in ("nvidia-container-toolkit",
                                        "nvidia-container-toolkit-base",
                                        "libnvidia-container-tools", "libnvidia-container1")))
    assert ok(H100, "nvidia-ctk --version").startswith(
        "NVIDIA Container Toolkit CLI version 1.14.6\ncommit: ")
    ok(H100, "echo '{\"log-level\": \"warn\"}' > /etc/docker/daemon.json && "
             "nvidia-ctk runtime configure --runtime=docker")
    daemon = json.loads(ok(H100, "cat /etc/docker/daemon.json"))
    assert daemon == {"log-level": "warn",
                      "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}
    reboot(H100)
    assert ok(H100, "systemctl is-active nvidia-fabricmanager docker").split() == ["active"] * 2
    with simctl.CUDA_TAR.open("rb") as tar:
        subprocess.run(["docker", "exec", "-i", H100, "docker", "load"], stdin=tar,
                       check=True, capture_output=True)
    listed = ok(H100, "docker run --rm --gpus all gpufleet-sim/cuda-base:12.1 nvidia-smi -L")
    assert [ln.split(" (UUID")[0] for ln in listed.splitlines()] == [
        f"GPU {i}: NVIDIA H100 80GB HBM3" for i in range(8)]
    two = ok(H100, "docker run --rm --runtime nvidia -e NVIDIA_VISIBLE_DEVICES=2,5 "
                   "gpufleet-sim/cuda-base:12.1 nvidia-smi --query-gpu=index,pci.bus_id "
                   "--format=csv,noheader")
    assert two.splitlines() == ["0, 00000000:3A:00.0", "1, 00000000:AB:00.0"]
    # A GPU container whose process dies is restarted by its policy, through the hook again.
    ok(H100, "docker run -d --name crashy --restart=unless-stopped --gpus all "
             "gpufleet-sim/cuda-base:12.1 sleep 600")
    ok(H100, "kill -9 $(docker inspect --format '{{.State.Pid}}' crashy)")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = ok(H100, "docker inspect --format '{{.State.Running}} {{.RestartCount}}' crashy")
        if state.split() == ["true", "1"]:
            break
        time.sleep(1)
    else:
        pytest.fail(f"the container did not come back: {state}")
    assert "GPU 7: NVIDIA H100" in ok(H100, "docker exec crashy nvidia-smi -L")
