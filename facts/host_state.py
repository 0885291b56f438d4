"""What gpufleet manages on a host, read in one command: ``HostState``.

Packages and holds, every file in the folders gpufleet writes to (content, sha256, mode, owner,
mtime; a secret's content stays on the host, see ``SECRET_FILES``), systemd services, the
loaded NVIDIA module, Docker and its images, the keys of apt keyrings, and the host's clock.
Operations ask for it themselves through ``operations.host_reading.host_state()``: it reads
the host once per phase (change detection, execution) and again only after an operation on that
host changed something, because pyinfra does not cache facts and every read is a round trip.
``facts.probe.GpuHostProbe`` carries the same reading, so the change-detection pass costs no
command of its own (``remember_host_state``), nor does an execution that follows promptly.

The fact takes no arguments: what it covers is ``WATCHED_DIRS``, ``WATCHED_FILES`` and
``WATCHED_SERVICES``, the union of what gpufleet's parts declare (``facts.coverage``). An
operation asked to manage a file or service outside them refuses before touching the host
(``require_watched``, ``require_watched_service``), so the one read can never silently miss
what it manages.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from pyinfra.api import FactBase, OperationValueError

from facts import docker as docker_facts
from facts import nvidia as nvidia_facts
from facts import system as system_facts
from facts._shell import CommandResult, quote, split_sections
from facts.apt import (
    parse_dpkg_journal,
    parse_dpkg_query,
    parse_dpkg_unfinished,
    parse_keyring_fingerprints,
    parse_showhold,
)
from facts.coverage import COVERED

# Folders whose regular files (not recursively) the state reads whole; single files; services
# whose unit-file and active states the read covers (systemd unit patterns, without
# ".service"): the union of what gpufleet's parts declare (facts.coverage).
WATCHED_DIRS = COVERED.dirs
WATCHED_FILES = COVERED.files
WATCHED_SERVICES = COVERED.services
KEYRING_DIR = "/etc/apt/keyrings"
# Larger files are compared by sha256 only (a CA bundle need not travel on every run).
CONTENT_LIMIT = 262144

# Files whose content never leaves the host: the read ships their sha256 (computed on the host),
# mode and owner only, so that no credential travels in a fact's output (-vv prints it) or
# sits in the controller's memory. gpufleet's own secrets are named here, where the operations
# that write them take their paths from; beside them, every file that is not world-readable,
# and every file in /etc/docker but the daemon.json gpufleet merges (certificates, keys and
# registry credentials live there). An operation writing a secret elsewhere is refused
# (``require_secret``).
API_KEY_PATH = "/etc/gpufleet/inference/api-key.env"
HUB_TOKEN_PATH = "/etc/gpufleet/hub-token"
PROXY_ENV_PATH = "/etc/gpufleet/proxy.env"
APT_PROXY_PATH = "/etc/apt/apt.conf.d/90gpufleet-proxy"
# On a monitoring host: the key Prometheus scrapes engines with whose key guards /metrics.
SCRAPE_KEY_PATH = "/etc/gpufleet/monitoring/engine-api-key"
SECRET_FILES = (API_KEY_PATH, HUB_TOKEN_PATH, PROXY_ENV_PATH, APT_PROXY_PATH, SCRAPE_KEY_PATH)
DAEMON_JSON_PATH = "/etc/docker/daemon.json"
SECRET_DIRS = ("/etc/docker",)  # but DAEMON_JSON_PATH
# A secret's staging copy beside it while it is written (operations.host_files): secret too.
SECRET_STAGING_PREFIX = ".gpufleet-secret."

_PART = "__gpufleet_state="


def is_watched(path: str) -> bool:
    return path in WATCHED_FILES or str(PurePosixPath(path).parent) in WATCHED_DIRS


def require_watched(path: str) -> None:
    """Raise (before any host is touched) when ``path`` is outside what HostState reads."""
    if not is_watched(path):
        raise OperationValueError(
            f"{path} is outside what facts.host_state.HostState reads; declare its folder in "
            "the component's manages.py (or facts.coverage.CORE): WATCHED_DIRS is their "
            "union, so that one state read keeps covering every managed file"
        )


def is_secret(path: str, mode: str = "600") -> bool:
    """Whether the read keeps ``path``'s content on the host (``mode``: as stat %a prints it).
    The state script applies the same rule on the host (``_files_script``)."""
    pure = PurePosixPath(path)
    if path == DAEMON_JSON_PATH:  # merged, never overwritten: read whatever its mode
        return False
    if path in SECRET_FILES or pure.name.startswith(SECRET_STAGING_PREFIX):
        return True
    if str(pure.parent) in SECRET_DIRS:
        return True
    return not (mode and mode[-1] in "4567")  # not readable by others


def require_secret(path: str) -> None:
    """Raise (before any host is touched) when a secret would be written where the state read
    ships contents."""
    if path not in SECRET_FILES:
        raise OperationValueError(
            f"{path} would hold a secret but is not in facts.host_state.SECRET_FILES: add it "
            "there so that the state read never ships its content"
        )


def require_watched_service(name: str) -> None:
    """Raise (before any host is touched) when ``name`` is outside what HostState reads."""
    if not any(fnmatch.fnmatchcase(name, pattern) for pattern in WATCHED_SERVICES):
        raise OperationValueError(
            f"service {name} is outside what facts.host_state.HostState reads; declare it in "
            "the component's manages.py (or facts.coverage.CORE): WATCHED_SERVICES is their "
            "union, so that one state read keeps covering every managed service"
        )


@dataclass(frozen=True)
class FileState:
    """One regular file: ``content`` is None when larger than CONTENT_LIMIT or secret
    (``is_secret``: its sha256, mode and owner only)."""

    sha256: str
    mode: str  # octal permissions as stat %a prints them: "644", "600"
    owner: str  # "user:group"
    size: int
    mtime: int
    content: str | None = None


@dataclass(frozen=True)
class ServiceState:
    enabled: str  # list-unit-files state: enabled, disabled, masked, static, "" (no unit)
    active: str  # active, inactive, failed, activating, ...

    @property
    def is_enabled(self) -> bool:
        return self.enabled in ("enabled", "static", "alias", "indirect", "generated")

    @property
    def is_active(self) -> bool:
        return self.active == "active"


@dataclass(frozen=True)
class HostStateResult:
    """The host as gpufleet's operations see it.

    ``images``: every local image as ``repo:tag`` and ``repo@digest``.
    ``keyrings``: keyring path -> fingerprints of its primary keys.
    ``now``: the host's clock (seconds since the epoch), for cache ages.
    ``dpkg_unfinished``: packages dpkg left unpacked or half-configured (name -> state);
    ``dpkg_journal``: entries of an interrupted dpkg run in /var/lib/dpkg/updates.
    """

    installed: dict[str, str] = field(default_factory=dict)
    held: frozenset[str] = frozenset()
    files: dict[str, FileState] = field(default_factory=dict)
    services: dict[str, ServiceState] = field(default_factory=dict)
    kernel_module: nvidia_facts.KernelModuleState = field(
        default_factory=lambda: nvidia_facts.parse_kernel_module_state(""))
    system: system_facts.SystemInfoResult = field(
        default_factory=lambda: system_facts.parse_system_info(""))
    docker: docker_facts.DockerInfoResult = field(
        default_factory=lambda: docker_facts.parse_docker_info(""))
    images: frozenset[str] = frozenset()
    image_ids: dict[str, str] = field(default_factory=dict)  # repo:tag -> id
    keyrings: dict[str, frozenset[str]] = field(default_factory=dict)
    now: int | None = None
    dpkg_unfinished: dict[str, str] = field(default_factory=dict)
    dpkg_journal: int = 0

    @property
    def dpkg_interrupted(self) -> bool:
        return bool(self.dpkg_journal or self.dpkg_unfinished)

    def file(self, path: str) -> FileState | None:
        return self.files.get(path)

    def content(self, path: str) -> str | None:
        found = self.files.get(path)
        return found.content if found else None

    def service(self, name: str) -> ServiceState:
        require_watched_service(name)
        return self.services.get(name, ServiceState("", ""))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostStateResult:
        """Build a state from plain values (operation tests write their facts this way).

        ``files`` maps path -> {"content", "mode", "owner", "mtime"}; the sha256 is computed.
        ``services`` maps name -> [enabled, active].
        """
        files = {}
        for path, spec in data.get("files", {}).items():
            content = spec.get("content", "")
            raw = content.encode()
            files[path] = FileState(
                sha256=spec.get("sha256") or hashlib.sha256(raw).hexdigest(),
                mode=str(spec.get("mode", "644")), owner=spec.get("owner", "root:root"),
                size=len(raw), mtime=int(spec.get("mtime", 0)), content=content,
            )
        return cls(
            installed=dict(data.get("installed", {})),
            held=frozenset(data.get("held", [])),
            files=files,
            services={n: ServiceState(*s) for n, s in data.get("services", {}).items()},
            images=frozenset(data.get("images", [])),
            image_ids=dict(data.get("image_ids", {})),
            keyrings={p: frozenset(f) for p, f in data.get("keyrings", {}).items()},
            now=data.get("now"),
            dpkg_unfinished=dict(data.get("dpkg_unfinished", {})),
            dpkg_journal=int(data.get("dpkg_journal", 0)),
        )


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- the command ---------------------------------------------------------------------------------
def _files_script(dirs: tuple[str, ...] = WATCHED_DIRS, files: tuple[str, ...] = WATCHED_FILES,
                  secrets: tuple[str, ...] = SECRET_FILES,
                  secret_dirs: tuple[str, ...] = SECRET_DIRS,
                  readable: tuple[str, ...] = (DAEMON_JSON_PATH,)) -> str:
    """The files part; the arguments exist for tests (a folder of their own)."""
    # One header line per file, then its content in base64 on one line (empty when too big or
    # secret: ``is_secret``'s rule, decided on the host so that the content never leaves it).
    listed = " ".join(quote(d) for d in dirs)
    singles = " ".join(quote(f) for f in files)
    kept = "|".join([quote(f) for f in secrets] + [f"*/{SECRET_STAGING_PREFIX}*"]
                    + [f"{quote(d)}/*" for d in secret_dirs])
    shown = "|".join(quote(f) for f in readable)
    return "\n".join([
        f"{{ for d in {listed}; do [ -d \"$d\" ] && find \"$d\" -maxdepth 1 -type f; done;",
        f"  for f in {singles}; do [ -f \"$f\" ] && echo \"$f\"; done; }} | sort |",
        "while IFS= read -r f; do",
        "  s=$(stat -L -c '%a %U:%G %s %Y' \"$f\") || continue",
        "  h=$(sha256sum < \"$f\" | cut -c1-64)",
        "  printf 'file=%s %s %s\\n' \"$h\" \"$s\" \"$f\"",
        "  case \"${s%% *}\" in *[4567]) private=0 ;; *) private=1 ;; esac",
        f"  case \"$f\" in {shown}) private=0 ;; {kept}) private=1 ;; esac",
        f"  if [ \"$private\" = 0 ] && [ \"$(stat -L -c %s \"$f\")\" -le {CONTENT_LIMIT} ]; then",
        "    base64 -w0 < \"$f\"",
        "  fi",
        "  echo",
        "done",
    ])


_SERVICE_PATTERNS = " ".join(quote(f"{p}.service") for p in WATCHED_SERVICES)
SERVICES_SCRIPT = "\n".join([
    "command -v systemctl >/dev/null 2>&1 || exit 0",
    "systemctl list-unit-files --type=service --no-legend --no-pager "
    f"{_SERVICE_PATTERNS} 2>/dev/null | awk '{{print \"unitfile=\" $1 \" \" $2}}'",
    "systemctl list-units --type=service --all --no-legend --no-pager --plain "
    f"{_SERVICE_PATTERNS} 2>/dev/null | awk '{{print \"unit=\" $1 \" \" $3}}'",
])

IMAGES_SCRIPT = "\n".join([
    "command -v docker >/dev/null 2>&1 || exit 0",
    "docker image ls --digests --no-trunc "
    "--format '{{.Repository}} {{.Tag}} {{.Digest}} {{.ID}}' 2>/dev/null",
    "true",
])

KEYRINGS_SCRIPT = "\n".join([
    f"[ -d {KEYRING_DIR} ] && command -v gpg >/dev/null 2>&1 || exit 0",
    # A throwaway GNUPGHOME: listing keys must not create ~/.gnupg on the host.
    'home=$(mktemp -d); trap \'rm -rf "$home"\' EXIT',
    f"for k in {KEYRING_DIR}/*; do",
    "  [ -f \"$k\" ] || continue",
    "  echo \"__gpufleet_keyring=$k\"",
    "  gpg --homedir \"$home\" --batch --show-keys --with-colons \"$k\" 2>/dev/null",
    "done; true",
])

PARTS: dict[str, str] = {
    "dpkg": "dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' 2>/dev/null; true",
    "hold": "apt-mark showhold 2>/dev/null; true",
    "dpkg_journal": "ls -A /var/lib/dpkg/updates 2>/dev/null; true",
    "files": _files_script(),
    "services": SERVICES_SCRIPT,
    "kernel_module": nvidia_facts.KERNEL_MODULE_SCRIPT,
    "system": system_facts.SYSTEM_SCRIPT,
    "docker": docker_facts.DOCKER_INFO_SCRIPT,
    "images": IMAGES_SCRIPT,
    "keyrings": KEYRINGS_SCRIPT,
    "now": "date +%s",
}


def host_state_script() -> str:
    """The whole read as one POSIX sh script: named parts, each with its exit status."""
    return "\n".join(
        f"echo '{_PART}{name}'\n( LC_ALL=C; export LC_ALL\n{script}\n) </dev/null 2>&1;"
        ' echo "__gpufleet_rc=$?"'
        for name, script in PARTS.items()
    )


# --- parsing -----------------------------------------------------------------------------------
def _decode(data: str) -> str | None:
    try:
        return base64.b64decode(data.strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None


def parse_files(text: str) -> dict[str, FileState]:
    files: dict[str, FileState] = {}
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("file="):
            continue
        parts = line[5:].split(" ", 5)
        if len(parts) < 6 or not parts[3].isdigit() or not parts[4].isdigit():
            continue
        digest, mode, owner, size, mtime, path = parts
        payload = lines[index + 1] if index + 1 < len(lines) else ""
        shipped = payload and int(size) <= CONTENT_LIMIT and not is_secret(path, mode)
        content = _decode(payload) if shipped else None
        if content is None and int(size) == 0:
            content = ""
        files[path] = FileState(digest, mode, owner, int(size), int(mtime), content)
    return files


def parse_services(text: str) -> dict[str, ServiceState]:
    enabled: dict[str, str] = {}
    active: dict[str, str] = {}
    for line in text.splitlines():
        key, _, rest = line.partition("=")
        name, _, value = rest.partition(" ")
        unit = name.removesuffix(".service")
        if key == "unitfile" and unit:
            enabled[unit] = value.strip()
        elif key == "unit" and unit:
            active[unit] = value.strip()
    return {name: ServiceState(enabled.get(name, ""), active.get(name, "inactive"))
            for name in sorted(set(enabled) | set(active))}


def parse_images(text: str) -> frozenset[str]:
    refs: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) not in (3, 4) or parts[0] == "<none>":
            continue
        repo, tag, digest = parts[:3]
        if tag != "<none>":
            refs.add(f"{repo}:{tag}")
        if digest.startswith("sha256:"):
            refs.add(f"{repo}@{digest}")
    return frozenset(refs)


def parse_image_ids(text: str) -> dict[str, str]:
    """repo:tag -> the image's id (sha256:...), for the lines that carry one."""
    ids: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] != "<none>" and parts[1] != "<none>":
            ids[f"{parts[0]}:{parts[1]}"] = parts[3]
    return ids


def parse_host_state(lines: list[str]) -> HostStateResult:
    """Parse the output of ``host_state_script`` (as lines). Never raises on odd text."""
    parts = split_sections(lines, _PART)
    missing = CommandResult(text="", exit_code=None)

    def get(name: str) -> CommandResult:
        return parts.get(name) or missing

    now = get("now").text.strip()
    module, system, docker = get("kernel_module"), get("system"), get("docker")
    return HostStateResult(
        installed=parse_dpkg_query(get("dpkg").text),
        held=parse_showhold(get("hold").text),
        files=parse_files(get("files").text),
        services=parse_services(get("services").text),
        kernel_module=nvidia_facts.parse_kernel_module_state(module.text, module.exit_code),
        system=system_facts.parse_system_info(system.text, system.exit_code),
        docker=docker_facts.parse_docker_info(docker.text, docker.exit_code),
        images=parse_images(get("images").text),
        image_ids=parse_image_ids(get("images").text),
        keyrings=parse_keyring_fingerprints(get("keyrings").text.splitlines()),
        now=int(now) if now.isdigit() else None,
        dpkg_unfinished=parse_dpkg_unfinished(get("dpkg").text),
        dpkg_journal=parse_dpkg_journal(get("dpkg_journal").text),
    )


class HostState(FactBase[HostStateResult]):
    """
    Everything gpufleet's operations compare against, in one round trip.

    .. code:: python

        HostStateResult(installed={"nvidia-driver-535": "535.183.06-1"},
                        held=frozenset({"nvidia-driver-535"}),
                        files={"/etc/docker/daemon.json": FileState(sha256="...", mode="644",
                               owner="root:root", size=120, mtime=1733040000, content="{...}")},
                        services={"docker": ServiceState("enabled", "active")},
                        kernel_module=KernelModuleState(...), docker=DockerInfoResult(...),
                        images=frozenset({"gpufleet-sim/cuda-base:12.1"}),
                        keyrings={...}, now=1733040000)
    """

    default = HostStateResult

    def command(self) -> str:
        return host_state_script()

    def process(self, output: list[str]) -> HostStateResult:
        return parse_host_state(output)
