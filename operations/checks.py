"""Checks: stop a host with a message, now or after earlier operations did their work.

A check reads the host only at execution time, so in the preview (pyinfra without -y) it is
neither a change nor a refusal: it shows as "no change" and runs when the operations before it
have run. A refusal decided before execution (preflight) is an operation of its own that the
preview does show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from weakref import WeakKeyDictionary

from pyinfra import host
from pyinfra.api import FunctionCommand, State, operation

from facts.apt import AptOffered
from operations.messages import fail_host


@operation(is_idempotent=False)
def refuse_host(message: str):
    """
    Stop this host here with a message for the operator; other hosts carry on.

    + message: what is wrong, measured vs required, and how to fix it

    **Example:**

    .. code:: python

        refuse_host(
            name="Refuse: preflight found problems (nothing was changed)",
            message="driver 525.60.13 < 530.30.02 required by CUDA 12.1; use pin set ...",
        )
    """
    yield FunctionCommand(fail_host, (message,), {})


@operation()
def check(verdict: Callable[[], tuple[str | None, str]]):
    """
    Stop the host when ``verdict()`` returns a refusal message; called at execution only.

    ``verdict`` returns ``(refusal or None, what was checked)``; the second part is the
    "No changes" note of a passing check.

    **Example:**

    .. code:: python

        check(name="Ensure the pinned driver is the one running",
              verdict=lambda: (None, "nvidia 535.183.06 loaded"))
    """
    if not host.state.is_executing:
        return
    message, note = verdict()
    if message:
        yield FunctionCommand(fail_host, (message,), {})
    else:
        host.noop(note)


# What each host completed in this run (pyinfra's State): recorded by a passing `check`'s
# verdict at execution, read by a later operation on another host (the gateway's canary
# routing reads the canary hosts' proofs). A failed host runs nothing after its failure.
_COMPLETED: WeakKeyDictionary[State, set[tuple[str, str]]] = WeakKeyDictionary()


def completed(step: str, note: str) -> Callable[[], tuple[str | None, str]]:
    """A `check` verdict that records, at execution, that this host got to ``step`` in this
    run (every operation before it done) and passes with ``note``."""
    def verdict() -> tuple[str | None, str]:
        _COMPLETED.setdefault(host.state, set()).add((step, host.name))
        return None, note
    return verdict


def completed_hosts(state: State, step: str) -> set[str]:
    """The pyinfra names of the hosts that got to ``step`` in this run."""
    return {name for done, name in _COMPLETED.get(state, set()) if done == step}


def missing_versions(packages: Mapping[str, str], offered: Mapping[str, tuple[str, ...]],
                     repositories: str) -> list[str]:
    """One line per package whose pinned version is not offered, with what is. Pure."""
    lines = []
    for name, version in sorted(packages.items()):
        have = offered.get(name, ())
        if version not in have:
            lines.append(f"  {name} {version}: {repositories} offer "
                         + (", ".join(have) if have else "nothing"))
    return lines


@operation()
def versions_offered(packages: Mapping[str, str], repositories: str = "the repositories"):
    """
    Stop the host unless the package lists offer every package at exactly the pinned version.

    Runs at execution time, after the lists were refreshed, and reads what apt sees then.
    Reports every missing package with what is offered.

    + packages: package name -> exact apt version
    + repositories: how to name the repositories in the message

    **Example:**

    .. code:: python

        versions_offered(
            name="Ensure the repositories offer every pinned version",
            packages={"cuda-toolkit-12-1": "12.1.1-1"},
        )
    """
    if not host.state.is_executing:
        return
    offered = host.get_fact(AptOffered, packages=tuple(sorted(packages)))
    missing = missing_versions(packages, offered, repositories)
    if missing:
        message = "\n".join([
            "the pinned versions are not offered by " + repositories + ":",
            *missing,
            "Fix: correct inventory/pins.toml, or point repos.* in the fleet file at a mirror "
            "that carries these versions; then run `apt-get update` on the host to check.",
        ])
        yield FunctionCommand(fail_host, (message,), {})
    else:
        host.noop(f"all {len(packages)} pinned versions are offered")
