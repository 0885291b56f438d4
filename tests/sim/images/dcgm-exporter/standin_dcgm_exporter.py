#!/usr/bin/python3
"""TEST STAND-IN for NVIDIA's DCGM exporter (gpufleet simulator).

Serves /metrics on :9400 with the real DCGM field names and the 3.x labels (gpu, UUID,
device, modelName, Hostname) for the GPUs the container sees (the stand-in NVIDIA hook writes
them to /etc/gpufleet-sim/hardware.json). No GPU is measured: the figures are the simulated
hardware's, and a test turns them with a knob file (docker exec ... to write it):
/tmp/gpufleet-sim-knobs.json = {"gpu_util": 0-100, "fb_used_ratio": 0-1, "xid": N}.
"""

from __future__ import annotations

import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HARDWARE = "/etc/gpufleet-sim/hardware.json"
KNOBS = "/tmp/gpufleet-sim-knobs.json"
# (field, Prometheus type, help) as dcgm-exporter's default-counters.csv names them.
FIELDS = [
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
]


def read(path: str) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data: dict[str, Any] = json.load(fh)
            return data
    except (OSError, ValueError):
        return {}


def metrics() -> str:
    gpus = read(HARDWARE).get("gpus", [])
    knobs = {"gpu_util": 0, "fb_used_ratio": None, "xid": 0, **read(KNOBS)}
    host = socket.gethostname()
    lines = []
    for field, kind, text in FIELDS:
        lines += [f"# HELP {field} {text}", f"# TYPE {field} {kind}"]
        for gpu in gpus:
            total = gpu["memory_total_mib"]
            ratio = knobs["fb_used_ratio"]
            used = int(total * ratio) if ratio is not None else gpu.get("memory_used_mib", 0)
            value = {"DCGM_FI_DEV_SM_CLOCK": 1980, "DCGM_FI_DEV_MEM_CLOCK": 2619,
                     "DCGM_FI_DEV_GPU_TEMP": 34, "DCGM_FI_DEV_POWER_USAGE": 71.5,
                     "DCGM_FI_DEV_GPU_UTIL": knobs["gpu_util"], "DCGM_FI_DEV_FB_FREE": total - used,
                     "DCGM_FI_DEV_FB_USED": used, "DCGM_FI_DEV_XID_ERRORS": knobs["xid"]}[field]
            labels = (f'gpu="{gpu["index"]}",UUID="{gpu["uuid"]}",device="nvidia{gpu["index"]}",'
                      f'modelName="{gpu["name"]}",Hostname="{host}"')
            lines.append(f"{field}{{{labels}}} {value}")
    return "\n".join(lines) + "\n"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        data = metrics().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    print("Starting webserver (gpufleet stand-in dcgm-exporter) on :9400", flush=True)
    ThreadingHTTPServer(("0.0.0.0", 9400), Handler).serve_forever()
