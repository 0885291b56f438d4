"""Load a fleet file, validate all of it, and hand pyinfra its hosts and data.

Validation runs before any host is contacted and reports every problem it finds, one line
each, naming the host or group, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from inventory.catalog import CatalogError, ModelSpec, load_models
from inventory.key_files import (
    API_KEY_MIN_LENGTH,
    HUB_TOKEN_MIN_LENGTH,
    KeyFileError,
    ensure_key_file,
    generated_key_path,
    read_key_file,
)
from inventory.merge import deep_merge
from inventory.pins import PINS_FILE, PinFile, PinFileError, PinSet, load_pins
from inventory.schema import FleetFile, GroupEntry, HostEntry, Settings
from inventory.toml import MiB, TOMLDecodeError, TomlFileError, read_toml_file
from inventory.urls import mask_url
from inventory.validation import target_problem, valid_host_name

DEFAULT_FLEET_FILE = "inventory/fleet.toml"
FLEET_ENV = "GPUFLEET_FLEET"
# A fleet file is a few KiB; a bigger one is a wrong path (a log, an image), not a fleet.
MAX_FLEET_BYTES = 1 * MiB
# groups.G.hosts.H.settings.docker.daemon_json is 7 levels: 20 leaves daemon.json room.
MAX_FLEET_DEPTH = 20
# pyinfra passes groups as keyword arguments to Inventory(names_data, override_data, **groups)
# and treats "all" as the list of every host: a group with one of these names breaks it.
RESERVED_GROUP_NAMES = frozenset({"all", "names_data", "override_data", "self"})
_SHOWN_CHARS = 200  # a value longer than this is cut in messages


@dataclass(frozen=True)
class Problem:
    where: str  # "fleet", "group gpu", "host gpu-01 (group gpu)"
    field: str  # dotted path, e.g. "settings.storage.policy"
    value: Any  # what the file says (or a marker when absent)
    message: str  # what is wrong and what is allowed

    def render(self, source: str) -> str:
        """One line: credentials in URLs masked, control characters escaped, long values cut."""
        shown = "(missing)" if self.value is _MISSING else _cut(repr(_masked(self.value)))
        line = f"{source}: {self.where}: {self.field} = {shown}: {self.message}"
        return _printable(_mask_urls_in_text(line))


MISSING = object()  # a Problem's value when the field is not set at all
_MISSING = MISSING
# scheme://userinfo@ anywhere in a text (a safety net: values are masked structurally).
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s/?#]*)@")


def _masked(value: Any) -> Any:
    """`value` with credentials in URLs replaced by ***, inside lists and tables too."""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_masked(item) for item in value)
    if isinstance(value, Mapping):
        return {_masked(key): _masked(item) for key, item in value.items()}
    return value


def _mask_urls_in_text(text: str) -> str:
    return _URL_USERINFO.sub(
        lambda m: m.group(1) + ("***:***" if ":" in m.group(2) else "***") + "@", text
    )


def _printable(text: str) -> str:
    """Escape what would break the one-line-per-problem output (newlines, escape codes):
    names and keys in a TOML file may hold any character."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class FleetError(Exception):
    """The fleet file is unusable; `lines` has one human-readable line per problem."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class ReplicaNode(BaseModel):
    """One host of a replica that spans hosts: its fleet name and inter-node address."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    host: str  # pyinfra's name for it (pyinfra_host_name)
    address: str | None  # settings.multinode.address (None: missing, reported by the checks)


class ReplicaSpan(BaseModel):
    """Where a host sits in a replica that spans hosts (settings.multinode.nodes > 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str
    index: int  # the replica's number within its group
    rank: int  # this host's place: 0 is the head
    nodes: tuple[ReplicaNode, ...]

    @property
    def head(self) -> ReplicaNode:
        return self.nodes[0]

    @property
    def is_head(self) -> bool:
        return self.rank == 0

    @property
    def me(self) -> ReplicaNode:
        return self.nodes[self.rank]

    @property
    def label(self) -> str:
        names = ", ".join(n.name for n in self.nodes)
        return f"replica {self.index} of group {self.group} ({names})"


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
    fleet_name: str = "fleet"
    ssh_user: str | None = None
    ssh_port: int | None = None
    ssh_key: str | None = None
    sudo: bool = False
    # Set when the host is one node of a replica spanning hosts (settings.multinode.nodes > 1).
    replica: ReplicaSpan | None = None

    @property
    def where(self) -> str:
        """How problems name this host: "host gpu-01 (group hgx)"."""
        return f"host {self.name} (group {self.group})"

    @property
    def state_dir(self) -> Path:
        """Where the controller keeps this fleet's host manifests and audits: fleet-state/NAME
        beside the fleet file (keep it in git to diff a fleet's state over time)."""
        return self.fleet_dir / "fleet-state" / safe_name(self.fleet_name)

    def controller_path(self, value: str) -> Path:
        """A path from the fleet file, relative paths taken from the fleet file's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.fleet_dir / path


@dataclass
class Fleet:
    name: str
    source: Path
    hosts: list[HostSpec] = field(default_factory=list)
    # Each settings table as written, with where it is ("fleet", "group G", "host H (group G)"):
    # checks on a value that does not depend on the host report it once, where it is written.
    setting_layers: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)

    def pyinfra_groups(self) -> dict[str, tuple[list[tuple[str, dict[str, Any]]], dict]]:
        """Groups in the shape pyinfra's inventory files use: NAME = ([(host, data)], {})."""
        groups: dict[str, tuple[list[tuple[str, dict[str, Any]]], dict]] = {}
        for spec in self.hosts:
            groups.setdefault(spec.group, ([], {}))[0].append(
                (pyinfra_host_name(spec), pyinfra_host_data(spec))
            )
        return groups

    def pyinfra_host_aliases(self) -> dict[str, tuple[list[str], dict]]:
        """A one-host group named by the fleet's name of each host that pyinfra knows by
        another (a connector's, @docker/CONTAINER): pyinfra's --limit matches group names
        before host names, so `--limit sim-a100x2` selects @docker/gpufleet-sim-a100x2.

        pyinfra picks a host's connector from its name alone (a leading @), so a connector
        host cannot be named by the fleet; a group can. A host named like a fleet group or a
        name pyinfra reserves gets none: --limit NAME keeps meaning the group."""
        taken = {spec.group for spec in self.hosts} | RESERVED_GROUP_NAMES
        return {spec.name: ([pyinfra_host_name(spec)], {}) for spec in self.hosts
                if pyinfra_host_name(spec) != spec.name and spec.name not in taken}


# Reserved for documentation: RFC 5737 and RFC 3849 addresses, RFC 2606 names. No real machine
# has them, so a run whose hosts are all of this kind is an example that nobody edited.
_DOCUMENTATION_NETWORKS = tuple(ipaddress.ip_network(net) for net in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))
_DOCUMENTATION_DOMAINS = ("example", "example.com", "example.net", "example.org", "invalid")


def is_documentation_target(target: str) -> bool:
    """True for an address or name reserved for examples: it can never be a real host."""
    if target.startswith("@"):
        return False
    try:
        address = ipaddress.ip_address(target)
    except ValueError:
        name = target.lower().rstrip(".")
        return any(name == domain or name.endswith("." + domain)
                   for domain in _DOCUMENTATION_DOMAINS)
    return any(address in network for network in _DOCUMENTATION_NETWORKS)


def unedited_example_problem(fleet: Fleet) -> str | None:
    """One line when the fleet's hosts are documentation targets: nothing would answer, and a
    half-edited example must not go on to reach the hosts that were edited."""
    examples = [spec for spec in fleet.hosts if is_documentation_target(spec.target)]
    if not examples:
        return None
    shown = ", ".join(f"{spec.name} ({spec.target})" for spec in examples[:4])
    more = f" and {len(examples) - 4} more" if len(examples) > 4 else ""
    what = ("is the unedited example: its hosts" if len(examples) == len(fleet.hosts)
            else "still has example hosts:")
    return (f"{fleet.source} {what} {shown}{more} have documentation addresses that no real "
            "machine has, so no host was contacted. To try gpufleet, run `make rehearse` (the "
            "simulated fleet); for real servers, copy the example, set each target, and run "
            f"with {FLEET_ENV}=your-fleet.toml")


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


# Strict types: pydantic says "a valid integer"; the person needs to hear that "8" in quotes is
# text, not a number, and what TOML wants instead.
_TYPE_MESSAGES = {
    "int_type": "must be an integer, written without quotes or a decimal point (e.g. 8)",
    "bool_type": "must be true or false, without quotes",
    "float_type": "must be a number, written without quotes (e.g. 0.9)",
    "string_type": "must be a string, in quotes",
    "list_type": 'must be a list, e.g. ["a", "b"]',
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "finite_number": "must be a finite number: nan and inf are not allowed",
    "url_type": "must be a URL, in quotes",
}


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
        elif kind in _TYPE_MESSAGES:
            message = _TYPE_MESSAGES[kind]
        else:
            message = item["msg"].removeprefix("Value error, ")
            message = message[:1].lower() + message[1:]
        problems.append(Problem(where, dotted, value, message))
    return problems


def _non_finite(value: Any, where: str, dotted: str) -> list[Problem]:
    """nan and inf anywhere in `value` (TOML allows them; no gpufleet setting does)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [Problem(where, dotted, value, "must be a finite number: nan and inf are not "
                                              "allowed")]
    if isinstance(value, Mapping):
        return [p for key, item in value.items() for p in _non_finite(item, where,
                                                                        f"{dotted}.{key}")]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _non_finite(item, where,
                                                                        f"{dotted}[{i}]")]
    return []


def _target_key(target: str) -> str:
    """Targets naming the same machine compare equal: DNS is case-insensitive and an IPv6
    address has many spellings."""
    if target.startswith("@"):
        return target
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        return target.lower().rstrip(".")


# --- loading ---------------------------------------------------------------------------------
def _read(path: Path, source: str) -> dict[str, Any]:
    try:
        return read_toml_file(path, max_bytes=MAX_FLEET_BYTES, max_depth=MAX_FLEET_DEPTH)
    except TomlFileError as exc:
        if exc.missing:
            raise FleetError([
                f"{source}: fleet file {exc.reason}. Set {FLEET_ENV}=PATH to use another one "
                f"(inventory/sim.toml is the simulated fleet)."
            ]) from None
        raise FleetError([_printable(f"{source}: {exc.reason}")]) from None
    except TOMLDecodeError as exc:
        raise FleetError([_printable(f"{source}: not valid TOML: {exc}")]) from None


def _one_line(exc: Exception) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def load_fleet(
    path: Path,
    pins_path: Path = PINS_FILE,
    checks: Callable[[Fleet], list[Problem]] | None = None,
) -> Fleet:
    """Read, merge and validate a fleet file. Raises FleetError listing every problem.

    The stages, in order: the file, pins and catalog read (a problem there stops at once);
    the file's shape; its own models; groups and hosts with their connection fields; every
    settings layer on its own; each host's merged settings into a HostSpec; replica spans;
    ``checks`` (e.g. rules.fleet_checks.fleet_problems) on the hosts that validated, so its
    problems are reported in the same run as the schema's.
    """
    source = _printable(str(path))
    raw = _read(path, source)
    pin_file, catalog = _pins_and_catalog(pins_path)
    fleet_file = _fleet_file(raw, source)
    problems: list[Problem] = []
    models = _models(fleet_file, catalog, problems)
    groups, hosts, broken = _entries(fleet_file, problems)
    layers = _setting_layers(fleet_file, groups, hosts, problems)
    fleet = Fleet(name=fleet_file.fleet.name, source=path,
                  setting_layers=[(where, layer) for where, _, layer in layers])
    fleet.hosts = with_replica_spans(_host_specs(path, pin_file, models, fleet_file, groups,
                                                 hosts, broken, problems, fleet.name))
    if checks is not None:
        problems.extend(checks(fleet))
    if problems:
        unique = list(dict.fromkeys(problem.render(source) for problem in problems))
        raise FleetError(unique)
    return fleet


def _pins_and_catalog(pins_path: Path) -> tuple[PinFile, dict[str, ModelSpec]]:
    """The pin file and the model catalog: either broken stops the fleet's check at once."""
    try:
        pin_file = load_pins(pins_path)
    except (ValidationError, TOMLDecodeError, OSError, PinFileError) as exc:
        raise FleetError([_printable(f"{pins_path}: the pin file is invalid: {_one_line(exc)}")]
                         ) from None
    try:
        catalog = load_models()
    except CatalogError as exc:
        raise FleetError([_printable(f"the model catalog is invalid: {_one_line(exc)}")]
                         ) from None
    return pin_file, catalog


def _fleet_file(raw: dict[str, Any], source: str) -> FleetFile:
    """The file's shape (tables and their keys); its problems stop the check at once."""
    if not raw:
        raise FleetError([f"{source}: empty: a fleet file needs [settings] and at least one "
                          "[groups.NAME.hosts.HOST] table"])
    try:
        return FleetFile.model_validate(raw)
    except ValidationError as exc:
        raise FleetError(list(dict.fromkeys(
            problem.render(source) for problem in _problems_from(exc, "fleet", "", FleetFile)
        ))) from None


def _models(fleet_file: FleetFile, catalog: Mapping[str, ModelSpec],
            problems: list[Problem]) -> dict[str, ModelSpec]:
    """The catalog with the file's own ``[models.NAME]`` added (those that validate)."""
    models = dict(catalog)
    for model_id, raw_model in fleet_file.models.items():
        where = f"model {model_id}"
        if model_id in catalog:
            problems.append(Problem(where, "models", model_id,
                                    "already a catalog model (inventory/catalog/models.toml); "
                                    "give yours another id"))
        if "id" in raw_model:
            problems.append(Problem(where, f"models.{model_id}.id", raw_model["id"],
                                    "not allowed here: the table name is the model's id"))
        finite = _non_finite(raw_model, where, f"models.{model_id}")
        problems.extend(finite)
        try:
            # strict: a model's numbers size the deploy; "32" or true is a mistake there too.
            model_spec = ModelSpec.model_validate({**raw_model, "id": model_id}, strict=True)
        except ValidationError as exc:
            problems.extend(p for p in _problems_from(exc, where, f"models.{model_id}", ModelSpec)
                            if not (finite and isinstance(p.value, float)))
            continue
        if not finite:
            models[model_id] = model_spec
    if not fleet_file.groups:
        problems.append(Problem("fleet", "groups", {}, "no groups: a fleet needs at least one"))
    return models


HostRow = tuple[str, str, "HostEntry"]  # group name, host name, its entry


def _entries(fleet_file: FleetFile, problems: list[Problem]
             ) -> tuple[dict[str, GroupEntry], list[HostRow], set[tuple[str, str]]]:
    """Groups and hosts with their names and connection fields checked; ``broken``: hosts
    whose connection fields are invalid (their settings are still checked, so one run shows
    every problem)."""
    groups: dict[str, GroupEntry] = {}
    hosts: list[HostRow] = []
    broken: set[tuple[str, str]] = set()
    host_groups: dict[str, str] = {}  # host name -> the first group that has it
    declared_hosts = 0
    for group_name, raw_group in fleet_file.groups.items():
        where = f"group {group_name}"
        if not valid_host_name(group_name):
            problems.append(Problem(where, "groups", group_name,
                                    "group names may use letters, digits, '.', '_' and '-'"))
        elif group_name in RESERVED_GROUP_NAMES:
            problems.append(Problem(where, "groups", group_name,
                                    "reserved by pyinfra; use another group name (not "
                                    + ", ".join(sorted(RESERVED_GROUP_NAMES)) + ")"))
        try:
            group = groups[group_name] = GroupEntry.model_validate(raw_group)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, where, f"groups.{group_name}", GroupEntry))
            continue
        if not group.hosts:
            problems.append(Problem(where, f"groups.{group_name}.hosts", {},
                                    "no hosts: a group needs at least one "
                                    f"[groups.{group_name}.hosts.HOST] table"))
        declared_hosts += len(group.hosts)
        for host_name, raw_host in group.hosts.items():
            where = f"host {host_name} (group {group_name})"
            if not valid_host_name(host_name):
                problems.append(Problem(where, "hosts", host_name,
                                        "host names may use letters, digits, '.', '_' and '-'"))
                continue
            if host_name in host_groups:
                # pyinfra knows hosts by name: the second would silently merge into the first.
                problems.append(Problem(where, "hosts", host_name,
                                        f"also a host of group {host_groups[host_name]}; host "
                                        "names must be unique across the fleet"))
                continue
            host_groups[host_name] = group_name
            try:
                entry = HostEntry.model_validate(raw_host)
            except ValidationError as exc:
                problems.extend(_problems_from(exc, where, "", HostEntry))
                # Still check its settings below, so one run shows every problem.
                raw_settings = raw_host.get("settings", {})
                if isinstance(raw_settings, dict):
                    broken.add((group_name, host_name))
                    hosts.append((group_name, host_name,
                                  HostEntry.model_construct(settings=raw_settings)))
                continue
            if entry.target is None:
                problem = target_problem(host_name)
                if problem:
                    problems.append(Problem(
                        where, "target", _MISSING,
                        f"not set, so the host name {host_name!r} is the SSH target: {problem}; "
                        "set target",
                    ))
                    broken.add((group_name, host_name))
            hosts.append((group_name, host_name, entry))
    if fleet_file.groups and len(groups) == len(fleet_file.groups) and not declared_hosts:
        problems.append(Problem("fleet", "groups", sorted(fleet_file.groups),
                                "no hosts in any group: a fleet needs at least one host"))
    return groups, hosts, broken


def _setting_layers(fleet_file: FleetFile, groups: dict[str, GroupEntry],
                    hosts: list[HostRow], problems: list[Problem]
                    ) -> list[tuple[str, str, Mapping[str, Any]]]:
    """Each settings layer, checked on its own first, so a bad value is reported once, at the
    place it is written, rather than once per host that inherits it."""
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
    return layers


def _host_specs(path: Path, pin_file: PinFile, models: dict[str, ModelSpec],
                fleet_file: FleetFile, groups: dict[str, GroupEntry], hosts: list[HostRow],
                broken: set[tuple[str, str]], problems: list[Problem], fleet_name: str
                ) -> list[HostSpec]:
    """Each host's settings merged fleet -> group -> host into its HostSpec; no two hosts
    with one target."""
    specs: list[HostSpec] = []
    seen_targets: dict[str, str] = {}
    for group_name, host_name, host in hosts:
        where = f"host {host_name} (group {group_name})"
        merged = deep_merge(
            deep_merge(fleet_file.settings, groups[group_name].settings), host.settings
        )
        spec = _host_spec(path, pin_file, models, merged, group_name, host_name, host, where,
                          problems, fleet_name)
        if spec is None or (group_name, host_name) in broken:
            continue
        target_key = _target_key(spec.target)
        if target_key in seen_targets:
            problems.append(Problem(where, "target", spec.target,
                                    f"also the target of host {seen_targets[target_key]}"))
        seen_targets[target_key] = host_name
        specs.append(spec)
    return specs


def with_replica_spans(hosts: list[HostSpec]) -> list[HostSpec]:
    """Each group's hosts with settings.multinode.nodes = N > 1, in the order the file lists
    them, taken N at a time: one replica each, its first host the head. Groups whose hosts
    disagree on N, or whose count is not a multiple of N, are left unassigned (the fleet checks
    report them)."""
    by_group: dict[str, list[HostSpec]] = {}
    for spec in hosts:
        by_group.setdefault(spec.group, []).append(spec)
    spans: dict[str, ReplicaSpan] = {}
    for group, members in by_group.items():
        counts = {m.settings.multinode.nodes for m in members}
        if len(counts) != 1:
            continue
        size = counts.pop()
        if size < 2 or len(members) % size:
            continue
        for index in range(len(members) // size):
            chunk = members[index * size:(index + 1) * size]
            nodes = tuple(ReplicaNode(name=m.name, host=pyinfra_host_name(m),
                                      address=m.settings.multinode.address) for m in chunk)
            for rank, member in enumerate(chunk):
                spans[member.name] = ReplicaSpan(group=group, index=index, rank=rank,
                                                 nodes=nodes)
    return [spec.model_copy(update={"replica": spans[spec.name]}) if spec.name in spans
            else spec for spec in hosts]


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
    fleet_name: str = "fleet",
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

    settings = _with_api_key(settings, fleet_name, where, problems)
    problems.extend(_daemon_json_problems(settings, where))
    fleet_dir = path.resolve().parent
    spec = HostSpec(
        name=host_name, group=group_name, target=target, settings=settings,
        pin_set_name=settings.pin_set, pins=pins, model=model, fleet_dir=fleet_dir,
        fleet_name=fleet_name, ssh_user=host.ssh_user, ssh_port=host.ssh_port,
        ssh_key=host.ssh_key, sudo=host.sudo,
    )
    problems.extend(_controller_file_problems(spec, where))
    return spec


def safe_name(fleet_name: str) -> str:
    """A fleet's name as one file or folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", fleet_name).strip(".-") or "fleet"


def _with_api_key(settings: Settings, fleet_name: str, where: str,
                  problems: list[Problem]) -> Settings:
    """An engine listening beyond loopback always has an API key: with no
    inference.api_key_file, the fleet's generated key (created once, 0600 on the controller:
    inventory.key_files), so that no fleet serves an open API by default."""
    cfg = settings.inference
    if (settings.role != "gpu" or not cfg.enabled or cfg.api_key_file is not None
            or ipaddress.ip_address(cfg.bind).is_loopback):
        return settings
    path = generated_key_path(safe_name(fleet_name))
    try:
        ensure_key_file(path)
    except OSError as exc:
        problems.append(Problem(where, "settings.inference.api_key_file", MISSING,
                                f"the engine listens on {cfg.bind}, beyond loopback, so it needs "
                                f"an API key; generating one in {_cut(str(path))} failed "
                                f"({exc.strerror or exc}): name a key file here"))
        return settings
    return settings.model_copy(update={"inference": cfg.model_copy(
        update={"api_key_file": str(path)})})


def _daemon_json_problems(settings: Settings, where: str) -> list[Problem]:
    """Guarded daemon_json keys not named in daemon_json_unchecked, and names there that do not
    match a guarded key daemon_json sets (the override is exact). On merged settings: the key
    and the override may be written at different levels."""
    docker = settings.docker
    guarded = docker.daemon_json_problems()
    unchecked = set(docker.daemon_json_unchecked)
    problems = [
        Problem(where, f"settings.docker.daemon_json.{key}", value,
                f"refused: {why}. An expert who takes responsibility for it names it in "
                "settings.docker.daemon_json_unchecked")
        for key, value, why in guarded if key not in unchecked
    ]
    problems += [
        Problem(where, "settings.docker.daemon_json_unchecked", key,
                "daemon_json sets no refused value under this key: remove it from the list "
                "(it names exactly the refused keys you take responsibility for)")
        for key in sorted(unchecked - {key for key, _, _ in guarded})
    ]
    return problems


def _controller_file_problems(spec: HostSpec, where: str) -> list[Problem]:
    """Files the fleet names on the controller must exist now, not halfway through a deploy."""
    named: list[tuple[str, str, Path | None]] = []
    if spec.settings.network.extra_ca_bundle is not None:
        named.append(("settings.network.extra_ca_bundle", spec.settings.network.extra_ca_bundle,
                      spec.fleet_dir))
    named += [("settings.verify.image_archives", archive, spec.fleet_dir)
              for archive in spec.settings.verify.image_archives]
    named += [("settings.inference.image_archives", archive, spec.fleet_dir)
              for archive in spec.settings.inference.image_archives]
    for field_name, value in (("settings.inference.api_key_file",
                               spec.settings.inference.api_key_file),
                              ("settings.weights.token_file", spec.settings.weights.token_file)):
        if value is not None:
            named.append((field_name, value, spec.fleet_dir))
    if spec.ssh_key is not None:
        named.append(("ssh_key", spec.ssh_key, None))  # ssh reads it from the current folder
    problems = []
    for field_name, value, base in named:
        problem = _controller_file_problem(value, base)
        if problem is None and field_name in _KEY_FILES:
            try:
                read_key_file(spec.controller_path(value), _KEY_FILES[field_name])
            except KeyFileError as exc:
                problem = str(exc)
        if problem:
            problems.append(Problem(where, field_name, value, problem))
    folder = spec.settings.weights.controller_path
    if folder is not None and not spec.controller_path(folder).is_dir():
        shown = _cut(str(spec.controller_path(folder)))
        problems.append(Problem(where, "settings.weights.controller_path", folder,
                                f"no such folder on this machine ({shown})"))
    return problems


# Files holding a credential, read by one rule (inventory.key_files): the minimum length.
_KEY_FILES = {"settings.inference.api_key_file": API_KEY_MIN_LENGTH,
              "settings.weights.token_file": HUB_TOKEN_MIN_LENGTH}


def _controller_file_problem(value: str, base: Path | None) -> str | None:
    """Why `value` (relative paths from `base`) is not a readable file here, or None."""
    if not value.strip():
        return "empty: name a file, or leave the setting out"
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "~someone/..." with no such user here
        return "names the home folder of a user this machine does not know"
    if base is not None and not path.is_absolute():
        path = base / path
    try:
        if path.is_file():
            return None
        if path.is_dir():
            return f"a folder on this machine, not a file ({_cut(str(path))})"
        if path.exists():
            return f"not a regular file on this machine ({_cut(str(path))})"
    except (OSError, ValueError) as exc:  # a name too long, a NUL character
        return f"cannot be checked on this machine: {getattr(exc, 'strerror', None) or exc}"
    return f"no such file on this machine ({_cut(str(path))})"


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...(cut)"


def fleet_path_from_env() -> Path:
    """$GPUFLEET_FLEET, or inventory/fleet.toml when it is unset. Set but empty (or blank) is
    a mistake, e.g. `GPUFLEET_FLEET=$FLEET` with $FLEET unset: refused, not the example file."""
    value = os.environ.get(FLEET_ENV)
    if value is None:
        return Path(DEFAULT_FLEET_FILE)
    if not value.strip():
        raise FleetError([
            f"{FLEET_ENV} is set but empty{'' if not value else ' (only whitespace)'}: set it "
            f"to a fleet file's path, or unset it to use {DEFAULT_FLEET_FILE}"
        ])
    return Path(value)
