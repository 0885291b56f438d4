"""The doctor on the machine it runs on (`@local`), as the README shows it: with the
model given by --data and no fleet file. It only reads.

On a machine without an NVIDIA GPU (this project's CI machine and laptops) it must still say
what the model needs and which GPU configurations would serve it; where the PCI bus shows a
GPU, it prints the sizing for that GPU instead.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import pyinfra


def has_nvidia_gpu() -> bool:
    return any(vendor.read_text().strip() == "0x10de"
               for vendor in Path("/sys/bus/pci/devices").glob("*/vendor"))


def test_the_doctor_shows_what_the_model_needs_on_this_machine(tmp_path: Path) -> None:
    run = pyinfra("deploys/doctor.py", tmp_path / "no-fleet.toml",
                  "--data", "model=deepseek-r1-distill-llama-70b", "--data", "precision=int8",
                  inventory="@local", timeout=300)
    assert run.results is not None and run.results["operations"] == [], run.stderr[-3000:]
    assert "gpufleet doctor for @local" in run.output
    assert "kernel module:" in run.output and "NVSwitch / Fabric Manager:" in run.output
    if has_nvidia_gpu():
        assert "Sizing deepseek-r1-distill-llama-70b" in run.output
    else:
        assert "[no-gpu] no NVIDIA GPU found" in run.output
        assert "What deepseek-r1-distill-llama-70b needs at int8" in run.output
        assert "320.0 KiB per token" in run.output
        assert "GPU configurations that would serve it" in run.output
        assert "x NVIDIA H200" in run.output
