"""TEST STAND-IN plumbing (gpufleet simulator) of the stand-in engines: this node's GPUs, the
socket-interface check NCCL/Gloo make, and JSON lines over TCP with heartbeats (SGLang's
rendezvous). Ray is the real one (the image installs it from tests/sim/images/engine/ray.lock).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
from typing import Any

HARDWARE = "/etc/gpufleet-sim/hardware.json"
# Silence on a node's connection (no message, no heartbeat) for this long = the peer is gone:
# catches a cut network, where no FIN ever arrives.
HEARTBEAT_SECONDS = 1.0
DEAD_AFTER_SECONDS = float(os.environ.get("GPUFLEET_SIM_DEAD_AFTER_SECONDS", "15"))


def hardware_path() -> str:
    """hardware.json of this node; GPUFLEET_SIM_HARDWARE points the unit tests at another."""
    return os.environ.get("GPUFLEET_SIM_HARDWARE") or HARDWARE


def local_gpus() -> list[dict[str, Any]] | None:
    """The GPUs the stand-in NVIDIA hook gave this container; None when it gave none."""
    try:
        with open(hardware_path()) as fh:
            gpus: list[dict[str, Any]] = json.load(fh)["gpus"]
    except OSError:
        return None
    return gpus


def connect_timeout(default: float) -> float:
    """How long a joining node retries; GPUFLEET_SIM_CONNECT_TIMEOUT_SECONDS shortens it (tests)."""
    return float(os.environ.get("GPUFLEET_SIM_CONNECT_TIMEOUT_SECONDS") or default)


def log(message: str, stream: Any = None) -> None:
    print(f"INFO {time.strftime('%m-%d %H:%M:%S')} {message}", file=stream or sys.stdout,
          flush=True)


def error(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the interface check torch.distributed makes (Gloo; NCCL's variable read the same way) ---------
def missing_socket_ifname() -> str | None:
    """The interface named by GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME that this host lacks."""
    try:
        present = os.listdir("/sys/class/net")
    except OSError:
        return None
    gloo = os.environ.get("GLOO_SOCKET_IFNAME", "").strip()
    for name in filter(None, (n.strip() for n in gloo.split(","))):
        if name not in present:  # Gloo wants each named interface, exactly
            return name
    nccl = os.environ.get("NCCL_SOCKET_IFNAME", "").strip()
    if nccl and not nccl.startswith("^"):  # "^a,b" excludes interfaces: nothing to find
        names = [n.strip() for n in nccl.split(",") if n.strip()]
        # NCCL matches prefixes ("eth" finds eth0) unless the list starts with "=" (exact).
        exact = names[0].startswith("=")
        names = [n.lstrip("=") for n in names]
        if not any((n in present) if exact else any(p.startswith(n) for p in present)
                   for n in names):
            return names[0]
    return None


def socket_ifname_error() -> str | None:
    name = missing_socket_ifname()
    if name is None:
        return None
    return ("RuntimeError: [enforce fail at ../third_party/gloo/gloo/transport/tcp/device.cc:83] "
            f"ifa != nullptr. Unable to find address for: {name}")


# --- addresses -------------------------------------------------------------------------------
def split_address(address: str, default_port: int = 6379) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    if not host:
        return port, default_port
    return host.strip("[]"), int(port)


def default_ip() -> str:
    """This host's address on its default route (what Ray and vLLM pick when told none)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # UDP: no packet is sent
        ip: str = probe.getsockname()[0]
        return ip
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def connect_retry(host: str, port: int, seconds: float,
                  source_ip: str | None = None) -> socket.socket | None:
    """Connect to host:port, retrying until ``seconds`` pass (None then). The source address is
    bound first, so a node address this host does not have fails at once (errno 99)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return socket.create_connection(
                (host, port), timeout=2, source_address=(source_ip, 0) if source_ip else None)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL and source_ip:
                raise
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)


class Conn:
    """One JSON object per line over a TCP connection. With heartbeats on, both ends send a ping
    every second and recv() treats DEAD_AFTER_SECONDS of silence as the peer being gone."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(None)
        self.reader = sock.makefile("rb")
        self.send_lock = threading.Lock()
        self.closed = threading.Event()
        try:
            peer = sock.getpeername()
            self.peer = f"{peer[0]}:{peer[1]}"
        except OSError:  # already reset by the peer: recv() will say so
            self.peer = "?"

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        with self.send_lock:
            self.sock.sendall(data)

    def recv(self, timeout: float | None = -1.0) -> dict[str, Any] | None:
        """The next message (pings skipped); None when the peer closed, went silent or broke.
        ``timeout`` (seconds, None = forever) replaces the socket's current one."""
        if timeout is None or timeout >= 0:
            self.sock.settimeout(timeout)
        while True:
            try:
                line = self.reader.readline()
            except (OSError, ValueError):  # timed out, reset, or closed by another thread
                return None
            if not line:
                return None
            try:
                message: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                return None
            if message.get("op") != "ping":
                return message

    def keep_alive(self) -> None:
        """Heartbeats from now on: pings out every second, silence limit on recv()."""
        self.sock.settimeout(DEAD_AFTER_SECONDS)

        def beat() -> None:
            while not self.closed.wait(HEARTBEAT_SECONDS):
                try:
                    self.send({"op": "ping"})
                except OSError:
                    return

        threading.Thread(target=beat, daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):  # already closed by the peer
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
