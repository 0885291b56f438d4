"""Data-driven parser tests: one real command output -> one expected value.

Each ``tests/fixtures/facts/<tool>/<case>.txt`` is command output copied from a public source or
captured on the controller (``<case>.source`` says which, and what was changed). The sibling
``<case>.expected.json`` lists the fields to check; keys starting with ``_`` are checks that are
not plain fields (see ``_special``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from facts import docker, name_resolution, nvidia, storage, system
from facts.replica_node import alive_addresses, parse_ray_nodes

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "facts"

PARSERS: dict[str, Callable[[str, int | None], Any]] = {
    "nvidia_smi": nvidia.parse_nvidia_smi_query,
    "lspci": nvidia.parse_lspci_nvidia,
    "pci_probe": nvidia.parse_pci_probe,
    "nvidia_smi_list": lambda text, _rc: {
        str(gpu): devices for gpu, devices in nvidia.parse_mig_listing(text).items()},
    "nvidia_module": nvidia.parse_kernel_module_state,
    "mokutil": nvidia.parse_mokutil_sb_state,
    "efivar": lambda text, _rc: nvidia.parse_efivar_secureboot(text),
    "secure_boot_probe": nvidia.parse_secure_boot_probe,
    "os_release": lambda text, _rc: system.parse_os_release(text),
    "nvcc": system.parse_nvcc_version,
    "python": system.parse_python_interpreters,
    "findmnt": lambda text, _rc: storage.parse_findmnt_json(text),
    "lsblk": lambda text, _rc: storage.parse_lsblk_inverse_json(text),
    "storage_location": storage.parse_storage_location,
    "df": storage.parse_df,
    "dd": lambda text, _rc: storage.parse_dd_summary(text),
    "fio": lambda text, _rc: storage.parse_fio_json(text),
    "read_speed": storage.parse_read_speed,
    "docker_info": docker.parse_docker_info,
    "nvidia_ctk": docker.parse_nvidia_ctk_version,
    "getent_ahosts": name_resolution.parse_getent_ahosts,
    "ray_nodes": lambda text, _rc: {
        "alive": alive_addresses(parse_ray_nodes(text.splitlines())),
        "nodes": parse_ray_nodes(text.splitlines())},
}


def _cases() -> list[Any]:
    cases = []
    for text_file in sorted(FIXTURES.glob("*/*.txt")):
        tool = text_file.parent.name
        cases.append(pytest.param(tool, text_file, id=f"{tool}/{text_file.stem}"))
    return cases


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _match(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected a mapping, got {actual!r}"
        for key, want in expected.items():
            if key.startswith("_"):
                continue
            assert key in actual, f"{where}: no field {key!r} in {sorted(actual)}"
            _match(actual[key], want, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        if not expected:
            assert actual == [], f"{where}: expected empty, got {actual!r}"
        assert len(actual) >= len(expected), f"{where}: {len(actual)} items < {len(expected)}"
        for i, want in enumerate(expected):
            _match(actual[i], want, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def _special(tool: str, text: str, result: Any, expected: dict[str, Any]) -> None:
    plain = _plain(result)
    for field_name, count in expected.get("_count", {}).items():
        got = len(plain) if tool == "lsblk" else len(plain[field_name])
        assert got == count, f"len({field_name}) = {got}, expected {count}"
    if "_reason_contains" in expected:
        assert expected["_reason_contains"] in result.reason
    if "_kind" in expected:  # lsblk fixtures: classify the leaves as under a local ext4 mount
        kind, reason = storage.classify_storage("ext4", result)
        assert kind == expected["_kind"], reason
    if "_path_exists" in expected:
        assert result.path_exists is expected["_path_exists"]
    if "_has_nvswitch" in expected:
        assert result.has_nvswitch is expected["_has_nvswitch"]
    if "_has_nvidia_runtime" in expected:
        assert result.has_nvidia_runtime is expected["_has_nvidia_runtime"]
    if "_unit" in expected:  # df: available bytes = 4th column times the header's block size
        row = next(line for line in text.splitlines() if line.startswith("/dev/"))
        factor = 1 if expected["_unit"] == "bytes" else 1024
        assert result.available_bytes == int(row.split()[3]) * factor
        assert result.total_bytes == int(row.split()[1]) * factor


@pytest.mark.parametrize(("tool", "text_file"), _cases())
def test_fixture(tool: str, text_file: Path) -> None:
    assert tool in PARSERS, f"no parser registered for fixture folder {tool}"
    source = text_file.with_suffix(".source")
    assert source.is_file() and source.read_text().strip(), f"{source} must cite the source"
    expected = json.loads(text_file.with_suffix(".expected.json").read_text())
    text = text_file.read_text()
    result = PARSERS[tool](text, expected.get("_exit_code"))
    assert result is not None, f"{tool} parser could not read {text_file.name}"
    if tool == "lsblk":
        if "leaves" in expected:
            _match(_plain(result), expected["leaves"], "leaves")
    else:
        _match(_plain(result), expected, text_file.stem)
    _special(tool, text, result, expected)


def test_every_fixture_folder_is_tested() -> None:
    folders = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert folders == set(PARSERS), folders ^ set(PARSERS)
