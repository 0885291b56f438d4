"""Model weights: is what is at weights_path the model the fleet names, complete and unchanged?

Decided from the probe's listing (facts.weights_files: sizes, mtimes, config.json, gpufleet's
manifest and verification record), so that only files whose size or mtime moved since the
last verification are hashed again. The brief's "strict loading" trap is a config.json that is not
the model: checked against the catalog before anything starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from facts.weights_files import MANIFEST_DIR, MANIFEST_NAME, WeightsListing
from inventory.catalog import ModelSpec
from inventory.controller_files import write_atomically
from rules.findings import Finding

TOOL = Path(__file__).resolve().parent.parent / "templates" / "weights" / "weights_tool.py"


def _tool_module() -> ModuleType:
    """The weights tool as a module: its name rule is the controller's too (one rule)."""
    spec = importlib.util.spec_from_file_location("gpufleet_weights_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TOOL = _tool_module()
# Files an engine loads by their suffix: one in the folder that the manifest does not name is
# refused before the engine starts.
WEIGHT_SUFFIXES: tuple[str, ...] = _TOOL.WEIGHT_SUFFIXES
LINK_HINT: str = _TOOL.LINK_HINT


def name_problem(name: object) -> str | None:
    """Why NAME cannot be a file of a weights folder (absolute, a `..`, `.` or empty part, a
    NUL or line break, gpufleet's own names), or None: the weights tool's own rule."""
    problem: str | None = _TOOL.name_problem(name)
    return problem


def progress_line(done: int, total: int, moved: int, seconds: float) -> str:
    """"DONE of TOTAL GB" of a weights transfer, with its rate and time left only once enough
    time and bytes have passed to trust them: the weights tool's own rule (a push from the
    controller reports the same way as a hub download on the host)."""
    line: str = _TOOL.progress_line(done, total, moved, seconds)
    return line
# New files are written under NAME + PARTIAL and moved over NAME once the whole change is
# complete and verified (templates/weights/weights_tool.py: commit, hub).
PARTIAL = ".gpufleet-partial"
# config.json field -> the catalog's name for it
CONFIG_FIELDS = {"num_hidden_layers": "layers", "hidden_size": "hidden_size",
                 "num_attention_heads": "attention_heads", "num_key_value_heads": "kv_heads"}


def manifest_path(folder: str) -> str:
    return f"{folder}/{MANIFEST_DIR}/{MANIFEST_NAME}"


def config_findings(config: dict[str, Any] | None, model: ModelSpec, where: str
                    ) -> list[Finding]:
    """The checkpoint's config.json must describe the model the fleet names."""
    if config is None:
        return [Finding(
            "error", "weights-missing", f"no readable config.json in {where}",
            "config.json missing or not JSON", f"the checkpoint of {model.id} ({model.hub_repo})",
            "put the model's files there (settings.weights.source says how they arrive)",
        )]
    differ = []
    architectures = config.get("architectures") or []
    if model.architecture not in architectures:
        differ.append(f"architectures {architectures} (catalog: {model.architecture})")
    for key, attribute in CONFIG_FIELDS.items():
        if key in config and config[key] != getattr(model, attribute):
            differ.append(f"{key} {config[key]} (catalog: {getattr(model, attribute)})")
    if not differ:
        return []
    return [Finding(
        "error", "weights-config-differs",
        f"the checkpoint in {where} is not {model.id}: an engine would refuse it or serve "
        "another model",
        "; ".join(differ), f"{model.id} as the catalog describes it",
        "point weights_path at the right checkpoint, or set settings.model to what is there",
    )]


@dataclass(frozen=True)
class WeightsCheck:
    """What the weights step must do with what is on the host."""

    record: bool  # no manifest yet (source present): record one, trusting what is there
    changed: tuple[str, ...]  # files to hash again: new, or size/mtime moved since verified
    corrupt: tuple[str, ...]  # known bad already: missing, or another size than the manifest
    # never loaded, whatever the source: a symbolic link in the folder, or a weights file the
    # manifest does not name (an engine loads every *.safetensors there)
    refused: tuple[str, ...] = ()


def weights_check(listing: WeightsListing, full: bool) -> WeightsCheck:
    """Compare the listing with the manifest and the last verification. Pure."""
    manifest = (listing.manifest or {}).get("files")
    if not isinstance(manifest, dict):
        return WeightsCheck(True, (), ())
    refused = [f"{name} (a symbolic link; {LINK_HINT})" for name in listing.links]
    refused += [f"{name} (not in the manifest: an engine would load it too)"
                for name in sorted(set(listing.files) - set(manifest))
                if name.endswith(WEIGHT_SUFFIXES)]
    corrupt = []
    for name, want in sorted(manifest.items()):
        have = listing.files.get(name)
        if have is None:
            corrupt.append(f"{name} (missing)")
        elif isinstance(want, dict) and have[0] != want.get("size"):
            corrupt.append(f"{name} ({have[0]} bytes, manifest: {want.get('size')})")
    names = [n for n in listing.files if n in manifest]
    changed = names if full else [n for n in names if listing.verified.get(n) != listing.files[n]]
    return WeightsCheck(False, tuple(sorted(changed)), tuple(corrupt), tuple(refused))


def hub_download_needed(listing: WeightsListing, repo: str, revision: str,
                        check: WeightsCheck) -> bool:
    """Hub weights: download when none are recorded, a file is damaged, or the recorded ones
    are another repository or revision (templates/weights/weights_tool.py records
    "hub REPO@REVISION" as the manifest's source). Pure."""
    recorded = (listing.manifest or {}).get("source")
    return listing.manifest is None or bool(check.corrupt) or recorded != f"hub {repo}@{revision}"


# --- weights pushed from the controller ----------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(8 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


class WeightsSourceError(ValueError):
    """A controller folder gpufleet will not push from: one line, naming the file."""


def controller_files(folder: Path) -> list[Path]:
    """Every file to push from FOLDER on the controller (not .gpufleet/), sorted. A symbolic
    link is followed only when it stays inside FOLDER: one that leaves it (to a cache's blobs,
    or to /etc) or links a folder is refused, as is a name the host's tool would refuse."""
    root = folder.resolve()
    found = []
    for where, dirs, names in os.walk(folder):
        here = Path(where)
        dirs[:] = sorted(d for d in dirs if not (here == folder and d == MANIFEST_DIR))
        for name in dirs:
            if (here / name).is_symlink():
                raise WeightsSourceError(f"{here / name} is a link to a folder; push from a "
                                         "folder of real files")
        for name in sorted(names):
            path = here / name
            rel = str(path.relative_to(folder))
            problem = name_problem(rel)
            if problem:
                raise WeightsSourceError(f"{path}: the name {rel!r} {problem}")
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise WeightsSourceError(
                    f"{path} links to {path.resolve()}, outside {folder}; push from a folder "
                    "of real files")
            if path.is_file():
                found.append(path)
    return sorted(found)


def controller_manifest(folder: Path, model_id: str) -> dict[str, Any]:
    """The manifest of a folder on the controller: every file's size and sha256.

    Hashes are cached in the folder's .gpufleet/controller-cache.json and reused while a
    file's size and mtime are unchanged, so 140 GB are not hashed again on every run.
    """
    cache_path = folder / MANIFEST_DIR / "controller-cache.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    files: dict[str, Any] = {}
    fresh: dict[str, Any] = {}
    for path in controller_files(folder):
        name = str(path.relative_to(folder))
        stat = path.stat()
        key = [stat.st_size, stat.st_mtime_ns]
        cached = cache.get(name)
        digest = cached["sha256"] if cached and cached.get("key") == key else _sha256(path)
        files[name] = {"size": stat.st_size, "sha256": digest}
        fresh[name] = {"key": key, "sha256": digest}
    if fresh != cache:
        # A read-only folder: hashed again next time, nothing lost.
        with contextlib.suppress(OSError):
            write_atomically(cache_path, json.dumps(fresh))
    return {"model": model_id, "source": f"controller {folder}", "files": files}


def same_weights(recorded: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """Whether a recorded manifest describes these weights: the same model and files. Where
    they came from ("source": the controller folder, which differs between checkouts of the
    same fleet) is provenance, not identity."""
    return recorded is not None and all(recorded.get(k) == wanted.get(k)
                                        for k in ("model", "files"))


def to_push(manifest: dict[str, Any], listing: WeightsListing) -> list[str]:
    """Files the host lacks, has at another size, has changed since they were last verified
    (the controller's copy is the truth: pushed again), or whose sha256 in the host's manifest
    is not the controller's (a new version of the same size).

    A file an interrupted push left complete under its partial name is not pushed again: the
    push's commit checks its sha256 before moving it into place (and removes it, to be pushed
    on the next run, when it differs); that commit runs only when the manifest changes, so
    with an unchanged one everything is pushed."""
    have = listing.files
    resume = not same_weights(listing.manifest, manifest)
    recorded = (listing.manifest or {}).get("files")
    recorded = recorded if isinstance(recorded, dict) else {}

    def stale(name: str, want: dict[str, Any]) -> bool:
        on_host = recorded.get(name)
        return (have.get(name, (None,))[0] != want["size"]
                or (name in listing.verified and listing.verified[name] != have[name])
                or (isinstance(on_host, dict) and on_host.get("sha256") != want["sha256"]))

    return [name for name, want in sorted(manifest["files"].items())
            if stale(name, want)
            and not (resume and have.get(name + PARTIAL, (None,))[0] == want["size"])]


def render_manifest(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"
