"""What this run makes each host be, as the operations are asked for it.

Every operation that manages something records it here when it runs (at change detection and
again at execution): each file with its sha256, mode and owner (None: must not exist), each
package with its exact version (None: any), each hold, each service that must run, each image,
each keyring's fingerprint (a secret file: its mode and owner only). The deploy's last step
writes the record as the host's manifest (/etc/gpufleet/manifest.json, rules/manifest.py),
which the drift audit compares with the host. Keyed by pyinfra host name; recording twice the
same thing is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyinfra import host

from operations.run_context import run_context


@dataclass
class DesiredState:
    files: dict[str, dict[str, str | bool] | None] = field(default_factory=dict)
    packages: dict[str, str | None] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    images: set[str] = field(default_factory=set)
    keyrings: dict[str, str] = field(default_factory=dict)

    def file(self, path: str, sha256: str | None, mode: str = "644",
             owner: str = "root:root", secret: bool = False) -> None:
        """``secret``: recorded by mode and owner only. A sha256 of a key or password in the
        manifest (0644 on the host, and copied to the controller) could be guessed offline."""
        if sha256 is None:
            self.files[path] = None
        elif secret:
            self.files[path] = {"secret": True, "mode": mode, "owner": owner}
        else:
            self.files[path] = {"sha256": sha256, "mode": mode, "owner": owner}

    def package(self, name: str, version: str | None) -> None:
        if version is not None or name not in self.packages:
            self.packages[name] = version

    def hold(self, names: list[str] | tuple[str, ...], held: bool = True) -> None:
        if held:
            self.held.update(names)
        else:
            self.held.difference_update(names)


def desired() -> DesiredState:
    """The record of the host being deployed (kept in the run's context)."""
    return run_context(host.state).desired.setdefault(host.name, DesiredState())

