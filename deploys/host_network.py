"""How a host reaches the outside: apt proxy settings and an extra CA bundle.

Runs before anything downloads, so repositories, keys and Python wheels all go through the
fleet's proxy and trust its private CA (corporate TLS-intercepting proxies, private mirrors).
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import server

from facts.host_state import StackQuery
from inventory.fleet import HostSpec
from operations.host_files import managed_file, uploaded_file

EXTRA_CA_PATH = "/usr/local/share/ca-certificates/gpufleet-extra-ca.crt"
APT_PROXY_PATH = "/etc/apt/apt.conf.d/90gpufleet-proxy"
FILES = (APT_PROXY_PATH, EXTRA_CA_PATH)


def proxy_env(spec: HostSpec) -> dict[str, str]:
    """Environment for commands that download (curl, pip): the fleet's proxies, if any."""
    network = spec.settings.network
    env: dict[str, str] = {}
    if network.http_proxy:
        env["http_proxy"] = env["HTTP_PROXY"] = str(network.http_proxy)
    if network.https_proxy:
        env["https_proxy"] = env["HTTPS_PROXY"] = str(network.https_proxy)
    if network.no_proxy:
        env["no_proxy"] = env["NO_PROXY"] = ",".join(network.no_proxy)
    return env


def apt_proxy_conf(spec: HostSpec) -> str | None:
    network = spec.settings.network
    if not (network.http_proxy or network.https_proxy):
        return None
    lines = ["// Managed by gpufleet (settings.network in the fleet file)."]
    if network.http_proxy:
        lines.append(f'Acquire::http::Proxy "{network.http_proxy}";')
    if network.https_proxy:
        lines.append(f'Acquire::https::Proxy "{network.https_proxy}";')
    for host_name in network.no_proxy:
        # apt has no no_proxy list; a per-host DIRECT entry does the same.
        if host_name and not host_name.startswith(".") and "/" not in host_name:
            lines.append(f'Acquire::http::Proxy::{host_name} "DIRECT";')
            lines.append(f'Acquire::https::Proxy::{host_name} "DIRECT";')
    return "\n".join(lines) + "\n"


@deploy("Host network: proxy and extra CA")
def host_network(spec: HostSpec, query: StackQuery) -> None:
    conf = apt_proxy_conf(spec)
    managed_file(
        name=("Ensure apt uses the fleet's proxy" if conf
              else "Ensure no gpufleet apt proxy is configured"),
        path=APT_PROXY_PATH, content=conf, query=query,
    )
    bundle = spec.settings.network.extra_ca_bundle
    if bundle:
        ca = uploaded_file(
            name="Ensure the fleet's extra CA bundle is trusted",
            path=EXTRA_CA_PATH, src=str(spec.controller_path(bundle)), query=query,
        )
        server.shell(
            name="Rebuild the system CA store",
            commands=["update-ca-certificates"],
            _if=ca.did_change,
        )
