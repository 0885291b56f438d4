"""Model weights at a path: every file with its size, mtime and ctime, the checkpoint's
config.json, and gpufleet's manifest and verification record kept beside them (``.gpufleet/``).
Symbolic links in the folder are listed apart: a weights folder holds regular files only
(templates/weights/weights_tool.py refuses links the same way; the folder itself may be one).

No file is read whole except those small JSON files: hashing gigabytes is the verification
operation's job, at execution, and only for files whose size or mtime moved since the last
verification. The shell snippet is also a section of ``facts.probe.GpuHostProbe``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pyinfra.api import FactBase

from facts._shell import clip, quote, split_rc, wrap

MANIFEST_DIR = ".gpufleet"
MANIFEST_NAME = "manifest.json"  # name -> size, sha256 (what the weights must be)
VERIFIED_NAME = "verified.txt"  # "size mtime name" lines of files verified against it

WeightsStatus = Literal["ok", "absent", "unknown"]


def weights_script(path: str) -> str:
    p = quote(path)
    meta = f"{p}/{MANIFEST_DIR}"
    return "\n".join([
        f"[ -d {p} ] || {{ echo '@absent'; exit 0; }}",
        "echo '@files'",
        f"find -H {p} -type f ! -path {quote(f'{path}/{MANIFEST_DIR}/*')}"
        " -printf '%s %T@,%C@ %P\\n' | sort -k3",
        "echo '@links'",
        f"find -H {p} -mindepth 1 -type l ! -path {quote(f'{path}/{MANIFEST_DIR}/*')}"
        " -printf '%P\\n' | sort",
        f"echo '@config'; cat {p}/config.json 2>/dev/null; echo",
        f"echo '@manifest'; cat {meta}/{MANIFEST_NAME} 2>/dev/null; echo",
        f"echo '@verified'; cat {meta}/{VERIFIED_NAME} 2>/dev/null",
        "echo '@end'",
    ])


@dataclass(frozen=True)
class WeightsListing:
    """``files``: relative name -> (size, "mtime,ctime" as find printed them); ``links``: the
    symbolic links in the folder (refused: rules.checkpoint)."""

    status: WeightsStatus
    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    verified: dict[str, tuple[int, str]] = field(default_factory=dict)
    links: tuple[str, ...] = ()
    reason: str = ""
    raw: str = ""


def parse_listing_lines(text: str) -> dict[str, tuple[int, str]]:
    """`size times name` lines (find -printf '%s %T@,%C@ %P')."""
    files = {}
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0].isdigit():
            files[parts[2]] = (int(parts[0]), parts[1])
    return files


def _json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def parse_weights(text: str, exit_code: int | None = None) -> WeightsListing:
    """Parse ``weights_script`` output. Never raises."""
    raw = clip(text)
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@") and line[1:] in ("absent", "files", "links", "config",
                                                  "manifest", "verified", "end"):
            current = parts.setdefault(line[1:], [])
            continue
        if current is not None:
            current.append(line)
    if "absent" in parts:
        return WeightsListing("absent", reason="no such folder", raw=raw)
    if "end" not in parts:
        return WeightsListing("unknown", reason="the listing was cut short", raw=raw)
    config_text = "\n".join(parts.get("config", [])).strip()
    manifest_text = "\n".join(parts.get("manifest", [])).strip()
    return WeightsListing(
        "ok",
        files=parse_listing_lines("\n".join(parts.get("files", []))),
        config=_json(config_text) if config_text else None,
        manifest=_json(manifest_text) if manifest_text else None,
        verified=parse_listing_lines("\n".join(parts.get("verified", []))),
        links=tuple(line for line in parts.get("links", []) if line),
        raw=raw,
    )


class WeightsFiles(FactBase[WeightsListing]):
    """
    The files under a weights folder, its config.json and gpufleet's manifest and record.

    + path: the weights folder (settings.weights_path)

    .. code:: python

        WeightsListing(status="ok", files={"config.json": (680, "1733040000.1")},
                       config={"architectures": ["Qwen2ForCausalLM"], ...},
                       manifest={"files": {...}}, verified={...})
    """

    def command(self, path: str) -> str:
        return wrap(weights_script(path))

    @staticmethod
    def default() -> WeightsListing:
        return WeightsListing("unknown", reason="no output from the host")

    def process(self, output: list[str]) -> WeightsListing:
        result = split_rc(output)
        return parse_weights(result.text, result.exit_code)
