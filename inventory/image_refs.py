"""Docker's image reference grammar (distribution/reference), for every image a fleet names.

An image reference reaches `docker pull`, `docker image inspect` and Compose's `image:`; a
value Docker would read differently (a leading '-' taken as an option, an upper-case path,
a first component that silently turns a registry into a Docker Hub namespace) is refused
before any host is contacted.

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [ domain "/" ] path-component ( "/" path-component )*
    domain    := host [ ":" port ]          (a DNS-like name, or an IPv6 address in [...])
    path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag       := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
    digest    := "sha256:" 64 lower-case hex digits (the only algorithm gpufleet records)
"""

from __future__ import annotations

import re

from inventory.urls import is_ipv6

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_PORT = r"[0-9]{1,5}"
_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN = re.compile(rf"(?:{_DOMAIN_NAME}|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>{_PORT}))?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
NAME_MAX = 255  # distribution/reference: a name (domain and path) is at most 255 characters

IMAGE_FORM = ("an image reference: [registry[:port]/]path[:tag][@sha256:<64 hex>], the path in "
              "lower case (letters, digits, and '.', '_', '__' or '-' between them), e.g. "
              "registry.example.internal:5000/team/engine:v1.2")
REGISTRY_FORM = ("a registry host, [:port] and optional path: registry.example.internal, "
                 "mirror.example.internal:5000/nvidia, localhost:5000")


def _is_domain(component: str) -> bool:
    """Whether a name's first component is a registry, not a namespace on Docker's default
    registry: it holds a '.' or ':', or is localhost. (Docker also takes an upper-case first
    component for a host; here it is refused as an upper-case path, almost surely a typo.)"""
    return "." in component or ":" in component or component == "localhost"


def _domain_problem(domain: str) -> str | None:
    match = _DOMAIN.fullmatch(domain)
    if not match or (match.group("ipv6") and not is_ipv6(match.group("ipv6"))):
        return f"has an invalid registry host {domain!r}"
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        return "has an invalid registry port (1 to 65535)"
    return None


def _name_problem(name: str) -> str | None:
    if len(name) > NAME_MAX:
        return f"has a name longer than {NAME_MAX} characters"
    first, slash, rest = name.partition("/")
    if slash and _is_domain(first):
        problem = _domain_problem(first)
        if problem:
            return problem
        path = rest
    else:
        path = name
    if not _PATH.fullmatch(path):
        return f"has an invalid repository path {path!r}"
    return None


def image_reference_problem(value: str) -> str | None:
    """Why `value` is not an image reference Docker reads as written, or None."""
    if value.startswith("-"):
        return f"starts with '-', which docker reads as an option; must be {IMAGE_FORM}"
    if not value.isprintable() or any(c.isspace() for c in value):
        return f"holds spaces or control characters; must be {IMAGE_FORM}"
    rest, at, digest = value.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        return f"has an invalid digest; must be {IMAGE_FORM}"
    # A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    name, tag = (rest[:colon], rest[colon + 1:]) if colon > slash else (rest, None)
    if tag is not None and not _TAG.fullmatch(tag):
        return f"has an invalid tag {tag!r} (at most 128 letters, digits, '_', '.', '-'); " \
               f"must be {IMAGE_FORM}"
    problem = _name_problem(name)
    if problem:
        return f"{problem}; must be {IMAGE_FORM}"
    return None


def registry_problem(value: str) -> str | None:
    """Why `value` cannot be put before an image's path as its registry, or None."""
    if value.startswith("-") or not value:
        return f"must be {REGISTRY_FORM}"
    first, _, path = value.rstrip("/").partition("/")
    if not _is_domain(first):
        return (f"{first!r} is not a registry host: Docker would read it as a namespace on "
                f"its default registry (a registry host holds a '.' or a ':port'); must be "
                f"{REGISTRY_FORM}")
    problem = _domain_problem(first)
    if problem:
        return f"{problem}; must be {REGISTRY_FORM}"
    if path and not _PATH.fullmatch(path):
        return f"has an invalid path {path!r}; must be {REGISTRY_FORM}"
    return None
