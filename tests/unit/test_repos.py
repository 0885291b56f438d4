"""Apt source rendering for NVIDIA's repositories, per distro and with mirrors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inventory.schema import AptRepo
from operations.apt_repos import key_url_problem
from rules.apt_sources import (
    CUDA_KEY_FINGERPRINT,
    TOOLKIT_KEY_FINGERPRINT,
    UnsupportedPlatform,
    container_toolkit_source,
    cuda_source,
)

OFFICIAL = AptRepo()


@pytest.mark.parametrize(
    ("os_id", "version", "arch", "folder"),
    [
        ("ubuntu", "20.04", "amd64", "ubuntu2004/x86_64"),
        ("ubuntu", "22.04", "amd64", "ubuntu2204/x86_64"),
        ("ubuntu", "24.04", "amd64", "ubuntu2404/x86_64"),
        ("ubuntu", "22.04", "arm64", "ubuntu2204/sbsa"),
        ("debian", "11", "amd64", "debian11/x86_64"),
        ("debian", "12", "amd64", "debian12/x86_64"),
    ],
)
def test_official_cuda_repo_per_distro(os_id: str, version: str, arch: str, folder: str) -> None:
    source = cuda_source(OFFICIAL, os_id, version, arch)
    base = f"https://developer.download.nvidia.com/compute/cuda/repos/{folder}"
    assert source.url == base
    assert source.key_url == f"{base}/3bf863cc.pub"
    assert source.key_fingerprint == CUDA_KEY_FINGERPRINT
    assert source.deb822().splitlines()[1:] == [
        "Types: deb",
        f"URIs: {base}/",
        "Suites: /",
        "Signed-By: /etc/apt/keyrings/gpufleet-cuda.gpg",
    ]


@pytest.mark.parametrize(("arch"), ["amd64", "arm64"])
def test_official_container_toolkit_repo(arch: str) -> None:
    source = container_toolkit_source(OFFICIAL, "ubuntu", "22.04", arch)
    assert source.url == f"https://nvidia.github.io/libnvidia-container/stable/deb/{arch}"
    assert source.key_url == "https://nvidia.github.io/libnvidia-container/gpgkey"
    assert source.key_fingerprint == TOOLKIT_KEY_FINGERPRINT
    assert source.sources_path == "/etc/apt/sources.list.d/gpufleet-nvidia-container-toolkit.sources"
    assert "Signed-By: /etc/apt/keyrings/gpufleet-nvidia-container-toolkit.gpg" in source.deb822()


def test_mirror_with_placeholders_and_own_key() -> None:
    mirror = AptRepo(
        url="https://mirror.example.internal/cuda/{distro}/{arch}/",
        key_url="https://mirror.example.internal/keys/cuda.asc",
        key_fingerprint="eb69 3b30 35cd 5710 e231 e123 a4b4 6996 3bf8 63cc",
    )
    source = cuda_source(mirror, "ubuntu", "22.04", "amd64")
    assert source.url == "https://mirror.example.internal/cuda/ubuntu2204/x86_64"
    assert source.key_url == "https://mirror.example.internal/keys/cuda.asc"
    assert source.key_fingerprint == CUDA_KEY_FINGERPRINT  # normalised
    assert "URIs: https://mirror.example.internal/cuda/ubuntu2204/x86_64/" in source.deb822()


def test_mirror_key_defaults_to_the_file_next_to_the_repo() -> None:
    source = cuda_source(AptRepo(url="http://m.internal/c/{distro}/{arch}"), "debian", "12", "amd64")
    assert source.key_url == "http://m.internal/c/debian12/x86_64/3bf863cc.pub"


@pytest.mark.parametrize(
    ("os_id", "version", "arch"),
    [("ubuntu", "18.04", "amd64"), ("rocky", "9", "amd64"), ("debian", "12", "ppc64el")],
)
def test_unsupported_platforms_are_named(os_id: str, version: str, arch: str) -> None:
    with pytest.raises(UnsupportedPlatform, match=f"{os_id} {version} on {arch}"):
        cuda_source(OFFICIAL, os_id, version, arch)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://x/y", "must be an http:// or https:// URL"),
        ("https://x/{dist}/", "unknown placeholder {dist}"),
        ("not a url", "must be an http:// or https:// URL"),
    ],
)
def test_bad_mirror_urls(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AptRepo(url=url)


def test_bad_fingerprint() -> None:
    with pytest.raises(ValueError, match="40-hex-digit"):
        AptRepo(key_fingerprint="1234")


@pytest.mark.parametrize("key_url", [
    "https://mirror.example.internal/keys/cuda.asc?token=a;b",
    "https://mirror.example.internal/keys/$arch/cuda.asc",
    "https://mirror.example.internal/keys/`id`.asc",
    "https://mirror.example.internal/keys/cuda.asc?token=a%3Bb",
    "https://mirror.example.internal/k(1)!/cuda.asc?a=1&b=2",
    "https://[fd00::1]:8443/keys/cuda.asc",
])
def test_the_keyring_operation_and_the_schema_agree_on_key_urls(key_url: str) -> None:
    """One URL rule: what the fleet file was validated with is never refused mid-deploy, and
    what the operation refuses is refused at validation (';' and '$' were accepted there,
    then refused by the keyring operation halfway through a deploy)."""
    try:
        repo = AptRepo(url="https://mirror.example.internal/c/{distro}/{arch}", key_url=key_url)
    except ValidationError:
        schema_accepts = False
    else:
        schema_accepts = True
        key_url = cuda_source(repo, "ubuntu", "22.04", "amd64").key_url
    assert (key_url_problem(key_url) is None) is schema_accepts
