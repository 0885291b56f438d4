"""What the command-line tools (size, cost, smoke) accept from the person running them.

A mistake gets one line on stderr and exit status 2, never a traceback: numbers must be finite
(nan and inf are refused where they are parsed, before any arithmetic), no argument may hold a
control character (a newline would forge a second line, an escape sequence would reach the
terminal), and every value a message shows is escaped as Python's repr escapes it. A key file
is read as a key: a small regular file of one line of printable ASCII, never an empty one.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pydantic import BaseModel

from inventory.key_files import KeyFileError, key_problem
from inventory.toml import TomlFileError, read_small_file

EXIT_BAD_INPUT = 2
SHOWN_CHARS = 120  # a value longer than this is cut in messages
KEY_FILE_MAX_BYTES = 4096


def printable(text: str) -> str:
    """``text`` with every control character escaped (``\\x1b``, ``\\n``), printable text as is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(value: object) -> str:
    """A value as a message shows it: escaped, and cut when long."""
    text = printable(str(value))
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def finite(text: str) -> float:
    """argparse type: a finite number (``float()`` alone takes nan, inf and 1e999)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(repr(text))} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"{shown(repr(text))} is not a finite number (nan and inf are not accepted)")
    return value


def control_character_problem(argv: Sequence[str]) -> str | None:
    """The first argument holding a control character, as one line naming its flag; None when
    there is none. No flag of the tools accepts one (names, numbers, URLs, paths)."""
    for index, arg in enumerate(argv):
        if arg.isprintable():
            continue
        before = argv[index - 1] if index else ""
        flag, value = (arg.split("=", 1) if arg.startswith("--") and "=" in arg
                       else (before if before.startswith("-") and "=" not in before else "",
                             arg))
        return (f"{flag} {shown(value)}".strip()
                + ": control characters (newline, tab, escape ...) are not accepted")
    return None


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes are one escaped line on stderr, exit status 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {printable(message)}\n")


def read_key_file(path: Path) -> str:
    """The key in ``path``, by the fleet's one key-file rule (inventory.key_files): one line,
    never empty. Read bounded, so a directory, a device or a huge file is one clear line too.
    Any length is taken: --url may name an endpoint gpufleet did not set up."""
    try:
        data = read_small_file(path, KEY_FILE_MAX_BYTES)
    except TomlFileError as exc:
        raise KeyFileError(exc.reason) from None
    problem = key_problem(data, min_length=1)
    if problem:
        raise KeyFileError(problem)
    return data.decode("utf-8").strip()


def schema_most(model: type[BaseModel], name: str) -> int:
    """The upper bound the fleet schema puts on a setting: a tool accepts what a fleet file
    accepts (one bound, kept in inventory/schema.py)."""
    for item in model.model_fields[name].metadata:
        most = getattr(item, "le", None)
        if isinstance(most, int):
            return most
    raise LookupError(f"{model.__name__}.{name} has no upper bound in the schema")
