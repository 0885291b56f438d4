"""Deploy step: the locked, hash-verified Python environment for host-side tooling.

The host is asked one question (facts.venv_state.PythonEnvState: interpreters, the venv at
``python_env.path``, its marker and a verification run inside it) and the pure decision
(rules.python_env_plan.plan_python_env) says: nothing to do, refuse with the host's options,
or build the lock beside the live venv and swap (operations.locked_venv). In gpu_host.py the
question is asked by preflight, so a host that cannot get its environment is refused before
anything changes; run alone, the step asks it itself.

On a converged host this step is one remote command.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy

from deploys.spec import host_spec
from facts.venv_state import PythonEnvState
from inventory.fleet import HostSpec
from inventory.python_locks import lock_targets
from operations.apt_pins import packages_present
from operations.checks import refuse_host
from operations.locked_venv import locked_venv, report_environment
from rules.network import apt_context
from rules.python_env_plan import Plan, plan_python_env


def interpreter_candidates(spec: HostSpec, locks_dir: Path | None = None) -> tuple[str, ...]:
    pythons = sorted({python for python, _ in lock_targets(spec.pins.python.lock, locks_dir)})
    return ("python3", *(f"python{python}" for python in pythons))


def python_env_plan(
    spec: HostSpec,
    locks_dir: Path | None = None,
    wheelhouse_root: Path | None = None,
    check_pins: bool = True,
) -> Plan | None:
    """Read the venv's state (one command) and decide; None when the step is switched off."""
    cfg = spec.settings.python_env
    if not cfg.enabled:
        return None
    state = host.get_fact(PythonEnvState, path=cfg.path,
                          candidates=interpreter_candidates(spec, locks_dir))
    return plan_python_env(spec, state, locks_dir, wheelhouse_root, check_pins)


@deploy("Python environment")
def python_env(
    plan: Plan | None = None,
    locks_dir: Path | None = None,
    wheelhouse_root: Path | None = None,
    check_pins: bool = True,
) -> None:
    """Ensure the pin set's locked Python environment is installed and verified.

    ``plan``: the decision preflight already made (else the step reads the host itself).
    ``locks_dir`` / ``wheelhouse_root`` default to inventory/locks and .wheelhouse;
    ``check_pins=False`` lets a rehearsal install a lock that is not torch (a small test lock).
    """
    spec = host_spec()
    cfg = spec.settings.python_env
    apt = apt_context(spec.settings)
    plan = plan or python_env_plan(spec, locks_dir, wheelhouse_root, check_pins)
    if plan is None:
        host.noop("python_env.enabled = false: no host-side Python environment")
        return
    if plan.action == "refuse":
        refuse_host(name="Refuse: the Python environment cannot be built here",
                    message=plan.message)
        return
    if plan.action == "noop":
        host.noop(plan.message)
        return

    assert plan.lock is not None and plan.new is not None and plan.source is not None
    assert plan.interpreter is not None
    if plan.venv_package:
        packages_present(
            name=f"Ensure {plan.venv_package} is installed (ensurepip, to create venvs)",
            packages=[plan.venv_package], **apt.install,
            record=False,  # asked for only while it is missing: not on every run
        )
    lock = plan.lock
    installed = locked_venv(
        name=f"Ensure {cfg.path} holds {lock.lock}/{lock.path.name} ({plan.message})",
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
        candidates=interpreter_candidates(spec, locks_dir),
        _if=installed.did_change,
    )
