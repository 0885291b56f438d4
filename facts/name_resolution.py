"""``ResolvedNames``: what host names resolve to on this host, through ``getent ahosts``.

``getent ahosts NAME`` passes NAME to getaddrinfo(3) with AF_UNSPEC (glibc's getent(1)), the
resolver nginx uses for an upstream's name when it loads its configuration: the gateway host
asks its own resolver (/etc/hosts, DNS, whatever nsswitch.conf says), not the controller's.
One command for every name: each lookup runs in the background (a dead DNS server costs one
timeout, not one per name) and prints its block with a single printf, so blocks do not mix
(a pipe write under PIPE_BUF is atomic; a name's answer is a few hundred bytes). Read-only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pyinfra.api import FactBase

from facts._shell import RC_MARKER, RC_NOT_FOUND, clip, never_raises, quote

NAME_MARKER = "__gpufleet_name="
LOOKUP_SECONDS = 10  # glibc's defaults (5 s, 2 attempts) would hold a dead DNS server longer
# getent(1): exit status 2, "one or more supplied key could not be found in the database".
GETENT_NOT_FOUND = 2
RC_TIMEOUT = 124  # timeout(1)

LookupStatus = Literal["resolved", "not_found", "unknown"]


@dataclass(frozen=True)
class NameLookup:
    """One name's answer: its addresses in getaddrinfo's order (the first is what a client
    connects to first), or why it has none ("not_found": the resolver says no such name;
    "unknown": no answer, a timeout or an error)."""

    status: LookupStatus
    addresses: tuple[str, ...] = ()
    reason: str = ""
    raw: str = ""


def lookup_script(names: Sequence[str]) -> str:
    jobs = [f"( out=$(timeout {LOOKUP_SECONDS} getent ahosts {quote(name)} 2>&1); rc=$?; "
            f"printf '%s\\n' '{NAME_MARKER}'{quote(name)} \"$out\" \"{RC_MARKER}$rc\" ) &"
            for name in names]
    return "\n".join(["LC_ALL=C; export LC_ALL", *jobs, "wait; true"])


def _address(token: str) -> str | None:
    """An IP address nginx can connect to (no IPv6 zone: nginx's server takes none)."""
    try:
        return str(ipaddress.ip_address(token)) if "%" not in token else None
    except ValueError:
        return None


@never_raises(NameLookup)
def parse_getent_ahosts(text: str, exit_code: int | None) -> NameLookup:
    """One ``getent ahosts NAME``'s output (lines ``ADDRESS SOCKTYPE [CANONNAME]``, one per
    address and socket type) and exit status. Never raises."""
    raw = clip(text)
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        address = _address(fields[0]) if len(fields) >= 2 and fields[1] == "STREAM" else None
        if address is not None and address not in found:
            found.append(address)
    if exit_code == 0 and found:
        return NameLookup("resolved", tuple(found), raw=raw)
    if exit_code == GETENT_NOT_FOUND:
        return NameLookup("not_found", reason="the resolver has no address for it", raw=raw)
    if exit_code == RC_TIMEOUT:
        return NameLookup("unknown", reason=f"no answer within {LOOKUP_SECONDS} s", raw=raw)
    if exit_code == RC_NOT_FOUND:
        return NameLookup("unknown", reason="getent or timeout is not installed", raw=raw)
    last = text.strip().splitlines()[-1:] or [f"exit status {exit_code}"]
    return NameLookup("unknown", reason=f"getent: {last[0][:200]}", raw=raw)


def parse_resolved_names(lines: Sequence[str]) -> dict[str, NameLookup]:
    """``lookup_script``'s output: name -> its answer (a name without a block is left out)."""
    found: dict[str, NameLookup] = {}
    name: str | None = None
    body: list[str] = []
    for line in lines:
        if line.startswith(NAME_MARKER):
            name, body = line[len(NAME_MARKER):].strip(), []
        elif line.startswith(RC_MARKER) and name is not None:
            code = line[len(RC_MARKER):].strip()
            found[name] = parse_getent_ahosts("\n".join(body),
                                              int(code) if code.isdigit() else None)
            name = None
        elif name is not None:
            body.append(line)
    return found


class ResolvedNames(FactBase[dict[str, NameLookup]]):
    """
    What each name resolves to on this host (getaddrinfo, as nginx resolves it).

    .. code:: python

        host.get_fact(ResolvedNames, names=("gpu-01.example.internal",))
        {'gpu-01.example.internal': NameLookup(status='resolved', addresses=('10.0.0.11',))}
    """

    @staticmethod
    def default() -> dict[str, NameLookup]:
        return {}

    def command(self, names: tuple[str, ...]) -> str:
        return lookup_script(names)

    def process(self, output: list[str]) -> dict[str, NameLookup]:
        return parse_resolved_names(output)
