"""The last step of a converge: the host manifest (rules/manifest.py), on the host and in the
controller's fleet-state/<fleet>/<host>.json. What it records comes from every operation of the
run (operations/desired.py) and, here, from the plan: pin set, engine, lock and weights."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pyinfra.api import deploy

from inventory.fleet import HostSpec
from operations.host_manifest import host_manifest
from rules.checkpoint import controller_manifest
from rules.host_plan import HostPlan
from rules.manifest import gpufleet_release, pins_digest
from rules.python_env_plan import Plan as VenvPlan
from rules.serving import engine_args


def weights_identity(spec: HostSpec) -> str | None:
    """What names the weights: the controller folder's manifest digest, the hub revision, or
    nothing for weights found on the host (the audit checks those against their manifest)."""
    cfg = spec.settings.weights
    if cfg.source == "controller" and cfg.controller_path:
        manifest = controller_manifest(spec.controller_path(cfg.controller_path), spec.model.id)
        # the files only: the same weights from another checkout are the same weights
        return hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()
    if cfg.source == "hub":
        return f"{spec.model.hub_repo}@{cfg.revision}"
    return None


def manifest_meta(spec: HostSpec, plan: HostPlan | None, venv: VenvPlan | None
                  ) -> dict[str, Any]:
    engine = plan.engine if plan is not None else None
    return {
        "host": spec.name, "fleet": spec.fleet_name, "role": spec.settings.role,
        "pin_set": spec.pin_set_name, "pins_sha256": pins_digest(spec.pins),
        "gpufleet": dict(gpufleet_release()),
        "engine": None if engine is None or not spec.settings.inference.enabled else {
            "image": engine.image, "args": engine_args(engine),
            "replicas": len(engine.replicas)},
        "python_lock_sha256": venv.lock.digest if venv is not None and venv.lock else None,
        "weights": weights_identity(spec) if engine is not None else None,
    }


@deploy("Host manifest")
def host_record(spec: HostSpec, plan: HostPlan | None = None,
                venv: VenvPlan | None = None, partial: bool = False) -> None:
    """``partial``: the run took only some steps; the others' entries stay as recorded."""
    host_manifest(name="Ensure the host manifest records what this run made the host",
                  meta=manifest_meta(spec, plan, venv), partial=partial,
                  controller_copy=str(spec.state_dir / f"{spec.name}.json"))
