"""Apt parsers on real command output (tests/fixtures/apt, sources noted beside each file)."""

from __future__ import annotations

from pathlib import Path

from facts.apt import (
    parse_dpkg_query,
    parse_keyring_fingerprints,
    parse_madison,
    parse_showhold,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "apt"


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_madison_lists_every_offered_version_per_package() -> None:
    assert parse_madison(read("madison_sim_host.txt")) == {
        "cuda-toolkit-12-1": ("12.1.1-1", "12.1.0-1"),
        "nvidia-container-toolkit": ("1.15.0-1", "1.14.6-1"),
        "docker.io": ("20.10.24+dfsg1-1+deb12u1+b6",),
    }


def test_madison_ignores_notes_and_noise() -> None:
    assert parse_madison("N: Unable to locate package nosuchpkg\n\nE: whatever | x\n") == {}


def test_dpkg_query_keeps_installed_and_held_only() -> None:
    assert parse_dpkg_query(read("dpkg_query_sim_host.txt")) == {
        "curl": "7.88.1-10+deb12u15",
        "cuda-drivers-535": "535.183.06-1",  # held ("hi") is installed
        "docker.io": "20.10.24+dfsg1-1+deb12u1+b6",
    }
    # config files left after a removal ("rc") are not an installed package
    assert parse_dpkg_query("nvidia-driver-535 535.161.08-1 rc \n") == {}


def test_showhold() -> None:
    assert parse_showhold("cuda-drivers-535\nlibnvidia-compute-535\n\n") == frozenset(
        {"cuda-drivers-535", "libnvidia-compute-535"}
    )


def test_keyring_fingerprints_per_keyring() -> None:
    assert parse_keyring_fingerprints(read("gpg_show_keys_sim_keyring.txt").splitlines()) == {
        "/etc/apt/keyrings/gpufleet-cuda.gpg": frozenset({"E6EC58197F6A6D34A90230E7B299573318D8EAAE"}),
        "/etc/apt/keyrings/missing.gpg": frozenset(),
    }
