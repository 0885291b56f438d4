"""One `never_raises` decorator for every parser that must not take a host run down."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from facts import docker, nvidia, storage, system, venv_state
from facts._shell import never_raises

PARSERS = [docker.parse_docker_info, docker.parse_nvidia_ctk_version,
           nvidia.parse_nvidia_smi_query, nvidia.parse_lspci_nvidia, nvidia.parse_pci_probe,
           nvidia.parse_kernel_module_state, nvidia.parse_mokutil_sb_state,
           nvidia.parse_secure_boot_probe, storage.parse_storage_location, storage.parse_df,
           storage.parse_read_speed, system.parse_system_info, system.parse_nvcc_version,
           system.parse_python_interpreters, venv_state.parse_python_env_state]


@dataclass
class Result:
    status: str
    reason: str = ""
    raw: str = ""


def test_an_exception_becomes_an_unknown_result_with_the_output() -> None:
    @never_raises(Result)
    def parse(text: str, exit_code: int | None = None) -> Result:
        raise KeyError("gpu")

    found = parse("x" * 5000, 0)
    assert found.status == "unknown" and found.reason == "parser error: KeyError('gpu')"
    assert found.raw.startswith("x" * 4000) and "1000 more chars" in found.raw
    lines = never_raises(Result)(lambda lines: Result(lines[5]))(["a", "b"])
    assert lines.status == "unknown" and lines.raw == "a\nb"
    assert parse.__name__ == "parse" and "exit_code" in inspect.signature(parse).parameters


@pytest.mark.parametrize("parse", PARSERS, ids=lambda p: p.__name__)
def test_each_parser_is_wrapped_once_not_by_hand(parse: Callable[..., object]) -> None:
    wrapped = getattr(parse, "__wrapped__", None)
    assert wrapped is not None, parse
    assert "parser error" not in inspect.getsource(wrapped)


def test_a_parser_that_trips_over_its_input_reports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(system, "parse_os_release", broken)
    found = system.parse_system_info("@os-release\nID=debian\n@end\nkernel=6.1\n", 0)
    assert found.status == "unknown" and "ValueError('boom')" in found.reason
    assert "ID=debian" in found.raw
