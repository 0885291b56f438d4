"""The compatibility matrix: which versions of what work together.

Every version rule gpufleet enforces lives here, once. Preflight, the doctor and the
deploys import from this module; nothing else re-types these numbers. Each `check_*`
function takes plain values (versions as strings, sizes as ints) and returns a list of
`Finding`s, so the same rule runs offline and against a live host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from packaging.version import InvalidVersion, Version

from inventory.catalog import ModelSpec
from rules.findings import Finding


@dataclass(frozen=True)
class NvidiaRepoDistro:
    """A distro release as NVIDIA's CUDA apt repository names it."""

    repo_path: str  # folder under .../compute/cuda/repos/, e.g. "ubuntu2204"
    first_cuda: str  # oldest CUDA release the official repo carries for it
    last_cuda: str | None = None  # newest, when NVIDIA stopped publishing for it


# (os-release ID, VERSION_ID) -> NVIDIA's repo folder and the CUDA releases it carries.
# Source: the folder listings under developer.download.nvidia.com/compute/cuda/repos/:
# debian12/x86_64 starts at cuda-12-3_12.3.0; debian11/x86_64/Packages starts at cuda 11.5.0;
# ubuntu2404 appeared with CUDA 12.5; ubuntu2204 with 11.7; ubuntu2004 with 11.0.
# last_cuda: CUDA 13.0 dropped Ubuntu 20.04, so 12.9 is its last release (from the 13.0
# platform notes; not re-checked against the folder). Debian 11's last release (12.8) is
# kept from the original table and was NOT confirmed from a listing: verify before relying
# on a 12.9 install there.
NVIDIA_REPO_DISTROS: dict[tuple[str, str], NvidiaRepoDistro] = {
    ("ubuntu", "20.04"): NvidiaRepoDistro("ubuntu2004", "11.0", "12.9"),
    ("ubuntu", "22.04"): NvidiaRepoDistro("ubuntu2204", "11.7"),
    ("ubuntu", "24.04"): NvidiaRepoDistro("ubuntu2404", "12.5"),
    ("debian", "11"): NvidiaRepoDistro("debian11", "11.5", "12.8"),
    ("debian", "12"): NvidiaRepoDistro("debian12", "12.3"),
}

# Debian architecture (dpkg --print-architecture) -> NVIDIA's folder name.
NVIDIA_REPO_ARCHES: dict[str, str] = {"amd64": "x86_64", "arm64": "sbsa"}


def nvidia_repo_distro(os_id: str, version_id: str) -> NvidiaRepoDistro | None:
    """NVIDIA's name for this distro release, or None when NVIDIA publishes no repo for it."""
    return NVIDIA_REPO_DISTROS.get((os_id.lower(), version_id))


# CUDA release -> minimum Linux x86_64 driver ("CUDA Toolkit and Corresponding Driver
# Versions", CUDA toolkit release notes, Table 3). Keys are "major.minor" (the GA release)
# or "major.minor.update"; 12.1 GA and Update 1 share 530.30.02.
CUDA_MIN_DRIVER: dict[str, str] = {
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.0.1": "525.85.12",
    "12.1": "530.30.02",
    "12.1.1": "530.30.02",
    "12.2": "535.54.03",
    "12.2.1": "535.86.09",
    "12.2.2": "535.104.05",
    "12.3": "545.23.06",
    "12.3.1": "545.23.08",
    "12.4": "550.54.14",
    "12.4.1": "550.54.15",
    "12.5": "555.42.02",
    "12.5.1": "555.42.06",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.8.1": "570.124.06",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}


@dataclass(frozen=True)
class TorchBuild:
    """A PyTorch wheel line: which Pythons and which GPU architectures it was built for."""

    python_min: str
    python_max: str  # newest minor with wheels
    cuda: str
    arch_list: tuple[str, ...]  # torch.cuda.get_arch_list(): SASS only, no PTX


# torch 2.1.0 + cu121: wheels for CPython 3.8-3.11; TORCH_CUDA_ARCH_LIST 5.0;6.0;7.0;7.5;8.0;
# 8.6;9.0 (the same list pytorch/pytorch#157517 quotes for its cu126 builds).
TORCH_BUILDS: dict[str, TorchBuild] = {
    "2.1.0+cu121": TorchBuild(
        "3.8", "3.11", "12.1", ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
    ),
}

# Blackwell needs CUDA 12.8 and a torch built for it: the first wheels listing sm_100 and
# sm_120 are torch 2.7.0+cu128 (pytorch/pytorch#157517: "CUDA 12.8: 7.5;8.0;8.6;9.0;10.0;12.0").
NEWER_ARCH_NEEDS = "torch >= 2.7.0 built for CUDA 12.8 (cu128 wheels) and a driver >= 570.26"

# transformers features by version, for models in the catalog.
TRANSFORMERS_ROPE_MIN: dict[str, str] = {"llama3": "4.43.0"}

# Temperature bounds from the brief's table: 0.1 repeats itself, 0.7 is balanced, 1.5
# rambles. Below LOW or above HIGH is warned; DeepSeek-R1 cards recommend 0.6 / top_p 0.95.
TEMPERATURE_LOW = 0.3
TEMPERATURE_HIGH = 1.2

# Typical sequential reads (bytes/s) used when no measurement exists.
TYPICAL_READ_BYTES_PER_S: dict[str, tuple[int, int]] = {
    "hdd": (80_000_000, 250_000_000),
    "sata-ssd": (550_000_000, 550_000_000),
    "nvme": (3_500_000_000, 7_000_000_000),  # PCIe Gen3 .. Gen4
}
StoragePolicy = Literal["require", "warn", "off"]
STORAGE_CLASSES = (
    "nvme",
    "sata-ssd",
    "sas-ssd",
    "hdd",
    "usb",
    "network",
    "overlay",
    "tmpfs",
    "virtual",
    "unknown",
)
DEFAULT_FREE_SPACE_MARGIN = 1.2

DriverFlavour = Literal["dkms", "open-dkms", "precompiled-signed", "precompiled-unsigned"]
# Whether the kernel module the flavour installs carries a signature Secure Boot accepts.
DRIVER_FLAVOUR_SIGNED: dict[str, bool] = {
    "dkms": False,  # built on the host: signed only if a MOK key is enrolled and configured
    "open-dkms": False,
    "precompiled-signed": True,  # Ubuntu linux-modules-nvidia-<branch>-server-<flavour>
    "precompiled-unsigned": False,
}


def _v(value: str) -> Version:
    return Version(value.strip())


def _bad_version(code: str, what: str, value: str, example: str) -> list[Finding]:
    return [
        Finding(
            "error",
            code,
            f"{what} is not a version",
            repr(value),
            f"e.g. {example}",
            "pass the version as printed by the tool",
        )
    ]


def _release(version: str, parts: int) -> str:
    return ".".join(str(p) for p in _v(version).release[:parts])


def check_python_for_torch(python_version: str, torch_build: str = "2.1.0+cu121") -> list[Finding]:
    """Python must be one the torch wheels exist for."""
    build = TORCH_BUILDS[torch_build]
    try:
        minor = _v(_release(python_version, 2))
    except (InvalidVersion, IndexError):
        return _bad_version(
            "python-version-unreadable", "Python version", python_version, "3.10.12"
        )
    if _v(build.python_min) <= minor <= _v(build.python_max):
        return []
    return [
        Finding(
            "error",
            "python-unsupported-by-torch",
            f"torch {torch_build} publishes no wheels for Python {minor}",
            f"Python {python_version}",
            f"Python {build.python_min}-{build.python_max}",
            f"install Python {build.python_max} (e.g. from the distro or uv) for the tooling venv",
        )
    ]


def _cc(cc: str) -> tuple[int, int]:
    major, minor = cc.strip().split(".")
    return int(major), int(minor)


def check_compute_capability(
    compute_capability: str, torch_build: str = "2.1.0+cu121", gpu_name: str = ""
) -> list[Finding]:
    """The GPU must run code torch was compiled for: same major, minor >= a built sm_XY."""
    build = TORCH_BUILDS[torch_build]
    label = f"{gpu_name} (cc {compute_capability})" if gpu_name else f"cc {compute_capability}"
    try:
        major, minor = _cc(compute_capability)
    except ValueError:
        return _bad_version(
            "compute-capability-unreadable", "compute capability", compute_capability, "8.0"
        )
    built = [_cc(f"{a[3:-1]}.{a[-1]}") for a in build.arch_list]
    usable = [b for b in built if b[0] == major and b[1] <= minor]
    required = f"one of {', '.join(build.arch_list)} (same major, equal or lower minor)"
    if (major, minor) in built:
        return []
    if usable:
        best = max(usable)
        return [
            Finding(
                "info",
                "gpu-arch-binary-compatible",
                f"{label} runs torch {torch_build}'s sm_{best[0]}{best[1]} kernels "
                "(binary compatible within a major version)",
                label,
                required,
                "",
            )
        ]
    newer = (major, minor) > max(built)
    return [
        Finding(
            "error",
            "gpu-arch-unsupported-by-torch",
            f"torch {torch_build} has no kernels for {label}: "
            + (
                "it is newer than anything the build targets (no PTX is shipped)"
                if newer
                else "it is older than the oldest architecture the build targets"
            ),
            label,
            required,
            NEWER_ARCH_NEEDS if newer else "use a GPU of compute capability 5.0 or newer",
        )
    ]


def min_driver_for_cuda(cuda: str) -> str | None:
    """Minimum Linux driver for a CUDA release ("12.1", "12.1.1", "12.1.105"), or None."""
    try:
        release = _v(cuda).release
    except InvalidVersion:
        return None
    if len(release) >= 3 and release[2] < 10:  # an update number, not a component build
        key = f"{release[0]}.{release[1]}.{release[2]}"
        if key in CUDA_MIN_DRIVER:
            return CUDA_MIN_DRIVER[key]
    return CUDA_MIN_DRIVER.get(f"{release[0]}.{release[1]}" if len(release) > 1 else "")


def check_driver_for_cuda(
    driver_version: str,
    cuda: str,
    what: str = "CUDA toolkit",
    code: str = "driver-too-old-for-cuda",
) -> list[Finding]:
    """The driver must be at least the CUDA release's minimum (toolkit or image CUDA)."""
    need = min_driver_for_cuda(cuda)
    if need is None:
        return [
            Finding(
                "error",
                "unknown-cuda-release",
                f"no driver minimum known for CUDA {cuda}",
                f"CUDA {cuda}",
                f"one of {', '.join(CUDA_MIN_DRIVER)}",
                "pin a CUDA release from the table in inventory/compat.py",
            )
        ]
    try:
        have = _v(driver_version)
    except InvalidVersion:
        return _bad_version(
            "driver-version-unreadable", "driver version", driver_version, "535.183.01"
        )
    if have >= _v(need):
        return []
    return [
        Finding(
            "error",
            code,
            f"driver {driver_version} is older than {what} CUDA {cuda} requires",
            f"driver {driver_version}",
            f"driver >= {need}",
            f"install a driver branch >= {need.split('.')[0]} (pin it in pins.toml), "
            f"or use a {what} built for an older CUDA",
        )
    ]


# Serving-image CUDA releases a driver branch runs through the forward-compatibility libraries
# the image ships (vLLM's images run `ldconfig /usr/local/cuda-X.Y/compat/`), on datacenter
# GPUs only: vLLM's CUDA 12.4 images on 535 drivers (vllm-project/vllm#5635, #5283). Newer
# CUDA on 535 through forward compatibility is unconfirmed, so it is not listed.
FORWARD_COMPATIBLE_CUDA: dict[str, tuple[str, ...]] = {"535": ("12.3", "12.4")}


def check_image_cuda(
    driver_version: str, image: str, image_cuda: str, gpus: Mapping[str, bool | None]
) -> list[Finding]:
    """The serving image's CUDA must run on the host's driver: natively, or through forward
    compatibility where the driver branch and every GPU support it.

    ``gpus``: GPU name -> whether it supports forward compatibility (None: unknown GPU).
    """
    native = check_driver_for_cuda(driver_version, image_cuda, f"the image {image}",
                                   "driver-too-old-for-image")
    if not native or native[0].code != "driver-too-old-for-image":
        return native
    branch = driver_version.split(".")[0]
    release = _release(image_cuda, 2)
    if release not in FORWARD_COMPATIBLE_CUDA.get(branch, ()):
        return native
    consumer = sorted(name for name, ok in gpus.items() if ok is False)
    unknown = sorted(name for name, ok in gpus.items() if ok is None)
    if consumer:
        return [Finding(
            "error", "image-needs-forward-compat",
            f"the image {image} (CUDA {image_cuda}) runs on driver {driver_version} only "
            "through CUDA forward compatibility, which these GPUs do not support: the engine "
            "would fail with CUDA error 804",
            ", ".join(consumer), "datacenter GPUs, or a driver that runs "
            f"CUDA {image_cuda} natively (>= {min_driver_for_cuda(image_cuda)})",
            "pin an image built for CUDA <= 12.2 (vLLM <= 0.4.2: pin set r535-cuda121), or a "
            "newer driver branch",
        )]
    if unknown or not gpus:
        return [Finding(
            "warning", "image-needs-forward-compat",
            f"the image {image} (CUDA {image_cuda}) runs on driver {driver_version} only "
            "through CUDA forward compatibility, supported on datacenter GPUs only",
            ", ".join(unknown) or "GPUs not identified yet",
            "datacenter GPUs", "check the GPUs; GeForce cards fail with CUDA error 804",
        )]
    return [Finding(
        "info", "image-needs-forward-compat",
        f"the image {image} (CUDA {image_cuda}) runs on driver {driver_version} through CUDA "
        "forward compatibility (datacenter GPUs)",
        ", ".join(sorted(gpus)), "", "",
    )]


# The first engine release that serves each architecture, and features some checkpoints need.
ENGINE_SUPPORT: dict[str, dict[str, tuple[str, str]]] = {
    "vllm": {
        "LlamaForCausalLM": ("0.1.0", "vLLM's first release"),
        "Qwen2ForCausalLM": ("0.3.0", "vllm-project/vllm PR #2495; #3463"),
        "DeepseekV3ForCausalLM": ("0.6.6",
                                  "vllm-project/vllm#11559, deepseek-ai/DeepSeek-V3 PR #9"),
        "rope:llama3": ("0.5.3.post1", "vllm-project/vllm#6689, PR #6696"),
    },
    "sglang": {
        "LlamaForCausalLM": ("0.1.0", "SGLang's first release"),
        "Qwen2ForCausalLM": ("0.1.12", "SGLang's Qwen2 support, early 2024 (release unconfirmed)"),
        "DeepseekV3ForCausalLM": ("0.4.1", "sgl-project/sglang#2585, release notes of v0.4.1"),
        "rope:llama3": ("0.2.10", "SGLang's Llama 3.1 support, July 2024 (release unconfirmed)"),
    },
}


def check_engine_for_model(engine: str, version: str, model: ModelSpec) -> list[Finding]:
    """The pinned engine release must load the model: its architecture and rope scaling."""
    table = ENGINE_SUPPORT.get(engine, {})
    try:
        have = _v(version)
    except InvalidVersion:
        return _bad_version("engine-version-unreadable", f"{engine} version", version, "0.4.2")
    needs = [("architecture " + model.architecture, table.get(model.architecture))]
    if model.rope_scaling:
        needs.append((f"{model.rope_scaling} rope scaling", table.get(f"rope:{model.rope_scaling}",
                                                                      ("0", ""))))
    found: list[Finding] = []
    for what, need in needs:
        if need is None:
            found.append(Finding(
                "error", "engine-cannot-load-model",
                f"gpufleet does not know whether {engine} serves {model.id} ({what})",
                f"{engine} {version}", f"an {engine} release listed in rules/compat.py",
                "add the architecture to ENGINE_SUPPORT with its source, or use another engine",
            ))
        elif have < _v(need[0]):
            found.append(Finding(
                "error", "engine-cannot-load-model",
                f"{engine} {version} cannot serve {model.id} ({what} needs {engine} >= "
                f"{need[0]}: {need[1]})",
                f"{engine} {version}", f"{engine} >= {need[0]}",
                "pick a pin set whose engine serves it (docs/serving.md: which pin set for "
                "which hardware), or another model",
            ))
    return found


# The fleet setting that lets an engine run the modeling code a model's repository ships.
TRUST_REMOTE_CODE_SETTING = "settings.inference.trust_remote_code"


def check_transformers_for_model(
    transformers_version: str, model: ModelSpec, trust_remote_code: bool = False,
    where: str | None = None,
) -> list[Finding]:
    """transformers must know the model's architecture (and its RoPE scaling).

    ``where``: whose transformers it is ("the image vllm/vllm-openai:v0.7.3"): that of a
    serving engine's image, which is where the model loads, or (None) the host's tooling
    environment. A model whose repository ships its modeling code loads through it where the
    fleet accepts remote code (TRUST_REMOTE_CODE_SETTING)."""
    try:
        have = _v(transformers_version)
    except InvalidVersion:
        return _bad_version(
            "transformers-version-unreadable",
            "transformers version",
            transformers_version,
            "4.43.0",
        )
    need = _v(model.min_transformers)
    rope_need = TRANSFORMERS_ROPE_MIN.get(model.rope_scaling or "")
    if rope_need and _v(rope_need) > need:
        need = _v(rope_need)
    if have >= need:
        return []
    reason = f"{model.architecture}" + (
        f" with {model.rope_scaling} RoPE scaling"
        if model.rope_scaling in TRANSFORMERS_ROPE_MIN
        else ""
    )
    whose = f"transformers {have}" + (f" (in {where})" if where else "")
    if model.ships_remote_code and trust_remote_code:
        return [
            Finding(
                "warning",
                "transformers-remote-code",
                f"{whose} lacks native {reason}; {model.hub_repo} loads through the "
                f"modeling code shipped in the repo ({TRUST_REMOTE_CODE_SETTING} = true: "
                "--trust-remote-code)",
                whose,
                f"transformers >= {need} for native support",
                "review the repo's code at the pinned settings.weights.revision, which is "
                "what runs",
            )
        ]
    if where is None:
        fix = f"pin transformers >= {need} in the tooling lock"
    else:
        fix = f"pin an engine image whose transformers is >= {need}"
    if model.ships_remote_code:
        fix += (f", or set {TRUST_REMOTE_CODE_SETTING} = true to run the modeling code "
                f"{model.hub_repo} ships (off by default)")
    return [
        Finding(
            "error",
            "transformers-too-old-for-model",
            f"{whose} cannot load {model.id}: {reason} needs transformers >= {need}",
            whose,
            f"transformers >= {need}",
            fix,
        )
    ]


def check_distro_for_cuda(
    os_id: str, version_id: str, cuda: str, mirror_provides: bool = False
) -> list[Finding]:
    """NVIDIA's repo for this distro must carry the CUDA release (unless a mirror does)."""
    distro = nvidia_repo_distro(os_id, version_id)
    known = ", ".join(f"{i} {v}" for i, v in NVIDIA_REPO_DISTROS)
    where = f"{os_id} {version_id}"
    if mirror_provides:
        return [
            Finding(
                "info",
                "cuda-from-mirror",
                f"CUDA {cuda} for {where} comes from the configured mirror",
                where,
                "",
                "",
            )
        ]
    try:
        wanted = _v(_release(cuda, 2))
    except (InvalidVersion, IndexError):
        return _bad_version("cuda-version-unreadable", "CUDA version", cuda, "12.1")
    if distro is None:
        return [
            Finding(
                "error",
                "distro-without-nvidia-repo",
                f"NVIDIA publishes no CUDA apt repository for {where}",
                where,
                f"one of: {known}",
                "use a supported distro release, or point the CUDA repo at a mirror "
                "that carries the packages",
            )
        ]
    too_old = wanted < _v(distro.first_cuda)
    too_new = distro.last_cuda is not None and wanted > _v(distro.last_cuda)
    if not (too_old or too_new):
        return []
    span = f"{distro.first_cuda}-{distro.last_cuda or 'current'}"
    return [
        Finding(
            "error",
            "cuda-not-in-distro-repo",
            f"NVIDIA's {distro.repo_path} repository has no CUDA {wanted}",
            f"{where}, CUDA {cuda}",
            f"CUDA {span} on {distro.repo_path}",
            "pick a CUDA release in that span, a distro whose repo carries it "
            "(ubuntu 22.04 carries 12.1), or a mirror that provides it",
        )
    ]


def check_secure_boot(secure_boot: bool | None, driver_flavour: str,
                      why_unknown: str = "") -> list[Finding]:
    """With Secure Boot on, the kernel refuses unsigned NVIDIA modules.

    ``why_unknown``: what the probe said when it could not tell (shown with the warning).
    """
    if driver_flavour not in DRIVER_FLAVOUR_SIGNED:
        return [
            Finding(
                "error",
                "driver-flavour-unknown",
                "unknown driver flavour",
                repr(driver_flavour),
                f"one of {', '.join(DRIVER_FLAVOUR_SIGNED)}",
                "",
            )
        ]
    signed = DRIVER_FLAVOUR_SIGNED[driver_flavour]
    if secure_boot is None:
        return [
            Finding(
                "warning",
                "secure-boot-unknown",
                "could not tell whether Secure Boot is on (mokutil --sb-state)",
                why_unknown or "unknown",
                "a known state",
                "install mokutil (mokutil --sb-state) or check the firmware setup; if it is on, "
                "the dkms flavours' unsigned module will not load",
            )
        ]
    if not secure_boot or signed:
        return []
    return [
        Finding(
            "error",
            "secure-boot-unsigned-driver",
            f"Secure Boot is on and the {driver_flavour} driver builds an unsigned kernel module: "
            "it will not load",
            f"Secure Boot on, flavour {driver_flavour}",
            "a signed module",
            "use the precompiled-signed flavour (Ubuntu linux-modules-nvidia-*-server), enroll a "
            "MOK key that DKMS signs with (mokutil --import, then reboot), or turn Secure Boot off",
        )
    ]


def check_sampling(
    temperature: float, top_p: float | None = None, model: ModelSpec | None = None
) -> list[Finding]:
    """Warn on temperatures the brief's table calls repetitive or rambling."""
    found: list[Finding] = []
    rec = ""
    if model is not None and model.recommended_temperature is not None:
        rec = f" ({model.id} recommends {model.recommended_temperature:g}" + (
            f", top_p {model.recommended_top_p:g})" if model.recommended_top_p else ")"
        )
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1):
        return [
            Finding(
                "error",
                "sampling-out-of-range",
                "sampling parameters out of range",
                f"temperature {temperature:g}, top_p {top_p}",
                "temperature >= 0, 0 < top_p <= 1",
                "",
            )
        ]
    if temperature < TEMPERATURE_LOW:
        found.append(
            Finding(
                "warning",
                "temperature-too-low",
                "low temperature makes reasoning models repeat themselves",
                f"temperature {temperature:g}",
                f">= {TEMPERATURE_LOW:g}{rec}",
                "raise the default temperature",
            )
        )
    elif temperature > TEMPERATURE_HIGH:
        found.append(
            Finding(
                "warning",
                "temperature-too-high",
                "high temperature produces rambling, incoherent output",
                f"temperature {temperature:g}",
                f"<= {TEMPERATURE_HIGH:g}{rec}",
                "lower the default temperature",
            )
        )
    elif (
        model is not None
        and model.recommended_temperature is not None
        and (
            temperature != model.recommended_temperature
            or (
                top_p is not None
                and model.recommended_top_p is not None
                and top_p != model.recommended_top_p
            )
        )
    ):
        found.append(
            Finding(
                "info",
                "sampling-differs-from-model-card",
                f"sampling differs from the model card{rec}",
                f"temperature {temperature:g}, top_p {top_p}",
                rec.strip(" ()"),
                "",
            )
        )
    return found


def check_free_space(
    free_bytes: int, weights_bytes: int, margin: float = DEFAULT_FREE_SPACE_MARGIN
) -> list[Finding]:
    """The weights directory needs room for the weights plus a margin."""
    need = int(weights_bytes * margin)
    if free_bytes >= need:
        return []
    return [
        Finding(
            "error",
            "disk-space-short",
            f"not enough free space for the weights (x{margin:g} margin)",
            f"{free_bytes / 1e9:,.1f} GB free",
            f">= {need / 1e9:,.1f} GB",
            f"free {(need - free_bytes) / 1e9:,.1f} GB or point the weights path at a larger disk",
        )
    ]


def estimated_load_seconds(weights_bytes: int, read_bytes_per_s: int) -> float:
    return weights_bytes / read_bytes_per_s


def _fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_storage(
    storage_class: str,
    weights_bytes: int,
    policy: StoragePolicy = "require",
    read_bytes_per_s: int | None = None,
) -> list[Finding]:
    """Weights should live on NVMe; HDD is refused under `require`, SATA SSD is warned."""
    if storage_class not in STORAGE_CLASSES:
        return [
            Finding(
                "error",
                "storage-class-unknown",
                "unknown storage class",
                repr(storage_class),
                f"one of {', '.join(STORAGE_CLASSES)}",
                "",
            )
        ]
    if read_bytes_per_s is not None and read_bytes_per_s > 0:
        speed, basis = (read_bytes_per_s, read_bytes_per_s), "measured"
    else:
        speed = TYPICAL_READ_BYTES_PER_S.get(storage_class, (0, 0))
        basis = "typical"
    found: list[Finding] = []
    if speed[0] > 0:
        slow, fast = (estimated_load_seconds(weights_bytes, s) for s in speed)
        span = (
            _fmt_duration(slow) if slow == fast else f"{_fmt_duration(fast)}-{_fmt_duration(slow)}"
        )
        found.append(
            Finding(
                "info",
                "weights-load-time",
                f"loading {weights_bytes / 1e9:,.0f} GB of weights takes about {span}",
                f"{storage_class}, {basis} {speed[0] / 1e6:,.0f}"
                + ("" if speed[0] == speed[1] else f"-{speed[1] / 1e6:,.0f}")
                + " MB/s",
                "",
                "",
            )
        )
    if policy == "off" or storage_class == "nvme":
        return found
    severity: Literal["error", "warning"]
    if storage_class in ("sata-ssd", "sas-ssd", "tmpfs"):
        severity = "warning"
    else:
        severity = "error" if policy == "require" else "warning"
    reasons = {
        "hdd": "rotating disk: loads take many times longer than NVMe",
        "sata-ssd": "SATA SSD: about 550 MB/s, several times slower than NVMe",
        "sas-ssd": "SAS SSD: slower than NVMe",
        "usb": "USB disk: slow and may disconnect",
        "network": "network filesystem: speed depends on the network and the server",
        "overlay": "overlay filesystem: the real disk underneath is unknown",
        "tmpfs": "tmpfs: RAM-backed, lost at reboot and competes with host memory",
        "virtual": "virtual disk: the real device underneath is unknown",
        "unknown": "the device class could not be determined",
    }
    found.append(
        Finding(
            severity,
            f"storage-{storage_class}",
            f"weights are not on NVMe ({reasons[storage_class]})",
            storage_class,
            "NVMe leaf disks" + (" (storage policy: require)" if policy == "require" else ""),
            "move the weights path to a local NVMe filesystem, or set the storage policy to "
            "'warn' to accept it",
        )
    )
    return found
