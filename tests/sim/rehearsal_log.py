#!/usr/bin/env python3
"""Is a `make rehearse > log 2>&1` fit for a newcomer? (issue 26)

    .venv/bin/python tests/sim/rehearsal_log.py LOG --seconds 95

One line per problem, exit 1 when there is any:
- an escape code (output to a file has no colour);
- an ETA ("about N s left") above 10 x the run's whole duration (--seconds, measured by the
  caller: no ETA can be right that is longer than ten times the run it was printed in);
- a step with two rows in pyinfra's results table;
- a warning not explained as expected: every preflight warning the simulator cannot help is
  said once per host as "expected in the simulator: CODE, ..." (inventory/sim.toml's
  settings.preflight.expected_warnings); any other warning line is a problem.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ETA = re.compile(r"about (\d+(?:\.\d+)?) s left")
WARNING = re.compile(r"\bwarning\b", re.IGNORECASE)
NO_WARNING = re.compile(r"\b0 warning\(s\)")
EXPLAINED = "expected in the simulator:"
ETA_FACTOR = 10


def result_rows(lines: list[str]) -> list[str]:
    """The operation names of pyinfra's results table ("--> Results:" to "Grand total")."""
    names: list[str] = []
    inside = False
    for line in lines:
        if line.startswith("--> Results:"):
            inside, names = True, []
            continue
        if not inside:
            continue
        name = re.split(r"\s{2,}", line.strip())[0]
        if name.startswith("Grand total"):
            inside = False
        elif name and name != "Operation":
            names.append(name)
    return names


def problems(text: str, seconds: float) -> list[str]:
    found: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if "\x1b" in line:
            found.append(f"line {number}: an escape code: {line!r}")
        for eta in ETA.findall(line):
            if float(eta) > ETA_FACTOR * seconds:
                found.append(f"line {number}: an ETA of {eta} s in a run of {seconds:g} s "
                             f"(more than {ETA_FACTOR} x): {line.strip()}")
        if WARNING.search(NO_WARNING.sub("", line)) and EXPLAINED not in line:
            found.append(f"line {number}: a warning not explained as expected: {line.strip()}")
    rows = result_rows(lines)
    for name in sorted({n for n in rows if rows.count(n) > 1}):
        found.append(f"results table: {rows.count(name)} rows for one step: {name}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--seconds", type=float, required=True,
                        help="how long the rehearsal ran (wall clock)")
    args = parser.parse_args(argv)
    found = problems(args.log.read_text(errors="replace"), args.seconds)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
