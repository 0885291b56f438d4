"""The Python environment step's decision, as a pure function of the host's spec and the
venv's state (facts.venv_state.PythonEnvState): do nothing, refuse with the host's options, or
build the lock beside the live venv and swap (operations.locked_venv).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from facts.venv_state import PythonEnvStateResult
from inventory.fleet import HostSpec
from inventory.python_locks import (
    LockError,
    LockFile,
    load_lock,
    lock_targets,
    pin_problems,
    wheelhouse_wheels,
)
from rules.findings import Finding
from rules.network import PROXY_ENV_PATH, proxy_env_file

# The trust store the host's pip uses when the fleet adds a CA: the network step installs
# settings.network.extra_ca_bundle into the system store (update-ca-certificates), and pip in a
# venv would otherwise use its own certifi bundle, which does not have it.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Modules imported by verify.py when the lock has them.
VERIFIED_IMPORTS = ("torch", "transformers")


@dataclass(frozen=True)
class InstallSource:
    """Where pip takes the locked files from.

    index_url: a simple index (None: pip's default index).
    wheels: controller paths of the locked wheels to push to ``host_wheelhouse`` and install
    with ``--no-index --find-links`` (None: download on the host).
    """

    index_url: str | None = None
    wheels: tuple[Path, ...] | None = None
    host_wheelhouse: str | None = None
    env_file: str | None = None  # a VAR=value file on the host sourced first (proxies)
    cert: str | None = None


@dataclass(frozen=True)
class Plan:
    """What to do on one host. ``action`` decides which fields matter."""

    action: Literal["refuse", "noop", "install"]
    message: str
    interpreter: str | None = None
    venv_package: str | None = None  # apt package that provides ensurepip, when missing
    lock: LockFile | None = None
    new: str | None = None
    marker: dict[str, Any] = field(default_factory=dict)
    source: InstallSource | None = None

    def findings(self) -> list[Finding]:
        """A refusal as preflight reports it (empty otherwise)."""
        if self.action != "refuse":
            return []
        return [Finding("error", "python-env", self.message, "", "",
                        "see the options above, or set python_env.enabled = false")]


def expected_marker(lock: LockFile, torch_cuda: str | None) -> dict[str, Any]:
    """The marker a venv built from ``lock`` carries; verify.py checks what it lists."""
    imports = [name for name in VERIFIED_IMPORTS if lock.version(name)]
    return {
        "lock": lock.lock,
        "file": lock.path.name,
        "digest": lock.digest,
        "python": lock.python,
        "dists": {name: package.version for name, package in sorted(lock.packages.items())},
        "imports": imports,
        "torch_cuda": torch_cuda if "torch" in imports else None,
    }


def summary(verify: dict[str, Any]) -> str:
    """One line: Python, torch (CUDA), transformers, GPUs as torch sees them."""
    parts = [f"Python {verify.get('python', '?')}"]
    torch = verify.get("torch")
    if torch:
        parts.append(f"torch {torch['version']} (CUDA {torch['cuda']})")
    if verify.get("transformers"):
        parts.append(f"transformers {verify['transformers']}")
    if torch and torch.get("devices"):
        caps = sorted({d["capability"] for d in torch["devices"]})
        parts.append(f"{len(torch['devices'])} GPU(s) usable, compute capability "
                     f"{', '.join(caps)}")
    elif torch and verify.get("driver_loaded") is False:
        parts.append("no NVIDIA driver loaded: CUDA devices not checked")
    return ", ".join(parts)


def _sibling(path: str, digest: str, live: str | None) -> str:
    """The folder to build in: named by the lock digest, never the live venv itself."""
    new = f"{path}.{digest[:12]}"
    return f"{new}-b" if live == new else new


def choose_interpreter(
    state: PythonEnvStateResult, pythons: list[str]
) -> tuple[str, str] | None:
    """(command, X.Y): the system python3 when in range, else the newest pythonX.Y on PATH."""
    def minor(version: str) -> str:
        return ".".join(version.split(".")[:2])

    system = state.interpreters.get("python3")
    if system and minor(system) in pythons:
        return "python3", minor(system)
    for wanted in sorted(pythons, key=lambda v: int(v.split(".")[1]), reverse=True):
        version = state.interpreters.get(f"python{wanted}")
        if version and minor(version) == wanted:
            return f"python{wanted}", wanted
    return None


def plan_python_env(
    spec: HostSpec,
    state: PythonEnvStateResult,
    locks_dir: Path | None = None,
    wheelhouse_root: Path | None = None,
    check_pins: bool = True,
) -> Plan:
    """Decide what the Python environment step does on this host. Pure: no I/O on the host."""
    cfg = spec.settings.python_env
    lock_name = spec.pins.python.lock
    where = f"{spec.name}: settings.python_env"
    if state.status != "ok":
        return Plan("refuse", f"{spec.name}: could not read the Python environment state "
                              f"({state.reason}); raw output:\n{state.raw}")

    targets = lock_targets(lock_name, locks_dir)
    machines = sorted({machine for _, machine in targets})
    if state.machine not in machines:
        return Plan("refuse", (
            f"{spec.name}: machine {state.machine}: lock {lock_name} (pin set "
            f"{spec.pin_set_name}) has files for {', '.join(machines) or 'no machine'} only. "
            "The default index's torch 2.1.0 for aarch64 is a CPU-only build. Options: set "
            "python_env.enabled = false for this host, or add a lock for it built from an "
            "index that carries CUDA builds (python_env.index_url)."))

    if state.path_kind == "other":
        return Plan("refuse", (
            f"{where}.path = {cfg.path!r}: it exists and is not an environment gpufleet manages "
            "(gpufleet keeps a symlink there, to swap environments atomically). Move it away, "
            "or set python_env.path to another place; nothing was changed."))

    pythons = [python for python, machine in targets if machine == state.machine]
    chosen = choose_interpreter(state, pythons)
    if chosen is None:
        have = ", ".join(f"{name} {version}" for name, version in sorted(
            state.interpreters.items())) or "no python3 on PATH"
        wanted = " or ".join(pythons)
        return Plan("refuse", (
            f"{spec.name}: needs Python {wanted} for lock {lock_name} (torch "
            f"{spec.pins.python.torch} publishes wheels up to 3.11); the host has: {have}. "
            f"Options: install python{pythons[-1]} and python{pythons[-1]}-venv from your "
            "distribution or a trusted backport (on Ubuntu 24.04, whose python3 is 3.12: the "
            "deadsnakes PPA), run the host on a release whose python3 is in range (Debian 12: "
            "3.11, Ubuntu 22.04: 3.10), or set python_env.enabled = false."))
    interpreter, python = chosen

    try:
        lock = load_lock(lock_name, python, str(state.machine), locks_dir)
    except LockError as exc:
        return Plan("refuse", f"{spec.name}: {exc}")
    if check_pins:
        problems = pin_problems(lock, spec.pins.python)
        if problems:
            return Plan("refuse", f"{spec.name}: lock and pin set {spec.pin_set_name} disagree: "
                                  + "; ".join(problems)
                                  + ". Regenerate the locks: make python-locks")

    marker = expected_marker(lock, spec.pins.cuda.release)
    verify = state.verify or {}
    problems = list(verify.get("problems", []))
    if state.marker == marker and state.verify is not None and not problems:
        return Plan("noop", f"{cfg.path}: {lock_name}/{lock.path.name} verified: {summary(verify)}",
                    lock=lock)

    if state.marker is None or state.path_kind == "absent":
        reason = "no environment yet"
    elif state.marker.get("digest") != marker["digest"]:
        reason = (f"lock changed ({state.marker.get('file')} "
                  f"{str(state.marker.get('digest'))[:12]} -> {lock.path.name} "
                  f"{lock.digest[:12]})")
    elif state.marker != marker:
        reason = "the environment was built for other expectations (Python or CUDA)"
    else:
        reason = "the live environment fails verification: " + "; ".join(problems)

    venv_package = None
    if interpreter not in state.venv_capable:
        if not state.apt:
            return Plan("refuse", (
                f"{spec.name}: {interpreter} cannot create virtual environments (no ensurepip) "
                "and this host has no apt-get to install it; install your distribution's venv "
                f"package for Python {python}, or set python_env.enabled = false."))
        venv_package = f"python{python}-venv"

    wheels = None
    host_wheelhouse = None
    if cfg.wheelhouse:
        try:
            wheels = wheelhouse_wheels(lock, wheelhouse_root)
        except LockError as exc:
            return Plan("refuse", f"{where}.wheelhouse = true: {exc}")
        host_wheelhouse = str(PurePosixPath(cfg.path).parent / "wheelhouse")

    source = InstallSource(
        index_url=str(cfg.index_url) if cfg.index_url else None,
        wheels=wheels,
        host_wheelhouse=host_wheelhouse,
        env_file=PROXY_ENV_PATH if proxy_env_file(spec.settings.network) else None,
        cert=SYSTEM_CA_BUNDLE if spec.settings.network.extra_ca_bundle else None,
    )
    return Plan(
        "install", reason, interpreter=interpreter, venv_package=venv_package, lock=lock,
        new=_sibling(cfg.path, lock.digest, state.link_target), marker=marker, source=source,
    )
