"""gpufleet: verify a locked Python environment from inside it (stdlib only, Python >= 3.8).

Run as ``VENV/bin/python - EXPECT_JSON < verify.py`` (or with the file). Prints ONE line:
``GPUFLEET_VERIFY {json}`` with

    {"python": "3.11.2", "dists": {"torch": "2.1.0", ...}, "torch": {...} | null,
     "transformers": "4.43.4" | null, "driver_loaded": bool, "problems": ["..."]}

``EXPECT_JSON`` is ``{"dists": {name: version}, "imports": [...], "torch_cuda": "12.1" | null}``:
every locked distribution at its locked version and nothing else installed, these modules
importable, torch built for that CUDA release; on a host whose NVIDIA driver is loaded, CUDA
usable and every GPU's compute capability in the build's architecture list. Exit status 0 when
``problems`` is empty, 1 otherwise.
"""

import json
import os
import re
import sys
import traceback

try:
    from importlib import metadata
except ImportError:  # pragma: no cover - Python < 3.8 is refused before we get here
    metadata = None

# Installed by venv/ensurepip itself, not by the lock.
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_dists():
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[canonical(name)] = dist.version
    return found


def torch_report():
    import torch

    report = {
        "version": torch.__version__.split("+", 1)[0],
        "cuda": torch.version.cuda,
        "arch_list": [],
        "cuda_available": False,
        "devices": [],
    }
    if torch.version.cuda:
        report["arch_list"] = list(torch.cuda.get_arch_list())
        report["cuda_available"] = bool(torch.cuda.is_available())
        if report["cuda_available"]:
            for index in range(torch.cuda.device_count()):
                major, minor = torch.cuda.get_device_capability(index)
                report["devices"].append({
                    "index": index,
                    "name": torch.cuda.get_device_name(index),
                    "capability": f"{major}.{minor}",
                })
    return report


def check(expect):
    result = {
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "dists": installed_dists(),
        "torch": None,
        "transformers": None,
        "driver_loaded": os.path.exists("/proc/driver/nvidia/version"),
        "problems": [],
    }
    problems = result["problems"]
    wanted = {canonical(k): v for k, v in expect.get("dists", {}).items()}
    for name, version in sorted(wanted.items()):
        have = result["dists"].get(name)
        if have != version:
            problems.append(f"{name}: locked {version}, installed {have or 'nothing'}")
    extra = sorted(set(result["dists"]) - set(wanted) - BOOTSTRAP)
    if wanted and extra:
        problems.append("not in the lock but installed: " + ", ".join(extra))

    for module in expect.get("imports", []):
        try:
            if module == "torch":
                result["torch"] = torch_report()
            else:
                imported = __import__(module)
                result[module] = getattr(imported, "__version__", "?")
        except Exception as exc:  # report any failure to import as data
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            problems.append(f"import {module} failed: {last}")

    torch_info = result["torch"]
    wanted_cuda = expect.get("torch_cuda")
    if torch_info is not None and wanted_cuda and torch_info["cuda"] != wanted_cuda:
        problems.append(
            f"torch {torch_info['version']} is built for CUDA {torch_info['cuda']}, "
            f"expected {wanted_cuda}"
        )
    if torch_info is not None and result["driver_loaded"] and torch_info["cuda"]:
        if not torch_info["cuda_available"]:
            problems.append(
                "the NVIDIA driver is loaded but torch.cuda.is_available() is False "
                f"(driver too old for CUDA {torch_info['cuda']}, or a driver/library version "
                "mismatch until reboot)"
            )
        arches = {a.split("_", 1)[1] for a in torch_info["arch_list"] if a.startswith("sm_")}
        for device in torch_info["devices"]:
            cap = device["capability"].replace(".", "")
            if cap not in arches:
                problems.append(
                    f"GPU {device['index']} ({device['name']}) has compute capability "
                    f"{device['capability']}; torch {torch_info['version']} is built for "
                    + ", ".join(torch_info["arch_list"])
                )
    return result


def main():
    expect = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    try:
        result = check(expect)
    except Exception as exc:
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        result = {"problems": ["verification crashed: " + last]}
    sys.stdout.write("GPUFLEET_VERIFY " + json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
