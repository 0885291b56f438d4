"""Load a fleet file, validate all of it, and hand pyinfra its hosts and data.

Validation runs before any host is contacted and reports every problem it finds, one line
each, naming the host or group, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from inventory.catalog import ModelSpec, load_models
from inventory.merge import deep_merge
from inventory.pins import PINS_FILE, PinFile, PinSet, load_pins
from inventory.schema import FleetFile, GroupEntry, HostEntry, Settings, valid_host_name
from inventory.toml import TOMLDecodeError, load_toml

DEFAULT_FLEET_FILE = "inventory/fleet.toml"
FLEET_ENV = "GPUFLEET_FLEET"


@dataclass(frozen=True)
class Problem:
    where: str  # "fleet", "group gpu", "host gpu-01 (group gpu)"
    field: str  # dotted path, e.g. "settings.storage.policy"
    value: Any  # what the file says (or a marker when absent)
    message: str  # what is wrong and what is allowed

    def render(self, source: str) -> str:
        shown = "(missing)" if self.value is _MISSING else repr(self.value)
        return f"{source}: {self.where}: {self.field} = {shown}: {self.message}"


_MISSING = object()


class FleetError(Exception):
    """The fleet file is unusable; `lines` has one human-readable line per problem."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class HostSpec(BaseModel):
    """One validated host: where it is, what it should become, and the versions to use.

    pyinfra keeps host data as plain JSON-able values, so the spec travels as a dict
    (`host.data.gpufleet`) and deploys rebuild it with `HostSpec.model_validate`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    group: str
    target: str
    settings: Settings
    pin_set_name: str
    pins: PinSet
    model: ModelSpec
    fleet_dir: Path
    ssh_user: str | None = None
    ssh_port: int | None = None
    ssh_key: str | None = None
    sudo: bool = False

    def controller_path(self, value: str) -> Path:
        """A path from the fleet file, relative paths taken from the fleet file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.fleet_dir / path


@dataclass
class Fleet:
    name: str
    source: Path
    hosts: list[HostSpec] = field(default_factory=list)

    def pyinfra_groups(self) -> dict[str, tuple[list[tuple[str, dict[str, Any]]], dict]]:
        """Groups in the shape pyinfra's inventory files use: NAME = ([(host, data)], {})."""
        groups: dict[str, tuple[list[tuple[str, dict[str, Any]]], dict]] = {}
        for spec in self.hosts:
            groups.setdefault(spec.group, ([], {}))[0].append(
                (pyinfra_host_name(spec), pyinfra_host_data(spec))
            )
        return groups


def pyinfra_host_name(spec: HostSpec) -> str:
    # Connectors (@docker/NAME, @local) are how pyinfra picks them; SSH hosts keep the fleet's
    # name in output and connect to ssh_hostname.
    return spec.target if spec.target.startswith("@") else spec.name


def pyinfra_host_data(spec: HostSpec) -> dict[str, Any]:
    data: dict[str, Any] = {"gpufleet": spec.model_dump(mode="json")}
    if not spec.target.startswith("@"):
        data["ssh_hostname"] = spec.target
        for key in ("ssh_user", "ssh_port", "ssh_key"):
            value = getattr(spec, key)
            if value is not None:
                data[key] = value
    if spec.sudo:
        data["_sudo"] = True
    return data


# --- error wording -----------------------------------------------------------------------------
def _allowed_keys(model: type[BaseModel], loc: Iterable[str | int]) -> list[str]:
    """The keys a table at `loc` accepts (for 'unknown key' messages)."""
    current: Any = model
    for part in list(loc)[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) else None
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def _problems_from(
    error: ValidationError, where: str, prefix: str, model: type[BaseModel]
) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        dotted = ".".join([prefix, *loc]) if prefix else ".".join(loc)
        value = item.get("input", _MISSING)
        kind = item["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            message = "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
        elif kind == "missing":
            value = _MISSING
            message = ("required, and not set for this host, its group or the fleet"
                       if dotted.startswith("settings.") else "required")
        else:
            message = item["msg"].removeprefix("Value error, ")
            message = message[0].lower() + message[1:]
        problems.append(Problem(where, dotted, value, message))
    return problems


# --- loading ---------------------------------------------------------------------------------
def load_fleet(path: Path, pins_path: Path = PINS_FILE) -> Fleet:
    """Read, merge and validate a fleet file. Raises FleetError listing every problem."""
    source = str(path)
    if not path.is_file():
        raise FleetError([
            f"{source}: fleet file not found. Set {FLEET_ENV}=PATH to use another one "
            f"(inventory/sim.toml is the simulated fleet)."
        ])
    try:
        raw = load_toml(path)
    except TOMLDecodeError as exc:
        raise FleetError([f"{source}: not valid TOML: {exc}"]) from None
    try:
        pin_file = load_pins(pins_path)
    except (ValidationError, TOMLDecodeError) as exc:
        raise FleetError([f"{pins_path}: the pin file is invalid: {exc}"]) from None

    try:
        fleet_file = FleetFile.model_validate(raw)
    except ValidationError as exc:
        raise FleetError([
            problem.render(source) for problem in _problems_from(exc, "fleet", "", FleetFile)
        ]) from None

    problems: list[Problem] = []
    models = dict(load_models())
    for model_id, raw_model in fleet_file.models.items():
        try:
            models[model_id] = ModelSpec.model_validate({"id": model_id, **raw_model})
        except ValidationError as exc:
            problems.extend(_problems_from(exc, f"model {model_id}", f"models.{model_id}",
                                           ModelSpec))
    if not fleet_file.groups:
        problems.append(Problem("fleet", "groups", {}, "no groups: a fleet needs at least one"))

    groups: dict[str, GroupEntry] = {}
    hosts: list[tuple[str, str, HostEntry]] = []
    broken: set[tuple[str, str]] = set()  # hosts whose connection fields are invalid
    for group_name, raw_group in fleet_file.groups.items():
        where = f"group {group_name}"
        if not valid_host_name(group_name):
            problems.append(Problem(where, "groups", group_name,
                                    "group names may use letters, digits, '.', '_' and '-'"))
        try:
            group = groups[group_name] = GroupEntry.model_validate(raw_group)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, where, f"groups.{group_name}", GroupEntry))
            continue
        for host_name, raw_host in group.hosts.items():
            where = f"host {host_name} (group {group_name})"
            if not valid_host_name(host_name):
                problems.append(Problem(where, "hosts", host_name,
                                        "host names may use letters, digits, '.', '_' and '-'"))
                continue
            try:
                hosts.append((group_name, host_name, HostEntry.model_validate(raw_host)))
            except ValidationError as exc:
                problems.extend(_problems_from(exc, where, "", HostEntry))
                # Still check its settings below, so one run shows every problem.
                raw_settings = raw_host.get("settings", {})
                if isinstance(raw_settings, dict):
                    broken.add((group_name, host_name))
                    hosts.append((group_name, host_name,
                                  HostEntry.model_construct(settings=raw_settings)))

    # Each settings layer is checked on its own first, so a bad value is reported once, at
    # the place it is written, rather than once per host that inherits it.
    layers: list[tuple[str, str, Mapping[str, Any]]] = [("fleet", "settings", fleet_file.settings)]
    layers += [(f"group {name}", "settings", group.settings) for name, group in groups.items()]
    layers += [(f"host {host_name} (group {group_name})", "settings", host.settings)
               for group_name, host_name, host in hosts]
    for where, prefix, layer in layers:
        try:
            Settings.model_validate(layer)
        except ValidationError as exc:
            problems.extend(
                p for p in _problems_from(exc, where, prefix, Settings)
                if p.value is not _MISSING
            )

    fleet = Fleet(name=fleet_file.fleet.name, source=path)
    seen_targets: dict[str, str] = {}
    for group_name, host_name, host in hosts:
        where = f"host {host_name} (group {group_name})"
        merged = deep_merge(
            deep_merge(fleet_file.settings, groups[group_name].settings), host.settings
        )
        spec = _host_spec(path, pin_file, models, merged, group_name, host_name, host, where,
                          problems)
        if spec is None or (group_name, host_name) in broken:
            continue
        if spec.target in seen_targets:
            problems.append(Problem(where, "target", spec.target,
                                    f"also the target of host {seen_targets[spec.target]}"))
        seen_targets[spec.target] = host_name
        fleet.hosts.append(spec)

    if problems:
        unique = list(dict.fromkeys(problem.render(source) for problem in problems))
        raise FleetError(unique)
    return fleet


def _host_spec(
    path: Path,
    pin_file: PinFile,
    models: dict[str, ModelSpec],
    merged: dict[str, Any],
    group_name: str,
    host_name: str,
    host: HostEntry,
    where: str,
    problems: list[Problem],
) -> HostSpec | None:
    target = host.target or host_name
    pin_set_name = merged.get("pin_set", Settings.model_fields["pin_set"].default)
    pins = pin_file.sets.get(pin_set_name) if isinstance(pin_set_name, str) else None
    if pins is None:
        problems.append(Problem(where, "settings.pin_set", pin_set_name,
                                f"unknown pin set; {PINS_FILE.name} defines: "
                                f"{', '.join(sorted(pin_file.sets))}"))
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        # Bad values were reported per layer; what remains is what no layer set.
        problems.extend(
            p for p in _problems_from(exc, where, "settings", Settings) if p.value is _MISSING
        )
        return None
    model = models.get(settings.model)
    if model is None:
        problems.append(Problem(where, "settings.model", settings.model,
                                "unknown model; the catalog has: " + ", ".join(sorted(models))
                                + " (or declare it under [models.NAME] in the fleet file)"))
    if pins is None or model is None:
        return None

    fleet_dir = path.resolve().parent
    spec = HostSpec(
        name=host_name, group=group_name, target=target, settings=settings,
        pin_set_name=settings.pin_set, pins=pins, model=model, fleet_dir=fleet_dir,
        ssh_user=host.ssh_user, ssh_port=host.ssh_port, ssh_key=host.ssh_key, sudo=host.sudo,
    )
    problems.extend(_controller_file_problems(spec, where))
    return spec


def _controller_file_problems(spec: HostSpec, where: str) -> list[Problem]:
    """Files the fleet names on the controller must exist now, not halfway through a deploy."""
    problems = []
    bundle = spec.settings.network.extra_ca_bundle
    if bundle and not spec.controller_path(bundle).is_file():
        problems.append(Problem(where, "settings.network.extra_ca_bundle", bundle,
                                f"no such file on this machine ({spec.controller_path(bundle)})"))
    for archive in spec.settings.verify.image_archives:
        if not spec.controller_path(archive).is_file():
            problems.append(Problem(
                where, "settings.verify.image_archives", archive,
                f"no such file on this machine ({spec.controller_path(archive)})",
            ))
    if spec.ssh_key and not Path(spec.ssh_key).expanduser().is_file():
        problems.append(Problem(where, "ssh_key", spec.ssh_key, "no such file on this machine"))
    return problems


def fleet_path_from_env() -> Path:
    return Path(os.environ.get(FLEET_ENV) or DEFAULT_FLEET_FILE)
