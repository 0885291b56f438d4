"""The fleet file's schema: every knob a host can set, with its default and why.

This module is the public interface of gpufleet. A setting can be given fleet-wide
(`[settings]`), per group (`[groups.NAME.settings]`) or per host
(`[groups.NAME.hosts.HOST.settings]`); the most specific wins, tables merge key by key.
The README lists these settings in the same order.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl

from inventory.catalog import Precision


class Strict(BaseModel):
    """Unknown keys are mistakes (a typo silently ignored is a 3 a.m. outage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _absolute_posix_path(value: str) -> str:
    if not PurePosixPath(value).is_absolute():
        raise ValueError("must be an absolute path on the host, e.g. /srv/models/NAME")
    return value


AbsolutePath = Annotated[str, AfterValidator(_absolute_posix_path)]

_FINGERPRINT = re.compile(r"^[0-9A-F]{40}$")


def _fingerprint(value: str) -> str:
    cleaned = value.replace(" ", "").upper()
    if not _FINGERPRINT.match(cleaned):
        raise ValueError("must be a 40-hex-digit OpenPGP fingerprint (spaces allowed)")
    return cleaned


Fingerprint = Annotated[str, AfterValidator(_fingerprint)]


# --- expected hardware ----------------------------------------------------------------------
class ExpectedGpus(Strict):
    """What the host should have; verification fails when nvidia-smi disagrees."""

    count: int | None = Field(default=None, ge=1, le=64)
    # Substring of the nvidia-smi name, e.g. "H100 80GB HBM3" or "A100".
    model: str | None = None
    # Minimum memory per GPU in GiB (nvidia-smi reports a little under the marketing size).
    memory_gib: float | None = Field(default=None, gt=0)


# --- storage of model weights ---------------------------------------------------------------
class StorageSettings(Strict):
    # require: refuse weights on HDD, network or overlay storage; warn: report only; off: skip.
    policy: Literal["require", "warn", "off"] = "require"
    # Free space wanted at weights_path, as a multiple of the model's size on disk.
    free_space_margin: float = Field(default=1.2, ge=1.0, le=10.0)
    # Measure sequential read speed of a file under weights_path (O_DIRECT, time-bounded).
    measure_read_speed: bool = False
    measure_seconds: int = Field(default=10, ge=1, le=120)


# --- apt repositories -----------------------------------------------------------------------
_URL_TEMPLATE = re.compile(r"^https?://[^\s/]+(/[^\s]*)?$")
_PLACEHOLDERS = re.compile(r"\{([^}]*)\}")


def _url_template(value: str) -> str:
    if not _URL_TEMPLATE.match(value):
        raise ValueError("must be an http:// or https:// URL")
    unknown = sorted(set(_PLACEHOLDERS.findall(value)) - {"distro", "arch"})
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; allowed: {{distro}}, {{arch}}")
    return value.rstrip("/")


UrlTemplate = Annotated[str, AfterValidator(_url_template)]


class AptRepo(Strict):
    """An apt repository: where it is and which key signs it.

    Leave `url` unset for NVIDIA's official repository. Set it to use a mirror; the URL may use
    `{distro}` (ubuntu2204, debian12, ...) and `{arch}` (x86_64 / sbsa for CUDA,
    amd64 / arm64 for the container toolkit) placeholders.
    """

    url: UrlTemplate | None = None
    key_url: UrlTemplate | None = None
    # The key's fingerprint is checked before the keyring is installed, so a mirror cannot
    # substitute its own key unnoticed.
    key_fingerprint: Fingerprint | None = None


class RepoSettings(Strict):
    cuda: AptRepo = AptRepo()
    container_toolkit: AptRepo = AptRepo()


class AptSettings(Strict):
    # Package lists older than this are refreshed before anything is installed from them.
    # (They are always refreshed when the sources, their keys or the pins change.)
    lists_max_age_seconds: int = Field(default=3600, ge=0, le=7 * 86400)


# --- network: proxies and private CAs -------------------------------------------------------
class NetworkSettings(Strict):
    http_proxy: HttpUrl | None = None
    https_proxy: HttpUrl | None = None
    no_proxy: list[str] = Field(default_factory=list)
    # A PEM file on the controller, trusted on the host in addition to the system CAs
    # (corporate TLS-intercepting proxies, private mirrors). Relative paths are taken from
    # the fleet file's folder.
    extra_ca_bundle: str | None = None


# --- NVIDIA driver --------------------------------------------------------------------------
class DriverSettings(Strict):
    # if-needed: reboot after a driver change, when nouveau is still loaded or the loaded
    # module differs from the installed driver; one host of a group at a time.
    # never: report that a reboot is needed and leave it to you.
    reboot: Literal["never", "if-needed"] = "if-needed"
    reboot_timeout_seconds: int = Field(default=900, ge=60, le=7200)


# --- Docker engine --------------------------------------------------------------------------
class DockerSettings(Strict):
    # Make nvidia the default runtime (every container sees GPUs without --gpus).
    default_runtime_nvidia: bool = False
    # Keep GPU containers attached to their devices across `systemctl daemon-reload`:
    # cgroupfs moves Docker off the systemd cgroup driver; cdi uses CDI device injection.
    gpu_device_protection: Literal["cgroupfs", "cdi", "none"] = "cgroupfs"
    registry_mirrors: list[HttpUrl] = Field(default_factory=list)
    # Escape hatch: keys merged into /etc/docker/daemon.json as given.
    daemon_json: dict[str, object] = Field(default_factory=dict)


# --- Python environment for host-side tooling -----------------------------------------------
class PythonEnvSettings(Strict):
    enabled: bool = True
    path: AbsolutePath = "/opt/gpufleet/venv"
    # A PyPI mirror (simple index). Unset: pip's default index.
    index_url: HttpUrl | None = None
    # Fetch the locked wheels once on the controller and push them to every host.
    wheelhouse: bool = False


# --- verification ---------------------------------------------------------------------------
class VerifySettings(Strict):
    # Image used to prove a GPU container starts (runs nvidia-smi inside it).
    gpu_test_image: str = "nvidia/cuda:12.1.1-base-ubuntu22.04"
    # Image archives (docker save) on the controller, loaded on hosts that lack the image:
    # for air-gapped sites and sites without registry access.
    image_archives: list[str] = Field(default_factory=list)


# --- preflight ------------------------------------------------------------------------------
class PreflightSettings(Strict):
    # Turn these preflight errors (by code, or "all") into warnings: for people who know better.
    downgrade_errors: list[str] = Field(default_factory=list)


# --- generation defaults --------------------------------------------------------------------
class SamplingSettings(Strict):
    # DeepSeek-R1's model card recommends 0.6 / 0.95; below ~0.3 output repeats, above ~1.2
    # it rambles (preflight warns).
    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)


class Settings(Strict):
    """Everything a host needs to know. Only `weights_path` has no default."""

    pin_set: str = "r535-cuda121"
    model: str = "deepseek-r1-distill-qwen-7b"
    precision: Precision = "bf16"
    # Unset: the smallest tensor-parallel size that fits on the host's GPUs.
    tensor_parallel: int | None = Field(default=None, ge=1, le=64)
    pipeline_parallel: int = Field(default=1, ge=1, le=64)
    # Unset: the model's own maximum context length.
    context_length: int | None = Field(default=None, ge=256)
    # Concurrent sequences the KV cache must hold at full context.
    concurrency: int = Field(default=8, ge=1, le=4096)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.1, le=0.99)
    weights_path: AbsolutePath
    gpus: ExpectedGpus = ExpectedGpus()
    storage: StorageSettings = StorageSettings()
    repos: RepoSettings = RepoSettings()
    apt: AptSettings = AptSettings()
    network: NetworkSettings = NetworkSettings()
    driver: DriverSettings = DriverSettings()
    docker: DockerSettings = DockerSettings()
    python_env: PythonEnvSettings = PythonEnvSettings()
    verify: VerifySettings = VerifySettings()
    preflight: PreflightSettings = PreflightSettings()
    sampling: SamplingSettings = SamplingSettings()


# --- hosts, groups, the fleet ---------------------------------------------------------------
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DNS_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})*$")
_IPV4 = re.compile(r"^(\d{1,3})(\.\d{1,3}){3}$")
_DOCKER_NAME = re.compile(r"^@docker/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _target(value: str) -> str:
    """An SSH host (DNS name or IP address), `@docker/CONTAINER` or `@local`."""
    if value == "@local" or _DOCKER_NAME.match(value):
        return value
    if value.startswith("@"):
        raise ValueError("connectors allowed: @local, @docker/CONTAINER (or an SSH host name)")
    if _IPV4.match(value):
        if all(0 <= int(part) <= 255 for part in value.split(".")):
            return value
        raise ValueError("is not a valid IPv4 address")
    if ":" in value and all(c in "0123456789abcdefABCDEF:" for c in value):
        return value  # IPv6 literal
    if _DNS_NAME.match(value):
        return value
    raise ValueError(
        "must be a DNS name or IP address (user and port go in ssh_user / ssh_port), "
        "@docker/CONTAINER or @local"
    )


Target = Annotated[str, AfterValidator(_target)]


class HostEntry(Strict):
    # Where to connect: an SSH host name or address, @docker/CONTAINER, or @local.
    # Unset: the host's own name from the fleet file.
    target: Target | None = None
    ssh_user: str | None = None
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    ssh_key: str | None = None
    # Run commands through sudo (for non-root SSH users).
    sudo: bool = False
    settings: dict[str, object] = Field(default_factory=dict)


class GroupEntry(Strict):
    settings: dict[str, object] = Field(default_factory=dict)
    # Host tables are validated one by one (HostEntry), so every bad host is reported.
    hosts: dict[str, dict[str, object]]


class FleetMeta(Strict):
    name: str = "fleet"
    description: str = ""


class FleetFile(Strict):
    fleet: FleetMeta = FleetMeta()
    # Models the catalog does not know, declared like inventory/catalog/models.toml entries
    # (the table name is the id): [models.my-model] architecture = ..., layers = ..., ...
    models: dict[str, dict[str, object]] = Field(default_factory=dict)
    settings: dict[str, object] = Field(default_factory=dict)
    # Group tables are validated one by one (GroupEntry), so every bad group is reported.
    groups: dict[str, dict[str, object]]


def valid_host_name(name: str) -> bool:
    return bool(_HOST_NAME.match(name))
