"""Helpers for the end-to-end tests (and benchmarks/fleet.py): test copies of the simulated
hosts, a copy of the product tree, fleet files, runs of the deploy and of its preview.

Tests never touch the rehearsal fleet (`gpufleet-sim-*`, what `make rehearse` provisions):
each test module runs on its own copies of those hosts (`gpufleet-<prefix>-<hardware>`: the
same image and hardware under other names), so `make test` and `make rehearse` can run in any
order. The deploy runs from a copy of the product tree, so a test can change
inventory/pins.toml there exactly as a user would.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.e2e.hosts import ok, sh
from tests.sim import simctl

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("components", "deploys", "facts", "inventory", "operations", "rules", "templates",
           "inventory.py", "pyproject.toml")
PYINFRA = REPO / ".venv" / "bin" / "pyinfra"
SIM_PREFIX = "gpufleet-sim-"


def copy_name(prefix: str, sim_name: str) -> str:
    """gpufleet-sim-h100x8 -> gpufleet-<prefix>-h100x8."""
    return f"gpufleet-{prefix}-{sim_name.removeprefix(SIM_PREFIX)}"


def hardware_of(name: str) -> str:
    """gpufleet-<prefix>-h100x8 -> h100x8."""
    return name.split("-", 2)[2]


# The stack tests' hosts (and the benchmark's).
H100, A100, RTX, MONITOR = (copy_name("stack", n) for n in (
    "gpufleet-sim-h100x8", "gpufleet-sim-a100x2", "gpufleet-sim-rtx4090",
    "gpufleet-sim-monitor"))


def copy_specs(names: list[str]) -> dict[str, simctl.HostSpec]:
    """The simulated hosts of tests/sim/hosts.toml under the test copies' names."""
    by_hw = {h.name.removeprefix(SIM_PREFIX): h for h in simctl.load_hosts()}
    return {n: replace(by_hw[hardware_of(n)], name=n,
                       hardware={**by_hw[hardware_of(n)].hardware, "hostname": n})
            for n in names}


# Every test copy this process started: tests/e2e/conftest.py removes a module's at its end.
STARTED: set[str] = set()

# Removals under way in the background (remove_later): the host names, the thread, and what
# went wrong in it.
_REMOVALS: list[tuple[frozenset[str], threading.Thread]] = []
REMOVAL_ERRORS: list[str] = []


def remove_later(names: list[str], then: Callable[[], object] | None = None) -> None:
    """Remove host copies (containers and volumes), then run ``then``, in the background: a
    host's removal is mostly the deletion of its Docker data (~9 s each on the 2-core machine),
    which the next module need not wait for. Starting one of ``names`` again waits for it
    (start_hosts, start_converged); the end of the run waits for all (tests/conftest.py), so a
    run still leaves no host copy behind. A name already being removed is not removed a
    second time (a module's own teardown and the autouse one both ask: Docker refuses a
    second removal of a container while the first is under way)."""
    STARTED.difference_update(names)
    pending = {name for names_, thread in _REMOVALS if thread.is_alive() for name in names_}
    names = [name for name in names if name not in pending]

    def work() -> None:
        try:
            simctl.remove_hosts(names)
            if then is not None:
                then()
        except Exception as exc:  # reported at the end of the run (wait_for_removals)
            REMOVAL_ERRORS.append(f"{', '.join(names)}: {exc}")

    thread = threading.Thread(target=work, name=f"remove {' '.join(names)}")
    thread.start()
    _REMOVALS.append((frozenset(names), thread))


def wait_for_removals(names: list[str] | None = None) -> None:
    """Wait for the background removals of ``names`` (None: all of them)."""
    for pending, thread in list(_REMOVALS):
        if names is None or pending & set(names):
            thread.join()
            _REMOVALS.remove((pending, thread))


def start_hosts(names: list[str], fresh: bool = True,
                run_args: dict[str, tuple[str, ...]] | None = None) -> None:
    """Start (fresh: recreate) test copies of simulated hosts, named gpufleet-<prefix>-<hw>;
    the repository container is shared. ``run_args``: extra `docker run` flags per host."""
    assert not any(n.startswith(SIM_PREFIX) for n in names), "the rehearsal fleet is not a test's"
    wait_for_removals(names)
    hosts = list(copy_specs(names).values())
    STARTED.update(names)
    images = simctl.ensure_shared()
    if fresh:
        simctl.remove_hosts(names)
    for spec in hosts:
        simctl.ensure_host(spec, images["host"], (run_args or {}).get(spec.name, ()))
    for spec in hosts:
        simctl.wait_for_systemd(spec.name)



# --- converged host snapshots ----------------------------------------------------------------
# Most modules test what a converged host does (a rollout, the canary, the engines' settings),
# not the converge from bare, which test_gpu_host, test_nvidia_stack, test_fleet_state and
# test_faults prove. Those modules start their copies from a snapshot: one host of each kind
# converged by the standard test fleet (write_fleet, inference on), stopped, its container
# committed to an image and its volumes (the host's Docker data, /sys/module) copied. It is
# made at most once per key: the product tree, the simulator's images, the pins. A copy of a
# snapshot still gets the module's own converge (its names, settings, key); that converge
# starts from a converged host instead of a bare one.
SNAPSHOT_KINDS = ("h100x8", "a100x2", "monitor")
SNAPSHOT_LABEL = f"{simctl.LABEL}=snapshot"
# Where the monitoring host keeps what it saw (rules/monitoring.py's storage paths): emptied
# before its snapshot is taken.
MONITORING_HISTORY = ("/var/lib/prometheus/metrics2", "/var/lib/prometheus/alertmanager")
# The gateway's services (deploys/monitoring_host.py), not started at a copy's boot: the
# snapshot's gateway routes to the snapshot's own hosts (gpufleet-snap<key>-*; by address now,
# which other containers may hold by then; by name once, which no copy resolved, so nginx failed
# at every copy's boot), and the exporter, unable to reach a failed nginx,
# restarted into systemd's start limit (5 in 10 s): a module's converge that reached "Ensure
# the nginx exporter runs" within those 10 s was refused ("Start request repeated too
# quickly"; operations/services.py now resets a failed unit first). The copy's converge
# enables and starts them with its own routing.
GATEWAY_UNITS = ("nginx", "prometheus-nginx-exporter")


def snapshot_key(images: dict[str, str], pins: tuple[str, str, str] | None,
                 kinds: list[str]) -> str:
    """Everything a converged snapshot depends on: the product files, the simulator's images
    (host, repository, engine...), the pins, the hosts of its fleet and the code here that
    writes the test fleet."""
    digest = hashlib.sha256(json.dumps([images, pins, kinds], sort_keys=True).encode())
    for top in [*(REPO / name for name in PRODUCT), Path(__file__)]:
        files = [top] if top.is_file() else sorted(
            p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for path in files:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _snapshot_volume(key: str, kind: str, volume: str) -> str:
    return f"gpufleet-snapshot-{key}-{kind}-{volume}"


def _copy_volume(image: str, source: str, dest: str, label: str = f"{simctl.LABEL}=host"
                 ) -> None:
    """dest (created, labelled) := a copy of source: owners, modes, device nodes and extended
    attributes kept (the host's Docker keeps its overlay2 layers there)."""
    subprocess.run(["docker", "volume", "create", "--label", label, dest],
                   check=True, capture_output=True)
    subprocess.run(["docker", "run", "--rm", "--cap-add", "SYS_ADMIN", "--cap-add", "MKNOD",
                    "-v", f"{source}:/from:ro", "-v", f"{dest}:/to", "--entrypoint", "cp",
                    image, "-a", "/from/.", "/to/"], check=True, capture_output=True, text=True)


def _prune_snapshots(keep: int = 6) -> None:
    """Remove the snapshots (images, volumes) of all but the ``keep`` newest keys: each product
    change makes new ones (two per tree: the default pins and test_rollout's older ones)."""
    volumes = simctl.docker("volume", "ls", "-q", "--filter", f"label={SNAPSHOT_LABEL}"
                            ).stdout.split()
    if not volumes:
        return
    created: dict[str, str] = {}
    for entry in json.loads(simctl.docker("volume", "inspect", *volumes).stdout):
        key = entry["Name"].removeprefix("gpufleet-snapshot-").split("-", 1)[0]
        created[key] = max(created.get(key, ""), entry.get("CreatedAt", ""))
    old = sorted(created, key=lambda k: created[k], reverse=True)[keep:]
    for key in old:
        simctl.docker("volume", "rm", "-f",
                      *[v for v in volumes if v.startswith(f"gpufleet-snapshot-{key}-")],
                      check=False)
        tags = simctl.docker("images", "--format", "{{.Repository}}:{{.Tag}}",
                             "gpufleet-sim/converged").stdout.split()
        stale = [t for t in tags if t.startswith(f"gpufleet-sim/converged:{key}-")]
        if stale:
            simctl.docker("rmi", *stale, check=False)


def converged_snapshot(kinds: set[str], pins: tuple[str, str, str] | None = None
                       ) -> tuple[str, dict[str, str]]:
    """(key, kind -> image) of converged hosts of the ``kinds`` (with the default pins: all
    of SNAPSHOT_KINDS, as one fleet) converged with ``pins`` (driver, CUDA, container toolkit;
    None: inventory/pins.toml's); made when missing, one process at a time (xdist workers ask
    at the same time). A monitoring host is converged beside a GPU host (its targets)."""
    made = set(SNAPSHOT_KINDS) if pins is None else set(kinds)
    if made == {"monitor"}:
        made.add("a100x2")
    order = [kind for kind in SNAPSHOT_KINDS if kind in made]
    images = simctl.ensure_shared()
    key = snapshot_key(images, pins, order)
    tags = {kind: f"gpufleet-sim/converged:{key}-{kind}" for kind in order}
    volumes = [_snapshot_volume(key, kind, v) for kind in order for v in ("docker", "sysmodule")]
    simctl.BUILD_DIR.mkdir(parents=True, exist_ok=True)
    # One lock per key: two modules asking for the same snapshot make it once; snapshots of
    # other pins (test_rollout's) are made side by side.
    with open(simctl.BUILD_DIR / f".snapshot-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(simctl.image_exists(t) for t in tags.values()) and all(
                simctl.docker("volume", "inspect", v, check=False).returncode == 0
                for v in volumes):
            return key, tags
        started = time.monotonic()
        # Named after the key: two snapshots of different keys (the default pins' and
        # test_rollout's older ones) are made side by side in two workers, and one name for
        # both had each recreate the other's hosts (a fresh CI run: "volume is in use", and
        # test_faults' copies started bare).
        names = [copy_name(f"snap{key[:6]}", SIM_PREFIX + kind) for kind in order]
        try:
            start_hosts(names)
            with tempfile.TemporaryDirectory(prefix="gpufleet-snapshot-") as tmp:
                tree = product_copy(Path(tmp) / "tree")
                if pins:
                    set_pins(tree, *pins)
                # Two replicas on each GPU host, as the modules' fleets run (a fleet with a
                # monitoring host must say how many).
                fleet = write_fleet(Path(tmp), names, inference=True, settings={
                    n: {"inference": {"replicas": 2}} for n in names if "monitor" not in n})
                # A fleet name of its own: its generated API key is not the modules' fleets'
                # ("sim"), so each module's converge writes its own key to the hosts.
                text = fleet.read_text()
                assert '\nname = "sim"\n' in text
                fleet.write_text(text.replace('\nname = "sim"\n', '\nname = "snapshot"\n', 1))
                run = deploy(tree, fleet)
                assert run.rc == 0, "the snapshot's converge failed:\n" + run.output[-5000:]
            for name, kind in zip(names, order, strict=True):
                if kind == "monitor":
                    # A converged host's configuration, not its history: Prometheus's TSDB
                    # would answer a copy's queries with the snapshot's own hosts (their
                    # series stay visible for 5 minutes after the last scrape), and
                    # Alertmanager's log would hold its alerts.
                    ok(name, "systemctl stop prometheus prometheus-alertmanager && rm -rf "
                             + " ".join(f"{d}/*" for d in MONITORING_HISTORY))
                    ok(name, f"systemctl disable {' '.join(GATEWAY_UNITS)}")
                simctl.docker("update", "--restart=no", name)
                simctl.docker("stop", "-t", "120", name)  # systemd halts: Docker's data settles
                simctl.docker("commit", name, tags[kind])
                for volume in ("docker", "sysmodule"):
                    target = _snapshot_volume(key, kind, volume)
                    simctl.docker("volume", "rm", "-f", target, check=False)
                    _copy_volume(images["host"], f"{name}-{volume}", target, SNAPSHOT_LABEL)
        finally:
            remove_later(names)
            STARTED.difference_update(names)
        _prune_snapshots()
        print(f"[snapshot] {', '.join(order)} converged and saved in "
              f"{time.monotonic() - started:.0f} s (key {key})", flush=True)
        return key, tags


def start_converged(names: list[str], pins: tuple[str, str, str] | None = None,
                    run_args: dict[str, tuple[str, ...]] | None = None) -> None:
    """Start test copies (recreated) from the converged snapshot of their kind (see above);
    bare, with a warning in the run's summary, when the snapshot cannot be made (the bare
    converge's own modules then say why), or when $GPUFLEET_TEST_SNAPSHOTS is 0.
    ``run_args``: extra `docker run` flags per host, as start_hosts takes them."""
    if os.environ.get("GPUFLEET_TEST_SNAPSHOTS", "1") == "0":  # every module from bare
        start_hosts(names, run_args=run_args)
        return
    try:
        key, tags = converged_snapshot({hardware_of(n) for n in names}, pins)
    except (AssertionError, simctl.SimError, subprocess.SubprocessError) as exc:
        warnings.warn(f"no converged snapshot ({exc}); {', '.join(names)} start bare",
                      stacklevel=2)
        start_hosts(names, run_args=run_args)
        return
    images = simctl.ensure_shared()
    wait_for_removals(names)
    simctl.remove_hosts(names)
    for name in names:
        kind = hardware_of(name)
        for volume in ("docker", "sysmodule"):
            _copy_volume(images["host"], _snapshot_volume(key, kind, volume), f"{name}-{volume}")
    STARTED.update(names)
    for spec in copy_specs(names).values():
        simctl.ensure_host(spec, tags[hardware_of(spec.name)],
                           (run_args or {}).get(spec.name, ()))
    for name in names:
        simctl.wait_for_systemd(name)


def product_copy(dest: Path) -> Path:
    """A copy of the product tree to run the deploy from (its pins.toml may be edited)."""
    for name in PRODUCT:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def set_pins(tree: Path, driver: str, cuda: str, toolkit: str,
             pin_set: str = "r535-cuda121") -> None:
    """Rewrite one pin set's driver / CUDA / container toolkit versions in the copy."""
    path = tree / "inventory" / "pins.toml"
    text = path.read_text()
    for table, version in (("driver", driver), ("cuda", cuda), ("container_toolkit", toolkit)):
        pattern = rf'(\[sets\.{re.escape(pin_set)}\.{table}\][^\[]*?\nversion = )"[^"]*"'
        text, count = re.subn(pattern, rf'\g<1>"{version}"', text, count=1, flags=re.S)
        assert count == 1, f"no {table} version in pin set {pin_set}"
    path.write_text(text)


def _toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, dict) else "{ " + ", ".join(
        f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"


# Hardware -> the group a fleet file puts such a host in, and what it expects of its GPUs.
GROUPS = {
    "h100x8": ("hgx", {"count": 8, "model": "H100 80GB HBM3", "memory_gib": 79}),
    "a100x2": ("pcie", {"count": 2, "model": "A100-PCIE-40GB", "memory_gib": 39}),
    "rtx4090": ("desk", {"count": 1, "model": "RTX 4090"}),
    "monitor": ("monitor", None),  # no GPU: the monitoring host's role
}


def write_fleet(dest: Path, hosts: list[str], settings: dict[str, Any] | None = None,
                connect: dict[str, dict[str, Any]] | None = None, extra_toml: str = "",
                name: str = "fleet.toml", inference: bool = False) -> Path:
    """A fleet file for test hosts: inventory/sim.toml's fleet-wide settings (absolute paths),
    the Python environment off, the inference step off unless ``inference``, one group per
    hardware kind.

    ``settings``: per-host settings; ``connect``: per-host connection fields (default
    ``target = "@docker/NAME"``); ``extra_toml``: appended as is (fleet-wide tables).
    """
    head = simctl.fleet_settings_toml()
    if not inference:
        assert "\n[settings.inference]\n" in head
        head = head.replace("\n[settings.inference]\n",
                            "\n[settings.inference]\nenabled = false\n")
    # The Python environment (a 2.7 GB lock per host) has its own tests and is not the stack.
    lines = [head.rstrip(), "", "[settings.python_env]", "enabled = false", "", extra_toml, ""]
    by_group: dict[str, list[str]] = {}
    for host in hosts:
        group, gpus = GROUPS[hardware_of(host)]
        if group not in by_group:
            group_settings = f"gpus = {_toml_value(gpus)}" if gpus else 'role = "monitor"'
            lines += [f"[groups.{group}]", f"settings = {{ {group_settings} }}", ""]
        by_group.setdefault(group, []).append(host)
        entry = (connect or {}).get(host, {"target": f"@docker/{host}"})
        lines.append(f"[groups.{group}.hosts.{host}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
        extra = (settings or {}).get(host)
        if extra:
            lines.append("settings = { " + ", ".join(
                f"{k} = {_toml_value(v)}" for k, v in extra.items()) + " }")
        lines.append("")
    path = dest / name
    path.write_text("\n".join(lines))
    return path


@dataclass
class DeployRun:
    rc: int
    output: str
    seconds: float

    @property
    def changed_ops(self) -> list[str]:
        """Operation lines pyinfra reports as changed ("[host] Success"), noops excluded."""
        return re.findall(r"^\s*\[(\S+)\] Success\s*$", self.output, re.M)


def deploy(tree: Path, fleet: Path, *extra: str, timeout: float = 1500,
           script: str = "deploys/gpu_host.py") -> DeployRun:
    env = {**os.environ, "GPUFLEET_FLEET": str(fleet), "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(PYINFRA), "-y", *extra, "inventory.py", script],
        cwd=tree, env=env, capture_output=True, text=True, timeout=timeout,
    )
    return DeployRun(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0)


def api_key(fleet: Path) -> str | None:
    """The API key the fleet's engines check (their key file, or the key generated for the
    fleet when they listen beyond loopback), or None."""
    from inventory.fleet import load_fleet
    from inventory.key_files import read_key_file

    for spec in load_fleet(fleet).hosts:
        cfg = spec.settings.inference
        if spec.settings.role == "gpu" and cfg.enabled and cfg.api_key_file:
            return read_key_file(spec.controller_path(cfg.api_key_file))
    return None


@contextmanager
def process_lists(hosts: list[str], every: float = 0.2) -> Iterator[list[str]]:
    """Every process command line seen on ``hosts`` (`ps -eo args`, sampled every ``every``
    seconds) while the block runs: what /proc/*/cmdline showed to any user of the host.

    One sampling loop inside each host, streaming its lists back: a `docker exec` per sample
    cost the machine about 0.1 s of CPU (the client, dockerd, the runtime) about four times a
    second for the whole converge; a `ps` inside costs a few milliseconds. The loop stops at
    the block's end (a stop file), and after an hour or with its host in any case."""
    stop = f"/tmp/gpufleet-e2e-ps-stop-{os.getpid()}-{threading.get_ident()}"
    loop = (f"rm -f {stop}; end=$((SECONDS + 3600)); "
            f"while [ ! -e {stop} ] && [ $SECONDS -lt $end ]; do ps -eo args; sleep {every}; "
            f"done; rm -f {stop}")
    seen: list[str] = []
    samplers = [subprocess.Popen(["docker", "exec", host, "bash", "-c", loop],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                for host in hosts]

    def read(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))

    readers = [threading.Thread(target=read, args=(p,), daemon=True) for p in samplers]
    for reader in readers:
        reader.start()
    try:
        yield seen
    finally:
        for host in hosts:
            sh(host, f"touch {stop}", timeout=30)
        for proc, reader in zip(samplers, readers, strict=True):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            reader.join(60)


def dpkg_versions(host: str, packages: list[str]) -> dict[str, str]:
    out = sh(host, "dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\\n' "
             + " ".join(packages)).stdout
    return {p[0]: p[1] for p in (line.split() for line in out.splitlines())
            if len(p) >= 3 and p[2][1:2] == "i"}


if __name__ == "__main__":  # start the stack hosts by hand: python -m tests.e2e.stack_helpers
    start_hosts(sys.argv[1:] or [H100, A100], fresh=False)


# --- the preview (pyinfra without -y) ---------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ROW = re.compile(r"^\s{4}(?P<name>\S.*?)\s{2,}(?P<change>-|\d+(?: \(.*?\))?)\s{2,}"
                  r"(?P<conditional>-|\d+(?: \(.*?\))?)\s*$")


def _count(cell: str) -> int:
    return 0 if cell == "-" else int(cell.split()[0])


@dataclass
class Preview:
    rc: int
    output: str
    # operation name -> (hosts with a change, hosts with a conditional change)
    rows: dict[str, tuple[int, int]]

    def changes(self) -> list[str]:
        return [name for name, (change, _) in self.rows.items() if change]

    def conditional(self) -> list[str]:
        return [name for name, (_, conditional) in self.rows.items() if conditional]

    def row(self, start: str) -> tuple[int, int]:
        """The row whose operation name starts with ``start`` (one must)."""
        found = [counts for name, counts in self.rows.items() if name.startswith(start)]
        assert len(found) == 1, f"{start!r}: {len(found)} rows in\n{list(self.rows)}"
        return found[0]


def parse_preview(output: str) -> dict[str, tuple[int, int]]:
    text = _ANSI.sub("", output)
    if "--> Detected changes:" not in text:
        return {}
    table = text.split("--> Detected changes:", 1)[1].split("Detected changes may not", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:  # after the header
        match = _ROW.match(line)
        if match:
            name = match.group("name").split(" | ", 1)[-1]
            rows[name] = (_count(match.group("change")), _count(match.group("conditional")))
    return rows


def preview(tree: Path, fleet: Path, *extra: str, answer: str = "n\n",
            env: dict[str, str] | None = None) -> Preview:
    """Run the deploy as an operator would without -y and answer the prompt (default: no)."""
    environ = {**os.environ, "GPUFLEET_FLEET": str(fleet), "PYTHONUNBUFFERED": "1",
               **(env or {})}
    proc = subprocess.run(
        [str(PYINFRA), *extra, "inventory.py", "deploys/gpu_host.py"],
        cwd=tree, env=environ, input=answer, capture_output=True, text=True, timeout=600,
    )
    output = proc.stdout + proc.stderr
    return Preview(proc.returncode, output, parse_preview(output))


# What "nothing changed on the host" means: the same packages at the same versions and
# states, the same holds, the same bytes in every file under /etc and gpufleet's state folder,
# the same containers and images.
SNAPSHOT = r"""
dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\n' | sort
echo --holds--; apt-mark showhold | sort
echo --etc--; find /etc /var/lib/gpufleet -xdev -type f -print0 2>/dev/null | sort -z |
  xargs -0 sha256sum
echo --links--; find /etc -xdev -type l -printf '%p -> %l\n' | sort
echo --containers--
if command -v docker >/dev/null; then docker ps -a --format '{{.ID}} {{.Image}} {{.State}}' | sort; fi
echo --images--; if command -v docker >/dev/null; then docker images -q | sort; fi
"""


def snapshot(host: str) -> str:
    proc = sh(host, SNAPSHOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def host_clock(host: str) -> int:
    """A second on the host's clock after which every event is new (events are stamped to
    the second: wait for the next one)."""
    now = int(sh(host, "date +%s").stdout.strip())
    time.sleep(1.1)
    return now + 1


def containers_started_since(host: str, since: int) -> list[str]:
    """Containers created or started on the host since ``since`` (docker events)."""
    proc = sh(host, "command -v docker >/dev/null || exit 0; sleep 1; "
                    f"docker events --since {since} --until $(date +%s) --filter type=container "
                    "--filter event=create --filter event=start "
                    "--format '{{.Action}} {{.Actor.Attributes.image}}'")
    return [line for line in proc.stdout.splitlines() if line.strip()]
