"""How a host reaches the outside: the fleet's proxies (for apt, and for the commands that
download) and its extra CA bundle. Runs before anything downloads, so repositories, keys and
Python wheels all go through the fleet's proxy and trust its private CA (TLS-intercepting
proxies, private mirrors). What the fleet file no longer asks for is removed.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import server

from inventory.fleet import HostSpec
from operations.conditions import after_change
from operations.host_files import managed_file, uploaded_file
from rules.network import (
    APT_PROXY_PATH,
    EXTRA_CA_PATH,
    PROXY_ENV_PATH,
    apt_proxy_conf,
    proxy_env_file,
    secret_mode,
)


@deploy("Host network: proxy and extra CA")
def host_network(spec: HostSpec) -> None:
    network = spec.settings.network
    conf = apt_proxy_conf(network)
    managed_file(
        name="Ensure apt uses the fleet's proxy" if conf
        else "Ensure no gpufleet apt proxy is configured",
        path=APT_PROXY_PATH, content=conf, mode=secret_mode(network), secret=True,
    )
    env = proxy_env_file(network)
    managed_file(
        name="Ensure downloads use the fleet's proxy (root-only file)" if env
        else "Ensure no gpufleet proxy environment is left",
        path=PROXY_ENV_PATH, content=env, mode="600", secret=True,
    )
    bundle = network.extra_ca_bundle
    if bundle:
        ca = uploaded_file(
            name="Ensure the fleet's extra CA bundle is trusted",
            path=EXTRA_CA_PATH, src=str(spec.controller_path(bundle)),
        )
    else:
        ca = managed_file(name="Ensure no gpufleet extra CA is trusted", path=EXTRA_CA_PATH,
                          content=None)
    rebuild = after_change(ca)
    if rebuild is not None:
        server.shell(name="Rebuild the system CA store", commands=["update-ca-certificates"],
                     **rebuild)
