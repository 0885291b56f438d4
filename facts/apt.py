"""Apt parsers: what the configured repositories offer (apt-cache madison), what is installed
(dpkg-query) and held (apt-mark showhold), and which keys a keyring holds (gpg).

They are read together, in one round trip, by facts.host_state.StackState: every fact is a
remote command and pyinfra does not cache them.
"""

from __future__ import annotations

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


def parse_showhold(text: str) -> frozenset[str]:
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


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


def keyring_fingerprints_script(paths: tuple[str, ...] | list[str]) -> str:
    """List each keyring's keys (gpg --with-colons), after a ``__gpufleet_keyring=PATH`` line.

    A throwaway GNUPGHOME: listing a keyring must not create ~/.gnupg on the host.
    """
    lines = ['home=$(mktemp -d)']
    for path in paths:
        lines.append(f"echo __gpufleet_keyring={path}")
        lines.append(
            f"[ -r {quote(path)} ] && command -v gpg >/dev/null 2>&1 && "
            f'gpg --homedir "$home" --batch --show-keys --with-colons {quote(path)} '
            "2>/dev/null"
        )
    lines.append('rm -rf "$home"; true')
    return "\n".join(lines)
