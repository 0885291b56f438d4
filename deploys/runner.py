"""The one pipeline every converging entry runs: fleet spec -> probe -> preflight (every
check, one report) -> the entry's steps in their fixed order -> the host manifest.

An entry is a list of parts (``GPU_HOST``, ``SERVE``), each a step or a component
(``components/<name>/``, protocol in rules/component.py): the entries differ only in which
parts they take, never in how a part is prepared, so they cannot drift apart. Preflight is the same
for every entry (the Python environment's findings, the monitored fleet's replica count and
exporter pin, the replica's other nodes), and so is what a monitored host runs beside its
engine (the DCGM exporter in the compose file: a compose file rendered without it would make
`up --remove-orphans` remove it).

pyinfra's result table has one row per call site (an operation's hash is the line numbers of
its call stack): a step both kinds of host take is called from one line of ``run``, or it
shows twice.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from pyinfra import state
from pyinfra.api.operation import OperationMeta

from components.dcgm_exporter.component import DCGM_EXPORTER
from deploys.container_toolkit import container_toolkit
from deploys.cuda_toolkit import cuda_toolkit
from deploys.docker_engine import docker_engine
from deploys.exporters import exporters
from deploys.fault_summary import install_fault_summary
from deploys.host_network import host_network
from deploys.host_record import host_record
from deploys.inference import inference
from deploys.locking import run_lock_done, run_lock_held
from deploys.monitoring_host import monitoring_host
from deploys.nvidia_driver import nvidia_driver
from deploys.nvidia_repositories import nvidia_repositories
from deploys.preflight import monitor_preflight, preflight, read_host, replicas_agree
from deploys.python_env import python_env, python_env_plan
from deploys.spec import fleet_specs, host_spec
from deploys.verify_stack import verify_stack
from facts.probe import HostProbe
from inventory.fleet import HostSpec
from operations.checks import refuse_host
from rules.component import Component, beside_engine
from rules.monitoring import is_monitor, is_monitored

Step = Literal["network", "monitoring_host", "gpu_stack", "python_env", "exporters",
               "inference", "record"]
# A part of an entry: a step (a name below), or a component (one folder of components/, the
# protocol in rules/component.py), each on a line of its own.
Part = Step | Component[Any]
# The order the parts run in, whichever an entry takes: deploys/gpu_host.py takes all of them.
GPU_HOST: tuple[Part, ...] = (
    "network",
    "monitoring_host",
    "gpu_stack",
    "python_env",
    "exporters",
    DCGM_EXPORTER,
    "inference",
    "record",
)
STEPS: tuple[Part, ...] = GPU_HOST
# deploys/serve.py: what is served. The monitoring host's step follows the fleet's replicas
# (its scrape targets and the gateway's upstreams); the manifest is brought up to date, the
# entries of the steps not taken kept as the last converge recorded them.
SERVE: tuple[Part, ...] = (
    "monitoring_host",
    DCGM_EXPORTER,
    "inference",
    "record",
)


def run(parts: Collection[Part]) -> None:
    """Run ``parts`` (in ``STEPS`` order) on the host being deployed, after the preflight
    every entry shares; a refused host takes none of them."""
    unknown = [part for part in parts if part not in STEPS]
    assert not unknown, f"unknown steps: {unknown}"
    # Every run ends with a summary of the hosts it lost: step, cause, what to do.
    install_fault_summary(state)
    steps = [part for part in STEPS if isinstance(part, str) and part in parts]
    components = [part for part in STEPS if not isinstance(part, str) and part in parts]
    # One run at a time on a host (deploys/locking.py): the lock is taken before the host
    # is read and given back last; a GPU host is read with the probe (the monitoring host's
    # preflight reads its own state). The same runner as every other entry's (below).
    run_entry(Entry("converge", lambda run: _run_steps(steps, components, run),
                    locks=_everywhere, probes=lambda spec, fleet: not is_monitor(spec)))


def _run_steps(steps: Collection[Step], components: Sequence[Component[Any]],
               run: EntryRun) -> None:
    spec, fleet = run.spec, run.fleet
    # The components this host runs, each with its own plan (decided before anything changes).
    wanted = [component for component in components if component.wanted(spec, fleet)]
    if is_monitor(spec):
        # A monitoring host needs no GPU: its own small stack, read from one state read.
        monitor_preflight(spec, fleet)
        venv, plan = None, None
        converge = True
        monitored = False
        planned: list[tuple[Component[Any], Any]] = []
    else:
        assert run.probe is not None  # every GPU host is read (the entry's probes)
        probe = run.probe
        venv = python_env_plan(spec)
        # A fleet with a monitoring host scrapes every replica: the host must run what the
        # fleet file says (rules.monitoring.fleet_replicas), checked before anything changes.
        monitored = is_monitored(spec, fleet)
        plan = preflight(spec, probe, extra=venv.findings() if venv else (),
                         components=wanted)
        planned = [(component, component.plan(spec, probe)) for component in wanted]
        if plan is not None and monitored and not replicas_agree(spec, plan):
            plan = None
        converge = plan is not None

    if converge and "network" in steps:
        host_network(spec=spec)
    if is_monitor(spec):
        if "monitoring_host" in steps:
            monitoring_host(spec=spec, fleet=fleet)
    elif plan is not None:
        if "gpu_stack" in steps:
            nvidia_repositories(spec=spec, plan=plan)
            # @deploy passes the return value through (pyinfra's typing says otherwise).
            driver = cast(OperationMeta, nvidia_driver(spec=spec, plan=plan,
                                                       secure_boot=probe.secure_boot.enforcing))
            cuda_toolkit(spec=spec, plan=plan)
            docker_engine(spec=spec, plan=plan)
            container_toolkit(spec=spec, plan=plan, driver_install=driver)
            verify_stack(spec=spec, plan=plan)
        if "python_env" in steps:
            # After the driver (and its reboot), so the venv's CUDA check sees the GPUs.
            python_env(plan=venv)
        if monitored and "exporters" in steps:
            exporters(spec=spec)
        if "inference" in steps:
            # Every component so far runs in the engine's compose project.
            inference(spec=spec, plan=plan, listing=probe.weights,
                      beside=[beside_engine(component, spec, part)
                              for component, part in planned])
    if converge and "record" in steps:
        host_record(spec=spec, plan=plan, venv=venv,
                    partial=any(step not in steps for step in STEPS
                                if isinstance(step, str) and step != "record"))


# --- the entries that do not converge: canary, drain, audit, doctor ----------------------------
@dataclass(frozen=True)
class EntryRun:
    """What the runner hands an entry's step: the host's spec, the fleet's, and the probe
    (the one reading of the host, facts.probe) when the entry asked for it."""

    spec: HostSpec
    fleet: list[HostSpec]
    probe: HostProbe | None


def _nowhere(spec: HostSpec, fleet: list[HostSpec]) -> bool:
    return False


def _everywhere(spec: HostSpec, fleet: list[HostSpec]) -> bool:
    return True


@dataclass(frozen=True)
class Entry:
    """An entry that does not converge, declared: where the host's spec comes from, on which
    hosts it holds the run lock (taken before the host is read, given back last), which hosts
    it reads with the probe, and its own step. ``run_entry`` takes them in that order for
    every entry, so no entry prepares a host its own way."""

    name: str
    step: Callable[[EntryRun], None]
    locks: Callable[[HostSpec, list[HostSpec]], bool] = _nowhere
    probes: Callable[[HostSpec, list[HostSpec]], bool] = _nowhere
    # The fleet file's spec (deploys/spec.py), or one built otherwise (the doctor's --data):
    # a message instead stops the host with ``unusable`` as the refusal's title.
    spec: Callable[[], HostSpec | str] = host_spec
    unusable: str = "Refuse: no usable spec for this host"


def run_entry(entry: Entry) -> None:
    """Run ``entry`` on the host being deployed: spec -> run lock (where it locks) -> probe
    (where it reads) -> its step -> the lock given back."""
    spec = entry.spec()
    if isinstance(spec, str):
        refuse_host(name=entry.unusable, message=spec)
        return
    fleet = fleet_specs()
    locked = entry.locks(spec, fleet)
    if locked and not run_lock_held():
        return  # refused by run_lock_held: nothing read or changed here
    probe = read_host(spec) if entry.probes(spec, fleet) else None
    entry.step(EntryRun(spec, fleet, probe))
    if locked:
        run_lock_done()
