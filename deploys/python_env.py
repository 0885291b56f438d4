"""Deploy step: the locked, hash-verified Python environment for host-side tooling.

``python_env()`` reads the host's spec (``python_env`` and ``network`` settings, the pin set's
``python`` table), asks the host one question (facts.python_env.PythonEnvState: interpreters,
the venv at ``python_env.path``, its marker and a verification run inside it) and then either
does nothing, refuses the host with the options it has, or builds a new venv from the lock
beside the live one and swaps (operations.python_env.locked_venv).

On a converged host this step is one remote command. The decision itself is the pure function
``plan_python_env`` (unit-tested on fact values).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import apt

from deploys.common import host_spec, stop_host
from facts.python_env import PythonEnvState, PythonEnvStateResult
from inventory.fleet import HostSpec
from inventory.python_locks import (
    LockError,
    LockFile,
    load_lock,
    lock_targets,
    pin_problems,
    wheelhouse_wheels,
)
from operations.python_env import InstallSource, locked_venv

# The trust store the host's pip uses when the fleet adds a CA: the network step installs
# settings.network.extra_ca_bundle into the system store (update-ca-certificates), and pip in a
# venv would otherwise use its own certifi bundle, which does not have it.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Modules imported by verify.py when the lock has them.
VERIFIED_IMPORTS = ("torch", "transformers")


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


def proxy_env(spec: HostSpec) -> dict[str, str]:
    """The fleet's proxies, in both spellings (pip honours either, other tools only one)."""
    network = spec.settings.network
    env: dict[str, str] = {}
    for key, value in (("http_proxy", network.http_proxy), ("https_proxy", network.https_proxy)):
        if value is not None:
            env[key] = env[key.upper()] = str(value)
    if network.no_proxy:
        env["no_proxy"] = env["NO_PROXY"] = ",".join(network.no_proxy)
    return env


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
        return Plan("noop", f"{cfg.path}: {lock_name}/{lock.path.name} verified: {summary(verify)}")

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
        env=proxy_env(spec),
        cert=SYSTEM_CA_BUNDLE if spec.settings.network.extra_ca_bundle else None,
    )
    return Plan(
        "install", reason, interpreter=interpreter, venv_package=venv_package, lock=lock,
        new=_sibling(cfg.path, lock.digest, state.link_target), marker=marker, source=source,
    )


@operation(is_idempotent=False)
def report_environment(path: str, candidates: tuple[str, ...]) -> Generator[Any, None, None]:
    """
    Log what the freshly built environment reports (Python, torch, CUDA, transformers, GPUs).

    + path: the venv path
    + candidates: interpreter names, as given to the PythonEnvState fact

    Reads the host only when executing (never in the change-detection pass) and changes nothing.

    **Example:**

    .. code:: python

        report_environment(name="Report the Python environment",
                           path="/opt/gpufleet/venv", candidates=("python3", "python3.11"))
    """
    if not host.state.is_executing:
        return
    state = host.get_fact(PythonEnvState, path=path, candidates=candidates)
    verify = state.verify or {"problems": ["no verification result"]}
    host.noop(f"{path}: {summary(verify)}" if not verify.get("problems")
              else f"{path}: verification problems: {'; '.join(verify['problems'])}")
    yield from ()


@deploy("Python environment")
def python_env(
    locks_dir: Path | None = None,
    wheelhouse_root: Path | None = None,
    check_pins: bool = True,
) -> None:
    """Ensure the pin set's locked Python environment is installed and verified.

    ``locks_dir`` / ``wheelhouse_root`` default to inventory/locks and .wheelhouse;
    ``check_pins=False`` lets a rehearsal install a lock that is not torch (a small test lock).
    """
    spec = host_spec()
    cfg = spec.settings.python_env
    if not cfg.enabled:
        host.noop("python_env.enabled = false: no host-side Python environment")
        return
    pythons = sorted({python for python, _ in lock_targets(spec.pins.python.lock, locks_dir)})
    candidates = ("python3", *(f"python{python}" for python in pythons))
    state = host.get_fact(PythonEnvState, path=cfg.path, candidates=candidates)
    plan = plan_python_env(spec, state, locks_dir, wheelhouse_root, check_pins)

    if plan.action == "refuse":
        stop_host(name="Refuse: the Python environment cannot be built here",
                  message=plan.message)
        return
    if plan.action == "noop":
        host.noop(plan.message)
        return

    assert plan.lock is not None and plan.new is not None and plan.source is not None
    assert plan.interpreter is not None
    if plan.venv_package:
        apt.packages(
            name=f"Ensure {plan.venv_package} is installed (ensurepip, to create venvs)",
            packages=[plan.venv_package],
            update=True,
            cache_time=3600,
            _env=proxy_env(spec),
        )
    lock = plan.lock
    installed = locked_venv(
        name=(f"Ensure {cfg.path} holds {lock.lock}/{lock.path.name} "
              f"({plan.message})"),
        path=cfg.path,
        new=plan.new,
        interpreter=plan.interpreter,
        lock_file=lock.path,
        lock_label=f"{lock.lock}/{lock.path.name}",
        marker=plan.marker,
        source=plan.source,
    )
    report_environment(
        name="Report the Python environment",
        path=cfg.path,
        candidates=candidates,
        _if=installed.did_change,
    )
