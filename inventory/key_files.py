"""Credential files on the controller (the API key, the hub token): one rule to read them.

A key file holds one key on one line: letters, digits and ``. _ ~ + / = -`` (what a bearer
token may hold), at least ``API_KEY_MIN_LENGTH`` characters for the API key. Whitespace around
it (a final newline) is ignored. Anything else is refused, with the reason and never the key:

- an empty file would silently turn authentication off (the engine serves without a key);
- a second line would reach the engine's environment file (``VLLM_API_KEY=...``) as another
  variable, and a space, quote or ``#`` would change what Compose reads;
- a short key can be guessed.

An engine that listens beyond loopback with no ``inference.api_key_file`` gets a key generated
once per fleet and kept 0600 on the controller (``generated_key_path``), so no fleet serves an
open API by default.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from inventory.controller_files import write_atomically

API_KEY_MIN_LENGTH = 32
HUB_TOKEN_MIN_LENGTH = 8
MAX_LENGTH = 4096
_KEY = re.compile(r"[A-Za-z0-9._~+/=-]+")
ALLOWED = "letters, digits and . _ ~ + / = -"
MAKE_ONE = "e.g. `openssl rand -hex 32 > FILE`"


class KeyFileError(ValueError):
    """Why a key file is refused (one line; never the key)."""


def key_problem(data: bytes, min_length: int) -> str | None:
    """Why ``data`` (a key file's bytes) is not one acceptable key, or None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"not UTF-8 text: the file must hold one key ({ALLOWED})"
    key = text.strip()
    if not key:
        return (f"empty: an empty key would turn authentication off; put one key of at least "
                f"{min_length} characters in it ({MAKE_ONE}), or leave the setting out")
    if "\n" in key or "\r" in key:
        return ("more than one line: the file holds exactly one key (a second line would add "
                "variables to the engine's environment)")
    if not _KEY.fullmatch(key):
        return f"holds a character outside {ALLOWED} (spaces, quotes and '#' included)"
    if len(key) < min_length:
        return f"the key has {len(key)} characters; at least {min_length} ({MAKE_ONE})"
    if len(key) > MAX_LENGTH:
        return f"the key has {len(key)} characters; at most {MAX_LENGTH}"
    return None


def read_key_file(path: Path, min_length: int = API_KEY_MIN_LENGTH) -> str:
    """The key in ``path``; KeyFileError when it cannot be read or is not one good key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot be read: {exc.strerror or exc}") from None
    problem = key_problem(data, min_length)
    if problem:
        raise KeyFileError(problem)
    return data.decode("utf-8").strip()


# Where generated keys are kept: $GPUFLEET_CONFIG_DIR, else $XDG_CONFIG_HOME/gpufleet, else
# ~/.config/gpufleet; one file per fleet: keys/<fleet name>.api-key (folder 0700, file 0600).
CONFIG_DIR_ENV = "GPUFLEET_CONFIG_DIR"


def config_dir() -> Path:
    value = os.environ.get(CONFIG_DIR_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".config") / "gpufleet"


def generated_key_path(fleet: str) -> Path:
    """``fleet``: the fleet's name as a file name (inventory.fleet.safe_name)."""
    return config_dir() / "keys" / f"{fleet}.api-key"


def ensure_key_file(path: Path) -> None:
    """Create ``path`` with a new random key (43 characters of A-Z a-z 0-9 _ -), 0600 in a
    folder created 0700, unless it exists: a key is generated once and then kept."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        return
    # Written whole beside it, then linked into place: a run cut short never leaves an empty
    # key behind, and of two runs at once the first link wins and both use its key.
    staged = path.with_name(f".{path.name}.{os.getpid()}.new")
    write_atomically(staged, secrets.token_urlsafe(32) + "\n", mode=0o600)
    try:
        os.link(staged, path)
    except FileExistsError:
        pass
    finally:
        staged.unlink()
