"""The host manifest and the drift audit, as pure functions.

The manifest (/etc/gpufleet/manifest.json, written by the last step of every converge and
copied to the controller's fleet-state/<fleet>/<host>.json) says what the host was made to be:
the pin set and a digest of its content, every managed package with its version and hold, every
managed file's sha256, mode and owner (a secret's mode and owner only: a digest of a key could
be guessed offline), the services that must run, the images by name and id, the keyrings'
fingerprints, the engine's command line, the Python lock's digest, the weights manifest's
digest, and the gpufleet that wrote it. Two hosts converged from the same fleet file and pins
have the same manifest, timestamps aside (``comparable``).

The audit compares a host's manifest with the host as it is now (one state read) and with what
the fleet file and pins say now, area by area.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from facts.host_state import HostStateResult
from facts.weights_files import WeightsListing
from inventory.pins import PinSet
from inventory.toml import tomllib

MANIFEST_PATH = "/etc/gpufleet/manifest.json"
SCHEMA = 1
REPO = Path(__file__).resolve().parents[1]
# What differs between two converges of the same thing: left out of comparisons.
VOLATILE = ("written_at",)
AREAS = ("pins", "packages", "holds", "files", "services", "images", "driver", "weights")


def pins_digest(pins: PinSet) -> str:
    return hashlib.sha256(json.dumps(pins.model_dump(mode="json"), sort_keys=True)
                          .encode()).hexdigest()


@functools.cache  # the same for every host of a run: one `git rev-parse`, not one per host
def gpufleet_release() -> dict[str, str | None]:
    """The gpufleet that converged the host: its version, and its git commit when known."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    commit = None
    if (REPO / ".git").exists():
        found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                               capture_output=True, text=True, check=False)
        commit = found.stdout.strip() or None
    return {"version": version, "commit": commit}


def render_manifest(body: dict[str, Any]) -> str:
    return json.dumps({"gpufleet_manifest": SCHEMA, **body}, indent=2, sort_keys=True) + "\n"


def parse_manifest(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("gpufleet_manifest") == SCHEMA else None


def carry_over(previous: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a run that took only some steps (deploys/serve.py): what those steps
    recorded (``body``) over what the last converge recorded for the others (``previous``).
    The image the previous engine ran is left out unless this run uses it again: the engine's
    image is always recorded by the run that serves."""
    if previous is None:
        return body
    merged = dict(body)
    for section in ("packages", "files", "keyrings"):
        merged[section] = dict(sorted({**previous.get(section, {}),
                                       **body.get(section, {})}.items()))
    merged["services"] = sorted(set(previous.get("services", [])) | set(body.get("services", [])))
    old_engine = (previous.get("engine") or {}).get("image")
    kept = {ref: image_id for ref, image_id in previous.get("images", {}).items()
            if ref != old_engine}
    merged["images"] = dict(sorted({**kept, **body.get("images", {})}.items()))
    return merged


def comparable(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest without what changes from one identical converge to the next."""
    if manifest is None:
        return None
    return {k: v for k, v in manifest.items() if k not in VOLATILE}


# --- the audit ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Drift:
    area: str
    what: str
    since: str | None = None  # when it happened, where the host says so


def drift(manifest: dict[str, Any] | None, state: HostStateResult, weights: WeightsListing,
          pins_now: str, pin_set_now: str) -> list[Drift]:
    """Everything on the host that is not what its manifest (and the fleet file) says."""
    if manifest is None:
        return [Drift("pins", f"no gpufleet manifest at {MANIFEST_PATH}: never converged, or "
                              "converged by a gpufleet without manifests")]
    found: list[Drift] = []
    if manifest.get("pins_sha256") != pins_now:
        found.append(Drift("pins", f"converged to pin set {manifest.get('pin_set')} "
                                   f"({str(manifest.get('pins_sha256'))[:12]}); the fleet file "
                                   f"now asks for {pin_set_now} ({pins_now[:12]}): run the deploy"))
    for name, want in sorted(manifest.get("packages", {}).items()):
        have = state.installed.get(name)
        if have is None:
            found.append(Drift("packages", f"{name} is not installed (wanted {want['version']})"))
        elif want.get("version") and have != want["version"]:
            found.append(Drift("packages", f"{name} {have} installed, {want['version']} pinned"))
        if want.get("held") and name not in state.held and have is not None:
            found.append(Drift("holds", f"{name} is not held (apt may upgrade it)"))
    for path, want in sorted(manifest.get("files", {}).items()):
        current = state.file(path)
        if want is None:
            if current is not None:
                found.append(Drift("files", f"{path} is back (gpufleet removed it)",
                                   _when(current.mtime)))
        elif current is None:
            found.append(Drift("files", f"{path} is missing"))
        elif not want.get("secret") and current.sha256 != want.get("sha256"):
            found.append(Drift("files", f"{path} changed by hand", _when(current.mtime)))
        elif current.mode.lstrip("0") != want["mode"].lstrip("0") or current.owner != want["owner"]:
            found.append(Drift("files", f"{path} is {current.mode} {current.owner}, wanted "
                                        f"{want['mode']} {want['owner']}", _when(current.mtime)))
    for unit in manifest.get("services", []):
        service = state.service(unit)
        if not service.is_active:
            found.append(Drift("services", f"{unit} is {service.active or 'not installed'}"))
    for ref, image_id in sorted(manifest.get("images", {}).items()):
        now = state.image_ids.get(ref)
        if now is None:
            found.append(Drift("images", f"{ref} is gone"))
        elif image_id and now != image_id:
            found.append(Drift("images", f"{ref} is another image now ({now[:19]}, was "
                                         f"{image_id[:19]})"))
    module = state.kernel_module
    if module.mismatch:
        found.append(Drift("driver", f"the loaded module {module.loaded_version} is not the "
                                     "installed driver (reboot pending)"))
    weights_digest = manifest.get("weights_manifest_sha256")
    if weights_digest and weights.manifest is not None:
        moved = sorted(n for n, seen in weights.verified.items() if weights.files.get(n) != seen)
        missing = sorted(set(weights.manifest.get("files", {})) - set(weights.files))
        if moved or missing:
            found.append(Drift("weights", "; ".join(
                ([f"changed since verified: {', '.join(moved[:3])}"] if moved else [])
                + ([f"missing: {', '.join(missing[:3])}"] if missing else []))))
    return found


def _when(mtime: int) -> str:
    return datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def render_audit_table(results: dict[str, list[Drift]]) -> str:
    """host x area: ok, or drift with the count; then what drifted, host by host."""
    width = max([len(h) for h in results] + [4])
    lines = ["host".ljust(width) + "  " + "  ".join(a.ljust(8) for a in AREAS)]
    for host_name, found in sorted(results.items()):
        cells = []
        for area in AREAS:
            n = sum(1 for d in found if d.area == area)
            cells.append(("ok" if n == 0 else f"drift({n})").ljust(8))
        lines.append(host_name.ljust(width) + "  " + "  ".join(cells))
    for host_name, found in sorted(results.items()):
        for d in found:
            lines.append(f"{host_name}: {d.area}: {d.what}" + (f" (since {d.since})"
                                                                if d.since else ""))
    drifted = sum(1 for found in results.values() if found)
    lines.append(f"{drifted} of {len(results)} host(s) drifted" if drifted
                 else f"no drift on {len(results)} host(s)")
    return "\n".join(lines)


def audit_json(results: dict[str, list[Drift]]) -> str:
    return json.dumps({h: [{"area": d.area, "what": d.what, "since": d.since} for d in found]
                       for h, found in sorted(results.items())}, indent=2) + "\n"
