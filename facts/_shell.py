"""Shell plumbing shared by the gpufleet facts.

Every fact command is a small POSIX ``sh`` snippet whose output we parse ourselves. pyinfra only
hands ``process`` the stdout lines of a command that exited 0, and marks the host failed
otherwise, so each snippet:

* folds stderr into stdout (error messages such as "No devices were found" are data, not noise);
* prints its own exit status on a last line ``__gpufleet_rc=<n>`` and then exits 0;
* reports a missing tool with one line ``__gpufleet_nocmd=<tool>`` instead of relying on the
  shell's "not found" wording (which differs between dash, bash and busybox).

The composite probe (``facts.probe``) runs several snippets in one round trip, each introduced by
``__gpufleet_section=<name>``. All markers start with ``__gpufleet_`` so they cannot be mistaken
for the output of a real tool.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

RC_MARKER = "__gpufleet_rc="
NOCMD_MARKER = "__gpufleet_nocmd="
SECTION_MARKER = "__gpufleet_section="

# Exit status a POSIX shell uses for "command not found"; we reuse it for our own marker.
RC_NOT_FOUND = 127

# Keep every tool's output in the C locale: dd and df print decimal commas in some locales.
_PREAMBLE = "LC_ALL=C; export LC_ALL"


def quote(value: str) -> str:
    """Quote one value for ``sh`` (paths come from the inventory and may hold spaces)."""
    return shlex.quote(value)


def require_tool(tool: str) -> str:
    """A line that reports ``tool`` as missing and leaves the section with status 127."""
    return (
        f"command -v {quote(tool)} >/dev/null 2>&1 || "
        f"{{ echo '{NOCMD_MARKER}{tool}'; exit {RC_NOT_FOUND}; }}"
    )


def wrap(script: str) -> str:
    """Run ``script`` in a subshell with stderr folded in, then print its exit status.

    The subshell keeps ``exit`` inside the snippet from ending a composite probe, and
    ``</dev/null`` keeps any tool from waiting on input.
    """
    return f'( {_PREAMBLE}\n{script}\n) </dev/null 2>&1; echo "{RC_MARKER}$?"'


@dataclass(frozen=True)
class CommandResult:
    """The text one snippet printed, and the exit status it reported (None when missing)."""

    text: str
    exit_code: int | None

    @property
    def missing_tool(self) -> str | None:
        """The tool named by a ``__gpufleet_nocmd=`` line, if the snippet printed one."""
        for line in self.text.splitlines():
            if line.startswith(NOCMD_MARKER):
                return line[len(NOCMD_MARKER) :].strip() or None
        return None


def split_rc(lines: Iterable[str]) -> CommandResult:
    """Separate a snippet's output from the trailing ``__gpufleet_rc=`` line."""
    body: list[str] = []
    exit_code: int | None = None
    for line in lines:
        if line.startswith(RC_MARKER):
            value = line[len(RC_MARKER) :].strip()
            exit_code = int(value) if value.isdigit() else None
            continue
        body.append(line)
    return CommandResult(text="\n".join(body), exit_code=exit_code)


def section_script(name: str, script: str) -> str:
    """One named section of a composite probe."""
    return f"echo '{SECTION_MARKER}{name}'\n{wrap(script)}"


def split_sections(lines: Sequence[str], marker: str = SECTION_MARKER
                   ) -> dict[str, CommandResult]:
    """Cut a composite probe's output into its named sections (lines ``<marker><name>``)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith(marker):
            current = sections.setdefault(line[len(marker) :].strip(), [])
            continue
        if current is not None:
            current.append(line)
    return {name: split_rc(body) for name, body in sections.items()}


def clip(text: str, limit: int = 4000) -> str:
    """Keep raw output small enough to carry in a fact value and print in a report."""
    return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} more chars)"


def never_raises(unknown: Callable[..., R]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A parser that never raises: a bug in it, or output it did not expect, becomes
    ``unknown("unknown", reason="parser error: ...", raw=<the output, clipped>)`` instead of
    taking the host's run down. ``unknown`` is the parser's result type; the parser's first
    argument is the command's output (its text, or its lines)."""
    def decorate(parse: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(parse)
        def safe(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return parse(*args, **kwargs)
            except Exception as exc:  # a parser must not take a host run down with it
                output = args[0] if args else next(iter(kwargs.values()), "")
                text = output if isinstance(output, str) else "\n".join(
                    output if isinstance(output, (list, tuple)) else ())
                return unknown("unknown", reason=f"parser error: {exc!r}", raw=clip(text))
        return safe
    return decorate
