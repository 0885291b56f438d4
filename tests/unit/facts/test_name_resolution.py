"""facts.name_resolution: one command resolves every name on the gateway host; its output
parsed per name. The command runs here against a stand-in `getent` (no DNS is asked)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from facts.name_resolution import (
    NameLookup,
    lookup_script,
    parse_getent_ahosts,
    parse_resolved_names,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "facts" / "getent_ahosts"

# A stand-in getent: the captured outputs (tests/fixtures/facts/getent_ahosts) by name.
FAKE_GETENT = f"""#!/bin/sh
case "$2" in
  gpu-01) cat {FIXTURES / "docker_dns.txt"} ;;
  gpu-03) cat {FIXTURES / "dual_stack_hosts.txt"} ;;
  slow) exec sleep 30 ;;
  *) exit 2 ;;
esac
"""


def run_script(tmp_path: Path, names: list[str], fake: str = FAKE_GETENT) -> list[str]:
    (tmp_path / "getent").write_text(fake)
    (tmp_path / "getent").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    out = subprocess.run(["sh", "-c", lookup_script(names)], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    return out.stdout.splitlines()


def test_one_command_answers_for_every_name(tmp_path: Path) -> None:
    found = parse_resolved_names(run_script(tmp_path, ["gpu-01", "gpu-02", "gpu-03"]))
    assert found["gpu-01"].addresses == ("172.18.0.3",)
    assert found["gpu-03"].addresses == ("2001:db8::13", "10.0.0.13")
    assert found["gpu-02"] == NameLookup("not_found",
                                         reason="the resolver has no address for it")


def test_a_lookup_that_hangs_is_cut_and_reported(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("facts.name_resolution.LOOKUP_SECONDS", 1)
    found = parse_resolved_names(run_script(tmp_path, ["slow", "gpu-01"]))
    assert found["slow"].status == "unknown" and found["slow"].reason == "no answer within 1 s"
    assert found["gpu-01"].status == "resolved"


@pytest.mark.parametrize("text,rc,status,reason", [
    ("", 2, "not_found", "the resolver has no address for it"),
    ("sh: 1: getent: not found", 127, "unknown", "getent or timeout is not installed"),
    ("Unknown database: ahosts", 1, "unknown", "getent: Unknown database: ahosts"),
    ("", 0, "unknown", "getent: exit status 0"),  # success, but no address: not one to use
    ("fe80::1%eth0    STREAM gpu-04\n", 0, "unknown", "getent: fe80::1%eth0    STREAM gpu-04"),
])
def test_no_usable_address_says_why(text: str, rc: int, status: str, reason: str) -> None:
    found = parse_getent_ahosts(text, rc)
    assert (found.status, found.addresses, found.reason) == (status, (), reason)


def test_only_stream_addresses_count_each_once() -> None:
    text = ("10.0.0.12       STREAM gpu-02\n10.0.0.12       DGRAM  \n10.0.0.12       RAW    \n"
            "10.0.0.22       DGRAM  \n")
    assert parse_getent_ahosts(text, 0).addresses == ("10.0.0.12",)
    # a marker-less or truncated output leaves the name out (the rule reads it as unresolved)
    assert parse_resolved_names(["__gpufleet_name=gpu-02", "10.0.0.12 STREAM gpu-02"]) == {}
