"""Findings: what a check found, in words an operator can act on.

Every check in gpufleet (offline sizing, preflight, the doctor) reports `Finding`s, so one
renderer and one exit-code rule serve them all: any "error" refuses the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning", "info"]
_ORDER: dict[Severity, int] = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    """One result of one check.

    + severity: "error" refuses the host, "warning" is printed, "info" is context
    + code: stable short id for docs, tests and suppressions (e.g. "driver-too-old-for-cuda")
    + what: one sentence: what is wrong (or what was found)
    + measured: the value seen on the host or given as input
    + required: what would be accepted
    + fix: what to do about it
    """

    severity: Severity
    code: str
    what: str
    measured: str
    required: str
    fix: str

    def render(self, host: str | None = None) -> str:
        where = f"{host}: " if host else ""
        lines = [f"{self.severity.upper()} [{self.code}] {where}{self.what}"]
        if self.measured:
            lines.append(f"    found:    {self.measured}")
        if self.required:
            lines.append(f"    required: {self.required}")
        if self.fix:
            lines.append(f"    fix:      {self.fix}")
        return "\n".join(lines)


@dataclass
class Findings:
    """An ordered collection of findings, with helpers to query and render them."""

    items: list[Finding] = field(default_factory=list)

    def add(self, *findings: Finding) -> None:
        self.items.extend(findings)

    def extend(self, findings: Iterable[Finding]) -> None:
        self.items.extend(findings)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def of(self, severity: Severity) -> list[Finding]:
        return [f for f in self.items if f.severity == severity]

    @property
    def errors(self) -> list[Finding]:
        return self.of("error")

    @property
    def warnings(self) -> list[Finding]:
        return self.of("warning")

    @property
    def ok(self) -> bool:
        """True when nothing refuses the host."""
        return not self.errors

    def codes(self) -> list[str]:
        return [f.code for f in self.items]

    def render(self, host: str | None = None) -> str:
        """Errors first, then warnings, then info; a summary line last."""
        ordered = sorted(self.items, key=lambda f: _ORDER[f.severity])
        body = [f.render(host) for f in ordered]
        summary = (
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s), "
            f"{len(self.of('info'))} note(s)"
        )
        return "\n".join([*body, summary])
