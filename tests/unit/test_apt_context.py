"""The apt context (the proxy env file, the lock wait) is decided once, from the settings."""

from __future__ import annotations

import re
from pathlib import Path

from inventory.schema import Settings
from rules.network import PROXY_ENV_PATH, apt_context

REPO = Path(__file__).resolve().parents[2]


def settings(**values: object) -> Settings:
    return Settings.model_validate({"weights_path": "/srv/models/m", **values})


def test_the_context_follows_the_proxy_and_the_lock_timeout() -> None:
    plain = apt_context(settings())
    assert plain.env_file is None and plain.lock_timeout == 300
    proxied = apt_context(settings(network={"http_proxy": "http://proxy.example:3128"},
                                   apt={"lock_timeout_seconds": 42}))
    assert proxied.install == {"env_file": PROXY_ENV_PATH, "lock_timeout": 42}
    assert proxied.locking == {"lock_timeout": 42}


def test_no_step_reads_the_apt_settings_itself() -> None:
    """One place turns settings into apt's arguments: a step that read them itself could
    forget the proxy or the lock wait for one operation."""
    readers = {path.name: found for path in sorted((REPO / "deploys").glob("*.py"))
               if (found := re.findall(r"apt\.lock_timeout_seconds|download_env_file\(",
                                       path.read_text()))}
    # inference.py downloads weights through the proxy (not apt): its env file only
    assert readers == {"inference.py": ["download_env_file("]}
