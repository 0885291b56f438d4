"""How a host reaches the outside: the fleet's proxies for apt and for downloads, and its
extra CA bundle. Pure: what to write where, never how.

Proxy URLs may carry credentials. They go only into root-only files (0600): apt's
configuration and an environment file that download commands source themselves, so they never
appear on a command line, in a process list or in pyinfra's output. The schema has already
refused any value that could add a directive to apt's configuration (quotes, semicolons,
braces, newlines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from facts.host_state import APT_PROXY_PATH as APT_PROXY_PATH
from facts.host_state import PROXY_ENV_PATH
from inventory.schema import NetworkSettings, Settings
from inventory.urls import has_credentials as url_has_credentials

# APT_PROXY_PATH and PROXY_ENV_PATH may hold credentials: facts.host_state names them.
EXTRA_CA_PATH = "/usr/local/share/ca-certificates/gpufleet-extra-ca.crt"


def _proxies(network: NetworkSettings) -> list[tuple[str, str]]:
    return [(scheme, str(url)) for scheme, url in (("http", network.http_proxy),
                                                    ("https", network.https_proxy)) if url]


def has_credentials(network: NetworkSettings) -> bool:
    return any(url_has_credentials(url) for _, url in _proxies(network))


def secret_mode(network: NetworkSettings) -> str:
    """0600 when a proxy URL carries credentials, else world-readable like any apt config."""
    return "600" if has_credentials(network) else "644"


def apt_proxy_conf(network: NetworkSettings) -> str | None:
    """apt's proxy configuration, or None when the fleet sets no proxy."""
    proxies = _proxies(network)
    if not proxies:
        return None
    lines = ["// Managed by gpufleet (settings.network in the fleet file)."]
    lines += [f'Acquire::{scheme}::Proxy "{url}";' for scheme, url in proxies]
    for host_name in network.no_proxy:
        # apt has no no_proxy list; a per-host DIRECT entry does the same for exact names.
        if host_name and not host_name.startswith(".") and "/" not in host_name:
            for scheme, _ in proxies:
                lines.append(f'Acquire::{scheme}::Proxy::{host_name} "DIRECT";')
    return "\n".join(lines) + "\n"


def proxy_env_file(network: NetworkSettings) -> str | None:
    """Environment for commands that download (curl, pip), in both spellings (pip honours
    either, other tools only one); None when the fleet sets no proxy."""
    values = [(f"{scheme}_proxy", url) for scheme, url in _proxies(network)]
    if network.no_proxy:
        values.append(("no_proxy", ",".join(network.no_proxy)))
    if not values:
        return None
    lines = ["# Managed by gpufleet (settings.network): proxies for downloads. Root-only: a "
             "proxy URL may carry credentials."]
    for key, value in values:
        # The schema refused quotes and newlines in these values: single quotes hold.
        lines += [f"{key}='{value}'", f"{key.upper()}='{value}'"]
    return "\n".join(lines) + "\n"


def download_env_file(network: NetworkSettings) -> str | None:
    """The env file download commands source, when the fleet sets a proxy."""
    return PROXY_ENV_PATH if proxy_env_file(network) else None


class AptArgs(TypedDict):
    """What an apt operation that downloads needs: the proxy env file and the lock wait."""

    env_file: str | None
    lock_timeout: int


class AptLockArgs(TypedDict):
    """What an apt or dpkg operation that only takes the lock needs."""

    lock_timeout: int


@dataclass(frozen=True)
class AptContext:
    """How apt runs on a host, decided once per step from the settings: through the fleet's
    proxy (``env_file``, root-only) and waiting ``lock_timeout`` s for another's apt/dpkg lock.
    A step passes ``**apt.install`` to an operation that downloads, ``**apt.locking`` to one
    that only locks, and ``apt.env_file`` to a download that is not apt's."""

    env_file: str | None
    lock_timeout: int

    @property
    def install(self) -> AptArgs:
        return {"env_file": self.env_file, "lock_timeout": self.lock_timeout}

    @property
    def locking(self) -> AptLockArgs:
        return {"lock_timeout": self.lock_timeout}


def apt_context(settings: Settings) -> AptContext:
    return AptContext(download_env_file(settings.network), settings.apt.lock_timeout_seconds)
