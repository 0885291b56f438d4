"""Apt facts: what the configured repositories offer, what is installed and held, and which
keys a keyring holds.

One command answers all three package questions, because preflight and the pin checks need
them together and every fact is a round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyinfra.api import FactBase

from facts._shell import quote, section_script, split_sections


@dataclass(frozen=True)
class AptPackageState:
    """What apt knows about some packages.

    ``offered``: package -> versions the configured repositories offer (apt-cache madison);
    ``installed``: package -> installed version (dpkg status "ii" only);
    ``held``: every package on hold (apt-mark showhold), not only the asked ones.
    """

    offered: dict[str, tuple[str, ...]] = field(default_factory=dict)
    installed: dict[str, str] = field(default_factory=dict)
    held: frozenset[str] = frozenset()


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


def parse_showhold(text: str) -> frozenset[str]:
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def parse_apt_package_state(lines: list[str]) -> AptPackageState:
    sections = split_sections(lines)

    def text(name: str) -> str:
        section = sections.get(name)
        return section.text if section else ""

    return AptPackageState(
        offered=parse_madison(text("madison")),
        installed=parse_dpkg_query(text("dpkg")),
        held=parse_showhold(text("hold")),
    )


class AptPackages(FactBase[AptPackageState]):
    """
    What the repositories offer for some packages, what is installed and what is held.

    .. code:: python

        AptPackageState(
            offered={"cuda-toolkit-12-1": ("12.1.1-1", "12.1.0-1")},
            installed={"cuda-toolkit-12-1": "12.1.1-1"},
            held=frozenset({"cuda-toolkit-12-1"}),
        )
    """

    default = AptPackageState

    def command(self, packages: list[str]) -> str:
        names = " ".join(quote(name) for name in packages)
        dpkg_format = "'${Package} ${Version} ${db:Status-Abbrev}\\n'"
        return "\n".join(
            [
                section_script("madison", f"apt-cache madison {names}"),
                section_script("dpkg", f"dpkg-query -W -f={dpkg_format} {names}"),
                section_script("hold", "apt-mark showhold"),
            ]
        )

    def process(self, output: list[str]) -> AptPackageState:
        return parse_apt_package_state(output)


def parse_keyring_fingerprints(lines: list[str]) -> dict[str, frozenset[str]]:
    """`gpg --with-colons` listings per keyring -> path: fingerprints (primary keys and subkeys).

    A keyring that does not exist or cannot be read has an empty set.
    """
    result: dict[str, set[str]] = {}
    current: str | None = None
    for line in lines:
        if line.startswith("__gpufleet_keyring="):
            current = line.split("=", 1)[1]
            result[current] = set()
        elif current is not None and line.startswith("fpr:"):
            fields = line.split(":")
            if len(fields) > 9 and fields[9]:
                result[current].add(fields[9].upper())
    return {path: frozenset(fprs) for path, fprs in result.items()}


class KeyringFingerprints(FactBase[dict[str, frozenset[str]]]):
    """
    Fingerprints of the keys in each keyring file (empty when the file is missing).

    .. code:: python

        {"/etc/apt/keyrings/gpufleet-cuda.gpg": frozenset({"EB693B30...3BF863CC"})}
    """

    default = dict

    def command(self, paths: list[str]) -> str:
        # A throwaway GNUPGHOME: listing a keyring must not create ~/.gnupg on the host.
        lines = ["home=$(mktemp -d)"]
        for path in paths:
            lines.append(f"echo __gpufleet_keyring={path}")
            lines.append(
                f"[ -r {quote(path)} ] && command -v gpg >/dev/null 2>&1 && "
                f'gpg --homedir "$home" --batch --show-keys --with-colons {quote(path)} '
                "2>/dev/null"
            )
        lines.append('rm -rf "$home"; true')
        return "\n".join(lines)

    def process(self, output: list[str]) -> dict[str, frozenset[str]]:
        return parse_keyring_fingerprints(output)
