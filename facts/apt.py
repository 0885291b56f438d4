"""Apt parsers: what the configured repositories offer (apt-cache madison), what is installed
(dpkg-query) and held (apt-mark showhold), and which keys a keyring holds (gpg).

Installed packages, holds and keyrings are read with everything else by
facts.host_state.HostState (one round trip); what is offered is its own fact, read only when
something must be installed.
"""

from __future__ import annotations

from pyinfra.api import FactBase

from facts._shell import quote


def parse_madison(text: str) -> dict[str, tuple[str, ...]]:
    """`apt-cache madison` lines: ` pkg | version | URL dist/component Packages`."""
    offered: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) < 3 or not parts[0] or not parts[1] or " " in parts[0]:
            continue
        versions = offered.setdefault(parts[0], [])
        if parts[1] not in versions:
            versions.append(parts[1])
    return {name: tuple(versions) for name, versions in offered.items()}


def parse_dpkg_query(text: str) -> dict[str, str]:
    """`dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n'` -> installed versions
    (held packages included: their status reads "hi")."""
    installed = {}
    for line in text.splitlines():
        parts = line.split()
        # Status-Abbrev: desired action, then state; "ii" installed, "hi" installed and held.
        if len(parts) >= 3 and len(parts[2]) >= 2 and parts[2][1] == "i":
            installed[parts[0]] = parts[1]
    return installed


# dpkg states of a package whose unpack or configure did not finish (dpkg-query's
# db:Status-Abbrev, second letter): Half-installed, Unpacked, half-conFigured,
# triggers-aWaited, triggers-pending.
UNFINISHED_STATES = {"H": "half-installed", "U": "unpacked", "F": "half-configured",
                     "W": "triggers-awaited", "t": "triggers-pending"}


def parse_dpkg_unfinished(text: str) -> dict[str, str]:
    """The same dpkg-query lines -> packages dpkg left unfinished: name -> state."""
    unfinished = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and len(parts[2]) >= 2 and parts[2][1] in UNFINISHED_STATES:
            unfinished[parts[0]] = UNFINISHED_STATES[parts[2][1]]
    return unfinished


def parse_dpkg_journal(text: str) -> int:
    """`ls -A /var/lib/dpkg/updates` -> how many journal entries dpkg left (files named by
    digits only: what apt reads as "dpkg was interrupted")."""
    return sum(1 for line in text.splitlines() if line.strip().isdigit())


def parse_showhold(text: str) -> frozenset[str]:
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def parse_keyring_fingerprints(lines: list[str]) -> dict[str, frozenset[str]]:
    """`gpg --with-colons` listings per keyring -> path: fingerprints of the primary keys.

    Subkey fingerprints are left out: "this keyring holds exactly the expected key" compares
    primary keys. A keyring that does not exist or cannot be read has an empty set.
    """
    result: dict[str, set[str]] = {}
    current: str | None = None
    record = ""
    for line in lines:
        if line.startswith("__gpufleet_keyring="):
            current = line.split("=", 1)[1]
            result[current] = set()
            record = ""
            continue
        kind = line.split(":", 1)[0]
        if kind in ("pub", "sub", "sec", "ssb"):
            record = kind
        elif current is not None and kind == "fpr" and record == "pub":
            fields = line.split(":")
            if len(fields) > 9 and fields[9]:
                result[current].add(fields[9].upper())
            record = ""
    return {path: frozenset(fprs) for path, fprs in result.items()}


def madison_script(packages: tuple[str, ...]) -> str:
    return "apt-cache madison " + " ".join(quote(p) for p in packages) + " 2>/dev/null; true"


class AptOffered(FactBase[dict[str, tuple[str, ...]]]):
    """
    The versions apt's package lists offer for some packages (`apt-cache madison`).

    + packages: package names

    .. code:: python

        {"cuda-toolkit-12-1": ("12.1.1-1", "12.1.0-1")}
    """

    default = dict

    def command(self, packages: tuple[str, ...]) -> str:
        return madison_script(tuple(packages))

    def process(self, output: list[str]) -> dict[str, tuple[str, ...]]:
        return parse_madison("\n".join(output))
