"""The pin file: every version a fleet converges to (inventory/pins.toml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inventory.image_refs import image_reference_problem
from inventory.merge import deep_merge
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


class ContainerImage(_Strict):
    """An image a host runs, by name and (once recorded) by digest."""

    # repository:tag, e.g. "vllm/vllm-openai:v0.4.2" (the digest goes in `digest`)
    image: str
    # The image manifest's digest, "sha256:<64 hex>": the host runs exactly this image.
    # Empty until recorded (tools/pin_image.py, on a machine that reaches the registry).
    digest: str = Field(default="", pattern=r"^(sha256:[0-9a-f]{64})?$")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        """Docker's reference grammar (inventory/image_refs.py), with a tag and no digest."""
        problem = image_reference_problem(value)
        if problem:
            raise ValueError(problem)
        if "@" in value or ":" not in value.rsplit("/", 1)[-1]:
            raise ValueError("must be repository:tag (the digest goes in `digest`)")
        return value

    def reference(self, registry: str | None = None) -> str:
        """What Docker runs: by digest when recorded, with the registry prefixed if given."""
        name = f"{registry.rstrip('/')}/{self.image}" if registry else self.image
        return f"{name.rsplit(':', 1)[0]}@{self.digest}" if self.digest else name


class EngineImage(ContainerImage):
    """One serving engine's image: what it is built on, and which engine release it runs."""

    cuda: str = Field(pattern=r"^\d+\.\d+(\.\d+)?$")  # the CUDA runtime inside the image
    version: str  # the engine's release (PEP 440), e.g. "0.4.2"
    # The transformers release inside the image (the lowest it can carry: the engine's own
    # requirement), which is what loads the model's config there, not the host's venv.
    transformers: str


class InferencePins(_Strict):
    vllm: EngineImage
    sglang: EngineImage | None = None

    def engine(self, name: str) -> EngineImage | None:
        image: EngineImage | None = getattr(self, name, None)
        return image


class MonitoringPins(_Strict):
    dcgm_exporter: ContainerImage


class PinSet(_Strict):
    description: str = ""
    driver: DriverPins
    cuda: CudaPins
    container_toolkit: ContainerToolkitPins
    docker: DockerPins
    python: PythonPins
    inference: InferencePins
    monitoring: MonitoringPins


class PinFile(_Strict):
    sets: dict[str, PinSet]


class PinFileError(ValueError):
    """A set extends one that does not exist, or sets extend each other in a circle."""


def _resolve(sets: dict[str, Any]) -> dict[str, Any]:
    """Each set with what it `extends` merged under it (tables key by key)."""
    resolved: dict[str, Any] = {}

    def resolve(name: str, seen: tuple[str, ...]) -> Any:
        if name in resolved:
            return resolved[name]
        if name in seen:
            raise PinFileError(f"pin sets extend each other in a circle: {' -> '.join(seen)}")
        raw = sets.get(name)
        if not isinstance(raw, dict):
            return raw  # not a table: the schema reports it
        base_name = raw.get("extends")
        own = {k: v for k, v in raw.items() if k != "extends"}
        if base_name is None:
            resolved[name] = own
        elif base_name not in sets:
            raise PinFileError(f"pin set {name} extends {base_name!r}, which is not defined")
        else:
            resolved[name] = deep_merge(resolve(base_name, (*seen, name)), own)
        return resolved[name]

    return {name: resolve(name, ()) for name in sets}


def load_pins(path: Path = PINS_FILE) -> PinFile:
    """Parse and validate the pin file. Raises pydantic.ValidationError, TOMLDecodeError or
    PinFileError."""
    raw = load_toml(path)
    sets = raw.get("sets")
    if isinstance(sets, dict):
        raw = {**raw, "sets": _resolve(sets)}
    return PinFile.model_validate(raw)
