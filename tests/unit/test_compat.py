"""Compatibility checks: both sides of every boundary."""

from __future__ import annotations

import pytest

from inventory.catalog import ModelSpec, find_model
from rules.compat import (
    check_compute_capability,
    check_distro_for_cuda,
    check_driver_for_cuda,
    check_engine_for_model,
    check_free_space,
    check_image_cuda,
    check_python_for_torch,
    check_sampling,
    check_secure_boot,
    check_storage,
    check_transformers_for_model,
    min_driver_for_cuda,
    nvidia_repo_distro,
)
from rules.findings import Finding, Findings


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def severities(findings: list[Finding]) -> set[str]:
    return {f.severity for f in findings}


@pytest.mark.parametrize(
    ("version", "ok"),
    [("3.7.17", False), ("3.8.0", True), ("3.10.12", True), ("3.11.9", True), ("3.12.0", False)],
)
def test_python_vs_torch_210(version: str, ok: bool) -> None:
    found = check_python_for_torch(version)
    assert (found == []) is ok
    if not ok:
        assert codes(found) == ["python-unsupported-by-torch"]
        assert found[0].required == "Python 3.8-3.11"


def test_python_unreadable() -> None:
    assert codes(check_python_for_torch("three")) == ["python-version-unreadable"]


@pytest.mark.parametrize(
    ("cc", "code"),
    [
        ("3.7", "gpu-arch-unsupported-by-torch"),  # K80: older than sm_50
        ("5.0", None),
        ("6.1", "gpu-arch-binary-compatible"),  # runs sm_60 kernels
        ("8.0", None),
        ("8.9", "gpu-arch-binary-compatible"),  # L40S/L4/4090 run sm_86
        ("9.0", None),
        ("10.0", "gpu-arch-unsupported-by-torch"),  # B200
        ("12.0", "gpu-arch-unsupported-by-torch"),  # RTX 5090
    ],
)
def test_compute_capability_vs_torch_cu121(cc: str, code: str | None) -> None:
    found = check_compute_capability(cc, gpu_name="X")
    assert codes(found) == ([code] if code else [])
    if code == "gpu-arch-unsupported-by-torch":
        assert found[0].severity == "error"
    if cc == "10.0":
        assert "2.7.0" in found[0].fix and "12.8" in found[0].fix


CUDA_MINIMUMS = [
    ("11.8", "520.61.05"),
    ("12.0", "525.60.13"),
    ("12.0.1", "525.85.12"),
    ("12.1", "530.30.02"),
    ("12.1.1", "530.30.02"),
    ("12.2", "535.54.03"),
    ("12.3", "545.23.06"),
    ("12.4", "550.54.14"),
    ("12.4.1", "550.54.15"),
]


@pytest.mark.parametrize(("cuda", "driver"), CUDA_MINIMUMS)
def test_driver_minimum_table(cuda: str, driver: str) -> None:
    assert min_driver_for_cuda(cuda) == driver


def test_driver_vs_cuda_121_boundary() -> None:
    assert check_driver_for_cuda("530.30.02", "12.1") == []
    assert check_driver_for_cuda("535.183.01", "12.1.1") == []
    found = check_driver_for_cuda("525.147.05", "12.1")
    assert codes(found) == ["driver-too-old-for-cuda"]
    assert found[0].required == "driver >= 530.30.02"
    assert codes(check_driver_for_cuda("530.30.01", "12.1")) == ["driver-too-old-for-cuda"]


H100 = {"NVIDIA H100 80GB HBM3": True}
RTX4090 = {"NVIDIA GeForce RTX 4090": False}


def test_driver_vs_image_cuda_natively() -> None:
    assert check_image_cuda("550.54.14", "img", "12.4", RTX4090) == []
    assert check_image_cuda("535.183.06", "vllm/vllm-openai:v0.4.2", "12.1", RTX4090) == []
    assert codes(check_image_cuda("545.23.08", "img", "12.6", H100)) == [
        "driver-too-old-for-image"]
    assert codes(check_image_cuda("550.54.14", "img", "12.7", H100)) == ["unknown-cuda-release"]


def test_a_cuda_12_4_image_on_535_runs_only_on_datacenter_gpus() -> None:
    """vLLM >= 0.4.3 is built on CUDA 12.4.1: on a 535 driver it starts through forward
    compatibility on datacenter GPUs, and fails with error 804 on an RTX 4090
    (vllm-project/vllm#5635, #5283)."""
    (refused,) = check_image_cuda("535.171.04", "vllm/vllm-openai:v0.4.3", "12.4", RTX4090)
    assert refused.severity == "error" and refused.code == "image-needs-forward-compat"
    assert "804" in refused.what and "NVIDIA GeForce RTX 4090" in refused.measured
    (note,) = check_image_cuda("535.171.04", "vllm/vllm-openai:v0.4.3", "12.4", H100)
    assert note.severity == "info" and note.code == "image-needs-forward-compat"
    (unknown,) = check_image_cuda("535.171.04", "img", "12.4", {"Some New GPU": None})
    assert unknown.severity == "warning"
    # forward compatibility on 535 is confirmed for 12.3/12.4 images only
    assert codes(check_image_cuda("535.171.04", "img", "12.8", H100)) == [
        "driver-too-old-for-image"]


@pytest.mark.parametrize(("engine", "version", "model", "ok"), [
    ("vllm", "0.4.2", "deepseek-r1-distill-qwen-7b", True),       # Qwen2 from 0.3.0
    ("vllm", "0.2.7", "deepseek-r1-distill-qwen-7b", False),
    ("vllm", "0.4.2", "deepseek-r1-distill-llama-8b", False),     # llama3 rope: 0.5.3.post1
    ("vllm", "0.5.3.post1", "deepseek-r1-distill-llama-70b", True),
    ("vllm", "0.6.5", "deepseek-r1", False),                      # DeepseekV3: 0.6.6
    ("vllm", "0.6.6.post1", "deepseek-v3", True),
    ("sglang", "0.4.1.post7", "deepseek-r1", True),               # sgl-project/sglang#2585
    ("sglang", "0.4.0", "deepseek-v3", False),
])
def test_the_engine_release_must_load_the_model(engine: str, version: str, model: str,
                                                ok: bool) -> None:
    found = check_engine_for_model(engine, version, find_model(model))
    assert (found == []) is ok, found
    if not ok:
        assert found[0].code == "engine-cannot-load-model" and version in found[0].measured


QWEN7B = find_model("deepseek-r1-distill-qwen-7b")
LLAMA8B = find_model("deepseek-r1-distill-llama-8b")
R1 = find_model("deepseek-r1")


@pytest.mark.parametrize(
    ("model", "below", "at"),
    [(QWEN7B, "4.36.2", "4.37.0"), (LLAMA8B, "4.42.4", "4.43.0"), (R1, "4.50.3", "4.51.0")],
)
def test_transformers_vs_architecture(model: ModelSpec, below: str, at: str) -> None:
    assert check_transformers_for_model(at, model) == []
    assert codes(check_transformers_for_model(below, model)) == ["transformers-too-old-for-model"]


def test_the_recommended_stack_cannot_load_the_distills() -> None:
    # The brief pins transformers 4.35.0: neither Qwen2 nor llama3 RoPE loads there.
    assert severities(check_transformers_for_model("4.35.0", QWEN7B)) == {"error"}
    assert "llama3" in check_transformers_for_model("4.35.0", LLAMA8B)[0].what


def test_deepseek_v3_remote_code_is_a_warning_only_when_allowed() -> None:
    assert codes(check_transformers_for_model("4.46.3", R1)) == ["transformers-too-old-for-model"]
    found = check_transformers_for_model("4.46.3", R1, trust_remote_code=True)
    assert codes(found) == ["transformers-remote-code"] and found[0].severity == "warning"
    # remote code does not rescue a model whose repo ships none
    assert codes(check_transformers_for_model("4.35.0", QWEN7B, trust_remote_code=True)) == [
        "transformers-too-old-for-model"
    ]


@pytest.mark.parametrize(
    ("os_id", "ver", "cuda", "ok"),
    [
        ("debian", "12", "12.1", False),  # debian12 starts at 12.3
        ("debian", "12", "12.3", True),
        ("ubuntu", "24.04", "12.4", False),  # ubuntu2404 starts at 12.5
        ("ubuntu", "24.04", "12.5", True),
        ("ubuntu", "22.04", "12.1", True),
        ("Ubuntu", "20.04", "13.0", False),  # ubuntu2004 ends at 12.9
        ("debian", "11", "12.1.1", True),
    ],
)
def test_distro_repo_carries_cuda(os_id: str, ver: str, cuda: str, ok: bool) -> None:
    found = check_distro_for_cuda(os_id, ver, cuda)
    assert (found == []) is ok
    if not ok:
        assert codes(found) == ["cuda-not-in-distro-repo"]


def test_distro_mirror_and_unknown_distro() -> None:
    assert severities(check_distro_for_cuda("debian", "12", "12.1", mirror_provides=True)) == {
        "info"
    }
    assert codes(check_distro_for_cuda("rocky", "9", "12.1")) == ["distro-without-nvidia-repo"]
    assert nvidia_repo_distro("UBUNTU", "22.04") is not None


@pytest.mark.parametrize(
    ("sb", "flavour", "expect"),
    [
        (True, "dkms", ["secure-boot-unsigned-driver"]),
        (True, "open-dkms", ["secure-boot-unsigned-driver"]),
        (True, "precompiled-signed", []),
        (False, "dkms", []),
        (None, "dkms", ["secure-boot-unknown"]),
        (True, "magic", ["driver-flavour-unknown"]),
    ],
)
def test_secure_boot_vs_driver_flavour(sb: bool | None, flavour: str, expect: list[str]) -> None:
    assert codes(check_secure_boot(sb, flavour)) == expect


@pytest.mark.parametrize(
    ("t", "expect"),
    [
        (0.1, ["temperature-too-low"]),
        (0.29, ["temperature-too-low"]),
        (0.3, []),
        (1.2, []),
        (1.21, ["temperature-too-high"]),
        (1.5, ["temperature-too-high"]),
        (-0.1, ["sampling-out-of-range"]),
    ],
)
def test_temperature_extremes(t: float, expect: list[str]) -> None:
    assert codes(check_sampling(t)) == expect


def test_sampling_against_the_r1_card() -> None:
    assert check_sampling(0.6, 0.95, R1) == []
    found = check_sampling(0.7, 0.95, R1)
    assert codes(found) == ["sampling-differs-from-model-card"] and "0.6" in found[0].what
    assert "recommends 0.6" in check_sampling(0.1, None, R1)[0].required
    assert codes(check_sampling(0.6, 1.5)) == ["sampling-out-of-range"]


def test_free_space_margin_boundary() -> None:
    weights = 100_000_000_000
    assert check_free_space(120_000_000_000, weights) == []
    assert codes(check_free_space(119_999_999_999, weights)) == ["disk-space-short"]
    assert check_free_space(150_000_000_000, weights, margin=1.5) == []
    assert codes(check_free_space(149_000_000_000, weights, margin=1.5)) == ["disk-space-short"]


def test_storage_policy() -> None:
    w = 141_000_000_000
    nvme = check_storage("nvme", w)
    assert codes(nvme) == ["weights-load-time"] and severities(nvme) == {"info"}
    assert "storage-hdd" in codes(check_storage("hdd", w, "require"))
    assert severities(check_storage("hdd", w, "require")) == {"info", "error"}
    assert severities(check_storage("hdd", w, "warn")) == {"info", "warning"}
    assert codes(check_storage("hdd", w, "off")) == ["weights-load-time"]
    assert severities(check_storage("sata-ssd", w, "require")) == {"info", "warning"}
    for cls in ("network", "overlay", "virtual"):
        found = check_storage(cls, w, "require")
        assert codes(found) == [f"storage-{cls}"] and found[0].severity == "error"
        assert cls.split("-")[0] in found[0].what
    assert codes(check_storage("floppy", w)) == ["storage-class-unknown"]


def test_load_time_estimates() -> None:
    w = 140_000_000_000
    # SATA SSD at 550 MB/s: about 4 minutes; measured speed replaces the typical one
    assert "4 min" in check_storage("sata-ssd", w)[0].what
    assert "measured 100 MB/s" in check_storage("hdd", w, read_bytes_per_s=100_000_000)[0].measured
    assert "23 min" in check_storage("hdd", w, read_bytes_per_s=100_000_000)[0].what
    assert "20 s" in check_storage("nvme", w)[0].what  # 7 GB/s end of the range


def test_findings_render_and_ok() -> None:
    f = Findings()
    f.extend(check_sampling(1.5))
    assert f.ok
    f.extend(check_driver_for_cuda("525.60.13", "12.1"))
    assert not f.ok and len(f) == 2
    text = f.render(host="gpu-01")
    assert text.index("ERROR [driver-too-old-for-cuda] gpu-01:") < text.index("WARNING")
    assert "required: driver >= 530.30.02" in text and text.endswith(
        "1 error(s), 1 warning(s), 0 note(s)"
    )
