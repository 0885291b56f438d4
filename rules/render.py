"""Files gpufleet renders on hosts, from the jinja2 templates under templates/.

Pure: a renderer takes values and returns the file's text; operations and deploys write it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


@cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # configuration files and shell, never HTML
    )


def render(template: str, **values: Any) -> str:
    """Render ``templates/<template>`` with every value required (StrictUndefined)."""
    return _environment().get_template(template).render(**values)


def render_apt_preferences(
    component: str, pin_set: str, packages: Mapping[str, str], priority: int
) -> str:
    """An apt preferences file pinning each package to its exact version."""
    if not packages:
        raise ValueError("no packages to pin")
    for name, version in packages.items():
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name) or not version or " " in version:
            raise ValueError(f"not an apt package and version: {name!r} {version!r}")
    return render("apt/preferences.j2", component=component, pin_set=pin_set,
                  priority=priority, packages=sorted(packages.items()))


def render_unattended_upgrades_blacklist(pin_set: str, patterns: Sequence[str]) -> str:
    """apt configuration keeping unattended-upgrades off the pinned packages."""
    if not patterns:
        raise ValueError("no package patterns")
    for pattern in patterns:
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", pattern):
            raise ValueError(f"not a package name prefix: {pattern!r}")
    return render("apt/unattended-upgrades.j2", pin_set=pin_set, patterns=patterns)


def render_nouveau_blacklist() -> str:
    return render("nvidia/blacklist-nouveau.conf.j2")


def cuda_home(release: str) -> str:
    """Where NVIDIA's packages put a release: cuda-toolkit-12-1 -> /usr/local/cuda-12.1."""
    return f"/usr/local/cuda-{release}"


def render_cuda_profile(release: str) -> str:
    if not re.fullmatch(r"\d+\.\d+", release):
        raise ValueError(f"CUDA release must be MAJOR.MINOR, got {release!r}")
    return render("nvidia/cuda-profile.sh.j2", release=release, cuda_home=cuda_home(release))
