#!/usr/bin/env python3
"""Record the digest of each image of the pin file, so hosts run exactly that image.

    .venv/bin/python tools/pin_image.py                  # every set's images without a digest
    .venv/bin/python tools/pin_image.py --set r535-cuda121 --image vllm --force
    .venv/bin/python tools/pin_image.py --image dcgm_exporter --registry REGISTRY

On a machine whose Docker engine reaches the registry (no registry address is written here:
Docker's own configuration decides): `docker pull` each image, read the digest the registry
gave it (`docker image inspect ... RepoDigests`) and write it into inventory/pins.toml as
`digest = "sha256:..."`. A tag that does not exist fails here, with Docker's message.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inventory.controller_files import write_atomically  # noqa: E402
from inventory.pins import PINS_FILE, load_pins  # noqa: E402


def digest_of(image: str) -> str:
    pulled = subprocess.run(["docker", "pull", image], capture_output=True, text=True)
    if pulled.returncode != 0:
        raise RuntimeError(f"docker pull {image} failed: {pulled.stderr.strip()}")
    inspected = subprocess.run(["docker", "image", "inspect", "--format",
                                "{{range .RepoDigests}}{{println .}}{{end}}", image],
                               capture_output=True, text=True, check=True).stdout.split()
    repository = image.rsplit(":", 1)[0]
    for ref in inspected:
        name, _, digest = ref.partition("@")
        if name.split("/")[-2:] == repository.split("/")[-2:] and digest.startswith("sha256:"):
            return digest
    raise RuntimeError(f"{image} has no registry digest (built or loaded locally?)")


def set_digest(text: str, pin_set: str, table: str, digest: str) -> str:
    """Replace the digest line of [sets.PIN_SET.TABLE] (e.g. "inference.vllm") in the pin
    file's text."""
    header = f"[sets.{pin_set}.{table}]"
    start = text.index(header)
    end = text.find("\n[", start + len(header))
    end = len(text) if end < 0 else end
    section, count = re.subn(r'(?m)^digest = "[^"]*"', f'digest = "{digest}"', text[start:end])
    if count != 1:
        raise RuntimeError(f"{header} in {PINS_FILE} has no `digest = \"\"` line")
    return text[:start] + section + text[end:]


# The tables of a pin set that name an image: the serving engines and the DCGM exporter.
IMAGE_TABLES = {"vllm": "inference.vllm", "sglang": "inference.sglang",
                "dcgm_exporter": "monitoring.dcgm_exporter"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="pin_set")
    parser.add_argument("--image", choices=sorted(IMAGE_TABLES))
    parser.add_argument("--registry", help="prefix for images named without their registry "
                                           "(the DCGM exporter: NVIDIA's registry or a mirror)")
    parser.add_argument("--force", action="store_true", help="also sets that have a digest")
    args = parser.parse_args(argv)
    text = PINS_FILE.read_text()
    tables = "|".join(re.escape(t) for t in IMAGE_TABLES.values())
    raw = set(re.findall(rf"(?m)^\[sets\.([^.\]]+)\.({tables})\]", text))
    pins = load_pins().sets
    failed = 0
    for pin_set, table in sorted(raw):
        name = next(k for k, v in IMAGE_TABLES.items() if v == table)
        if (args.pin_set and pin_set != args.pin_set) or (args.image and name != args.image):
            continue
        group, _, key = table.partition(".")
        pinned = getattr(getattr(pins[pin_set], group), key)
        if pinned is None or (pinned.digest and not args.force):
            continue
        image = f"{args.registry.rstrip('/')}/{pinned.image}" if (
            args.registry and group == "monitoring") else pinned.image
        try:
            digest = digest_of(image)
        except RuntimeError as exc:
            print(f"pin_image: {pin_set} {name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        text = set_digest(text, pin_set, table, digest)
        print(f"{pin_set} {name}: {image} -> {digest}")
    write_atomically(PINS_FILE, text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
