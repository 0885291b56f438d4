"""pyinfra inventory for gpufleet: `pyinfra inventory.py deploys/gpu_host.py`.

Reads the fleet file named by $GPUFLEET_FLEET (default inventory/fleet.toml), validates all of
it, and exposes one pyinfra group per fleet group. A fleet file with mistakes stops here, with
one line per problem and no host contacted.

Run directly, it only validates, offline:

    python inventory.py [FLEET_FILE]    # exit 0: valid; 2: problems (one line each)
"""

import sys
from pathlib import Path
from typing import NoReturn

from inventory.fleet import (
    Fleet,
    FleetError,
    fleet_path_from_env,
    load_fleet,
    unedited_example_problem,
)
from rules.fleet_checks import fleet_problems


def _load(path: Path | None = None) -> Fleet:
    """The validated fleet; on any problem, print one line each and exit 2. A fleet of
    documentation addresses (the shipped example, unedited) is refused too: the command on the
    design card must never reach a machine nobody named."""
    try:
        fleet = load_fleet(path or fleet_path_from_env(), checks=fleet_problems)
    except FleetError as error:
        _report(error)
    example = unedited_example_problem(fleet)
    if example:
        _report(FleetError([example]))
    return fleet


def _report(error: FleetError) -> NoReturn:
    print(f"gpufleet: the fleet file has {len(error.lines)} problem(s); "
          "no host was contacted:", file=sys.stderr)
    for line in error.lines:
        print(f"  - {line}", file=sys.stderr)
    raise SystemExit(2) from None


def _main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python inventory.py [FLEET_FILE]  (default: $GPUFLEET_FLEET, else "
              "inventory/fleet.toml): validate the fleet file offline", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv and not argv[0].strip():
        _report(FleetError(["the fleet file argument is empty: give a fleet file's path, or "
                            "none for $GPUFLEET_FLEET / inventory/fleet.toml"]))
    fleet = _load(Path(argv[0]) if argv else None)
    groups = len(fleet.pyinfra_groups())
    print(f"gpufleet: {fleet.source} is valid: {groups} group(s), {len(fleet.hosts)} host(s) "
          "(no host was contacted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))

# pyinfra executes this file without a __name__ of "__main__": it takes every public
# module-level list/tuple as a group of hosts. The fleet's groups, then a group per connector
# host named as the fleet file names it (for --limit).
_FLEET = _load()
globals().update(_FLEET.pyinfra_host_aliases())
globals().update(_FLEET.pyinfra_groups())


def _summarise_faults() -> None:
    """Before pyinfra connects: a host that cannot be reached is in the run's fault summary."""
    from pyinfra.context import ctx_state

    from deploys.fault_summary import install_fault_summary

    if ctx_state.isset():
        install_fault_summary(ctx_state.get())


_summarise_faults()


def _faster_pyinfra() -> None:
    """pyinfra orders each operation by the lines of the deploy code that called it, and
    resolves every operation's global arguments; do both with pyinfra's results and less CPU
    per operation and host (operation order from the frames, not inspect.stack()'s source
    lines; type hints resolved once, host data read once per call:
    operations/pyinfra_adapter.py)."""
    from operations.pyinfra_adapter import install_faster_pyinfra

    install_faster_pyinfra()


_faster_pyinfra()
