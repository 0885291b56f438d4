"""The pyinfra side of the facts: commands, process() -> parse function, defaults, the probe.

The shell snippets are run for real with ``sh`` (dash on Debian) where that is harmless on the
controller: every one is read-only.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyinfra.api import FactBase

from facts import _shell, docker, nvidia, probe, storage, system

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "facts"

# fact class, constructor args for command(), parse function, a fixture to feed process()
FACTS: list[tuple[type[FactBase[Any]], tuple[Any, ...], Callable[[str, int | None], Any], str]] = [
    (nvidia.NvidiaGpus, (), nvidia.parse_nvidia_smi_query, "nvidia_smi/h100_mig_enabled"),
    (nvidia.NvidiaPciDevices, (), nvidia.parse_pci_probe, "pci_probe/hgx_h200_without_lspci"),
    (
        nvidia.NvidiaKernelModule,
        (),
        nvidia.parse_kernel_module_state,
        "nvidia_module/mismatch_after_upgrade",
    ),
    (
        nvidia.SecureBoot,
        (),
        nvidia.parse_secure_boot_probe,
        "secure_boot_probe/legacy_bios_controller",
    ),
    (system.CudaToolkit, (), system.parse_nvcc_version, "nvcc/cuda_13_0_probe_controller"),
    (
        system.PythonInterpreters,
        (),
        system.parse_python_interpreters,
        "python/pyenv_shims_controller",
    ),
    (
        storage.StorageLocation,
        ("/srv/models",),
        storage.parse_storage_location,
        "storage_location/controller_missing_path",
    ),
    (storage.FreeSpace, ("/srv/models",), storage.parse_df, "df/gnu_bytes_controller"),
    (
        storage.ReadSpeed,
        ("/srv/models", 5, 512),
        storage.parse_read_speed,
        "read_speed/dd_complete_controller",
    ),
    (docker.DockerInfo, (), docker.parse_docker_info, "docker_info/nvidia_runtime_systemd"),
    (docker.ContainerToolkit, (), docker.parse_nvidia_ctk_version, "nvidia_ctk/v1_12_0"),
]


def _sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("fact_cls", "args", "parse", "fixture"), FACTS)
def test_process_hands_stdout_and_status_to_the_parser(
    fact_cls: type[FactBase[Any]], args: tuple[Any, ...], parse: Callable[..., Any], fixture: str
) -> None:
    text = (FIXTURES / f"{fixture}.txt").read_text()
    lines = [*text.splitlines(), f"{_shell.RC_MARKER}0"]
    result = fact_cls().process(lines)
    assert result == parse("\n".join(text.splitlines()), 0)
    # The status line is consumed, not handed on as output.
    assert _shell.RC_MARKER not in result.raw


@pytest.mark.parametrize(("fact_cls", "args", "parse", "fixture"), FACTS)
def test_command_is_valid_sh_and_default_is_unknown(
    fact_cls: type[FactBase[Any]], args: tuple[Any, ...], parse: Callable[..., Any], fixture: str
) -> None:
    command = str(fact_cls().command(*args))
    checked = subprocess.run(["sh", "-n"], input=command, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert command.rstrip().endswith(f'echo "{_shell.RC_MARKER}$?"')
    assert fact_cls.default().status == "unknown"


def test_nvidia_smi_command_is_the_simulated_query() -> None:
    assert (
        "nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.used,compute_cap,"
        "driver_version,pci.bus_id,persistence_mode,mig.mode.current --format=csv,noheader,nounits"
    ) in nvidia.NvidiaGpus().command()


def test_missing_tool_is_absent_not_an_error() -> None:
    result = _shell.split_rc(
        _sh(_shell.wrap(_shell.require_tool("gpufleet-no-such-tool"))).stdout.splitlines()
    )
    assert result.exit_code == _shell.RC_NOT_FOUND
    assert result.missing_tool == "gpufleet-no-such-tool"
    assert (
        nvidia.parse_nvidia_smi_query("__gpufleet_nocmd=nvidia-smi", 127).status == "not_installed"
    )
    assert nvidia.parse_lspci_nvidia("__gpufleet_nocmd=lspci", 127).status == "not_installed"
    assert docker.parse_docker_info("__gpufleet_nocmd=docker", 127).status == "not_installed"


def test_paths_are_quoted_in_storage_commands() -> None:
    tricky = "/srv/my models/$(reboot)"
    for script in (
        storage.storage_location_script(tricky),
        storage.free_space_script(tricky),
        storage.read_speed_script(tricky),
    ):
        assert "'/srv/my models/$(reboot)'" in script


def test_empty_lspci_means_no_nvidia_device() -> None:
    # lspci -d 10de: prints nothing and exits 0 when no device matches.
    result = nvidia.parse_lspci_nvidia("", 0)
    assert result.status == "none" and not result.has_nvswitch


def test_secure_boot_prefers_mokutil_and_falls_back_to_efivar() -> None:
    both = "@mokutil\nSecureBoot disabled\n@mokutil_rc=1\n@efivar\n   6   0   0   0   1\n"
    assert nvidia.parse_secure_boot_probe(both).source == "mokutil"
    unreadable_mokutil = "@mokutil\nsome error\n@mokutil_rc=1\n@efivar\n   6   0   0   0   1\n"
    fallback = nvidia.parse_secure_boot_probe(unreadable_mokutil)
    assert (fallback.status, fallback.source) == ("enabled", "efivar")


def test_storage_classification_takes_the_slowest_leaf() -> None:
    nvme = storage.LeafDisk("nvme0n1", "disk", "nvme", False, None, None)
    sata = storage.LeafDisk("sda", "disk", "sata", False, None, None)
    hdd = storage.LeafDisk("sdb", "disk", "sata", True, None, None)
    ebs = storage.LeafDisk("nvme1n1", "disk", "nvme", False, "Amazon Elastic Block Store", None)
    assert storage.classify_storage("xfs", (nvme,))[0] == "nvme"
    assert storage.classify_storage("xfs", (nvme, sata))[0] == "ssd"
    assert storage.classify_storage("xfs", (nvme, hdd))[0] == "hdd"
    assert storage.classify_storage("ext4", (ebs,))[0] == "virtual"
    assert storage.classify_storage("nfs4", ())[0] == "network"
    assert storage.classify_storage("overlay", ())[0] == "overlay"
    assert storage.classify_storage("tmpfs", ())[0] == "tmpfs"
    assert storage.classify_storage("zfs", ())[0] == "unknown"


def test_probe_with_no_output_is_unknown_everywhere() -> None:
    empty = probe.parse_host_probe([])
    for name in probe.HostProbe.__dataclass_fields__:
        if name == "state":  # the state read: every part of it unknown, nothing installed
            assert empty.state.installed == {} and empty.state.files == {}
            assert empty.state.kernel_module.status == "unknown"
            assert empty.state.docker.status == "unknown"
            continue
        if name == "node_network":  # asked only on the nodes of a replica across hosts
            assert empty.node_network is None
            continue
        assert getattr(empty, name).status == "unknown", name


def test_the_probe_reads_the_inter_node_network_on_a_node(tmp_path: Path) -> None:
    """On this machine: loopback as the 'interface', a closed port on it as the head's."""
    spec = json.dumps({"interface": "lo", "peers": [["127.0.0.1", [1, 2]]],
                       "infiniband": True})
    done = _sh(probe.probe_script(str(tmp_path), node=spec))
    assert done.returncode == 0, done.stderr
    seen = probe.GpuHostProbe().process(done.stdout.splitlines()).node_network
    assert seen is not None and seen.interface_exists is True
    assert "127.0.0.1" in seen.addresses and "lo" in seen.interfaces
    assert seen.routes == {"127.0.0.1": "lo"}
    assert seen.connects == {"127.0.0.1:1": "refused", "127.0.0.1:2": "refused"}
    assert seen.infiniband is Path("/dev/infiniband").exists()


def test_probe_runs_on_this_machine_in_one_command(tmp_path: Path) -> None:
    """The whole probe is valid POSIX sh and every section comes back parsed."""
    done = _sh(probe.probe_script(str(tmp_path / "not-yet")))
    assert done.returncode == 0, done.stderr
    sections = _shell.split_sections(done.stdout.splitlines())
    assert set(sections) == set(probe.SECTIONS)
    assert all(result.exit_code is not None for result in sections.values())
    result = probe.GpuHostProbe().process(done.stdout.splitlines())
    assert result.system.status == "ok"
    assert result.weights_location.resolved_path == str(tmp_path)
    assert result.weights_location.path_exists is False
    assert result.weights_free_space.status == "ok"
    assert result.node_network is None  # not a node of a replica across hosts
    for name in probe.HostProbe.__dataclass_fields__:
        if name not in ("state", "node_network"):
            assert "parser error" not in getattr(result, name).reason, name
    assert result.state.installed and result.state.now  # the state read ran here too


# --------------------------------------------------------------------------------------------
# Parsers never raise
# --------------------------------------------------------------------------------------------

ALL_PARSERS: list[Callable[[str, int | None], Any]] = [
    nvidia.parse_nvidia_smi_query,
    nvidia.parse_lspci_nvidia,
    nvidia.parse_kernel_module_state,
    nvidia.parse_mokutil_sb_state,
    nvidia.parse_secure_boot_probe,
    system.parse_system_info,
    system.parse_nvcc_version,
    system.parse_python_interpreters,
    storage.parse_storage_location,
    storage.parse_df,
    storage.parse_read_speed,
    docker.parse_docker_info,
    docker.parse_nvidia_ctk_version,
]
OTHER_PARSERS: list[Callable[[str], Any]] = [
    nvidia.parse_efivar_secureboot,
    system.parse_os_release,
    storage.parse_findmnt_json,
    storage.parse_lsblk_inverse_json,
    storage.parse_dd_summary,
    storage.parse_fio_json,
]

# Text that looks like the real thing: fixture lines, markers and JSON fragments, shuffled.
_FIXTURE_LINES = sorted(
    {line for path in FIXTURES.glob("*/*.txt") for line in path.read_text().splitlines()}
)
_MARKERS = ["@findmnt", "@lsblk", "@end", "@dd", "@fio", "@efivar", "@mokutil", "@os-release"]
noisy_text = st.one_of(
    st.text(),
    st.lists(st.sampled_from(_FIXTURE_LINES + _MARKERS) | st.text(max_size=40), max_size=30).map(
        "\n".join
    ),
)


@settings(max_examples=150, deadline=None)
@given(text=noisy_text, exit_code=st.none() | st.integers(min_value=0, max_value=255))
def test_parsers_never_raise(text: str, exit_code: int | None) -> None:
    for parse in ALL_PARSERS:
        result = parse(text, exit_code)
        assert result.status in {
            "ok",
            "unknown",
            "not_installed",
            "no_driver",
            "no_devices",
            "version_mismatch",
            "none",
            "loaded",
            "not_loaded",
            "enabled",
            "disabled",
            "not_efi",
            "daemon_down",
            "permission_denied",
            "no_file",
            "path_missing",
        }
    for other in OTHER_PARSERS:
        other(text)


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.sampled_from(_FIXTURE_LINES) | st.text(max_size=30), max_size=40))
def test_probe_parser_never_raises(lines: list[str]) -> None:
    names = list(probe.SECTIONS)
    framed = [
        f"{_shell.SECTION_MARKER}{names[i % len(names)]}" if i % 5 == 0 else line
        for i, line in enumerate(lines)
    ]
    probe.parse_host_probe(framed)


def _fake_tool(bin_dir: Path, name: str, body: str) -> None:
    tool = bin_dir / name
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(0o755)


def _run_probe(script: str, bin_dir: Path) -> _shell.CommandResult:
    # Only our fake tools and the basics (sh, cat, sed, grep) are on PATH.
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    out = subprocess.run(["sh", "-c", _shell.wrap(script)], capture_output=True, text=True,
                         env=env, timeout=60).stdout
    return _shell.split_rc(out.splitlines())


def _fake_sysfs(root: Path, devices: dict[str, tuple[str, str, str]]) -> Path:
    for address, (vendor, cls, device) in devices.items():
        entry = root / address
        entry.mkdir(parents=True)
        (entry / "vendor").write_text(vendor + "\n")
        (entry / "class").write_text(cls + "\n")
        (entry / "device").write_text(device + "\n")
    return root


@pytest.mark.parametrize("with_lspci", [False, True])
def test_pci_probe_reads_sysfs_and_names_from_lspci(tmp_path: Path, with_lspci: bool) -> None:
    sysfs = _fake_sysfs(tmp_path / "devices", {
        "0000:00:02.0": ("0x8086", "0x030000", "0x46a6"),  # an Intel iGPU: not ours
        "0000:05:00.0": ("0x10de", "0x068000", "0x22a3"),  # NVSwitch
        "0000:18:00.0": ("0x10de", "0x030200", "0x2330"),  # H100 SXM5
    })
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if with_lspci:
        _fake_tool(bin_dir, "lspci", 'echo "0000:18:00.0 3D controller [0302]: NVIDIA '
                   'Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)"\n')
    script = nvidia.PCI_SCRIPT.replace(nvidia.PCI_SYSFS, str(sysfs))
    result = _run_probe(script, bin_dir)
    pci = nvidia.parse_pci_probe(result.text, result.exit_code)
    assert pci.status == "ok" and pci.source == "sysfs"
    assert [d.address for d in pci.gpus] == ["0000:18:00.0"]
    assert pci.has_nvswitch, "an HGX board without pciutils must still get Fabric Manager"
    assert pci.lspci == ("ok" if with_lspci else "not_installed")
    assert pci.gpus[0].device_id == "2330"
    expected_name = ("NVIDIA Corporation GH100 [H100 SXM5 80GB]" if with_lspci
                     else "NVIDIA device [10de:2330]")
    assert pci.gpus[0].device_name == expected_name


def test_pci_probe_without_sysfs_falls_back_to_lspci(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tool(bin_dir, "lspci", 'echo "0000:18:00.0 3D controller [0302]: NVIDIA '
               'Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)"\n')
    script = nvidia.PCI_SCRIPT.replace(nvidia.PCI_SYSFS, str(tmp_path / "no-such-dir"))
    result = _run_probe(script, bin_dir)
    pci = nvidia.parse_pci_probe(result.text, result.exit_code)
    assert pci.status == "ok" and pci.source == "lspci" and len(pci.gpus) == 1


def test_pci_probe_with_neither_sysfs_nor_lspci_is_unknown_not_none(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = nvidia.PCI_SCRIPT.replace(nvidia.PCI_SYSFS, str(tmp_path / "no-such-dir"))
    result = _run_probe(script, bin_dir)
    pci = nvidia.parse_pci_probe(result.text, result.exit_code)
    assert pci.status == "not_installed" and not pci.gpus


_MIG_ROW = ("0, NVIDIA H100 80GB HBM3, GPU-0, 81559, 59, 9.0, 590.48.01, 00000000:00:09.0, "
            "{persistence}, {mig}")


@pytest.mark.parametrize(("persistence", "mig", "listed"), [
    ("Enabled", "Enabled", True),
    ("Enabled", "Disabled", False),  # persistence "Enabled" is not MIG
    ("Disabled", "[N/A]", False),
])
def test_nvidia_smi_script_lists_mig_devices_only_where_mig_is_on(
        tmp_path: Path, persistence: str, mig: str, listed: bool) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    row = _MIG_ROW.format(persistence=persistence, mig=mig)
    _fake_tool(bin_dir, "nvidia-smi", f"""case "$1" in
  -L) echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"
      echo "  MIG 3g.40gb     Device  0: (UUID: MIG-a)"
      echo "  MIG 2g.20gb     Device  1: (UUID: MIG-b)";;
  *) echo "{row}";;
esac
""")
    result = _run_probe(nvidia.NVIDIA_SMI_SCRIPT, bin_dir)
    query = nvidia.parse_nvidia_smi_query(result.text, result.exit_code)
    assert query.ok and query.mig_listed is listed
    assert [d.profile for d in query.gpus[0].mig_devices] == (
        ["3g.40gb", "2g.20gb"] if listed else [])


def test_nvidia_smi_script_keeps_the_query_exit_status(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tool(bin_dir, "nvidia-smi", 'echo "No devices were found"; exit 6\n')
    result = _run_probe(nvidia.NVIDIA_SMI_SCRIPT, bin_dir)
    assert result.exit_code == 6
    assert nvidia.parse_nvidia_smi_query(result.text, result.exit_code).status == "no_devices"
