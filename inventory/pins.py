"""The pin file: every version a fleet converges to (inventory/pins.toml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from inventory.toml import load_toml

PINS_FILE = Path(__file__).with_name("pins.toml")

AptVersion = str  # an exact apt version string, e.g. "535.183.06-1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriverPins(_Strict):
    branch: str = Field(pattern=r"^\d{3}$")
    version: AptVersion = Field(pattern=r"^\d{3}\.\d+(\.\d+)?-\S+$")
    flavour: Literal["dkms", "open-dkms", "precompiled-signed"] = "dkms"

    @property
    def upstream(self) -> str:
        """The driver's own version, as nvidia-smi and the kernel module report it."""
        return self.version.split("-", 1)[0]


class CudaPins(_Strict):
    toolkit_package: str = Field(pattern=r"^cuda-toolkit-\d+-\d+$")
    version: AptVersion
    release: str = Field(pattern=r"^\d+\.\d+$")


class ContainerToolkitPins(_Strict):
    version: AptVersion

    @property
    def upstream(self) -> str:
        return self.version.split("-", 1)[0]


class DockerPins(_Strict):
    source: Literal["distro"] = "distro"
    # distro folder name as NVIDIA spells it (debian12, ubuntu2204) -> exact apt version
    versions: dict[str, AptVersion]


class PythonPins(_Strict):
    lock: str
    torch: str
    transformers: str


class InferencePins(_Strict):
    image: str
    image_cuda: str = Field(pattern=r"^\d+\.\d+$")


class PinSet(_Strict):
    description: str = ""
    driver: DriverPins
    cuda: CudaPins
    container_toolkit: ContainerToolkitPins
    docker: DockerPins
    python: PythonPins
    inference: InferencePins


class PinFile(_Strict):
    sets: dict[str, PinSet]


def load_pins(path: Path = PINS_FILE) -> PinFile:
    """Parse and validate the pin file. Raises pydantic.ValidationError or TOMLDecodeError."""
    return PinFile.model_validate(load_toml(path))
