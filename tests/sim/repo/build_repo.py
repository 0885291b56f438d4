#!/usr/bin/python3
"""TEST STAND-IN builder (gpufleet simulator): the stand-in NVIDIA apt repositories.

Runs inside a Debian 12 container (dpkg-deb, gpg, python3 stdlib only) and writes two flat
repositories laid out like NVIDIA's, each with Packages(.gz), Release, InRelease and
Release.gpg signed by the committed TEST-ONLY key:

  OUT/cuda/repos/debian12/x86_64/            driver branch 535 + CUDA 12.1 packages
  OUT/libnvidia-container/stable/deb/amd64/  container toolkit packages
  OUT/keys/gpufleet-sim-test.asc             the armored public key

Every package has NVIDIA's real name and two versions, so upgrades can be rehearsed. The
files inside are stand-ins from payload/; nothing here is NVIDIA software.

usage: build_repo.py SRC_DIR(tests/sim) OUT_DIR
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CUDA_REPO = "cuda/repos/debian12/x86_64"
CTK_REPO = "libnvidia-container/stable/deb/amd64"
LIBDIR = "usr/lib/x86_64-linux-gnu"
DRIVER_VERSIONS = ("535.161.08", "535.183.06")
# cuda-toolkit-12-1 version -> (cuda-nvcc-12-1 version, nvcc "Built on", build number)
CUDA_VERSIONS = {
    "12.1.0": ("12.1.66", "Tue_Feb__7_19:32:13_PST_2023", "32415258"),
    "12.1.1": ("12.1.105", "Mon_Apr__3_17:16:06_PDT_2023", "32688072"),
}
CTK_VERSIONS = ("1.14.6", "1.15.0")
BRANCH = "535"


@dataclass
class Pkg:
    name: str
    version: str  # Debian version, e.g. 535.161.08-1
    repo: str
    depends: list[str] = field(default_factory=list)
    description: str = ""
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (content, mode)
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> target
    scripts: dict[str, str] = field(default_factory=dict)  # postinst/prerm/... -> body
    conffiles: list[str] = field(default_factory=list)


def payload(src: Path, name: str, **subst: str) -> str:
    text = (src / "repo/payload" / name).read_text()
    for key, val in subst.items():
        text = text.replace(f"@{key}@", val)
    return text


def unit(description: str, exec_start: str, after: str = "") -> str:
    return (f"# TEST STAND-IN unit (gpufleet simulator)\n[Unit]\nDescription={description}\n"
            f"{after}\n[Service]\nType=simple\nExecStart={exec_start}\n\n"
            "[Install]\nWantedBy=multi-user.target\n")


def driver_packages(src: Path, upstream: str) -> list[Pkg]:
    ver = f"{upstream}-1"
    b = BRANCH
    module = (f"# TEST STAND-IN NVIDIA kernel module (gpufleet simulator)\nversion={upstream}\n"
              "signed={signed}\nflavour={flavour}\n")
    dkms_build = (
        "#!/bin/sh\nset -e\n# TEST STAND-IN: \"builds\" the module like DKMS, for every kernel.\n"
        'if [ "$1" = configure ]; then\n  for k in /lib/modules/*/; do\n'
        '    mkdir -p "${k}updates/dkms"\n'
        f'    cp /usr/src/nvidia-{upstream}/nvidia.ko.stand-in "${{k}}updates/dkms/nvidia.ko"\n'
        "  done\nfi\n")
    dkms_remove = ('#!/bin/sh\nset -e\nif [ "$1" = remove ] || [ "$1" = purge ]; then\n'
                   "  rm -f /lib/modules/*/updates/dkms/nvidia.ko\nfi\n")
    precompiled_install = (
        "#!/bin/sh\nset -e\n# TEST STAND-IN: a signed precompiled module for every kernel.\n"
        'if [ "$1" = configure ]; then\n  for k in /lib/modules/*/; do\n'
        f'    mkdir -p "${{k}}kernel/nvidia-{b}srv"\n'
        f'    cp /usr/share/gpufleet-sim/nvidia-{b}srv.ko "${{k}}kernel/nvidia-{b}srv/nvidia.ko"\n'
        "  done\nfi\n")
    precompiled_remove = ('#!/bin/sh\nset -e\nif [ "$1" = remove ] || [ "$1" = purge ]; then\n'
                          f"  rm -rf /lib/modules/*/kernel/nvidia-{b}srv\nfi\n")
    enable = ("#!/bin/sh\nset -e\n"
              'if [ "$1" = configure ] && [ -d /run/systemd/system ]; then\n'
              "  systemctl daemon-reload\n  systemctl enable {svc}.service >/dev/null 2>&1 || true\n"
              "fi\n")
    pieces = [f"nvidia-utils-{b}", f"libnvidia-compute-{b}", f"nvidia-compute-utils-{b}",
              f"nvidia-dkms-{b}"]
    return [
        Pkg(f"cuda-drivers-{b}", ver, CUDA_REPO, [f"nvidia-driver-{b} (>= {upstream})"],
            "CUDA drivers meta-package, branch 535 (TEST STAND-IN)"),
        Pkg(f"nvidia-driver-{b}", ver, CUDA_REPO, [f"{p} (= {ver})" for p in pieces],
            "NVIDIA driver metapackage (TEST STAND-IN)"),
        Pkg(f"nvidia-utils-{b}", ver, CUDA_REPO, [], "NVIDIA driver support binaries (TEST STAND-IN)",
            files={"usr/bin/nvidia-smi": (payload(src, "nvidia-smi"), 0o755)}),
        Pkg(f"libnvidia-compute-{b}", ver, CUDA_REPO, [], "NVIDIA libcompute package (TEST STAND-IN)",
            files={f"{LIBDIR}/libnvidia-ml.so.{upstream}": ("", 0o644)},
            symlinks={f"{LIBDIR}/libnvidia-ml.so.1": f"libnvidia-ml.so.{upstream}"}),
        Pkg(f"nvidia-compute-utils-{b}", ver, CUDA_REPO, [],
            "NVIDIA compute utilities (TEST STAND-IN)",
            files={"usr/bin/nvidia-persistenced": (payload(src, "nvidia-persistenced"), 0o755),
                   "lib/systemd/system/nvidia-persistenced.service": (
                       unit("NVIDIA Persistence Daemon",
                            "/usr/bin/nvidia-persistenced --user nvidia-persistenced --verbose"),
                       0o644)},
            scripts={"postinst": enable.format(svc="nvidia-persistenced")}),
        Pkg(f"nvidia-dkms-{b}", ver, CUDA_REPO, [], "NVIDIA DKMS package (TEST STAND-IN)",
            files={f"usr/src/nvidia-{upstream}/nvidia.ko.stand-in": (
                       module.format(signed="no", flavour="dkms"), 0o644),
                   f"usr/src/nvidia-{upstream}/dkms.conf": (
                       f'# TEST STAND-IN\nPACKAGE_NAME="nvidia"\nPACKAGE_VERSION="{upstream}"\n',
                       0o644)},
            scripts={"postinst": dkms_build, "prerm": dkms_remove}),
        Pkg(f"linux-modules-nvidia-{b}-server-generic", ver, CUDA_REPO, [],
            "Signed precompiled NVIDIA kernel module (TEST STAND-IN)",
            files={f"usr/share/gpufleet-sim/nvidia-{b}srv.ko": (
                module.format(signed="yes", flavour="precompiled"), 0o644)},
            scripts={"postinst": precompiled_install, "prerm": precompiled_remove}),
        Pkg(f"nvidia-fabricmanager-{b}", ver, CUDA_REPO, [],
            "Fabric Manager for NVSwitch based systems (TEST STAND-IN)",
            files={"usr/bin/nv-fabricmanager": (
                       payload(src, "nv-fabricmanager", UPSTREAM=upstream), 0o755),
                   "lib/systemd/system/nvidia-fabricmanager.service": (
                       unit("NVIDIA fabric manager service",
                            "/usr/bin/nv-fabricmanager -c "
                            "/usr/share/nvidia/nvswitch/fabricmanager.cfg",
                            "After=network-online.target\nRequires=network-online.target"),
                       0o644)},
            scripts={"postinst": enable.format(svc="nvidia-fabricmanager")}),
    ]


def cuda_packages(src: Path, toolkit: str) -> list[Pkg]:
    nvcc_ver, built, build = CUDA_VERSIONS[toolkit]
    alt = ("#!/bin/sh\nset -e\n# as the real cuda-toolkit-12-1-config-common does\n"
           'if [ "$1" = configure ]; then\n'
           "  update-alternatives --install /usr/local/cuda cuda /usr/local/cuda-12.1 121\n"
           "  update-alternatives --install /usr/local/cuda-12 cuda-12 /usr/local/cuda-12.1 121\n"
           "fi\n")
    alt_rm = ('#!/bin/sh\nset -e\nif [ "$1" = remove ]; then\n'
              "  update-alternatives --remove cuda /usr/local/cuda-12.1\n"
              "  update-alternatives --remove cuda-12 /usr/local/cuda-12.1\nfi\n")
    return [
        Pkg("cuda-toolkit-12-1", f"{toolkit}-1", CUDA_REPO, [f"cuda-nvcc-12-1 (>= {nvcc_ver})"],
            "CUDA Toolkit 12.1 meta-package (TEST STAND-IN)",
            files={"usr/local/cuda-12.1/version.json": (
                f'{{"cuda": {{"name": "CUDA SDK", "version": "{toolkit}"}}}}\n', 0o644)},
            scripts={"postinst": alt, "prerm": alt_rm}),
        Pkg("cuda-nvcc-12-1", f"{nvcc_ver}-1", CUDA_REPO, [], "CUDA nvcc (TEST STAND-IN)",
            files={"usr/local/cuda-12.1/bin/nvcc": (
                       payload(src, "nvcc", NVCC_VERSION=nvcc_ver, NVCC_BUILT=built,
                               NVCC_BUILD=build), 0o755),
                   "usr/local/cuda-12.1/lib64/libcudart.so.12": ("", 0o644)}),
    ]


def ctk_packages(src: Path, upstream: str) -> list[Pkg]:
    ver = f"{upstream}-1"
    commit = hashlib.sha1(f"gpufleet-sim nvidia-container-toolkit {upstream}".encode()).hexdigest()
    return [
        Pkg("nvidia-container-toolkit", ver, CTK_REPO,
            [f"nvidia-container-toolkit-base (= {ver})", f"libnvidia-container-tools (= {ver})"],
            "NVIDIA Container toolkit (TEST STAND-IN)",
            files={"usr/bin/nvidia-container-runtime-hook": (
                payload(src, "nvidia-container-runtime-hook"), 0o755)},
            symlinks={"usr/bin/nvidia-container-toolkit": "nvidia-container-runtime-hook"}),
        Pkg("nvidia-container-toolkit-base", ver, CTK_REPO, [],
            "NVIDIA Container Toolkit Base (TEST STAND-IN)",
            files={"usr/bin/nvidia-ctk": (payload(src, "nvidia-ctk", VERSION=upstream,
                                                  COMMIT=commit), 0o755),
                   "usr/bin/nvidia-container-runtime": (
                       payload(src, "nvidia-container-runtime"), 0o755),
                   "etc/nvidia-container-runtime/config.toml": (
                       "# TEST STAND-IN config\n[nvidia-container-cli]\nldconfig = "
                       '"@/sbin/ldconfig.real"\n\n[nvidia-container-runtime]\nmode = "auto"\n',
                       0o644)},
            conffiles=["/etc/nvidia-container-runtime/config.toml"]),
        Pkg("libnvidia-container-tools", ver, CTK_REPO, [f"libnvidia-container1 (= {ver})"],
            "NVIDIA container runtime library (command-line tools) (TEST STAND-IN)",
            files={"usr/bin/nvidia-container-cli": (
                payload(src, "nvidia-container-cli", VERSION=upstream), 0o755)}),
        Pkg("libnvidia-container1", ver, CTK_REPO, [], "NVIDIA container runtime library "
            "(TEST STAND-IN)",
            files={f"{LIBDIR}/libnvidia-container.so.{upstream}": ("", 0o644)},
            symlinks={f"{LIBDIR}/libnvidia-container.so.1": f"libnvidia-container.so.{upstream}"}),
    ]


def control(pkg: Pkg) -> str:
    lines = [f"Package: {pkg.name}", f"Version: {pkg.version}", "Architecture: amd64",
             "Maintainer: gpufleet simulator <test-only@gpufleet.invalid>",
             "Section: multiverse/libs", "Priority: optional"]
    if pkg.depends:
        lines.append("Depends: " + ", ".join(pkg.depends))
    lines.append(f"Description: {pkg.description}\n This is a gpufleet simulator TEST STAND-IN,"
                 " not NVIDIA software.")
    return "\n".join(lines) + "\n"


def build_deb(pkg: Pkg, outdir: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "DEBIAN").mkdir()
        (root / "DEBIAN/control").write_text(control(pkg))
        for name, body in pkg.scripts.items():
            (root / "DEBIAN" / name).write_text(body)
            (root / "DEBIAN" / name).chmod(0o755)
        if pkg.conffiles:
            (root / "DEBIAN/conffiles").write_text("\n".join(pkg.conffiles) + "\n")
        for path, (content, mode) in pkg.files.items():
            dest = root / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(content)
            dest.chmod(mode)
        for path, target in pkg.symlinks.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, root / path)
        deb = outdir / f"{pkg.name}_{pkg.version}_amd64.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root),
                        str(deb)], check=True, stdout=subprocess.DEVNULL)
    return deb


def hashes(data: bytes) -> dict[str, str]:
    return {"MD5Sum": hashlib.md5(data).hexdigest(), "SHA1": hashlib.sha1(data).hexdigest(),
            "SHA256": hashlib.sha256(data).hexdigest()}


def write_repo(repo: Path, pkgs: list[Pkg], label: str, gnupghome: str) -> None:
    stanzas = []
    for pkg in pkgs:
        deb = build_deb(pkg, repo)
        data = deb.read_bytes()
        h = hashes(data)
        stanzas.append(control(pkg).replace(
            "Description:",
            f"Filename: ./{deb.name}\nSize: {len(data)}\nMD5sum: {h['MD5Sum']}\n"
            f"SHA1: {h['SHA1']}\nSHA256: {h['SHA256']}\nDescription:", 1))
    packages = "\n".join(stanzas).encode()
    (repo / "Packages").write_bytes(packages)
    (repo / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    files = {"Packages": packages, "Packages.gz": (repo / "Packages.gz").read_bytes()}
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
    release = ["Origin: gpufleet-sim", f"Label: {label}", "Architecture: amd64", f"Date: {date}"]
    for algo in ("MD5Sum", "SHA1", "SHA256"):
        release.append(f"{algo}:")
        release += [f" {hashes(d)[algo]} {len(d):>8} {n}" for n, d in files.items()]
    (repo / "Release").write_text("\n".join(release) + "\n")
    gpg = ["gpg", "--batch", "--yes", "--homedir", gnupghome, "--digest-algo", "SHA512"]
    subprocess.run([*gpg, "--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release")],
                   check=True)
    subprocess.run([*gpg, "-abs", "-o", str(repo / "Release.gpg"), str(repo / "Release")],
                   check=True)


def main(argv: list[str]) -> int:
    src, out = Path(argv[1]), Path(argv[2])
    if out.exists():
        shutil.rmtree(out)
    gnupghome = tempfile.mkdtemp()
    subprocess.run(["gpg", "--batch", "--quiet", "--homedir", gnupghome, "--import",
                    str(src / "keys/gpufleet-sim-test.secret.asc")], check=True)
    cuda: list[Pkg] = []
    for upstream in DRIVER_VERSIONS:
        cuda += driver_packages(src, upstream)
    for toolkit in CUDA_VERSIONS:
        cuda += cuda_packages(src, toolkit)
    ctk = [p for v in CTK_VERSIONS for p in ctk_packages(src, v)]
    for rel, pkgs, label in ((CUDA_REPO, cuda, "NVIDIA CUDA (gpufleet-sim TEST STAND-IN)"),
                             (CTK_REPO, ctk, "libnvidia-container (gpufleet-sim TEST STAND-IN)")):
        repo = out / rel
        repo.mkdir(parents=True)
        write_repo(repo, pkgs, label, gnupghome)
    (out / "keys").mkdir()
    shutil.copy(src / "keys/gpufleet-sim-test.asc", out / "keys/gpufleet-sim-test.asc")
    shutil.rmtree(gnupghome, ignore_errors=True)
    print(f"built {len(cuda) + len(ctk)} stand-in packages into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
