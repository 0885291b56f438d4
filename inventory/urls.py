"""The one URL and host-name rule: what the schema accepts is what the deploy uses.

Every URL, host name and address a fleet file holds is checked here, by the schema
(inventory/schema.py) and by the rules and operations that later split a URL again (a proxy's
credentials, a mirror's address): they read it with these functions, never with a second
parser that could disagree (urllib.parse reads `http://a@b@c` differently from a browser, and
a URL the schema accepted must never be refused halfway through a deploy).
"""

from __future__ import annotations

import ipaddress
import re

# Patterns are used with fullmatch: `$` would also accept a trailing newline.
_DNS_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DNS_NAME = re.compile(rf"(?=.{{1,253}}\Z){_DNS_LABEL}(\.{_DNS_LABEL})*")
IPV4 = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}")  # [0-9]: \d also matches other scripts' digits
URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# What a URL may hold (RFC 3986), less what could end a quoted value or a line in the files
# these URLs are written to (quotes, backslashes, whitespace, braces but placeholders) and what
# a shell or Compose would read ('$', ';'): percent-encode them (%24, %3B) if a URL needs one.
_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!&()*+,=%-]*")
_PORT = re.compile(r"[0-9]{1,5}")
HTTP_SCHEMES = ("http://", "https://")
HTTP_URL = "an http:// or https:// URL"
CREDENTIALS_REFUSED = (
    "must not hold a user name or password: a URL is written in plain text to the hosts' "
    "configuration, command lines and logs. Give the URL without them, and the credentials "
    "through a secret file (settings.weights.token_file for a hub; a netrc or the tool's own "
    "credential store on the hosts for a mirror or webhook)"
)


def ipv4_problem(value: str) -> str | None:
    """Why a dotted-quad is not a usable IPv4 address, or None when it is one."""
    for part in value.split("."):
        if len(part) > 1 and part.startswith("0"):
            # ssh and libc read 010 as octal 8: refuse rather than guess.
            return f"is not a valid IPv4 address: leading zero in {part!r} (write {int(part)})"
        if int(part) > 255:
            return "is not a valid IPv4 address: each part is 0 to 255"
    return None


def dns_name_problem(value: str) -> str | None:
    """Why `value` is not a DNS name, or None when it is one."""
    if not DNS_NAME.fullmatch(value):
        return "is not a DNS name (letters, digits and '-' in dot-separated labels)"
    if value.rsplit(".", 1)[-1].isdigit():
        # "10.0.0" or "1.2.3.4.5": resolvers read these as IPv4 shorthand, not as names.
        return "looks like an IPv4 address but is not one"
    return None


def is_ipv6(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


def host_problem(value: str) -> str | None:
    """Why `value` is not an IP address or DNS name (no port, no brackets), or None."""
    if ":" in value:
        return None if is_ipv6(value) else "is not an IPv6 address"
    if IPV4.fullmatch(value):
        return ipv4_problem(value)
    return dns_name_problem(value)


def mask_url(value: str) -> str:
    """`value` with the user and password of a URL replaced by ***, for messages and logs.

    http://user:secret@proxy:3128 -> http://***:***@proxy:3128. A value without a scheme is
    masked when it reads like user:password@host; `user@host` (an SSH-style name) is kept.
    Everything up to the last '@' is masked, so a malformed password cannot leak either.
    """
    scheme = URL_SCHEME.match(value)
    start = scheme.end() if scheme else 0
    at = value.rfind("@")
    if at < start:
        return value
    userinfo = value[start:at]
    if not scheme and ":" not in userinfo:
        return value
    return value[:start] + ("***:***" if ":" in userinfo else "***") + value[at:]


def authority(url: str) -> str:
    """`[user[:password]@]host[:port]` of a URL that has a scheme."""
    return re.split(r"[/?#]", url.split("://", 1)[1], maxsplit=1)[0]


def has_credentials(url: str) -> bool:
    """Whether a URL holds a user name or password (userinfo before the last '@')."""
    return "@" in authority(url) if "://" in url else False


def authority_problem(value: str) -> str | None:
    """Why `[user[:password]@]host[:port]` is not usable, or None when it is."""
    userinfo, at, hostport = value.rpartition("@")
    if at and (not userinfo or "@" in userinfo):
        return "has a stray '@' (write '@' in a user name or password as %40)"
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or not is_ipv6(host):
            return "has an invalid IPv6 address in [...]"
        if after and not after.startswith(":"):
            return "has text after the IPv6 address"
        port = after[1:] if after else None
    else:
        host, colon, port_text = hostport.partition(":")
        port = port_text if colon else None
        if not host:
            return "has no host"
        problem = ipv4_problem(host) if IPV4.fullmatch(host) else dns_name_problem(host)
        if problem:
            return f"has a host that {problem}"
    if port is not None and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        return "has an invalid port (1 to 65535)"
    return None


def bad_url_char(value: str) -> str | None:
    """The first character a URL may not hold here, or None."""
    for char in value:
        if not _URL_CHARS.fullmatch(char):
            return char
    return None


def http_url_problem(value: str, *, credentials: bool = False) -> str | None:
    """Why `value` is not an http(s) URL gpufleet can write anywhere, or None.

    http(s):// spelled out (pydantic's HttpUrl alone would read `http:/x` as http://x/), a
    valid host and port, nothing that needs quoting, and (unless `credentials`) no user name
    or password.
    """
    if not value.lower().startswith(HTTP_SCHEMES):
        return f"must be {HTTP_URL}"
    bad = bad_url_char(value)
    if bad is not None:
        return (f"must be {HTTP_URL}: {bad!r} is not allowed in a URL "
                "(no quotes, backslashes, braces, '$', ';', spaces or control characters: "
                "percent-encode them)")
    problem = authority_problem(authority(value))
    if problem:
        return f"must be {HTTP_URL}: it {problem}"
    if not credentials and has_credentials(value):
        return CREDENTIALS_REFUSED
    return None
