"""TEST STAND-IN for Ray's node processes (gpufleet simulator): what `ray start` runs.

The head runs the "GCS": a TCP server on --node-ip-address:--port that keeps the node table.
A worker node holds one TCP connection to it for as long as it runs; the node is Alive while
that connection is open (and heartbeats arrive). Drivers (ray.init) connect to the same port.
The protocol is the stand-in's own, JSON lines:

    node   -> GCS  {"op": "register", "ip", "hostname", "gpus", "cpus", "ray_version",
                    "python_version"}          <- {"ok": true, "node_id"} | {"ok": false, "error"}
    driver -> GCS  {"op": "driver", "ray_version", "python_version"}  <- {"ok": ...}
                   {"op": "nodes"}                                   <- {"nodes": [...]}
                   {"op": "run", "node_id", "func": "module:name", "args": [...]}
                                                   <- {"result" | "error", "pid", "ip"}
    GCS    -> node {"op": "run", "id", "func", "args"}  <- {"id", "result" | "error", "pid", "ip"}

"run" stands in for Ray running a remote function on a node (the engines use it to look at the
model folder on every node): the node imports module:name and calls it with args.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import queue
import secrets
import socket
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

from ray import _standin as s

RUN_TIMEOUT_SECONDS = 120.0


def version_mismatch(ip: str, ray_version: str, python_version: str) -> str | None:
    """Ray's refusal of a process whose Ray or Python (major.minor) differs from the cluster's."""
    mine, theirs = s.python_version(), python_version
    if ray_version == s.ray_version() and mine.split(".")[:2] == theirs.split(".")[:2]:
        return None
    return ("RuntimeError: Version mismatch: The cluster was started with:\n"
            f"    Ray: {s.ray_version()}\n    Python: {mine}\n"
            f"This process on node {ip} was started with:\n"
            f"    Ray: {ray_version}\n    Python: {python_version}")


def run_task(func: str, args: list[Any], ip: str) -> dict[str, Any]:
    """Run module:name(*args) here, as a Ray worker on this node would."""
    module, _, name = func.partition(":")
    try:
        result = getattr(importlib.import_module(module), name)(*args)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "pid": os.getpid(), "ip": ip}
    return {"result": result, "pid": os.getpid(), "ip": ip}


@dataclass
class Node:
    node_id: str
    ip: str
    hostname: str
    gpus: float
    cpus: float
    is_head: bool
    alive: bool = True
    conn: s.Conn | None = None  # None: the head itself (tasks run in the GCS process)
    pending: dict[int, queue.Queue[dict[str, Any]]] = field(default_factory=dict)

    def as_ray(self) -> dict[str, Any]:
        """The node as ray.nodes() reports it (real keys; GPU only when the node has some)."""
        resources: dict[str, float] = {"CPU": self.cpus, f"node:{self.ip}": 1.0}
        if self.gpus:
            resources["GPU"] = self.gpus
        if self.is_head:
            resources["node:__internal_head__"] = 1.0
        return {"NodeID": self.node_id, "Alive": self.alive, "alive": self.alive,
                "NodeManagerAddress": self.ip, "NodeManagerHostname": self.hostname,
                "NodeName": self.ip, "Resources": resources,
                "Labels": {"ray.io/node_id": self.node_id}}


def new_node(ip: str, gpus: float, cpus: float, is_head: bool) -> Node:
    return Node(secrets.token_hex(28), ip, socket.gethostname(), gpus, cpus, is_head)


class Gcs:
    """The head's node table and the server that keeps it."""

    def __init__(self, ip: str, port: int, head: Node) -> None:
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((ip, port))  # the node's address exactly: errno 99 when not ours
        self.server.listen(64)
        self.lock = threading.Lock()
        self.nodes: dict[str, Node] = {head.node_id: head}
        self.ids = itertools.count(1)

    def serve_forever(self) -> None:
        while True:
            sock, _ = self.server.accept()
            threading.Thread(target=self.session, args=(sock,), daemon=True).start()

    def session(self, sock: socket.socket) -> None:
        conn = s.Conn(sock)
        first = conn.recv(timeout=10)
        try:
            if first and first.get("op") == "register":
                self.node_session(conn, first)
            elif first and first.get("op") == "driver":
                self.driver_session(conn, first)
        except OSError:
            pass
        finally:
            conn.close()

    def node_session(self, conn: s.Conn, hello: dict[str, Any]) -> None:
        ip = str(hello["ip"])
        refused = version_mismatch(ip, hello["ray_version"], hello["python_version"])
        if refused:
            s.log(f"refused node {ip} ({conn.peer}): Ray {hello['ray_version']}, Python "
                  f"{hello['python_version']} (the cluster runs Ray {s.ray_version()})")
            conn.send({"ok": False, "error": refused})
            return
        node = Node(secrets.token_hex(28), ip, str(hello.get("hostname", ip)),
                    float(hello["gpus"]), float(hello["cpus"]), False, conn=conn)
        with self.lock:
            self.nodes[node.node_id] = node
        conn.send({"ok": True, "node_id": node.node_id})
        s.log(f"node {node.node_id} joined from {ip} ({node.gpus:g} GPUs)")
        conn.keep_alive()
        while (message := conn.recv()) is not None:
            waiter = node.pending.pop(message.get("id", -1), None)
            if waiter is not None:
                waiter.put(message)
        with self.lock:
            node.alive = False
        s.log(f"node {node.node_id} ({ip}) is dead: its connection to the GCS closed")
        for rid in list(node.pending):
            waiter = node.pending.pop(rid, None)
            if waiter is not None:
                waiter.put({"error": f"the node {ip} died", "pid": 0, "ip": ip})

    def driver_session(self, conn: s.Conn, hello: dict[str, Any]) -> None:
        refused = version_mismatch(conn.peer.rpartition(":")[0], hello["ray_version"],
                                   hello["python_version"])
        conn.send({"ok": not refused, "error": refused})
        if refused:
            return
        # A driver may sit idle for as long as it likes: no silence limit, no heartbeats.
        while (message := conn.recv(timeout=None)) is not None:
            op = message.get("op")
            if op == "nodes":
                with self.lock:
                    conn.send({"nodes": [n.as_ray() for n in self.nodes.values()]})
            elif op == "run":
                conn.send(self.run_on(str(message["node_id"]), str(message["func"]),
                                      list(message.get("args", []))))
            else:
                conn.send({"error": f"stand-in GCS: unknown op {op!r}"})

    def run_on(self, node_id: str, func: str, args: list[Any]) -> dict[str, Any]:
        node = self.nodes.get(node_id)
        if node is None or not node.alive:
            return {"error": f"ray.exceptions.NodeDiedError: node {node_id} is dead", "pid": 0,
                    "ip": node.ip if node else "?"}
        if node.conn is None:
            return run_task(func, args, node.ip)
        rid = next(self.ids)
        waiter: queue.Queue[dict[str, Any]] = queue.Queue()
        node.pending[rid] = waiter
        try:
            node.conn.send({"op": "run", "id": rid, "func": func, "args": args})
            return waiter.get(timeout=RUN_TIMEOUT_SECONDS)
        except (OSError, queue.Empty):
            node.pending.pop(rid, None)
            return {"error": f"the node {node.ip} did not answer", "pid": 0, "ip": node.ip}


def start_head(ip: str, port: int, gpus: float, cpus: float, ready: Any) -> int:
    head = new_node(ip, gpus, cpus, is_head=True)
    try:
        gcs = Gcs(ip, port, head)
    except OSError as exc:
        s.error(f"OSError: {exc}")
        return 1
    os.makedirs(s.ray_temp_dir(), exist_ok=True)
    with open(s.address_file(), "w") as fh:
        fh.write(f"{ip}:{port}\n")
    s.log(f"Ray runtime started (stand-in Ray {s.ray_version()}): head node {head.node_id} "
          f"on {ip}:{port} with {gpus:g} GPUs.")
    s.log(f"To add another node to this Ray cluster, run\n    ray start --address='{ip}:{port}'")
    ready()
    gcs.serve_forever()
    return 0


def start_worker(address: str, ip: str, gpus: float, cpus: float, ready: Any) -> int:
    host, port = s.split_address(address)
    try:
        sock = s.connect_retry(host, port, s.connect_timeout(30), source_ip=ip)
    except OSError as exc:
        s.error(f"OSError: {exc}")
        return 1
    unreachable = (f"ConnectionError: Unable to connect to GCS at {host}:{port}. Check that (1) "
                   "Ray GCS with matching version started successfully at the specified address, "
                   "(2) this node can reach the specified address, and (3) there is no firewall "
                   "setting preventing access.")
    if sock is None:
        s.error(unreachable)
        return 1
    conn = s.Conn(sock)
    conn.send({"op": "register", "ip": ip, "hostname": socket.gethostname(), "gpus": gpus,
               "cpus": cpus, "ray_version": s.ray_version(),
               "python_version": s.python_version()})
    reply = conn.recv(timeout=10)
    if reply is None:
        s.error(unreachable)
        return 1
    if not reply.get("ok"):
        s.error(str(reply.get("error")))
        return 1
    s.log(f"Ray runtime started (stand-in Ray {s.ray_version()}): node {reply['node_id']} on "
          f"{ip} with {gpus:g} GPUs joined the cluster at {host}:{port}.")
    ready()
    conn.keep_alive()

    def run(message: dict[str, Any]) -> None:
        answer = run_task(str(message["func"]), list(message.get("args", [])), ip)
        with contextlib.suppress(OSError):  # the GCS is gone: the loop below notices
            conn.send({"id": message["id"], **answer})

    while (message := conn.recv()) is not None:
        if message.get("op") == "run":
            threading.Thread(target=run, args=(message,), daemon=True).start()
    # What the raylet logs when the GCS is gone for good.
    s.error(f"[raylet] {s.gcs_lost(f'{host}:{port}')}")
    return 1


def guarded(target: Any, *args: Any) -> int:
    """Run a node; an unexpected exception prints its traceback and exits 1."""
    try:
        code: int = target(*args)
        return code
    except KeyboardInterrupt:
        return 0
    except Exception:
        traceback.print_exc(file=sys.stderr)
        return 1
