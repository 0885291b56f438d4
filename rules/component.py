"""The component protocol: what one part of a GPU host declares, so that the runner, the state
read and the preflight take it from one folder (``components/<name>/``) instead of central
lists.

A component declares:

- ``settings``: its section of the fleet file's settings (the pydantic model, every leaf with a
  ``Field(description=...)``) and ``reads``, the fields of it the component reads;
- ``manages``: the folders, files and services its operations touch and the probe sections it
  reads; the state read and the probe cover the union of every declaration
  (``facts.coverage``: a component's ``manages.py``);
- ``depends_on``: the components it imports (``tests/unit/test_layout.py`` checks a
  component imports only the layers below the runner and these);
- ``wanted``: whether a host of this fleet runs it at all;
- ``checks``: its preflight findings, from the spec and the one probe (pure);
- ``plan``: its own part of the host's plan (pure), handed to ``deploy`` and, for what runs in
  the engine's compose project, to ``compose_services``;
- ``deploy``: operations only, with the arguments ``plan`` decided.

An entry of ``deploys/runner.py`` runs a component by naming it in its list, one line each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from facts.coverage import Manages
from facts.probe import HostProbe
from inventory.fleet import HostSpec
from rules.findings import Finding

PlanT = TypeVar("PlanT")


class Component(Protocol[PlanT]):
    """One part of a GPU host, declared once (see the module's docstring)."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> type[BaseModel]: ...

    @property
    def reads(self) -> tuple[str, ...]: ...

    @property
    def manages(self) -> Manages: ...

    @property
    def depends_on(self) -> tuple[str, ...]: ...

    def wanted(self, spec: HostSpec, fleet: Sequence[HostSpec]) -> bool:
        """Whether ``spec``'s host runs the component in this fleet."""
        ...

    def checks(self, spec: HostSpec, probe: HostProbe) -> list[Finding]:
        """Its preflight findings (an error refuses the host before anything changes)."""
        ...

    def plan(self, spec: HostSpec, probe: HostProbe) -> PlanT:
        """Its part of the host's plan: every argument its deploy passes on, decided."""
        ...

    def compose_services(self, plan: PlanT) -> Mapping[str, Any]:
        """The services it runs in the engine's compose project, after the engine's own
        (empty for a component that runs outside it)."""
        ...

    def deploy(self, spec: HostSpec, plan: PlanT) -> None:
        """Its operations, with the arguments ``plan`` decided."""
        ...


@dataclass(frozen=True)
class BesideEngine:
    """A component that runs in the engine's compose project, as the inference step takes it:
    its services (written into the engine's compose file after the engine's own) and its
    deploy with its plan, run before that file is brought up (its image must be there)."""

    services: Mapping[str, Any]
    ready: Callable[[], None]


def beside_engine(component: Component[PlanT], spec: HostSpec, plan: PlanT) -> BesideEngine:
    return BesideEngine(component.compose_services(plan),
                        lambda: component.deploy(spec, plan))
