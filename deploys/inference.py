"""The inference engine: the model served by Compose under systemd, proven by a real request.

In order: the serving image (loaded from an archive, or pulled), the weights (pushed, downloaded
or found, then checked against their manifest — before anything restarts), the API key in a
root-only file, the compose file and the unit (each validated by `docker-compose config` /
`systemd-analyze verify` before it replaces the old one), then the engine brought up to the
new files — a changed compose file recreates only the engine's containers — and a check that
every replica answers a chat completion. What to do is decided from the probe before
execution, so the preview shows it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from facts.engine_answers import EngineAnswers
from facts.host_state import HUB_TOKEN_PATH
from facts.replica_node import ReplicaNodeJoined
from facts.weights_files import WeightsListing
from inventory.fleet import HostSpec
from inventory.key_files import HUB_TOKEN_MIN_LENGTH, read_key_file
from operations.checks import check, refuse_host
from operations.compose import compose_applied
from operations.conditions import after_change
from operations.docker_config import image_from_archive, image_pulled
from operations.host_files import managed_file, validated_file
from operations.host_reading import host_state
from operations.model_weights import (
    weights_downloaded,
    weights_pushed,
    weights_recorded,
    weights_verified,
)
from operations.services import service, service_stopped
from rules.checkpoint import (
    WeightsCheck,
    WeightsSourceError,
    controller_manifest,
    hub_download_needed,
    render_manifest,
    same_weights,
    to_push,
    weights_check,
)
from rules.component import BesideEngine
from rules.container_runtime import Compose
from rules.findings import refusal_message
from rules.host_plan import HostPlan
from rules.network import download_env_file
from rules.serving import (
    API_KEY_PATH,
    APPLIED_PATH,
    COMPOSE_PATH,
    COMPOSE_PROJECT,
    HEALTH_PATH,
    MULTINODE_LAUNCHER,
    NODE_CONTAINER,
    UNIT_NAME,
    UNIT_PATH,
    EnginePlan,
    compose_digest,
    engine_findings,
    render_api_key_env,
    render_compose,
    render_multinode_launcher,
    render_unit,
    smoke_request,
)


def _refused(folder: str, checked: WeightsCheck) -> bool:
    """Refuse the host when its weights folder holds a link or an extra weights file."""
    if checked.refused:
        refuse_host(
            name="Refuse: the weights folder holds files no manifest vouches for (the engine "
                 "was not restarted)",
            message=f"the weights folder {folder} holds:\n  " + "\n  ".join(checked.refused)
                    + "\nremove them, or point weights_path at a folder of the model's files "
                      "(weights that are there on purpose: delete the folder's "
                      ".gpufleet/manifest.json to record it again)",
        )
    return bool(checked.refused)


def weights(spec: HostSpec, listing: WeightsListing) -> None:
    """The weights at weights_path, from their source, checked against their manifest."""
    cfg = spec.settings.weights
    folder = spec.settings.weights_path
    verify_all = cfg.verify == "full"
    if cfg.source == "controller":
        assert cfg.controller_path is not None  # checked with the fleet file
        src = spec.controller_path(cfg.controller_path)
        try:
            manifest = controller_manifest(src, spec.model.id)
        except WeightsSourceError as exc:
            refuse_host(name="Refuse: the weights folder on the controller cannot be pushed",
                        message=f"settings.weights.controller_path: {exc}")
            return
        checked = weights_check(WeightsListing(
            "ok", files=listing.files, manifest=manifest, verified=listing.verified,
            links=listing.links), verify_all)
        if _refused(folder, checked):  # before the push: an upload never goes through a link
            return
        push = to_push(manifest, listing)
        if push or not same_weights(listing.manifest, manifest):
            weights_pushed(
                name=f"Push the weights from {src}",
                src=str(src), folder=folder,
                files={n: manifest["files"][n]["size"] for n in push},
                manifest=render_manifest(manifest),
            )
        names = sorted(set(push) | set(checked.changed))
    elif cfg.source == "hub":
        assert cfg.hub_endpoint is not None and cfg.revision is not None
        checked = weights_check(listing, verify_all)
        if _refused(folder, checked):
            return
        if hub_download_needed(listing, spec.model.hub_repo, cfg.revision, checked):
            if cfg.token_file:
                managed_file(name="Ensure the hub token is on the host (root-only)",
                             path=HUB_TOKEN_PATH,
                             content=read_key_file(spec.controller_path(cfg.token_file),
                                                   HUB_TOKEN_MIN_LENGTH) + "\n",
                             mode="600", secret=True, record=False)  # only to download
            weights_downloaded(
                name=f"Download {spec.model.hub_repo}@{cfg.revision[:12]} into {folder}",
                folder=folder, endpoint=str(cfg.hub_endpoint), repo=spec.model.hub_repo,
                revision=cfg.revision, token_path=HUB_TOKEN_PATH if cfg.token_file else None,
                env_file=download_env_file(spec.settings.network),
            )
            return  # the download checks every file it fetched, and records them
        names = list(checked.changed)
    else:
        checked = weights_check(listing, verify_all)
        if checked.record:
            weights_recorded(name=f"Record a manifest of the weights in {folder} (first use)",
                             folder=folder, model_id=spec.model.id)
            return
        if _refused(folder, checked):
            return
        if checked.corrupt:
            refuse_host(
                name="Refuse: the weights do not match their manifest (the engine was not "
                     "restarted)",
                message=f"the weights in {folder} do not match their manifest:\n  "
                        + "\n  ".join(checked.corrupt)
                        + "\nrestore these files (settings.weights.source says where from)",
            )
            return
        names = list(checked.changed)
    if names:
        weights_verified(
            name="Ensure the new or changed weights files match their manifest",
            folder=folder, names=names,
        )


def node_check(plan: EnginePlan) -> None:
    """At execution, on a node of a replica spanning hosts that is not its head: the node
    joined the replica (the head's own check is the completion it serves)."""
    span = plan.span
    assert span is not None
    container = NODE_CONTAINER if plan.engine == "vllm" else plan.replicas[0].container
    head = span.nodes[0][0]

    def verdict() -> tuple[str | None, str]:
        seen = host.get_fact(ReplicaNodeJoined, container=container, engine=plan.engine,
                             rendezvous=span.rendezvous, address=span.address,
                             wait_seconds=span.join_timeout)
        if seen.joined:
            return None, f"this node ({span.address}) is part of the replica headed by {head}"
        return (f"this node ({span.address}) did not join the replica headed by {head} "
                f"({span.rendezvous}) within {span.join_timeout} s; what it saw:\n"
                f"{seen.detail}\nits log ({container}):\n{seen.log}\n"
                f"check that {head} runs gpufleet-inference and that {span.rendezvous} is "
                f"reachable over {span.interface}"), ""

    check(name=f"Ensure this node joined the replica headed by {head}", verdict=verdict)


def engine_check(plan: EnginePlan) -> None:
    """At execution: every replica healthy, listing the model, answering a completion."""
    spec_json = json.dumps({
        "address": plan.query_address,
        "replicas": [[r.port, r.container] for r in plan.replicas],
        "health_path": HEALTH_PATH[plan.engine], "request": smoke_request(plan),
        "wait_seconds": plan.start_seconds, "key_file": API_KEY_PATH if plan.api_key else None,
    }, sort_keys=True)

    def verdict() -> tuple[str | None, str]:
        answers = host.get_fact(EngineAnswers, spec=spec_json)
        problems = engine_findings(plan, answers)
        if problems:
            return refusal_message(f"{plan.served_name} is not served:", problems), ""
        first = answers.replicas[0]
        return None, (f"{len(plan.replicas)} replica(s) of {plan.served_name} answer "
                      f"(first: {first.tokens} tokens in {first.seconds} s on "
                      f"http://{plan.bind}:{first.port})")

    check(name=f"Ensure every replica answers a chat completion ({plan.served_name})",
          verdict=verdict)


@deploy("Inference engine")
def inference(spec: HostSpec, plan: HostPlan, listing: WeightsListing,
              beside: Sequence[BesideEngine] = ()) -> None:
    """``beside``: the components that run in the engine's compose project (the DCGM exporter
    on a monitored host): readied after the serving image, their services in the compose
    file."""
    cfg = spec.settings.inference
    engine = plan.engine
    if not cfg.enabled or engine is None:
        # Switched off on a host that served: the engine stops (compose down, by the unit's
        # ExecStop); its files, image and weights stay for when it is switched on again.
        service_stopped(name=f"Ensure no engine runs on this host ({UNIT_NAME} stopped: "
                        "settings.inference.enabled = false)", unit=UNIT_NAME)
        return
    compose: Compose = plan.compose

    archives = [str(spec.controller_path(a)) for a in cfg.image_archives]
    for archive in archives:
        image_from_archive(name=f"Ensure the serving image {engine.image} is present",
                           image=engine.image, archive=archive)
    if not archives:
        image_pulled(name=f"Ensure the serving image {engine.image} is present",
                     image=engine.image)

    for component in beside:
        component.ready()

    weights(spec, listing)

    key_env = render_api_key_env(engine.engine, read_key_file(spec.controller_path(
        cfg.api_key_file))) if cfg.api_key_file else None
    managed_file(
        name="Ensure the API key is on the host (root-only)" if cfg.api_key_file
        else "Ensure no API key file is left",
        path=API_KEY_PATH, mode="600", secret=True, content=key_env,
    )
    if engine.span is not None and engine.engine == "vllm":
        managed_file(
            name="Ensure the launcher of the replica's head is up to date" if
            engine.span.is_head else "Ensure no head launcher is left (a worker node)",
            path=MULTINODE_LAUNCHER, mode="644",
            content=render_multinode_launcher() if engine.span.is_head else None,
        )
    compose_text = render_compose(engine, {name: service for component in beside
                                           for name, service in component.services.items()})
    validated_file(
        name=f"Ensure the compose file serves {engine.served_name} (validated by Compose)",
        path=COMPOSE_PATH, content=compose_text,
        check=f"{compose.path} --file {{}} config --quiet",
    )
    unit = validated_file(
        name=f"Ensure the {UNIT_NAME} unit is up to date", path=UNIT_PATH,
        content=render_unit(engine, compose), check="systemd-analyze verify {}",
    )
    reload = after_change(unit)
    unprotected = spec.settings.docker.gpu_device_protection == "none"
    if reload is not None and unprotected and host_state().service(UNIT_NAME).is_active:
        # Without the cgroupfs driver or CDI a daemon-reload can cut running GPU containers
        # off their devices: the new unit waits for the next reload or boot.
        host.noop(f"{UNIT_NAME}: unit changed, daemon-reload left for later "
                  "(settings.docker.gpu_device_protection = 'none')")
    elif reload is not None:
        server.shell(name="Reload systemd's units (GPU containers keep their devices)",
                     commands=["systemctl daemon-reload"], **reload)
    service(name=f"Ensure {UNIT_NAME} starts at boot", unit=UNIT_NAME, running=False)
    compose_applied(
        name="Ensure the engine runs the current compose file",
        unit=UNIT_NAME, compose=compose.path,
        project=COMPOSE_PROJECT, compose_path=COMPOSE_PATH, stamp=APPLIED_PATH,
        digest=compose_digest(compose_text, key_env),
    )
    if engine.serves_api:
        engine_check(engine)
    else:
        node_check(engine)
