"""How a run talks to the terminal: colour only on a terminal and without NO_COLOR, and one
clear line instead of a traceback when pyinfra asks a question nobody can answer.

Installed once, when the deploys package is first imported (deploys/__init__.py): every
pyinfra run of a gpufleet deploy file, with the fleet's inventory.py or `@local`.

- gpufleet's own lines (the "gpufleet" logger: preflight reports, notices, reboots) had no
  handler, so Python's last-resort handler printed them with their colour codes into files and
  CI logs. They get a handler here that writes them to stderr as before, without escape codes
  when stderr is not a terminal or NO_COLOR is set (https://no-color.org).
- pyinfra's own lines go through click.echo, which drops colour when not on a terminal; with
  NO_COLOR it drops it on a terminal too (from the moment a deploy file or inventory.py is
  loaded: pyinfra's first few lines come before).
- Without -y, pyinfra asks before executing (and when a host fails); with stdin closed its
  `input()` ended in an EOFError traceback. Here: one line, and exit status 2.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import TextIO

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
GPUFLEET_LOGGER = "gpufleet"
CLOSED_STDIN_EXIT = 2


def colour_allowed(stream: TextIO) -> bool:
    """Colour only on a terminal, and only when NO_COLOR is unset or empty."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def plain(text: str) -> str:
    """``text`` without terminal escape codes."""
    return ANSI.sub("", text)


class _StderrLines(logging.Handler):
    """gpufleet's lines on stderr, as the last-resort handler wrote them (the message, no
    level, no indentation), without escape codes where colour is not allowed."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)  # what the last-resort handler printed

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            text = record.getMessage()
            stream.write((text if colour_allowed(stream) else plain(text)) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def closed_stdin_message(question: str, executing: bool) -> str:
    return (f"gpufleet: pyinfra asks \"{question.strip()}\" but stdin is closed, so nobody "
            f"can answer: stopped here{'' if executing else ', nothing was executed'}. "
            "Add -y (gpufleet: --yes) to execute without asking, or --dry for the preview "
            "alone (gpufleet plan)")


def guard_confirm(confirm: Callable[[str], bool],
                  executing: Callable[[], bool]) -> Callable[[str], bool]:
    """pyinfra's confirmation prompt, ending with one line and exit 2 at end of input."""

    def confirm_or_stop(question: str) -> bool:
        try:
            return confirm(question)
        except EOFError:
            print(file=sys.stderr)
            print(closed_stdin_message(question, executing()), file=sys.stderr, flush=True)
            raise SystemExit(CLOSED_STDIN_EXIT) from None

    confirm_or_stop.__wrapped__ = confirm  # type: ignore[attr-defined]
    return confirm_or_stop


def _in_execution() -> bool:
    from pyinfra.api.state import StateStage
    from pyinfra.context import ctx_state

    return ctx_state.isset() and ctx_state.get().current_stage == StateStage.Execute


def _click_without_colour() -> None:
    """click.echo (pyinfra's output) strips colour codes when its colour setting resolves to
    False. The setting lives on click's context, which pyinfra's greenlets do not see: its
    resolution is answered here instead (an explicit colour argument still wins)."""
    import click.utils

    resolve = click.utils.resolve_color_default
    if getattr(resolve, "gpufleet_no_color", False):
        return

    def no_colour(color: bool | None = None) -> bool | None:
        return False if color is None else resolve(color)

    no_colour.gpufleet_no_color = True  # type: ignore[attr-defined]
    click.utils.resolve_color_default = no_colour


def install_terminal() -> None:
    """Set up the above for this process (again: no effect). Outside a pyinfra run (tests,
    tools) only the gpufleet logger's handler is added."""
    logger = logging.getLogger(GPUFLEET_LOGGER)
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines())
        logger.propagate = False  # printed here only (pyinfra --debug-all adds a root handler)
    if os.environ.get("NO_COLOR"):
        _click_without_colour()
    cli = sys.modules.get("pyinfra_cli.cli")  # only when pyinfra's command line is running
    confirm = getattr(cli, "_do_confirm", None)
    if confirm is not None and not hasattr(confirm, "__wrapped__"):
        cli._do_confirm = guard_confirm(confirm, _in_execution)  # type: ignore[union-attr]
