"""TEST STAND-IN for Ray's `ray` CLI (gpufleet simulator): `ray start`, `ray status`, `ray stop`
and `ray --version`, with real Ray's flag names (the ones gpufleet uses, plus common ones that
are accepted and ignored).

    ray start --head --node-ip-address=IP --port=6379 [--num-gpus=N] [--block]
    ray start --address=HEAD:PORT --node-ip-address=IP [--num-gpus=N] [--block]
    ray status [--address=HEAD:PORT]
    ray stop [--force]

Without --block, `ray start` runs the node in the background (logs under
$RAY_TMPDIR/ray/session_latest/logs/) and returns once it is up, as real Ray does.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime

import ray
from ray import _node
from ray import _standin as s

READY_FD_ENV = "GPUFLEET_SIM_RAY_READY_FD"  # stand-in only: the background node says "up"


def boolean(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"'{value}' is not a valid boolean")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray", description="Ray command line (gpufleet stand-in)")
    p.add_argument("--version", action="version", version=f"ray, version {s.ray_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="Start Ray processes manually on the local machine.")
    start.add_argument("--head", action="store_true")
    start.add_argument("--address")
    start.add_argument("--node-ip-address")
    start.add_argument("--port", type=int)  # real Ray: None, 6379 on a head
    start.add_argument("--num-gpus", type=int)
    start.add_argument("--num-cpus", type=int)
    start.add_argument("--block", action="store_true")
    start.add_argument("--include-dashboard", type=boolean, nargs="?", const=True)
    start.add_argument("--disable-usage-stats", action="store_true")
    # Accepted and ignored: the stand-in has no such processes or ports.
    for flag in ("--dashboard-host", "--resources", "--temp-dir", "--node-name",
                 "--log-style", "--log-color", "--plasma-directory", "--labels"):
        start.add_argument(flag)
    for flag in ("--dashboard-port", "--node-manager-port", "--object-manager-port",
                 "--min-worker-port", "--max-worker-port", "--ray-client-server-port",
                 "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--metrics-export-port", "--memory", "--object-store-memory",
                 "--runtime-env-agent-port"):
        start.add_argument(flag, type=int)
    status = sub.add_parser("status", help="Print cluster status.")
    status.add_argument("--address")
    stop = sub.add_parser("stop", help="Stop Ray processes manually on the local machine.")
    stop.add_argument("--force", "-f", action="store_true")
    stop.add_argument("--grace-period", "-g", type=int, default=16)
    return p


def pid_dir() -> str:
    return os.path.join(s.ray_temp_dir(), "standin-pids")


# --- ray start -----------------------------------------------------------------------------------
def start(args: argparse.Namespace, argv: list[str]) -> int:
    if not args.head and not args.address:
        s.error("ray start: pass --head to start a new cluster, or --address=HEAD:PORT to join "
                "one")
        return 1
    if not args.head:
        # Real Ray (2.40.0 ray/scripts/scripts.py, `start`): head-only flags on a worker.
        for flag, value in (("--port", args.port), ("--include-dashboard", args.include_dashboard)):
            if value is not None:
                s.error(f"ValueError: {flag} should only be specified when starting head node "
                        "with `--head`.")
                return 1
    ifname = s.socket_ifname_error()
    if ifname:
        s.error(ifname)
        return 1
    if not args.block:
        return start_in_background(args, argv)
    # The node's GPUs: --num-gpus, else the ones this container was given.
    gpus = float(args.num_gpus if args.num_gpus is not None else len(s.local_gpus() or []))
    cpus = float(args.num_cpus if args.num_cpus is not None else os.cpu_count() or 1)
    ip = args.node_ip_address or s.default_ip()
    ready = ready_signal()
    os.makedirs(pid_dir(), exist_ok=True)
    pid_file = os.path.join(pid_dir(), str(os.getpid()))
    with open(pid_file, "w") as fh:
        fh.write("head\n" if args.head else "worker\n")
    # docker stop / ray stop send SIGTERM: leave through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if args.head:
            port = args.port if args.port is not None else 6379
            return _node.start_head(ip, port, gpus, cpus, ready)
        return _node.start_worker(args.address, ip, gpus, cpus, ready)
    except KeyboardInterrupt:
        return 0
    finally:
        if os.path.exists(pid_file):
            os.remove(pid_file)


def ready_signal() -> Callable[[], None]:
    """What the node calls once it is up: tells the `ray start` that put it in the background."""
    fd = int(os.environ.pop(READY_FD_ENV, "-1"))

    def ready() -> None:
        if fd >= 0:
            os.write(fd, b"ready\n")
            os.close(fd)

    return ready


def start_in_background(args: argparse.Namespace, argv: list[str]) -> int:
    logs = os.path.join(s.ray_temp_dir(), "session_latest", "logs")
    os.makedirs(logs, exist_ok=True)
    log_path = os.path.join(logs, "gcs_server.out" if args.head else "raylet.out")
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    read_end, write_end = os.pipe()
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", *argv, "--block"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            pass_fds=(write_end,), start_new_session=True,
            env={**os.environ, READY_FD_ENV: str(write_end)})
    os.close(write_end)
    deadline = time.monotonic() + s.connect_timeout(30) + 15
    answer = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([read_end], [], [], 0.5)
        if readable:
            answer = os.read(read_end, 64)
            break  # "ready", or EOF: the node exited
    os.close(read_end)
    with open(log_path, "rb") as fh:
        fh.seek(offset)  # this start's output only
        output = fh.read().decode(errors="replace")
    if answer.startswith(b"ready"):
        print(output, end="", flush=True)
        return 0
    try:
        code = child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        code = 1
    print(output, end="", file=sys.stderr, flush=True)
    return code or 1


# --- ray status / ray stop -------------------------------------------------------------------------
def status(args: argparse.Namespace) -> int:
    try:
        ray.init(address=args.address, logging_level=logging.WARNING)
        nodes = ray.nodes()
    except (ConnectionError, RuntimeError) as exc:
        s.error(f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        ray.shutdown()
    alive = [n for n in nodes if n["Alive"]]
    dead = [n for n in nodes if not n["Alive"]]
    rule = "-" * 63
    lines = [f"======== Autoscaler status: {datetime.now()} ========", "Node status", rule,
             "Active:"]
    lines += [f" 1 node_{n['NodeID']} ({n['NodeManagerAddress']})" for n in alive]
    lines += ["Pending:", " (no pending nodes)", "Recent failures:"]
    lines += [f" node_{n['NodeID']}: NodeTerminated (ip: {n['NodeManagerAddress']})"
              for n in dead] or [" (no failures)"]
    cpus = sum(n["Resources"].get("CPU", 0.0) for n in alive)
    gpus = sum(n["Resources"].get("GPU", 0.0) for n in alive)
    lines += ["", "Resources", rule, "Usage:", f" 0.0/{cpus:.1f} CPU", f" 0.0/{gpus:.1f} GPU",
              "", "Demands:", " (no resource demands)"]
    print("\n".join(lines))
    return 0


def stop(args: argparse.Namespace) -> int:
    try:
        pids = [int(name) for name in os.listdir(pid_dir()) if name.isdigit()]
    except OSError:
        pids = []
    live = []
    for pid in pids:
        if not is_ray_node(pid):
            continue  # stale: a restarted container reuses pids
        try:
            os.kill(pid, signal.SIGKILL if args.force else signal.SIGTERM)
            live.append(pid)
        except ProcessLookupError:
            pass
    stopped = len(live)
    deadline = time.monotonic() + args.grace_period
    while live and time.monotonic() < deadline:
        time.sleep(0.1)
        live = [pid for pid in live if alive(pid)]
    for pid in live:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:  # what a killed process could not remove itself
        if os.path.exists(os.path.join(pid_dir(), str(pid))):
            os.remove(os.path.join(pid_dir(), str(pid)))
    if os.path.exists(s.address_file()):
        os.remove(s.address_file())
    if not stopped:
        print("Did not find any active Ray processes.")
    else:
        print(f"Stopped all {stopped} Ray processes.")
    return 0


def is_ray_node(pid: int) -> bool:
    """The pid is (still) a `ray start` node, not whatever process got the number since."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:
        return False
    command = any(a == b"ray.scripts.scripts" or a == b"ray" or a.endswith(b"/ray")
                  for a in args[:3])  # python3 -m ray.scripts.scripts, or the `ray` script
    return command and b"start" in args


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our own child, not yet reaped) is gone for this purpose.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.command == "start":
        if args.ray_client_server_port is not None:
            # As real Ray without the ray[client] extra (vLLM's images): refused at start.
            print("Ray Client requires pip package `ray[client]`. If you installed the minimal "
                  "Ray (e.g. `pip install ray`), please reinstall by executing `pip install "
                  "ray[client]`.", file=sys.stderr)
            return 1
        return start(args, argv)
    if args.command == "status":
        return status(args)
    return stop(args)


if __name__ == "__main__":
    sys.exit(main())
