"""NVIDIA's apt repositories (CUDA and container toolkit), signed through `signed-by`
keyrings, replacing the sources NVIDIA's install guides leave behind, and a check — when
something is about to be installed — that they offer every pinned version.
"""

from __future__ import annotations

from pyinfra.api import deploy

from inventory.fleet import HostSpec
from operations.apt_pins import dpkg_run_finished, packages_present
from operations.apt_repos import apt_lists_refreshed, keyring
from operations.checks import versions_offered
from operations.host_files import managed_file, moved_aside
from operations.host_reading import host_state
from rules.apt_sources import (
    REPLACED_SOURCES_DIR,
    SOURCES_DIR,
    SOURCES_LIST,
    foreign_sources,
    lists_digest,
)
from rules.host_plan import HostPlan
from rules.network import apt_context
from rules.packages import UNATTENDED_UPGRADES_PATH, unattended_upgrades_blacklist
from rules.render import render_unattended_upgrades_blacklist

# What the key download and checks need on the host.
PREREQUISITES = ("ca-certificates", "curl", "gnupg")
LISTS_STAMP = "/var/lib/gpufleet/apt-lists.digest"


@deploy("NVIDIA apt repositories")
def nvidia_repositories(spec: HostSpec, plan: HostPlan) -> None:
    state = host_state()
    apt = apt_context(spec.settings)

    # The same repository under another keyring makes apt refuse every source ("Conflicting
    # values set for option Signed-By"): NVIDIA's own .list files go before apt runs at all.
    source_files = {path: f.content for path, f in state.files.items()
                    if path == SOURCES_LIST or path.startswith(SOURCES_DIR + "/")}
    for foreign in foreign_sources(source_files, plan.sources):
        urls = ", ".join(foreign.urls)
        if foreign.content is None:
            moved_aside(
                name=f"Replace {foreign.path} ({urls}) with gpufleet's signed source "
                     f"(kept in {REPLACED_SOURCES_DIR})",
                path=foreign.path, backup_dir=REPLACED_SOURCES_DIR,
                why=f"gpufleet's signed source for {urls} replaces it",
            )
        else:
            managed_file(
                name=f"Disable the entries for {urls} in {foreign.path} (gpufleet's signed "
                     "source replaces them; the lines stay, commented)",
                path=foreign.path, content=foreign.content,
                mode=state.files[foreign.path].mode, owner=state.files[foreign.path].owner,
                record=False,  # the user's file, repaired once: not gpufleet's to audit
            )

    # apt installs nothing while a dpkg run is left interrupted.
    dpkg_run_finished(name="Ensure no interrupted dpkg run is left",
                      **apt.locking)
    # Before anything is installed: unattended-upgrades must never move the pinned stack.
    managed_file(
        name="Ensure unattended-upgrades leaves the pinned NVIDIA packages alone",
        path=UNATTENDED_UPGRADES_PATH,
        content=render_unattended_upgrades_blacklist(
            spec.pin_set_name, unattended_upgrades_blacklist(plan.pinned)),
    )
    packages_present(
        name="Ensure the tools to fetch and check repository keys are installed",
        packages=PREREQUISITES, **apt.install,
    )
    for source in plan.sources:
        keyring(
            name=f"Ensure the signing key of {source.url} is trusted",
            path=source.keyring_path, url=source.key_url,
            fingerprint=source.key_fingerprint, env_file=apt.env_file,
        )
        managed_file(
            name=f"Ensure apt knows {source.url}",
            path=source.sources_path, content=source.deb822(),
        )

    pinned = plan.all_pinned()
    pending = {name: version for name, version in pinned.items()
               if state.installed.get(name) != version}
    apt_lists_refreshed(
        name="Ensure apt's package lists are current for these sources and pins",
        stamp=LISTS_STAMP, digest=lists_digest(plan.sources, pinned),
        max_age_seconds=spec.settings.apt.lists_max_age_seconds,
        installs_pending=bool(pending), **apt.install,
    )
    if pending:
        versions_offered(
            name="Ensure the repositories offer every pinned version to be installed",
            packages=pending,
            repositories="the configured repositories ("
            + ", ".join(s.url for s in plan.sources) + ")",
        )
