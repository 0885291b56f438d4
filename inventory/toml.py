"""TOML reading that works on Python 3.10 (tomli) and 3.11+ (tomllib).

`load_toml` reads the repository's own files. `read_toml_file` reads a file a person names
(the fleet file): it never hangs on a FIFO or a device, never reads an absurd size, and turns
every way the file can be unusable into one sentence (`TomlFileError`), never a traceback.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 controllers only
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError

MiB = 2**20


def load_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        return tomllib.load(handle)


class TomlFileError(Exception):
    """The file cannot be used. `reason` completes "PATH: ..."; `missing` when there is
    no file at all (callers add how to name another one)."""

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


def read_toml_file(path: Path, *, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """Parse a UTF-8 TOML file of at most `max_bytes`, nested at most `max_depth` deep.

    A UTF-8 byte-order mark is accepted and dropped (Windows editors write one; it carries
    no meaning). Raises TomlFileError, or TOMLDecodeError for a syntax error.
    """
    return loads_bounded(_decode(_read_bytes(path, max_bytes)), max_depth)


def loads_bounded(text: str, max_depth: int) -> dict[str, Any]:
    """tomllib.loads, refusing documents nested deeper than `max_depth` tables/arrays and
    integers outside the 64-bit range TOML allows (tomllib accepts any size)."""
    try:
        data = tomllib.loads(text)
    except RecursionError:
        # The parser recurses per nested array / inline table.
        raise TomlFileError(f"nested too deeply: at most {max_depth} levels of tables and "
                            "arrays") from None
    except TOMLDecodeError:
        raise
    except ValueError as exc:
        # Python refuses to convert integers of more than 4300 digits (sys.int_info).
        raise TomlFileError(f"not valid TOML: {exc}".split(";")[0]) from None
    problem = _document_problem(data, max_depth)
    if problem is not None:
        raise TomlFileError(problem)
    return data


INT64 = range(-(2**63), 2**63)


def _document_problem(data: dict[str, Any], max_depth: int) -> str | None:
    """What makes a parsed document unusable (too deep, an integer too large), or None.
    Iterative: `[a.b.c....]` headers build deep tables without the parser recursing."""
    stack: list[tuple[object, int, tuple[str, ...]]] = [(data, 0, ())]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, dict):
            children: list[tuple[str, object]] = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            children = [(f"[{i}]", v) for i, v in enumerate(value)]
        else:
            if isinstance(value, int) and not isinstance(value, bool) and value not in INT64:
                return (f"not valid TOML: the integer at {_dotted(where)} is outside the 64-bit "
                        "range TOML allows")
            continue
        if depth > max_depth:
            return (f"nested too deeply at {_dotted(where)}: at most {max_depth} levels of "
                    "tables and arrays")
        stack.extend((child, depth + 1, (*where, key)) for key, child in children)
    return None


def _dotted(where: tuple[str, ...]) -> str:
    return ".".join(where[:6]) + ("..." if len(where) > 6 else "")


# --- reading the bytes -----------------------------------------------------------------------
def _size(count: int) -> str:
    return f"{count / MiB:.1f} MiB ({count} bytes)" if count >= MiB else f"{count} bytes"


def _os_reason(exc: OSError) -> TomlFileError:
    if exc.errno == errno.ENOENT:
        return TomlFileError("not found", missing=True)
    if exc.errno == errno.ENOTDIR:
        return TomlFileError("not found: a part of the path is a file, not a folder",
                             missing=True)
    if exc.errno == errno.ELOOP:
        return TomlFileError("a loop of symbolic links (or too many links to follow)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TomlFileError("cannot be read: permission denied")
    if exc.errno == errno.ENAMETOOLONG:
        return TomlFileError("cannot be read: the path is too long")
    return TomlFileError(f"cannot be read: {exc.strerror or exc}")


def _not_regular(mode: int) -> str | None:
    """Why a file of this mode is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a regular file; it was not read"
    if stat.S_ISCHR(mode):
        return "a character device (like /dev/zero), not a regular file; it was not read"
    if stat.S_ISBLK(mode):
        return "a block device, not a regular file; it was not read"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file; it was not read"
    return "not a regular file; it was not read"


def read_small_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a small regular file a person names (a key file, a fleet file), read
    without hanging on a FIFO or a device and without reading past ``max_bytes``. Raises
    TomlFileError, whose reason completes "PATH: ..."."""
    return _read_bytes(path, max_bytes)


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    # The type is checked before opening: opening a FIFO blocks until a writer comes.
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            try:
                points_to = repr(os.readlink(path))
            except OSError:
                points_to = "a path"
            raise TomlFileError(f"a symbolic link to {points_to}, which does not exist"
                                ) from None
        raise TomlFileError("not found", missing=True) from None
    except OSError as exc:
        raise _os_reason(exc) from None
    except ValueError:  # a NUL character in the path
        raise TomlFileError("not a usable path (it contains a NUL character)") from None
    reason = _not_regular(info.st_mode)
    if reason:
        raise TomlFileError(reason)
    too_large = f"too large: {{}}; the limit is {_size(max_bytes)}"
    if info.st_size > max_bytes:
        raise TomlFileError(too_large.format(_size(info.st_size)))
    # O_NONBLOCK: should the path be swapped for a FIFO after the check, open does not hang.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _os_reason(exc) from None
    try:
        reason = _not_regular(os.fstat(fd).st_mode)
        if reason:
            raise TomlFileError(reason)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:  # it grew since os.stat
                raise TomlFileError(too_large.format(f"more than {_size(max_bytes)}"))
            chunks.append(chunk)
    except OSError as exc:
        raise _os_reason(exc) from None
    finally:
        os.close(fd)
    return b"".join(chunks)


# Signatures of what people save by mistake in place of a text file.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip-compressed, not TOML text: decompress it first (gunzip)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed, not TOML text: decompress it first (unzstd)"),
    (b"\xfd7zXZ\x00", "xz-compressed, not TOML text: decompress it first (unxz)"),
    (b"BZh", "bzip2-compressed, not TOML text: decompress it first (bunzip2)"),
    (b"PK\x03\x04", "a zip archive, not TOML text: extract the fleet file first"),
    (codecs.BOM_UTF32_LE, "UTF-32 text (it starts with a UTF-32 byte-order mark); "
                          "TOML files are UTF-8: save it as UTF-8"),
    (codecs.BOM_UTF32_BE, "UTF-32 text (it starts with a UTF-32 byte-order mark); "
                          "TOML files are UTF-8: save it as UTF-8"),
    (codecs.BOM_UTF16_LE, "UTF-16 text (it starts with a UTF-16 byte-order mark); "
                          "TOML files are UTF-8: save it as UTF-8"),
    (codecs.BOM_UTF16_BE, "UTF-16 text (it starts with a UTF-16 byte-order mark); "
                          "TOML files are UTF-8: save it as UTF-8"),
)


def _decode(data: bytes) -> str:
    for magic, reason in _MAGIC:
        # bzip2's "BZh" could start a TOML key: the block signature after it settles it.
        if data.startswith(magic) and (magic != b"BZh" or data[4:10] == b"1AY&SY"):
            raise TomlFileError(reason)
    data = data.removeprefix(codecs.BOM_UTF8)
    if b"\x00" in data:
        nuls = data.count(b"\x00")
        if nuls * 3 >= len(data):
            raise TomlFileError("UTF-16 or UTF-32 text without a byte-order mark, it seems "
                                "(many NUL bytes); TOML files are UTF-8: save it as UTF-8")
        raise TomlFileError("binary, not TOML text (it contains NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TomlFileError(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} is not valid UTF-8; "
            "TOML files are UTF-8 (convert with iconv -t UTF-8)"
        ) from None
