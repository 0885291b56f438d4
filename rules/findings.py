"""Findings: what a check found, in words an operator can act on.

Every check in gpufleet (offline sizing, preflight, the doctor, the checks after a step)
reports `Finding`s, so one renderer and one rule serve them all: an "error" refuses the host
unless the operator accepted its code (settings.preflight.downgrade_errors, see `accept`).
Every code is listed in `CODES`, so the fleet file can be checked against them offline.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

Severity = Literal["error", "warning", "info"]

# Every finding code, with what it means. A Finding with another code is a programming error.
CODES: dict[str, str] = {
    "cannot-size": "the sizing could not run: no GPU memory figure",
    "cdi-needs-newer-docker": "CDI protection asked for, the pinned Docker cannot do it",
    "compute-capability-unreadable": "a GPU's compute capability could not be read",
    "cuda-from-mirror": "the distro's NVIDIA repository lacks the CUDA release; a mirror is used",
    "cuda-not-in-distro-repo": "NVIDIA's repository for this distro does not carry the release",
    "cuda-version-unreadable": "a CUDA version could not be read",
    "daemon-json-unchecked": "daemon_json sets a key gpufleet guards, accepted by "
                             "settings.docker.daemon_json_unchecked",
    "daemon-json-unreadable": "/etc/docker/daemon.json is not a JSON object",
    "disk-space-short": "not enough free space where the weights go",
    "distro-unknown": "the host's distro could not be read",
    "distro-without-nvidia-repo": "NVIDIA publishes no repository for this distro",
    "docker-ce-installed": "Docker's own packages are installed (docker.io would remove them)",
    "docker-not-pinned": "the pin set has no Docker version for this distro",
    "driver-flavour-unknown": "the pin set names an unknown driver flavour",
    "driver-library-mismatch": "the loaded NVIDIA module differs from the installed driver",
    "driver-module-not-loaded": "the nvidia kernel module is not loaded",
    "driver-not-installed": "no NVIDIA driver yet; GPUs identified on the PCI bus",
    "driver-too-old-for-cuda": "the pinned driver is older than the CUDA release needs",
    "driver-too-old-for-image": "the pinned driver is older than the serving image's CUDA",
    "driver-version-differs": "nvidia-smi reports another driver than the pinned one",
    "driver-version-unreadable": "a driver version could not be read",
    "engine-cannot-load-model": "the pinned serving engine cannot load the model",
    "engine-not-pinned": "the pin set has no image for the chosen engine",
    "engine-not-serving": "an engine replica does not answer a chat completion",
    "engine-parallel": "the engine release cannot run the parallelism asked for",
    "engine-replicas": "the replicas asked for do not fit the host's GPUs",
    "engine-version-unreadable": "an engine version could not be read",
    "fabric-manager-down": "Fabric Manager is not running on an NVSwitch system",
    "gpu-arch-binary-compatible": "the GPU runs torch's kernels through binary compatibility",
    "gpu-arch-unsupported-by-torch": "torch was not built for the GPU's compute capability",
    "gpu-container-failed": "a container started with GPUs does not see them",
    "gpu-count-differs": "the host has another number of GPUs than expected",
    "gpu-init-failed": "the driver is loaded but initialised no GPU (No devices were found)",
    "gpu-memory-differs": "the GPUs have less memory than expected",
    "gpu-memory-unknown": "nvidia-smi reports no memory size for a GPU ([N/A])",
    "gpu-model-differs": "the GPUs are another model than expected",
    "gpu-not-in-catalog": "a GPU is not in the catalog, its memory is unknown",
    "image-needs-forward-compat": "the serving image's CUDA runs only through forward compat",
    "image-not-pinned": "an image the fleet pulls (the serving image, the GPU test image, the "
                        "DCGM exporter) is pinned by tag only (no digest recorded)",
    "listening-without-key": "a service listens beyond loopback with nothing to present "
                             "(no API key; gpufleet has no firewall setting)",
    "mig-enabled": "MIG is on: the engine sees MIG devices, not whole GPUs",
    "mig-no-instances": "MIG is on for a GPU without any MIG device",
    "mig-serving-unsupported": "serving on MIG devices is not supported by the serving plan",
    "mig-tensor-parallel": "tensor parallelism across MIG devices was asked for",
    "model-does-not-fit": "the model does not fit the host's GPUs",
    "model-fits": "the model fits (the sizing)",
    "precision-not-supported-on-gpu": "the engine has no kernels for the weights on the GPUs",
    "multinode-address-missing": "a node lacks its inter-node address on the interface",
    "multinode-head-unreachable": "a node cannot reach the replica's head on its ports",
    "multinode-peer-unreachable": "a node cannot reach another node of the replica on its ports",
    "multinode-interface-missing": "the inter-node interface does not exist on a node",
    "multinode-network-unread": "the inter-node network could not be read on a node",
    "multinode-no-infiniband": "InfiniBand is configured, a node has no /dev/infiniband",
    "multinode-node-refused": "another node of the replica cannot take part",
    "multinode-node-unread": "a node of the replica could not be read",
    "multinode-route": "traffic to the head leaves by another interface",
    "multinode-weights-differ": "the weights differ between the nodes of a replica",
    "no-gpu": "no NVIDIA GPU found",
    "no-known-compose": "gpufleet knows no Compose package for the distro",
    "no-python": "no Python 3 interpreter",
    "no-signed-precompiled-modules": "the distro has no signed precompiled NVIDIA modules",
    "nouveau-still-loaded": "nouveau is still loaded after the reboot",
    "nvcc-differs": "nvcc does not report the pinned CUDA release",
    "nvidia-smi-failed": "nvidia-smi cannot list the GPUs",
    "nvidia-smi-unreadable": "nvidia-smi's answer could not be read",
    "persistenced-down": "the NVIDIA persistence daemon is not running",
    "python-env": "the Python environment cannot be built as configured",
    "python-unsupported-by-torch": "the host's Python is outside what torch supports",
    "python-version-unreadable": "a Python version could not be read",
    "quantized-weights-needed": "int8/int4 serving needs pre-quantized weights",
    "reboot-required": "a reboot is needed and settings.driver.reboot is 'never'",
    "sampling-differs-from-model-card": "sampling settings differ from the model card",
    "sampling-out-of-range": "a sampling setting is outside its range",
    "secure-boot-unknown": "whether Secure Boot is on could not be read",
    "secure-boot-unsigned-driver": "Secure Boot is on and the driver's modules are unsigned",
    "sizing-input": "the sizing inputs are inconsistent",
    "storage-class-unknown": "an unknown storage class",
    "storage-hdd": "the weights are on a rotating disk",
    "storage-network": "the weights are on a network filesystem",
    "storage-overlay": "the weights are on an overlay filesystem",
    "storage-sas-ssd": "the weights are on a SAS SSD",
    "storage-sata-ssd": "the weights are on a SATA SSD",
    "storage-tmpfs": "the weights are on tmpfs",
    "storage-unknown": "the weights' storage could not be classified",
    "storage-usb": "the weights are on a USB disk",
    "storage-virtual": "the weights are on a virtual disk",
    "temperature-too-high": "the sampling temperature rambles",
    "temperature-too-low": "the sampling temperature repeats itself",
    "transformers-remote-code": "the model runs code shipped in its repository",
    "transformers-too-old-for-model": "the pinned transformers cannot load the model",
    "transformers-version-unreadable": "a transformers version could not be read",
    "unknown-cuda-release": "the CUDA release is not in the compatibility matrix",
    "unsupported-platform": "NVIDIA publishes no repository for this distro or architecture",
    "weights-config-differs": "the weights' config.json is not the model the fleet names",
    "weights-corrupt": "a weights file differs from its manifest",
    "weights-load-time": "the estimated weights load time",
    "weights-missing": "the weights are not where the fleet file says",
    "weights-plain-http": "the weights come from a hub over plain http",
}
_ORDER: dict[Severity, int] = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    """One result of one check.

    + severity: "error" refuses the host, "warning" is printed, "info" is context
    + code: stable short id for docs, tests and suppressions (e.g. "driver-too-old-for-cuda")
    + what: one sentence: what is wrong (or what was found)
    + measured: the value seen on the host or given as input
    + required: what would be accepted
    + fix: what to do about it
    """

    severity: Severity
    code: str
    what: str
    measured: str
    required: str
    fix: str
    # A warning the fleet file expects (settings.preflight.expected_warnings): said in one
    # line with the others expected, not in full.
    expected: bool = False

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"finding code {self.code!r} is not in rules.findings.CODES")

    def render(self, host: str | None = None) -> str:
        where = f"{host}: " if host else ""
        lines = [f"{self.severity.upper()} [{self.code}] {where}{self.what}"]
        if self.measured:
            lines.append(f"    found:    {self.measured}")
        if self.required:
            lines.append(f"    required: {self.required}")
        if self.fix:
            lines.append(f"    fix:      {self.fix}")
        return "\n".join(lines)


@dataclass
class Findings:
    """An ordered collection of findings, with helpers to query and render them."""

    items: list[Finding] = field(default_factory=list)

    def add(self, *findings: Finding) -> None:
        self.items.extend(findings)

    def extend(self, findings: Iterable[Finding]) -> None:
        self.items.extend(findings)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def of(self, severity: Severity) -> list[Finding]:
        return [f for f in self.items if f.severity == severity]

    @property
    def errors(self) -> list[Finding]:
        return self.of("error")

    @property
    def warnings(self) -> list[Finding]:
        return self.of("warning")

    @property
    def ok(self) -> bool:
        """True when nothing refuses the host."""
        return not self.errors

    def codes(self) -> list[str]:
        return [f.code for f in self.items]

    def render(self, host: str | None = None, expected_because: str = "in this fleet") -> str:
        """Errors first, then warnings, then info; the warnings the fleet expects in one line
        (``expected <expected_because>: CODE, CODE x2``); a summary line last."""
        ordered = sorted(self.items, key=lambda f: _ORDER[f.severity])
        body = [f.render(host) for f in ordered if not f.expected]
        expected = [f.code for f in ordered if f.expected]
        if expected:
            counted = {code: expected.count(code) for code in expected}
            body.append(f"expected {expected_because}: " + ", ".join(
                code + (f" x{n}" if n > 1 else "") for code, n in counted.items())
                + " (settings.preflight.expected_warnings)")
        shown = len(self.warnings) - len(expected)
        summary = (
            f"{len(self.errors)} error(s), {shown} warning(s)"
            + (f" and {len(expected)} expected" if expected else "")
            + f", {len(self.of('info'))} note(s)"
        )
        return "\n".join([*body, summary])


def accept(findings: Iterable[Finding], accepted: Iterable[str],
           expected: Iterable[str] = ()) -> Findings:
    """The one rule for "does this stop the host": errors whose code the operator accepted
    (settings.preflight.downgrade_errors, or "all") become warnings that say so. Warnings
    whose code the fleet expects (settings.preflight.expected_warnings) are marked expected;
    an error is never expected (it is accepted or it stops the host)."""
    codes, foreseen = set(accepted), set(expected)
    result = Findings()
    for finding in findings:
        if finding.severity == "error" and ("all" in codes or finding.code in codes):
            finding = replace(finding, severity="warning",
                              fix=f"{finding.fix} (accepted: settings.preflight.downgrade_errors)")
        elif finding.severity == "warning" and finding.code in foreseen:
            finding = replace(finding, expected=True)
        result.add(finding)
    return result


def refusal_message(title: str, findings: Iterable[Finding]) -> str:
    lines = [title]
    for finding in findings:
        lines += ["  " + line for line in finding.render().splitlines()]
    return "\n".join(lines)


# What a failing tool says, most telling first. A tool's last line is often noise printed
# after the cause (`docker run` ends with "error waiting for container: context canceled").
_CAUSE_PATTERNS = (
    "nvidia-container-cli:",
    "Failed to initialize NVML",
    "Error response from daemon",
    "CUDA error",
    "RuntimeError",
    "ValueError",
    "Error",
    "error:",
    "Exception",
    "No such file",
    "does not appear",
    "refused",
)
_NOISE = ("error waiting for container", "See 'docker run --help'")


def explaining_lines(log: str, limit: int = 2) -> str:
    """The lines of a failed command's output that say why: those matching the most telling
    pattern, else the last lines. Joined with " | ", at most 600 characters."""
    lines = [line.strip() for line in log.splitlines()
             if line.strip() and not any(noise in line for noise in _NOISE)]
    for pattern in _CAUSE_PATTERNS:
        telling = [line for line in lines if pattern in line]
        if telling:
            return " | ".join(telling[-limit:])[:600]
    return " | ".join(lines[-limit:])[:600] or "no output"
