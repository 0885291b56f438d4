#!/usr/bin/env python3
"""gpufleet simulator control: a Docker-based fleet of simulated GPU hosts (TEST STAND-IN).

The simulator stands in for NVIDIA hardware and NVIDIA's apt repositories only; apt, dpkg,
systemd, the Docker engine, files and permissions inside the hosts are real.

    python tests/sim/simctl.py up       build missing images, start repo + the hosts of
                                        inventory/sim.toml (the rehearsal's), wait for systemd
    python tests/sim/simctl.py up --hosts 8
                                        N identical A100 hosts instead (gpufleet-sim-node01..N)
                                        and their fleet file, tests/sim/build/scale-fleet.toml
    python tests/sim/simctl.py status   what is running
    python tests/sim/simctl.py reset    down + up of the hosts only (the repo may stay)
    python tests/sim/simctl.py down     remove containers, per-host volumes and the network

Images are tagged by a hash of their build inputs, so an unchanged tree rebuilds nothing.
Stdlib only; talks to the Docker engine through the `docker` CLI.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project runs on 3.11; tomli is tomllib's backport
    import tomli as tomllib

SIM_DIR = Path(__file__).resolve().parent
BUILD_DIR = SIM_DIR / "build"
# What the hosts mount from the controller (their hardware.json, their PCI tree): one folder
# per machine, not per checkout, so that deleting a clone never leaves hosts the engine cannot
# start again, and another clone's `make rehearse` finds the same hosts still its own.
HOST_FILES_DIR = Path("/var/lib/gpufleet-sim/hosts")
HOSTS_FILE = SIM_DIR / "hosts.toml"
KEYS_DIR = SIM_DIR / "keys"

NETWORK = "gpufleet-sim"
LABEL = "gpufleet-sim"  # label key on every container/volume we create; value = role
REPO_CONTAINER = "gpufleet-sim-repo"
BASE_IMAGE = "gpufleet-sim/debian12-base"
HOST_IMAGE = "gpufleet-sim/host"
REPO_IMAGE = "gpufleet-sim/repo"
CUDA_IMAGE = "gpufleet-sim/cuda-base:12.1"
CUDA_TAR = BUILD_DIR / "images" / "cuda-base.tar"
ENGINE_IMAGE = "gpufleet-sim/engine"
ENGINE_TAR = BUILD_DIR / "images" / "engine.tar"
# The real Ray of the engine image: ray.lock's wheels, downloaded here (hashes checked) and put
# into the image's build context (the build itself reaches no package index).
ENGINE_WHEELS = BUILD_DIR / "wheels" / "engine"
ENGINE_WHEEL_PLATFORM = ["--only-binary=:all:", "--platform", "manylinux2014_x86_64",
                         "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
DCGM_IMAGE = "gpufleet-sim/dcgm-exporter"
DCGM_TAR = BUILD_DIR / "images" / "dcgm-exporter.tar"
WEIGHTS_DIR = BUILD_DIR / "weights"
# Stand-in weights made for the rehearsal fleet's model (and a smaller one for tests).
STAND_IN_MODELS = ("deepseek-r1-distill-qwen-7b", "deepseek-r1-distill-qwen-1.5b")
PINS_FILE = SIM_DIR.parents[1] / "inventory" / "pins.toml"
SIM_FLEET = SIM_DIR.parents[1] / "inventory" / "sim.toml"
SCALE_FLEET = BUILD_DIR / "scale-fleet.toml"
# `up --hosts N`: N copies of this host's hardware, in this fleet group of inventory/sim.toml.
SCALE_TEMPLATE, SCALE_GROUP = "gpufleet-sim-a100x2", "pcie"
DEFAULT_PIN_SET = "r535-cuda121"
CONTROLLER_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_HOST = "/usr/local/share/gpufleet-sim/controller-ca.crt"
HARDWARE_IN_HOST = "/etc/gpufleet-sim/hardware.json"
PCI_IN_HOST = "/sys/bus/pci/devices"
SUITE = "bookworm"
BOOT_TIMEOUT_S = 120
INOTIFY_INSTANCES = 1024  # tools/ensure-host-tools.sh raises the kernel's limit to this

# Run flags that give a container systemd as PID 1 on this engine (DESIGN.md §3);
# --privileged fails here because CAP_SYS_RESOURCE is outside the bounding set.
SYSTEMD_RUN_FLAGS = [
    "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN", "--cap-add", "SYS_PTRACE",
    "--cap-add", "MKNOD", "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
]


class SimError(RuntimeError):
    """A problem the user can fix; printed without a traceback."""


@dataclass(frozen=True)
class HostSpec:
    name: str
    hardware: dict[str, Any]

    @property
    def docker_volume(self) -> str:
        return f"{self.name}-docker"

    @property
    def sysmodule_volume(self) -> str:
        return f"{self.name}-sysmodule"


# --------------------------------------------------------------------------- docker helpers


def docker(*args: str, check: bool = True, capture: bool = True,
           stdin: Any = None, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["docker", *args], text=True, stdin=stdin, timeout=timeout,
                              capture_output=capture)
    except FileNotFoundError as exc:
        raise SimError("the `docker` CLI is not installed: apt-get install docker.io") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip() if capture else ""
        raise SimError(f"docker {' '.join(args[:3])} ... failed ({proc.returncode}): {err}")
    return proc


def require_engine() -> None:
    proc = docker("info", "--format", "{{.ServerVersion}}", check=False)
    if proc.returncode != 0:
        raise SimError("cannot reach the Docker engine (`docker info` failed: "
                       f"{proc.stderr.strip()}); start dockerd or set DOCKER_HOST")


def engine_reachable() -> bool:
    """True when a Docker engine answers (used by the tests to decide on skipping)."""
    try:
        return docker("info", "--format", "{{.ServerVersion}}", check=False,
                      timeout=20).returncode == 0
    except (SimError, subprocess.TimeoutExpired):
        return False


def image_exists(ref: str) -> bool:
    return docker("image", "inspect", ref, check=False).returncode == 0


def container_state(name: str) -> dict[str, Any] | None:
    proc = docker("container", "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    data: list[dict[str, Any]] = json.loads(proc.stdout)
    return data[0]


def log(msg: str) -> None:
    print(f"[simctl] {msg}", flush=True)


# --------------------------------------------------------------------------- inputs


def tree_hash(*parts: Path | str) -> str:
    """Hash of files under the given paths (contents + relative names) and literal strings."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            h.update(b"S" + part.encode() + b"\0")
            continue
        files = [part] if part.is_file() else sorted(
            p for p in part.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for f in files:
            h.update(b"F" + str(f.relative_to(SIM_DIR)).encode() + b"\0")
            h.update(oct(f.stat().st_mode & 0o111).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def controller_mirrors() -> tuple[str, str | None]:
    """(Debian mirror URI, security mirror URI or None) from the controller's apt sources.

    Read at run time so that no mirror host name is ever written into the repository.
    """
    uris: list[str] = []
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in src.read_text().splitlines():
            if line.strip().lower().startswith("uris:"):
                uris += line.split(":", 1)[1].split()
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
            if m:
                uris.append(m.group(1))
    main = next((u for u in uris if "security" not in u and "debian" in u), None)
    if main is None:
        raise SimError("no Debian mirror found in /etc/apt/sources.list(.d); the base image "
                       "is bootstrapped from the controller's own mirror")
    security = next((u for u in uris if "security" in u), None)
    return main.rstrip("/"), security.rstrip("/") if security else None


def sources_file(main: str, security: str | None) -> str:
    text = (f"Types: deb\nURIs: {main}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    if security:
        text += (f"\nTypes: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n"
                 "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    return text


def load_hosts(path: Path = HOSTS_FILE) -> list[HostSpec]:
    """The simulated hosts of hosts.toml with their rendered hardware.json content."""
    data = tomllib.loads(path.read_text())
    hosts = []
    sb_map = {"enabled": True, "disabled": False, "no-efi": None}
    for entry in data["host"]:
        name = entry["name"]
        if entry["secure_boot"] not in sb_map:
            raise SimError(f"{path}: host {name}: secure_boot={entry['secure_boot']!r}, "
                           f"allowed: {', '.join(sb_map)}")
        gpu = entry.get("gpu")
        gpus = []
        for i, bus in enumerate(gpu["pci_bus_ids"] if gpu else []):
            gpus.append({
                "index": i, "name": gpu["name"], "memory_total_mib": gpu["memory_total_mib"],
                "memory_used_mib": gpu.get("memory_used_mib", 0),
                "compute_cap": gpu["compute_cap"],
                "uuid": "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"gpufleet-sim/{name}/{i}")),
                "pci_bus_id": bus, "pci_device_id": gpu["pci_device_id"],
                "pci_class": gpu["pci_class"],
                "mig_capable": gpu.get("mig_capable", False),
            })
        sw = entry.get("nvswitch")
        switches = [{"pci_bus_id": bus, "pci_device_id": sw["pci_device_id"]}
                    for bus in (sw["pci_bus_ids"] if sw else [])]
        hardware = {
            "_comment": "TEST STAND-IN hardware of a gpufleet simulated host (tests/sim)",
            "hostname": name, "gpus": gpus, "nvswitches": switches,
            "nvswitch_count": len(switches), "secure_boot": sb_map[entry["secure_boot"]],
            "nouveau_loaded_at_first_boot": entry.get("nouveau_loaded_at_first_boot", False),
        }
        hosts.append(HostSpec(name, hardware))
    return hosts


def scale_hosts(count: int) -> list[HostSpec]:
    """``count`` hosts with the hardware of SCALE_TEMPLATE: gpufleet-sim-node01, -node02, ..."""
    template = next(h for h in load_hosts() if h.name == SCALE_TEMPLATE)
    hosts = []
    for i in range(1, count + 1):
        name = f"gpufleet-sim-node{i:02d}"
        gpus = [{**gpu, "uuid": "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                        f"gpufleet-sim/{name}/{gpu['index']}"))}
                for gpu in template.hardware["gpus"]]
        hosts.append(HostSpec(name, {**template.hardware, "hostname": name, "gpus": gpus}))
    return hosts


def fleet_settings_toml(fleet: Path = SIM_FLEET) -> str:
    """inventory/sim.toml up to its first group (the fleet-wide settings), with the paths into
    tests/sim/build made absolute so that the text works from any folder."""
    head = fleet.read_text().split("\n[groups.", 1)[0]
    return head.replace('"../tests/sim/build/', f'"{BUILD_DIR}/')


def write_scale_fleet(hosts: list[HostSpec], dest: Path = SCALE_FLEET) -> Path:
    """The fleet file of the scale hosts: the rehearsal fleet's settings and its A100 group's,
    one host each, no monitoring host."""
    text = SIM_FLEET.read_text()
    group = re.search(rf"^\[groups\.{SCALE_GROUP}\.settings\]\n(.*?)\n\n", text, re.M | re.S)
    if group is None:
        raise SimError(f"{SIM_FLEET}: no [groups.{SCALE_GROUP}.settings] table to copy")
    lines = [f"# Written by `simctl up --hosts {len(hosts)}`: {len(hosts)} identical hosts.",
             fleet_settings_toml().replace('name = "sim"', 'name = "sim-scale"', 1).rstrip(),
             "", f"[groups.{SCALE_GROUP}.settings]", group.group(1), ""]
    for host in hosts:
        short = host.name.removeprefix("gpufleet-")
        lines += [f"[groups.{SCALE_GROUP}.hosts.{short}]", f'target = "@docker/{host.name}"', ""]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(lines))
    return dest


# --------------------------------------------------------------------------- images


def ensure_base() -> str:
    main, security = controller_mirrors()
    tag = f"{BASE_IMAGE}:{tree_hash('minbase', SUITE, main, security or '', 'v1')}"
    if image_exists(tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise SimError("debootstrap is not installed: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise SimError("building the base image runs debootstrap, which needs root")
    log(f"building {tag}: debootstrap --variant=minbase {SUITE} (about 35 s)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="base-", dir=BUILD_DIR))
    try:
        proc = subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(root), main],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SimError(f"debootstrap failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        (root / "etc/apt/sources.list.d/debian.sources").write_text(sources_file(main, security))
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        docker("import", "--change", 'CMD ["bash"]', "-", tag, stdin=tar.stdout)
        tar.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    docker("tag", tag, f"{BASE_IMAGE}:latest")
    return tag


def build(tag: str, context: Path, build_args: dict[str, str],
          dockerfile: Path | None = None) -> str:
    if image_exists(tag):
        return tag
    log(f"building {tag}")
    args = ["build", "-q", "-t", tag]
    for key, val in build_args.items():
        args += ["--build-arg", f"{key}={val}"]
    if dockerfile:
        args += ["-f", str(dockerfile)]
    docker(*args, str(context))
    docker("tag", tag, tag.rsplit(":", 1)[0] + ":latest")
    return tag


def ensure_images() -> dict[str, str]:
    """Build what is missing; returns {"base", "host", "repo", "cuda"} -> image reference."""
    base = ensure_base()
    kernel = docker("info", "--format", "{{.KernelVersion}}").stdout.strip()
    host_dir = SIM_DIR / "images/host"
    host_tag = f"{HOST_IMAGE}:{tree_hash(base, kernel, host_dir)}"
    cuda_dir = SIM_DIR / "images/cuda-base"
    cuda_hash = tree_hash(base, cuda_dir)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        host_f = pool.submit(build, host_tag, host_dir, {"BASE_IMAGE": base})
        cuda_f = pool.submit(ensure_cuda_base, base, cuda_hash, cuda_dir)
        host = host_f.result()
        cuda = cuda_f.result()
    repo_tag = f"{REPO_IMAGE}:{tree_hash(host, SIM_DIR / 'repo', KEYS_DIR)}"
    repo = build(repo_tag, SIM_DIR, {"HOST_IMAGE": host}, SIM_DIR / "repo/Dockerfile")
    engine = ensure_engine(base)
    dcgm = ensure_dcgm_exporter(base)
    ensure_weights()
    return {"base": base, "host": host, "repo": repo, "cuda": cuda, "engine": engine,
            "dcgm": dcgm}


def engine_tags() -> dict[str, str]:
    """The default pin set's serving images (name -> engine version): the stand-in engine is
    tagged with these names, as the stand-in packages carry NVIDIA's."""
    sets = tomllib.loads(PINS_FILE.read_text())["sets"]
    inference = sets[DEFAULT_PIN_SET]["inference"]
    return {pin["image"]: pin["version"] for pin in inference.values()}


def ensure_engine(base: str) -> str:
    """Build the stand-in engine image, tag it with the pinned names, save them to ENGINE_TAR."""
    tags = engine_tags()
    versions = {name.split("/")[0]: version for name, version in tags.items()}
    args = {"BASE_IMAGE": base, "VLLM_VERSION": versions.get("vllm", ""),
            "SGLANG_VERSION": versions.get("lmsysorg", "")}
    context = SIM_DIR / "images/engine"
    tag = f"{ENGINE_IMAGE}:{tree_hash(base, context, json.dumps(args, sort_keys=True))}"
    if not image_exists(tag):
        build(tag, engine_context(context), args)
    saved_as(tag, list(tags), ENGINE_TAR)
    return tag


def engine_context(context: Path) -> Path:
    """The engine image's build context: its folder, plus wheels/ with the wheels ray.lock
    names (pip download --require-hashes: a wheel whose hash differs stops the build)."""
    ENGINE_WHEELS.mkdir(parents=True, exist_ok=True)
    # Exactly the lock: no constraints file of this machine's pip configuration applies.
    env = {**os.environ, "PIP_CONSTRAINT": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
         "--disable-pip-version-check", "--quiet", *ENGINE_WHEEL_PLATFORM,
         "-d", str(ENGINE_WHEELS), "-r", str(context / "ray.lock")],
        capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SimError(f"pip download of {context / 'ray.lock'} failed:\n{proc.stderr[-3000:]}")
    staged = BUILD_DIR / "engine-context"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(context, staged, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ENGINE_WHEELS, staged / "wheels")
    return staged


def saved_as(tag: str, names: list[str], archive: Path) -> None:
    """Tag the built image with the pinned ``names`` and `docker save` them to ``archive``
    (again only when the image changed)."""
    for name in names:
        docker("tag", tag, name)
    stamp = archive.with_suffix(".hash")
    if not archive.exists() or not stamp.exists() or stamp.read_text() != tag:
        archive.parent.mkdir(parents=True, exist_ok=True)
        docker("save", "-o", str(archive), *names)
        stamp.write_text(tag)


def ensure_dcgm_exporter(base: str) -> str:
    """The stand-in DCGM exporter, tagged with the default pin set's image name."""
    sets = tomllib.loads(PINS_FILE.read_text())["sets"]
    name = sets[DEFAULT_PIN_SET]["monitoring"]["dcgm_exporter"]["image"]
    context = SIM_DIR / "images/dcgm-exporter"
    tag = f"{DCGM_IMAGE}:{tree_hash(base, context)}"
    build(tag, context, {"BASE_IMAGE": base})
    saved_as(tag, [name], DCGM_TAR)
    return tag


def ensure_weights() -> None:
    """Stand-in weights for STAND_IN_MODELS under build/weights/ (a few MB each)."""
    sys.path.insert(0, str(SIM_DIR))
    from weights import write_weights

    for model in STAND_IN_MODELS:
        dest = WEIGHTS_DIR / model
        if not (dest / "config.json").exists():
            write_weights(model, dest)


def ensure_cuda_base(base: str, digest: str, context: Path) -> str:
    proc = docker("image", "inspect", "--format",
                  '{{index .Config.Labels "gpufleet-sim.hash"}}', CUDA_IMAGE, check=False)
    if proc.returncode != 0 or proc.stdout.strip() != digest:
        log(f"building {CUDA_IMAGE}")
        docker("build", "-q", "-t", CUDA_IMAGE, "--label", f"gpufleet-sim.hash={digest}",
               "--build-arg", f"BASE_IMAGE={base}", str(context))
    stamp = CUDA_TAR.with_suffix(".hash")
    if not CUDA_TAR.exists() or not stamp.exists() or stamp.read_text() != digest:
        CUDA_TAR.parent.mkdir(parents=True, exist_ok=True)
        docker("save", "-o", str(CUDA_TAR), CUDA_IMAGE)
        stamp.write_text(digest)
    return CUDA_IMAGE


# --------------------------------------------------------------------------- containers


def ensure_network() -> None:
    if docker("network", "inspect", NETWORK, check=False).returncode != 0:
        docker("network", "create", "--label", f"{LABEL}=network", NETWORK)


def ensure_volume(name: str) -> None:
    if docker("volume", "inspect", name, check=False).returncode != 0:
        docker("volume", "create", "--label", f"{LABEL}=host", name)


def current(name: str, image: str, config: str) -> str:
    """'ok' (running, same image/config), 'stopped', 'stale' or 'absent'."""
    return state_of(container_state(name), image, config)


def state_of(st: dict[str, Any] | None, image: str, config: str) -> str:
    """current(), from the container's `docker inspect` output (None: no such container)."""
    if st is None:
        return "absent"
    labels = st["Config"]["Labels"] or {}
    if st["Config"]["Image"] != image or labels.get("gpufleet-sim.config") != config:
        return "stale"
    return "ok" if st["State"]["Running"] else "stopped"


def foreign_binds(state: dict[str, Any], binds: dict[str, Path]) -> list[str]:
    """The bind-mount sources of a container (``docker inspect`` output) that are not the
    ones wanted here, for the destinations in ``binds``. A host made by an older simctl
    mounted them from a checkout's build folder, which may be gone (a deleted clone), and then
    the engine cannot start it again ("not a directory")."""
    mounted = {m["Destination"]: m["Source"] for m in state.get("Mounts") or []
               if m.get("Type") == "bind"}
    return sorted(mounted.get(dest, "(none)") for dest, source in binds.items()
                  if mounted.get(dest) != str(source))


def ensure_repo(image: str) -> None:
    state = current(REPO_CONTAINER, image, "repo")
    if state == "stale":
        docker("rm", "-f", REPO_CONTAINER)
    if state in ("stale", "absent"):
        docker("run", "-d", "--name", REPO_CONTAINER, "--hostname", REPO_CONTAINER,
               "--network", NETWORK, "--restart=unless-stopped",
               "--label", f"{LABEL}=repo", "--label", "gpufleet-sim.config=repo", image)
    elif state == "stopped":
        docker("start", REPO_CONTAINER)
    deadline = time.monotonic() + 30
    while docker("exec", REPO_CONTAINER, "curl", "-fsS", "-o", "/dev/null",
                 "http://localhost/keys/gpufleet-sim-test.asc", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise SimError(f"{REPO_CONTAINER} does not answer HTTP on port 80")
        time.sleep(0.3)


# The kernel's class codes (class, subclass, prog-if) for what the hosts carry.
PCI_CLASS = {"0300": "030000", "0302": "030200", "0680": "068000"}


def pci_files(host: HostSpec) -> dict[str, bytes]:
    """The host's NVIDIA functions as the kernel lists them under /sys/bus/pci/devices: the
    vendor/device/class files, and the first 64 bytes of config space so that the real lspci
    reads (and names, from its pci.ids) the same devices. Path below the folder -> content."""
    files: dict[str, bytes] = {}
    functions = [*host.hardware["gpus"],
                 *({**s, "pci_class": "0680"} for s in host.hardware["nvswitches"])]
    for dev in functions:
        vendor, device = (int(part, 16) for part in dev["pci_device_id"].split(":"))
        cls = PCI_CLASS[dev["pci_class"]]
        address = dev["pci_bus_id"].lower()
        files[f"{address}/vendor"] = f"0x{vendor:04x}\n".encode()
        files[f"{address}/device"] = f"0x{device:04x}\n".encode()
        files[f"{address}/class"] = f"0x{cls}\n".encode()
        header = bytearray(64)
        header[0:4] = vendor.to_bytes(2, "little") + device.to_bytes(2, "little")
        header[8] = 0xA1  # revision
        header[9:12] = bytes.fromhex(cls)[::-1]  # prog-if, subclass, class
        files[f"{address}/config"] = bytes(header)
    return files


def write_pci_tree(host: HostSpec, root: Path) -> None:
    """Write pci_files(host) under root, mounted read-only at /sys/bus/pci/devices in the
    host. A running host has the folder mounted: it is never replaced, only its content."""
    wanted = pci_files(host)
    root.mkdir(parents=True, exist_ok=True)
    have = {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}
    if have == wanted:
        return
    for stale in root.iterdir():
        shutil.rmtree(stale)
    for name, content in wanted.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def host_config_hash(host: HostSpec) -> str:
    return tree_hash(json.dumps(host.hardware, sort_keys=True), *SYSTEMD_RUN_FLAGS, "pci-sysfs")


def ensure_host(host: HostSpec, image: str, run_args: tuple[str, ...] = ()) -> None:
    """Start (or keep) the host container; ``run_args``: extra `docker run` flags (ports)."""
    hw_file = HOST_FILES_DIR / host.name / "hardware.json"
    hw_file.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(host.hardware, indent=2) + "\n"
    if not hw_file.exists() or hw_file.read_text() != text:
        hw_file.write_text(text)
    pci_tree = HOST_FILES_DIR / host.name / "pci"
    write_pci_tree(host, pci_tree)
    config = tree_hash(host_config_hash(host), *run_args)
    inspected = container_state(host.name)
    state = state_of(inspected, image, config)
    foreign = foreign_binds(inspected, {HARDWARE_IN_HOST: hw_file, PCI_IN_HOST: pci_tree}
                            ) if inspected and state in ("ok", "stopped") else []
    if state == "stale":
        log(f"{host.name}: image or hardware changed, recreating the container")
    elif foreign:
        log(f"{host.name}: mounts {', '.join(foreign)}, not {HOST_FILES_DIR}: recreating the "
            "container (its volumes are kept)")
    if state == "stale" or foreign:
        docker("rm", "-f", host.name)
    if state in ("stale", "absent") or foreign:
        ensure_volume(host.docker_volume)
        ensure_volume(host.sysmodule_volume)
        if not CONTROLLER_CA.exists():
            raise SimError(f"{CONTROLLER_CA} missing on the controller: apt-get install "
                           "ca-certificates")
        docker(
            "run", "-d", "--name", host.name, "--hostname", host.name, "--network", NETWORK,
            # `systemctl reboot` inside stops PID 1; the engine starts the same container again.
            "--restart=always",
            *SYSTEMD_RUN_FLAGS,
            "-v", f"{host.docker_volume}:/var/lib/docker",
            "-v", f"{host.sysmodule_volume}:/sys/module",
            "-v", f"{hw_file}:{HARDWARE_IN_HOST}:ro",
            "-v", f"{pci_tree}:{PCI_IN_HOST}:ro",
            "-v", f"{CONTROLLER_CA}:{CA_IN_HOST}:ro",
            "--label", f"{LABEL}=host", "--label", f"gpufleet-sim.config={config}",
            *run_args, image,
        )
    elif state == "stopped":
        docker("start", host.name)


def wait_for_systemd(name: str, timeout: float = BOOT_TIMEOUT_S) -> str:
    """Wait until systemd in `name` reports running/degraded; returns that state."""
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        left = max(1, int(deadline - time.monotonic()))
        proc = docker("exec", name, "timeout", str(left), "systemctl", "is-system-running",
                      "--wait", check=False)
        state = proc.stdout.strip() or "unreachable"
        if state in ("running", "degraded"):
            return state
        time.sleep(0.5)  # e.g. "Failed to connect to bus" right after the container starts
    hint = ""
    limit = Path("/proc/sys/fs/inotify/max_user_instances")
    if limit.exists() and int(limit.read_text()) < INOTIFY_INSTANCES:
        # Each host's systemd (and later its dockerd) holds inotify instances: the kernel's
        # default of 128 per user runs out at about 15 hosts, and systemd never finishes.
        hint = (f"; fs.inotify.max_user_instances is {limit.read_text().strip()}, too few for "
                f"many hosts: sysctl -w fs.inotify.max_user_instances={INOTIFY_INSTANCES} "
                "(tools/ensure-host-tools.sh does it as root)")
    raise SimError(f"{name}: systemd did not come up within {timeout:.0f} s "
                   f"(last: {state}){hint}")


def systemd_state(name: str) -> str:
    proc = docker("exec", name, "systemctl", "is-system-running", check=False)
    return proc.stdout.strip() or "-"


# --------------------------------------------------------------------------- commands


@contextlib.contextmanager
def _setup_lock() -> Iterator[None]:
    """One process at a time builds images and (re)creates the network and repository: the
    tests run in parallel workers, each wanting them."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".setup.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def ensure_shared() -> dict[str, str]:
    """Images, the network and the stand-in repository (idempotent); returns the images."""
    with _setup_lock():
        images = ensure_images()
        ensure_network()
        ensure_repo(images["repo"])
    return images


def rehearsal_hosts(fleet: Path = SIM_FLEET) -> list[HostSpec]:
    """The hosts of hosts.toml that the rehearsal fleet (inventory/sim.toml) targets: what
    `simctl up` starts. The others (the RTX 4090: a GPU too small for the model) are for the
    end-to-end tests, which start their own copies of every host they use."""
    targets = {spec.get("target") for group in tomllib.loads(fleet.read_text())
               .get("groups", {}).values() for spec in group.get("hosts", {}).values()}
    return [h for h in load_hosts() if f"@docker/{h.name}" in targets]


def up(hosts: list[HostSpec] | None = None, quiet: bool = False) -> dict[str, str]:
    """Bring the simulator up (idempotent). Returns {container name: systemd state}."""
    require_engine()
    hosts = load_hosts() if hosts is None else hosts
    images = ensure_shared()
    for host in hosts:
        ensure_host(host, images["host"])
    states = {h.name: wait_for_systemd(h.name) for h in hosts}
    if not quiet:
        status(hosts)
    return states


def remove_hosts(names: list[str] | None = None) -> None:
    """Remove host containers (all when names is None), their per-host volumes and files."""
    if names is None:
        ids = docker("ps", "-aq", "--filter", f"label={LABEL}=host").stdout.split()
        vols = docker("volume", "ls", "-q", "--filter", f"label={LABEL}=host").stdout.split()
    else:
        ids = [n for n in names if container_state(n) is not None]
        vols = [v for n in names for v in (f"{n}-docker", f"{n}-sysmodule")
                if docker("volume", "inspect", v, check=False).returncode == 0]
    if ids:
        docker("rm", "-f", "-v", *ids)
    if vols:
        docker("volume", "rm", "-f", *vols)
    # What they mounted (tiny, but one folder per test copy would pile up run after run).
    for folder in [HOST_FILES_DIR] if names is None else [HOST_FILES_DIR / n for n in names]:
        shutil.rmtree(folder, ignore_errors=True)


def down(hosts_only: bool = False) -> None:
    """Remove the hosts (and unless hosts_only the repo and network) with their volumes."""
    require_engine()
    remove_hosts()
    if hosts_only:
        return
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}=repo").stdout.split()
    if ids:
        docker("rm", "-f", "-v", *ids)
    if docker("network", "inspect", NETWORK, check=False).returncode == 0:
        docker("network", "rm", NETWORK)


def reset(names: list[str] | None = None, quiet: bool = False) -> dict[str, str]:
    """Recreate hosts from scratch (the rehearsal's, or the named ones); the repo may stay."""
    require_engine()
    remove_hosts(names)
    hosts = load_hosts() if names is not None else rehearsal_hosts()
    if names is not None:
        unknown = set(names) - {h.name for h in hosts}
        if unknown:
            raise SimError(f"unknown simulated host(s): {', '.join(sorted(unknown))}")
        hosts = [h for h in hosts if h.name in names]
    return up(hosts, quiet=quiet)


def status(hosts: list[HostSpec] | None = None) -> list[dict[str, str]]:
    """Print and return one row per simulator container."""
    require_engine()
    if hosts is None:
        nodes = docker("ps", "-a", "--filter", "name=^gpufleet-sim-node", "--format",
                       "{{.Names}}").stdout.split()
        hosts = [*rehearsal_hosts(), *scale_hosts(len(nodes))]
    gpus = {h.name: h.hardware["gpus"] for h in hosts}
    rows = []
    for name in [REPO_CONTAINER, *(h.name for h in hosts)]:
        st = container_state(name)
        running = bool(st and st["State"]["Running"])
        net = (st or {}).get("NetworkSettings", {}).get("Networks", {}).get(NETWORK, {})
        g = gpus.get(name, [])
        rows.append({
            "name": name,
            "state": st["State"]["Status"] if st else "absent",
            "systemd": systemd_state(name) if running and name != REPO_CONTAINER else "-",
            "ip": net.get("IPAddress", "-") or "-",
            "gpus": f"{len(g)}x {g[0]['name']}" if g else "-",
            "image": st["Config"]["Image"] if st else "-",
        })
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
    print("  ".join(k.upper().ljust(w) for k, w in widths.items()))
    for r in rows:
        print("  ".join(r[k].ljust(w) for k, w in widths.items()))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "reset"])
    parser.add_argument("--hosts", type=int, default=0, metavar="N",
                        help="up: N identical A100 hosts (instead of hosts.toml's) and their fleet file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        if args.hosts < 0 or (args.hosts and args.command != "up"):
            raise SimError(f"--hosts {args.hosts}: a count of 1 or more, with `up` only")
        if args.command == "up" and args.hosts:
            scale = scale_hosts(args.hosts)
            up(scale)
            fleet = write_scale_fleet(scale)
            log(f"{args.hosts} identical hosts up; converge them with:\n"
                f"  GPUFLEET_FLEET={os.path.relpath(fleet)} "
                ".venv/bin/pyinfra -y inventory.py deploys/gpu_host.py")
        elif args.command == "up":
            up(rehearsal_hosts())
        elif args.command == "down":
            down()
        elif args.command == "reset":
            reset()
        else:
            status()
    except SimError as exc:
        print(f"simctl: error: {exc}", file=sys.stderr)
        return 1
    log(f"{args.command} done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
