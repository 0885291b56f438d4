"""What one run keeps between hosts and between the deploy file's passes, in one typed place.

pyinfra runs a deploy file once per host, each time with fresh module globals, and keeps one
``State`` per run. Whatever gpufleet must remember across those passes (the state readings,
the probes, the fleet's specs, the audit's table, the locks held, what each host must be) is
a field of ``RunContext``, kept on that State: a new run (or a test's new State) starts
empty, and nothing else keeps run data in a module global or a loose ``State`` attribute.

    context = run_context(host.state)
    context.probes[host.name] = ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from facts.host_state import HostStateResult
from facts.probe import HostProbe
from inventory.fleet import HostSpec
from rules.manifest import Drift
from rules.run_lock import Holder

if TYPE_CHECKING:  # same layer; operations.desired imports this module
    from pyinfra.api.host import Host

    from operations.desired import DesiredState

# The one attribute gpufleet adds to pyinfra's State.
_ATTRIBUTE = "gpufleet_run"


@dataclass(frozen=True)
class StateReading:
    """One reading of a host's state (facts.host_state.HostState), and when it was taken:
    in which phase, after how many of the run's changes to the host, at what time."""

    executing: bool
    changes: int
    taken: float  # time.monotonic()
    result: HostStateResult


@dataclass
class RunContext:
    """Everything a run remembers, by pyinfra host name where it is per host."""

    # operations/host_reading.py: the current reading of each host's state.
    readings: dict[str, StateReading] = field(default_factory=dict)
    # deploys/preflight.py: each host's probe (None: could not be read) and when it was read;
    # a replica's other nodes are read during one node's pass and serve their own pass.
    probes: dict[str, tuple[HostProbe | None, float]] = field(default_factory=dict)
    # deploys/spec.py: every host of the fleet inventory, validated once.
    fleet: list[HostSpec] = field(default_factory=list)
    # deploys/spec.py: each host's spec, validated once, with the data it was validated from.
    host_specs: dict[str, tuple[object, HostSpec]] = field(default_factory=dict)
    # deploys/audit.py: each host's drift, printed as one table when the run ends
    # (None until the first host registers the report).
    audit: dict[str, list[Drift]] | None = None
    # deploys/fault_summary.py: the summary of lost hosts is printed at exit, once.
    fault_summary_installed: bool = False
    # operations/host_lock.py: the run locks this run holds, with their host; the release
    # on failure and at exit is installed once.
    locks_taken: dict[str, tuple[Host, Holder]] = field(default_factory=dict)
    lock_release_installed: bool = False
    # operations/desired.py: what this run makes each host be (the manifest's source).
    desired: dict[str, DesiredState] = field(default_factory=dict)


def run_context(state: Any) -> RunContext:
    """The run context of pyinfra's ``state`` (created empty on first use)."""
    context = getattr(state, _ATTRIBUTE, None)
    if context is None:
        context = RunContext()
        setattr(state, _ATTRIBUTE, context)
    assert isinstance(context, RunContext)
    return context


__all__ = ["RunContext", "StateReading", "run_context"]
