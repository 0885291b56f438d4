"""TEST STAND-IN for Ray's driver API (gpufleet simulator): the part gpufleet and the stand-in
engines use, with real Ray's names and messages.

    ray.init(address=None | "auto" | "HOST:PORT", ignore_reinit_error=False,
             logging_level=logging.INFO, **ignored)
    ray.nodes()               [{"NodeID", "Alive", "NodeManagerAddress", "Resources", ...}]
    ray.cluster_resources()   {"CPU": ..., "GPU": ...} of the alive nodes
    ray.is_initialized(), ray.shutdown(), ray.__version__

No tasks or actors: the node processes are ray/_node.py's (started by `ray start`).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import Any

from ray import _standin as s

__version__ = s.ray_version()

NOT_FOUND = ("Could not find any running Ray instance. Please specify the one to connect to by "
             "setting `--address` flag or `RAY_ADDRESS` environment variable.")
ANSWER_TIMEOUT_SECONDS = 150.0  # longer than the GCS waits for a node's answer to a task

_conn: s.Conn | None = None
_address: str | None = None
_lock = threading.Lock()  # one request at a time on the driver's connection


class RayContext:
    """What ray.init returns (real Ray's has more)."""

    def __init__(self, address: str) -> None:
        self.address_info = {"address": address, "gcs_address": address}
        self.dashboard_url = None

    def __enter__(self) -> RayContext:
        return self

    def __exit__(self, *exc: object) -> None:
        shutdown()


def find_address(address: str | None) -> str:
    """address, else RAY_ADDRESS, else the cluster this machine started (ray_current_cluster)."""
    for candidate in (address, os.environ.get("RAY_ADDRESS")):
        if candidate and candidate != "auto":
            return candidate.removeprefix("ray://")
    try:
        with open(s.address_file()) as fh:
            found = fh.read().strip()
    except OSError:
        found = ""
    if not found:
        raise ConnectionError(NOT_FOUND)
    return found


def init(address: str | None = None, *, ignore_reinit_error: bool = False,
         logging_level: int = logging.INFO, **_ignored: Any) -> RayContext:
    global _conn, _address
    if _conn is not None:
        if ignore_reinit_error:
            return RayContext(_address or "")
        raise RuntimeError("Maybe you called ray.init twice by accident? This error can be "
                           "suppressed by passing in 'ignore_reinit_error=True' or by calling "
                           "'ray.shutdown()' prior to 'ray.init()'.")
    found = find_address(address)
    host, port = s.split_address(found)
    sock = s.connect_retry(host, port, 5)
    if sock is None:
        raise ConnectionError(
            f"Unable to connect to GCS at {host}:{port}. Check that (1) Ray GCS with matching "
            "version started successfully at the specified address, (2) this node can reach "
            "the specified address, and (3) there is no firewall setting preventing access.")
    conn = s.Conn(sock)
    conn.send({"op": "driver", "ray_version": s.ray_version(),
               "python_version": s.python_version()})
    reply = conn.recv(timeout=10)
    if reply is None or not reply.get("ok"):
        conn.close()
        if reply is None:
            raise ConnectionError(f"Unable to connect to GCS at {host}:{port}.")
        raise RuntimeError(str(reply["error"]).removeprefix("RuntimeError: "))
    if logging_level <= logging.INFO:
        s.log(f"Connecting to existing Ray cluster at address: {host}:{port}...", sys.stderr)
    _conn, _address = conn, f"{host}:{port}"
    return RayContext(_address)


def is_initialized() -> bool:
    return _conn is not None


@atexit.register
def shutdown() -> None:
    global _conn, _address
    if _conn is not None:
        _conn.close()
    _conn = _address = None


def _request(message: dict[str, Any]) -> dict[str, Any]:
    with _lock:
        if _conn is None:
            raise RuntimeError("Ray has not been started yet. You can start Ray with "
                               "'ray.init()'.")
        try:
            _conn.send(message)
        except OSError:
            answer = None
        else:
            answer = _conn.recv(timeout=ANSWER_TIMEOUT_SECONDS)
    if answer is None:
        raise ConnectionError(f"Lost the connection to the GCS at {_address}.")
    return answer


def nodes() -> list[dict[str, Any]]:
    """Every node that joined, dead ones too (Alive false), as real Ray lists them."""
    found: list[dict[str, Any]] = _request({"op": "nodes"})["nodes"]
    return found


def cluster_resources() -> dict[str, float]:
    total: dict[str, float] = {}
    for node in nodes():
        if node["Alive"]:
            for key, value in node["Resources"].items():
                total[key] = total.get(key, 0.0) + value
    return total


available_resources = cluster_resources  # nothing is ever reserved in the stand-in


def _run_on_node(node_id: str, func: str, *args: Any) -> dict[str, Any]:
    """Stand-in only: call module:name(*args) in the node's process, as a Ray task placed on
    that node would. Returns {"result" | "error", "pid", "ip"}."""
    return _request({"op": "run", "node_id": node_id, "func": func, "args": list(args)})
