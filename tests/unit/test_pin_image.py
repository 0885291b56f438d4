"""tools/pin_image.py writes a digest into exactly one image table of the pin file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from inventory.pins import PINS_FILE, ContainerImage

# tools/ holds scripts, not a package: load the one under test by its path.
_SPEC = importlib.util.spec_from_file_location(
    "gpufleet_pin_image", Path(__file__).resolve().parents[2] / "tools" / "pin_image.py")
assert _SPEC is not None and _SPEC.loader is not None
_MODULE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MODULE)
set_digest = _MODULE.set_digest

DIGEST = "sha256:" + "a" * 64


def test_the_digest_lands_in_its_own_table_only() -> None:
    text = PINS_FILE.read_text()
    changed = set_digest(text, "r535-fwdcompat", "inference.vllm", DIGEST)
    assert changed.count(DIGEST) == 1
    table = changed.split("[sets.r535-fwdcompat.inference.vllm]", 1)[1].split("\n[", 1)[0]
    assert f'digest = "{DIGEST}"' in table
    assert changed.replace(f'digest = "{DIGEST}"', 'digest = ""') == text


def test_a_table_that_does_not_exist_is_an_error() -> None:
    with pytest.raises(ValueError):
        set_digest(PINS_FILE.read_text(), "no-such-set", "inference.vllm", DIGEST)


def test_the_dcgm_exporter_table_takes_a_digest_too() -> None:
    text = PINS_FILE.read_text()
    changed = set_digest(text, "r535-cuda121", "monitoring.dcgm_exporter", DIGEST)
    table = changed.split("[sets.r535-cuda121.monitoring.dcgm_exporter]", 1)[1].split("\n[", 1)[0]
    assert f'digest = "{DIGEST}"' in table and changed.count(DIGEST) == 1


@pytest.mark.parametrize("image", ["-vllm/vllm-openai:v1", "vllm/VLLM-openai:v1",
                                   "vllm/vllm-openai", "vllm/vllm-openai:v1@sha256:" + "0" * 64,
                                   "vllm/vllm-openai:-v1"])
def test_a_pinned_image_follows_dockers_reference_grammar(image: str) -> None:
    with pytest.raises(ValidationError):
        ContainerImage(image=image)
    assert ContainerImage(image="registry.example.internal:5000/vllm/vllm-openai:v0.4.2")
