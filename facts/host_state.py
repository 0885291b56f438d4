"""What the NVIDIA stack manages on a host, read in one command.

`StackState` answers every question the stack's operations ask (installed versions and holds,
the content of the files it manages, services, the loaded kernel module, Docker) in a single
round trip. pyinfra does not cache facts, so `stack_state()` keeps the answer for as long as
no operation on the host has changed anything: a no-op run of the whole stack reads the host
once, plus one `StackVerification`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.api.host import Host

from facts import docker as docker_facts
from facts import nvidia as nvidia_facts
from facts import system as system_facts
from facts._shell import CommandResult, clip, quote, section_script, split_sections
from facts.apt import (
    keyring_fingerprints_script,
    parse_dpkg_query,
    parse_keyring_fingerprints,
    parse_madison,
    parse_showhold,
)


@dataclass(frozen=True)
class StackQuery:
    """What to read: built once per host at load time and handed to every stack operation."""

    packages: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    offered: tuple[str, ...] = ()  # packages whose offered versions matter (apt-cache madison)
    images: tuple[str, ...] = ()  # docker images whose presence matters
    keyrings: tuple[str, ...] = ()  # apt keyrings whose key fingerprints matter


@dataclass(frozen=True)
class ServiceState:
    enabled: str  # systemctl is-enabled: enabled, disabled, masked, static, "" (no unit)
    active: str  # systemctl is-active: active, inactive, failed, activating, ...

    @property
    def is_enabled(self) -> bool:
        return self.enabled in ("enabled", "static", "alias", "indirect", "generated")

    @property
    def is_active(self) -> bool:
        return self.active == "active"


_MISSING = CommandResult(text="", exit_code=None)


@dataclass(frozen=True)
class StackStateResult:
    """The host as the stack sees it.

    ``files``: path -> content (None: no such file; unreadable base64 also reads as None).
    ``compose``: "v2" / "v1" -> version printed, for each Compose that answers.
    """

    installed: dict[str, str] = field(default_factory=dict)
    held: frozenset[str] = frozenset()
    offered: dict[str, tuple[str, ...]] = field(default_factory=dict)
    files: dict[str, str | None] = field(default_factory=dict)
    services: dict[str, ServiceState] = field(default_factory=dict)
    kernel_module: nvidia_facts.KernelModuleState = field(
        default_factory=lambda: nvidia_facts.parse_kernel_module_state(""))
    system: system_facts.SystemInfoResult = field(
        default_factory=lambda: system_facts.parse_system_info(""))
    docker: docker_facts.DockerInfoResult = field(
        default_factory=lambda: docker_facts.parse_docker_info(""))
    images: dict[str, bool] = field(default_factory=dict)
    compose: dict[str, str] = field(default_factory=dict)
    keyrings: dict[str, frozenset[str]] = field(default_factory=dict)

    def service(self, name: str) -> ServiceState:
        return self.services.get(name, ServiceState("", ""))


def _files_script(paths: tuple[str, ...]) -> str:
    lines = []
    for path in paths:
        q = quote(path)
        lines.append(f"if [ -f {q} ]; then printf 'file=%s\\n' {q}; base64 -w0 < {q}; echo;"
                     f" else printf 'nofile=%s\\n' {q}; fi")
    return "\n".join(lines) or "true"


def _services_script(names: tuple[str, ...]) -> str:
    return "\n".join(
        f"printf 'service=%s %s %s\\n' {quote(n)} "
        f"\"$(systemctl is-enabled {quote(n)} 2>/dev/null)\" "
        f"\"$(systemctl is-active {quote(n)} 2>/dev/null)\""
        for n in names
    ) or "true"


def _images_script(images: tuple[str, ...]) -> str:
    return "\n".join(
        f"if docker image inspect {quote(i)} >/dev/null 2>&1; then printf 'image=yes %s\\n' "
        f"{quote(i)}; else printf 'image=no %s\\n' {quote(i)}; fi"
        for i in images
    ) or "true"


COMPOSE_SCRIPT = "\n".join([
    "v=$(docker compose version --short 2>/dev/null) && printf 'compose=v2 %s\\n' \"$v\"",
    "v=$(docker-compose version --short 2>/dev/null) && printf 'compose=v1 %s\\n' \"$v\"",
    "true",
])


def stack_state_script(query: StackQuery) -> str:
    dpkg_format = "'${Package} ${Version} ${db:Status-Abbrev}\\n'"
    names = " ".join(quote(p) for p in query.packages)
    sections = {
        "dpkg": f"dpkg-query -W -f={dpkg_format} {names}" if names else "true",
        "hold": "apt-mark showhold",
        "madison": ("apt-cache madison " + " ".join(quote(p) for p in query.offered)
                    if query.offered else "true"),
        "files": _files_script(query.files),
        "services": _services_script(query.services),
        "kernel_module": nvidia_facts.KERNEL_MODULE_SCRIPT,
        "system": system_facts.SYSTEM_SCRIPT,
        "docker": docker_facts.DOCKER_INFO_SCRIPT,
        "images": ("command -v docker >/dev/null 2>&1 || exit 0\n" + _images_script(query.images)
                   if query.images else "true"),
        "compose": COMPOSE_SCRIPT,
        "keyrings": keyring_fingerprints_script(query.keyrings) if query.keyrings else "true",
    }
    return "\n".join(section_script(name, script) for name, script in sections.items())


def _decode(data: str) -> str | None:
    try:
        return base64.b64decode(data.strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None


def parse_stack_state(lines: list[str]) -> StackStateResult:
    """Parse the output of `stack_state_script`. Never raises on odd text."""
    sections = split_sections(lines)

    def get(name: str) -> CommandResult:
        return sections.get(name) or _MISSING

    files: dict[str, str | None] = {}
    current: str | None = None
    for line in get("files").text.splitlines():
        if line.startswith("file="):
            current = line[5:]
            files[current] = ""
        elif line.startswith("nofile="):
            files[line[7:]] = None
            current = None
        elif current is not None:
            files[current] = _decode(line)
            current = None

    services = {}
    for line in get("services").text.splitlines():
        if line.startswith("service="):
            parts = line[8:].split(" ")
            services[parts[0]] = ServiceState(
                parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else "")

    images = {}
    for line in get("images").text.splitlines():
        if line.startswith("image="):
            answer, _, name = line[6:].partition(" ")
            images[name] = answer == "yes"

    compose = {}
    for line in get("compose").text.splitlines():
        if line.startswith("compose="):
            kind, _, version = line[8:].partition(" ")
            compose[kind] = version.strip()

    module, system, docker = get("kernel_module"), get("system"), get("docker")
    return StackStateResult(
        installed=parse_dpkg_query(get("dpkg").text),
        held=parse_showhold(get("hold").text),
        offered=parse_madison(get("madison").text),
        files=files,
        services=services,
        kernel_module=nvidia_facts.parse_kernel_module_state(module.text, module.exit_code),
        system=system_facts.parse_system_info(system.text, system.exit_code),
        docker=docker_facts.parse_docker_info(docker.text, docker.exit_code),
        images=images,
        compose=compose,
        keyrings=parse_keyring_fingerprints(get("keyrings").text.splitlines()),
    )


class StackState(FactBase[StackStateResult]):
    """
    Packages, holds, managed files, services, kernel module, Docker: one round trip.

    .. code:: python

        StackStateResult(installed={"nvidia-driver-535": "535.183.06-1"},
                         held=frozenset({"nvidia-driver-535"}),
                         files={"/etc/cdi/nvidia.yaml": None}, services={"docker":
                         ServiceState("enabled", "active")}, kernel_module=KernelModuleState(...),
                         docker=DockerInfoResult(...), images={"IMAGE": True},
                         compose={"v1": "1.29.2"})
    """

    default = StackStateResult

    def command(self, query: StackQuery) -> str:
        return stack_state_script(query)

    def process(self, output: list[str]) -> StackStateResult:
        return parse_stack_state(output)


# --- one read per change ---------------------------------------------------------------------
_CACHE: dict[tuple[str, StackQuery, bool], tuple[int, StackStateResult]] = {}


def _changes_so_far(current: Host) -> int:
    """How many operations have changed this host so far in this run."""
    count = 0
    for op_data in current.state.ops.get(current, {}).values():
        meta = op_data.operation_meta
        if meta.is_complete() and meta.did_change():
            count += 1
    return count


def stack_state(query: StackQuery, fresh: bool = False) -> StackStateResult:
    """The host's stack state, read again only when an operation changed the host since the
    last read (or when `fresh`: after commands the current operation itself ran)."""
    key = (host.name, query, bool(host.state.is_executing))
    changes = _changes_so_far(host)
    cached = _CACHE.get(key)
    if not fresh and cached is not None and cached[0] == changes:
        return cached[1]
    result = host.get_fact(StackState, query=query)
    _CACHE[key] = (changes, result)
    return result


# --- the end-to-end check ----------------------------------------------------------------------
@dataclass(frozen=True)
class StackVerificationResult:
    gpus: nvidia_facts.GpuQuery
    cuda: system_facts.CudaToolkitResult
    container_exit: int | None  # None: not run
    container_output: str = ""


def verification_script(image: str, runtime_flags: str = "--gpus all") -> str:
    container = (f"docker run --rm {runtime_flags} {quote(image)} "
                 f"{nvidia_facts.NVIDIA_SMI_QUERY}")
    return "\n".join([
        section_script("nvidia_smi", nvidia_facts.NVIDIA_SMI_SCRIPT),
        section_script("nvcc", system_facts.NVCC_SCRIPT),
        section_script("container", f"timeout 300 {container}"),
    ])


def parse_verification(lines: list[str]) -> StackVerificationResult:
    sections = split_sections(lines)
    smi = sections.get("nvidia_smi") or _MISSING
    nvcc = sections.get("nvcc") or _MISSING
    container = sections.get("container") or _MISSING
    return StackVerificationResult(
        gpus=nvidia_facts.parse_nvidia_smi_query(smi.text, smi.exit_code),
        cuda=system_facts.parse_nvcc_version(nvcc.text, nvcc.exit_code),
        container_exit=container.exit_code,
        container_output=clip(container.text, 2000),
    )


class StackVerification(FactBase[StackVerificationResult]):
    """
    nvidia-smi on the host, nvcc --version, and nvidia-smi inside a GPU container.

    + image: the image to start with GPUs (settings.verify.gpu_test_image)

    .. code:: python

        StackVerificationResult(gpus=GpuQuery(status="ok", gpus=(...)),
                                cuda=CudaToolkitResult(status="ok", version="12.1", ...),
                                container_exit=0, container_output="0, NVIDIA H100 ...")
    """

    @staticmethod
    def default() -> StackVerificationResult:
        return parse_verification([])

    def command(self, image: str) -> str:
        return verification_script(image)

    def process(self, output: list[str]) -> StackVerificationResult:
        return parse_verification(output)
