"""The checks behind the fleet file's schema (inventory/schema.py): what a value must be, and
the one line that says why it is not.

inventory/schema.py is the shape (every setting, its type, default and description); each
constrained type there (``AbsolutePath``, ``ProxyUrl``, ``Target``, ...) names one function
here. A function takes the value as written and returns it (possibly normalised) or raises
``ValueError`` with the message the operator reads (pydantic adds the field's location).
"""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import date, datetime, time
from pathlib import PurePosixPath

from inventory.image_refs import image_reference_problem, registry_problem
from inventory.urls import (
    DNS_NAME,
    HTTP_SCHEMES,
    IPV4,
    authority,
    authority_problem,
    bad_url_char,
    dns_name_problem,
    host_problem,
    http_url_problem,
    ipv4_problem,
    is_ipv6,
    mask_url,
)


def absolute_posix_path(value: str) -> str:
    if not PurePosixPath(value).is_absolute():
        raise ValueError("must be an absolute path on the host, e.g. /srv/models/NAME")
    if not value.isprintable():  # a pasted newline or tab: never part of a real path
        raise ValueError("must not contain newlines, tabs or other control characters")
    return value


# weights_path is written to as root (downloads, pushes, ownership) and mounted into the
# engine's container: never the root, a system tree or a folder many things share.
# Whole trees: the OS's programs, configuration, kernel and virtual filesystems, and the
# container runtimes' own storage.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                "/run", "/sbin", "/sys", "/usr", "/var/lib/docker", "/var/lib/containerd")


# The folder itself only: a subfolder of its own (/srv/models/NAME, /var/lib/gpufleet/models)
# is where weights belong.
SYSTEM_FOLDERS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/snap", "/srv", "/tmp",
                  "/var", "/var/cache", "/var/lib", "/var/log", "/var/opt", "/var/spool",
                  "/var/tmp")


def weights_folder(value: str) -> str:
    path = PurePosixPath(value)
    if ".." in path.parts:
        raise ValueError("must not contain '..': give the folder's own absolute path")
    normal = "/" + "/".join(path.parts[1:])
    tree = next((t for t in SYSTEM_TREES if normal == t or normal.startswith(t + "/")), None)
    if tree is not None or normal in SYSTEM_FOLDERS:
        what = (f"inside the system folder {tree}" if tree and tree != normal
                else f"the system folder {normal}")
        raise ValueError(
            f"is {what}: the weights folder is written to as root and mounted into the engine's "
            "container, so it must be a folder of its own, e.g. /srv/models/NAME or "
            "/var/lib/gpufleet/models/NAME")
    return value


# Patterns are used with fullmatch: `$` would also accept a trailing newline.
_FINGERPRINT = re.compile(r"[0-9A-F]{40}")


def fingerprint(value: str) -> str:
    cleaned = value.replace(" ", "").upper()
    if not _FINGERPRINT.fullmatch(cleaned):
        raise ValueError("must be a 40-hex-digit OpenPGP fingerprint (spaces allowed)")
    return cleaned


_PLACEHOLDER = re.compile(r"\{(distro|arch)\}")


_OTHER_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def url_template(value: str) -> str:
    """An http(s) URL in which `{distro}` and `{arch}` are the only braces (str.format runs on
    it at deploy time: a lone brace or another field would fail there, mid-run)."""
    if not value.startswith(HTTP_SCHEMES):  # lower case: apt's method names are
        raise ValueError("must be an http:// or https:// URL")
    rest = _PLACEHOLDER.sub("", value)
    if "{" in rest or "}" in rest:
        # Looked for in the masked URL, so a message cannot show a password.
        unknown = _OTHER_PLACEHOLDER.search(_PLACEHOLDER.sub("", mask_url(value)))
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{unknown.group(1)}}}; allowed: {{distro}}, {{arch}}"
            )
        raise ValueError("has an unmatched '{' or '}'; the only placeholders are "
                         "{distro} and {arch}")
    bad = bad_url_char(rest)
    if bad is not None:
        raise ValueError(f"must be an http:// or https:// URL: {bad!r} is not allowed in a URL "
                         "(no quotes, backslashes, '$', ';', spaces or control characters: "
                         "percent-encode them)")
    sample = _PLACEHOLDER.sub("x", value)
    problem = authority_problem(authority(sample))
    if problem:
        raise ValueError(f"must be an http:// or https:// URL: it {problem}")
    return value.rstrip("/")


# Proxy values go into apt's configuration inside "..." (rules/network.py) and into a shell
# environment file inside '...': none of these may appear, so no value can add a directive.
_CONFIG_UNSAFE = frozenset("'\"`;{}\\")


def config_safe(value: str) -> None:
    bad = sorted({c for c in value if c in _CONFIG_UNSAFE or c.isspace() or not c.isprintable()})
    if bad:
        raise ValueError(
            f"must not contain {' '.join(repr(c) for c in bad)}: quotes, backquotes, ';', "
            "braces, backslashes, whitespace and control characters are refused here"
        )


_PROXY_FORM = "http://[user:password@]host[:port] (or https://...)"


def proxy_text(value: object) -> object:
    """Checks on the text as written, before HttpUrl (which is lenient: it reads
    `http:proxy` as http://proxy/ and turns backslashes into slashes)."""
    if not isinstance(value, str):
        return value  # HttpUrl reports the wrong type
    config_safe(value)
    if not value.lower().startswith(HTTP_SCHEMES):
        raise ValueError(f"must be {_PROXY_FORM}")
    hostport, _, path = value.split("://", 1)[1].partition("/")
    if path or "?" in hostport or "#" in hostport:
        raise ValueError(f"must be {_PROXY_FORM}, without a path, query or fragment "
                         "(write '/', '?', '#' or '@' in a password as %2F, %3F, %23, %40)")
    problem = authority_problem(hostport)
    if problem:
        raise ValueError(f"must be {_PROXY_FORM}: it {problem}")
    return value


def http_url_text(value: object) -> object:
    """A mirror, index, hub or webhook URL as written (inventory/urls.py: http(s):// spelled
    out, a valid host and port, nothing that needs quoting, no credentials)."""
    if not isinstance(value, str):
        return value  # HttpUrl reports the wrong type
    problem = http_url_problem(value)
    if problem:
        raise ValueError(problem)
    return value


_NO_PROXY_FORMS = ("host names (localhost, gpu-01.example.internal), domains (.example.internal), "
                   "IP addresses or CIDRs (10.0.0.0/8)")


def no_proxy_entry(value: str) -> str:
    config_safe(value)
    if "/" in value:
        try:
            ipaddress.ip_network(value, strict=False)  # refuses leading zeros too
        except ValueError:
            raise ValueError(f"is not a valid CIDR; no_proxy entries are {_NO_PROXY_FORMS}"
                             ) from None
        return value
    if is_ipv6(value):
        return value
    name = value.removeprefix(".")
    problem = ipv4_problem(name) if IPV4.fullmatch(value) else dns_name_problem(name)
    if problem:
        raise ValueError(f"{problem}; no_proxy entries are {_NO_PROXY_FORMS}")
    return value


def image_reference(value: str) -> str:
    problem = image_reference_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def registry(value: str) -> str:
    problem = registry_problem(value)
    if problem:
        raise ValueError(problem)
    return value.rstrip("/")


def json_problem(value: object, where: str) -> str | None:
    """Why `value` cannot be written as JSON, or None. TOML has dates, times, nan and inf;
    JSON does not, and json.dumps would fail (or write NaN, which dockerd refuses) mid-deploy."""
    if isinstance(value, (datetime, date, time)):
        return f"{where} is a TOML date or time; JSON has none (write it as a string)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} is {value}; JSON has no nan or inf"
    if isinstance(value, list):
        for index, item in enumerate(value):
            problem = json_problem(item, f"{where}[{index}]")
            if problem:
                return problem
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = json_problem(item, f"{where}.{key}")
            if problem:
                return problem
    elif not isinstance(value, (str, int, float, bool)) and value is not None:
        return f"{where} is a {type(value).__name__}, which JSON cannot hold"
    return None


def json_object(value: dict[str, object]) -> dict[str, object]:
    problem = json_problem(value, "daemon_json")
    if problem:
        raise ValueError(problem)
    return value


CGROUP_DRIVER_OPT = "native.cgroupdriver="


def exec_opts_problem(value: object, protection: str) -> str | None:
    """exec-opts replaces the list gpufleet writes: under cgroupfs protection it must keep
    gpufleet's cgroup driver, and no protection is contradicted by another driver."""
    drivers = [item.removeprefix(CGROUP_DRIVER_OPT) for item in value
               if isinstance(item, str) and item.startswith(CGROUP_DRIVER_OPT)] \
        if isinstance(value, list) else []
    if protection != "cgroupfs" or drivers == ["cgroupfs"]:
        return None
    other = [d for d in drivers if d != "cgroupfs"]
    if other:
        return (f"{CGROUP_DRIVER_OPT}{other[0]} contradicts settings.docker."
                'gpu_device_protection = "cgroupfs" (running GPU containers lose their devices '
                'on `systemctl daemon-reload`); set gpu_device_protection = "cdi" or "none" to '
                "use another cgroup driver")
    return (f"replaces the exec-opts list gpufleet writes and drops {CGROUP_DRIVER_OPT}cgroupfs,"
            ' which settings.docker.gpu_device_protection = "cgroupfs" needs: add '
            f'"{CGROUP_DRIVER_OPT}cgroupfs" to the list')


_REVISION = re.compile(r"[0-9a-f]{40}")


def revision(value: str) -> str:
    if not _REVISION.fullmatch(value):
        raise ValueError("must be a commit id: 40 lowercase hex digits (a branch moves)")
    return value


def ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("must be an IP address (127.0.0.1 keeps the API on this host)") from None
    return value


def host_name(value: str) -> str:
    problem = host_problem(value)
    if problem:
        raise ValueError(f"{problem}: must be an IP address or a DNS name (no port, scheme "
                         "or brackets)")
    return value


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


def served_name(value: str) -> str:
    if not _MODEL_NAME.fullmatch(value):
        raise ValueError("letters, digits, '.', '_', '-' and '/' (up to 128)")
    return value


_INTERFACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14}")  # Linux: at most 15 bytes


def interface(value: str) -> str:
    if not _INTERFACE.fullmatch(value):
        raise ValueError("must be a network interface name as `ip link` shows it (at most 15 "
                         "letters, digits, '_', '.', '-', ':' or '@'), e.g. eth1, ens5f0, ib0")
    return value


def private_ipv4(value: str) -> str:
    if not IPV4.fullmatch(value) or ipv4_problem(value):
        raise ValueError(ipv4_problem(value) if IPV4.fullmatch(value) else
                         "must be an IPv4 address (the node's address on settings.multinode."
                         "interface)")
    address = ipaddress.ip_address(value)
    if not address.is_private or address.is_loopback or address.is_unspecified:
        # Ray's and torch.distributed's inter-node traffic is unauthenticated.
        raise ValueError("must be an address on a private network (10/8, 172.16/12, "
                         "192.168/16, 100.64/10): the engines' inter-node traffic is "
                         "unauthenticated and must not cross a public network")
    return value


_DURATION = re.compile(r"[1-9][0-9]{0,4}[smhdw]")


def duration(value: str) -> str:
    if not _DURATION.fullmatch(value):
        raise ValueError("must be a Prometheus duration: a whole number and s, m, h, d or w "
                         "(e.g. 30s, 5m, 1h)")
    return value


_PERCENT = re.compile(r"([1-9][0-9]?|100)%")


def batch(value: int | str) -> int | str:
    if isinstance(value, int) and 1 <= value <= 1000:
        return value
    if isinstance(value, str) and _PERCENT.fullmatch(value):
        return value
    raise ValueError("must be a count of hosts (1 to 1000) or a percentage of the group "
                     "(\"1%\" to \"100%\")")


_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


_DOCKER_NAME = re.compile(r"@docker/[A-Za-z0-9][A-Za-z0-9_.-]*")


_TARGET_FORMS = ("must be a DNS name or IP address (user and port go in ssh_user / ssh_port), "
                 "@docker/CONTAINER or @local")


def target(value: str) -> str:
    """An SSH host (DNS name or IP address), `@docker/CONTAINER` or `@local`."""
    if value == "@local" or _DOCKER_NAME.fullmatch(value):
        return value
    if value.startswith("@"):
        raise ValueError("connectors allowed: @local, @docker/CONTAINER (or an SSH host name)")
    if IPV4.fullmatch(value):
        problem = ipv4_problem(value)
        if problem:
            raise ValueError(problem)
        return value
    if ":" in value and is_ipv6(value):
        return value  # IPv6 literal
    problem = dns_name_problem(value)
    if problem is None:
        return value
    if DNS_NAME.fullmatch(value):
        raise ValueError(f"{problem}; {_TARGET_FORMS}")
    raise ValueError(_TARGET_FORMS)


# POSIX portable user names (useradd's default rule), as ssh and sudo accept them.
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


def user_name(value: str) -> str:
    if not _USER_NAME.fullmatch(value):
        raise ValueError("must be a user name: a letter or '_', then letters, digits, '.', '_' "
                         "or '-' (at most 32); the host goes in target")
    return value


def valid_host_name(name: str) -> bool:
    return bool(_HOST_NAME.fullmatch(name))


def target_problem(value: str) -> str | None:
    """Why `value` is not a usable target, or None (for a host's name used as its target)."""
    try:
        target(value)
    except ValueError as exc:
        return str(exc)
    return None


def guarded_daemon_key_problem(key: str, value: object, protection: str) -> str | None:
    """Why a daemon_json ``key`` set to ``value`` would undo what gpufleet guarantees or open
    the host (under settings.docker.gpu_device_protection = ``protection``), or None."""
    if key == "hosts":
        return ("opens Docker's API on other sockets or addresses (whoever reaches it is "
                "root on the host); Docker's local socket is all gpufleet needs")
    if key in ("tls", "tlsverify") and value is False:
        return "switches TLS off for Docker's API"
    if key == "runtimes" and isinstance(value, dict) and "nvidia" in value:
        return ("gpufleet owns runtimes.nvidia (the NVIDIA container toolkit's entry); "
                "other runtimes may be added here")
    if key == "default-runtime":
        return ("gpufleet owns default-runtime: use settings.docker.default_runtime_nvidia "
                "= true to make nvidia the default")
    if key == "registry-mirrors":
        return "gpufleet owns registry-mirrors: use settings.docker.registry_mirrors"
    if key == "insecure-registries":
        return ("lets Docker pull images over plain HTTP or unverified TLS, and an image runs "
                "as root beside the GPUs; give the registry a certificate (settings.network."
                "extra_ca_bundle trusts a private CA)")
    if key == "authorization-plugins":
        return ("puts a plugin between gpufleet and every Docker API call (it can refuse or "
                "see them all)")
    if key == "exec-opts":
        return exec_opts_problem(value, protection)
    if key == "features" and isinstance(value, dict) and protection == "cdi" \
            and value.get("cdi") is False:
        return ('features.cdi = false contradicts settings.docker.gpu_device_protection = '
                '"cdi"')
    return None
