#!/usr/bin/env python3
"""Record the digest of each serving image of the pin file, so hosts run exactly that image.

    .venv/bin/python tools/pin_image.py                  # every set's images without a digest
    .venv/bin/python tools/pin_image.py --set r535-cuda121 --engine vllm --force

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


def set_digest(text: str, pin_set: str, engine: str, digest: str) -> str:
    """Replace the digest line of [sets.PIN_SET.inference.ENGINE] in the pin file's text."""
    header = f"[sets.{pin_set}.inference.{engine}]"
    start = text.index(header)
    end = text.find("\n[", start + len(header))
    end = len(text) if end < 0 else end
    table, count = re.subn(r'(?m)^digest = "[^"]*"', f'digest = "{digest}"', text[start:end])
    if count != 1:
        raise RuntimeError(f"{header} in {PINS_FILE} has no `digest = \"\"` line")
    return text[:start] + table + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="pin_set")
    parser.add_argument("--engine", choices=["vllm", "sglang"])
    parser.add_argument("--force", action="store_true", help="also sets that have a digest")
    args = parser.parse_args(argv)
    text = PINS_FILE.read_text()
    raw_sets = set(re.findall(r"(?m)^\[sets\.([^.\]]+)\.inference\.(vllm|sglang)\]", text))
    pins = load_pins().sets
    failed = 0
    for pin_set, engine in sorted(raw_sets):
        if (args.pin_set and pin_set != args.pin_set) or (args.engine and engine != args.engine):
            continue
        pinned = pins[pin_set].inference.engine(engine)
        if pinned is None or (pinned.digest and not args.force):
            continue
        try:
            digest = digest_of(pinned.image)
        except RuntimeError as exc:
            print(f"pin_image: {pin_set} {engine}: {exc}", file=sys.stderr)
            failed += 1
            continue
        text = set_digest(text, pin_set, engine, digest)
        print(f"{pin_set} {engine}: {pinned.image} -> {digest}")
    PINS_FILE.write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
