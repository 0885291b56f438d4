"""gpufleet against the equivalent Ansible playbook on the same simulated hosts: no-op times at
1 and N hosts, alternating the tools round by round, and their ratios.

    .venv/bin/python benchmarks/ansible_compare.py                 # 1 host, then 8
    .venv/bin/python benchmarks/ansible_compare.py --hosts 1,4 --rounds 5

The hosts are the scale benchmark's (`gpufleet-scaleN-a100x2`, benchmarks/fleet.py --scale);
they are started and converged by gpufleet first when they are not. Ansible comes from PyPI,
hash-locked (benchmarks/ansible/requirements.lock), into benchmarks/.venv-ansible, and reaches
the hosts through the `community.docker.docker` connection. The playbook
(benchmarks/ansible/gpu_host.yml) holds the same desired state as gpufleet's deploy; its
host_vars are written here from what gpufleet recorded on each host, and the benchmark refuses
to time anything until a playbook run reports changed=0 on every host (same end state).

Three runs per round, in turn:
  gpufleet          `pyinfra -y inventory.py deploys/gpu_host.py` (a no-op on converged hosts)
  ansible-defaults  `ansible-playbook` as installed: fact gathering on, no pipelining, 5 forks
  ansible-best      no fact gathering, pipelining on, one fork per host
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fleet import run as run_gpufleet  # noqa: E402

ANSIBLE_VENV = REPO / "benchmarks" / ".venv-ansible"
ANSIBLE_LOCK = REPO / "benchmarks" / "ansible" / "requirements.lock"
PLAYBOOK = REPO / "benchmarks" / "ansible" / "gpu_host.yml"
GPU_TEST_IMAGE = "gpufleet-sim/cuda-base:12.1"  # inventory/sim.toml's settings.verify

# Read on the host: gpufleet's manifest, the managed files, keyrings, daemon.json, the
# weights manifest and the engine's published ports (one JSON document).
READ_STATE = r'''
import base64, json, os, subprocess
def b64(path):
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode()
manifest = json.load(open("/etc/gpufleet/manifest.json"))
weights_dir = os.environ["WEIGHTS"]
ports = subprocess.run(["docker", "ps", "--filter", "name=gpufleet-inference-engine",
                        "--format", "{{.Ports}}"], capture_output=True, text=True).stdout
print(json.dumps({
    "manifest": manifest,
    "files": {p: b64(p) for p, meta in manifest["files"].items() if meta},
    "keyrings": {p: b64(p) for p in manifest["keyrings"]},
    "daemon_json": b64("/etc/docker/daemon.json"),
    "weights_dir": weights_dir,
    "weights": json.load(open(os.path.join(weights_dir, ".gpufleet", "manifest.json"))),
    "ports": ports,
}))
'''


def ensure_ansible() -> Path:
    """ansible-playbook from the hash-locked requirements, installed once."""
    playbook_bin = ANSIBLE_VENV / "bin" / "ansible-playbook"
    stamp = ANSIBLE_VENV / ".installed"
    if not stamp.exists() or stamp.read_text() != ANSIBLE_LOCK.read_text():
        print("installing Ansible (hash-locked) into benchmarks/.venv-ansible ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True)
        subprocess.run([str(ANSIBLE_VENV / "bin" / "pip"), "install", "--quiet",
                        "--disable-pip-version-check", "--require-hashes", "-r",
                        str(ANSIBLE_LOCK)], check=True, env={**os.environ, "PIP_CONSTRAINT": ""})
        stamp.write_text(ANSIBLE_LOCK.read_text())
    return playbook_bin


def host_vars(host: str, weights_path: str, files_dir: Path) -> dict[str, Any]:
    """The playbook's variables for ``host``, from what gpufleet recorded there."""
    proc = subprocess.run(["docker", "exec", "-e", f"WEIGHTS={weights_path}", host,
                           "python3", "-c", READ_STATE], capture_output=True, text=True,
                          check=True)
    state = json.loads(proc.stdout)
    manifest = state["manifest"]

    def local_copy(dest: str, content: str) -> str:
        # Files the playbook copies as they are (`src:`): content given inline would be
        # templated, and JSON-looking text comes back re-serialised by Ansible.
        src = files_dir / host / dest.lstrip("/")
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(base64.b64decode(content))
        return str(src)

    keyrings = [{"src": local_copy(dest, content), "dest": dest}
                for dest, content in state["keyrings"].items()]
    managed = []
    for dest, meta in manifest["files"].items():
        if meta:
            owner, group = meta["owner"].split(":")
            managed.append({"dest": dest, "src": local_copy(dest, state["files"][dest]),
                            "owner": owner, "group": group, "mode": "0" + meta["mode"]})
    args = manifest["engine"]["args"]
    return {
        "keyrings": keyrings,
        "managed_files": managed,
        "absent_files": [p for p, meta in manifest["files"].items() if not meta],
        "packages": [{"spec": f"{name}={p['version']}"}
                     for name, p in sorted(manifest["packages"].items())],
        "held_packages": sorted(n for n, p in manifest["packages"].items() if p["held"]),
        "daemon_json": local_copy("/etc/docker/daemon.json", state["daemon_json"]),
        "services": manifest["services"],
        "images": [{"ref": ref, "id": image_id} for ref, image_id in manifest["images"].items()],
        "weights_files": [{"path": f"{state['weights_dir']}/{name}", "size": f["size"]}
                          for name, f in sorted(state["weights"]["files"].items())],
        "gpu_test_image": GPU_TEST_IMAGE,
        "served_model": args[args.index("--served-model-name") + 1],
        "engine_ports": sorted(int(p) for p in re.findall(r":(\d+)->8000/tcp", state["ports"])),
    }


def write_inventory(hosts: list[str], weights_path: str, dest: Path) -> Path:
    (dest / "host_vars").mkdir(parents=True, exist_ok=True)
    for host in hosts:
        (dest / "host_vars" / f"{host}.json").write_text(
            json.dumps(host_vars(host, weights_path, dest / "files")))
    inventory = dest / "hosts.ini"
    inventory.write_text("[gpu]\n" + "".join(
        f"{h} ansible_connection=community.docker.docker ansible_host={h} ansible_user=root\n"
        for h in hosts))
    return inventory


def run_ansible(playbook_bin: Path, inventory: Path, best: bool, forks: int
                ) -> tuple[int, float, str]:
    env = {**os.environ, "LC_ALL": "C.UTF-8", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOST_KEY_CHECKING": "False"}
    if best:
        env.update({"ANSIBLE_GATHERING": "explicit", "ANSIBLE_PIPELINING": "True",
                    "ANSIBLE_FORKS": str(forks)})
    t0 = time.monotonic()
    proc = subprocess.run([str(playbook_bin), "-i", str(inventory), str(PLAYBOOK)],
                          cwd=inventory.parent, env=env, capture_output=True, text=True)
    return proc.returncode, time.monotonic() - t0, proc.stdout + proc.stderr


def recap_changed(output: str) -> dict[str, int]:
    """PLAY RECAP: host -> changed count."""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", output, re.M)}


def compare(n: int, rounds: int, playbook_bin: Path) -> dict[str, float] | None:
    from tests.e2e import stack_helpers as sh

    hosts = [sh.copy_name(f"scale{i}", "gpufleet-sim-a100x2") for i in range(1, n + 1)]
    sh.start_hosts(hosts, fresh=False)
    with tempfile.TemporaryDirectory() as tmp:
        tree = sh.product_copy(Path(tmp))
        fleet = sh.write_fleet(Path(tmp), hosts, inference=True)
        weights_path = re.search(r'^weights_path = "(.*)"', fleet.read_text(), re.M)
        assert weights_path, "inventory/sim.toml names settings.weights_path"
        print(f"\n{n} host(s): converging with gpufleet first (a no-op when converged) ...",
              flush=True)
        rc, seconds, _, output = run_gpufleet(tree, fleet)
        if rc != 0:
            print(output[-4000:])
            return None
        inventory = write_inventory(hosts, weights_path.group(1), Path(tmp) / "ansible")
        rc, _, output = run_ansible(playbook_bin, inventory, best=True, forks=n)
        changed = recap_changed(output)
        if rc != 0 or set(changed) != set(hosts) or any(changed.values()):
            print("the playbook does not find gpufleet's end state (changed or failed):")
            print(output[-6000:])
            return None
        print("  same end state: the playbook reports changed=0 on every host")
        times: dict[str, list[float]] = {"gpufleet": [], "ansible-defaults": [],
                                         "ansible-best": []}
        for r in range(rounds):
            rc, seconds, _, output = run_gpufleet(tree, fleet)
            times["gpufleet"].append(seconds)
            for label, best in (("ansible-defaults", False), ("ansible-best", True)):
                arc, aseconds, aoutput = run_ansible(playbook_bin, inventory, best, n)
                if arc != 0 or any(recap_changed(aoutput).values()):
                    print(f"{label} failed or changed something:\n{aoutput[-4000:]}")
                    return None
                times[label].append(aseconds)
            if rc != 0:
                print(output[-4000:])
                return None
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s"
                                                  for k, v in times.items()), flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"  median no-op of {n} host(s): " + ", ".join(f"{k} {v:.1f} s"
                                                         for k, v in medians.items()))
    print(f"  gpufleet is {medians['ansible-defaults'] / medians['gpufleet']:.1f} x faster than "
          f"Ansible's defaults, {medians['ansible-best'] / medians['gpufleet']:.1f} x faster "
          "than its best case")
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1,8", help="host counts to compare (default 1,8)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    counts = [int(c) for c in args.hosts.split(",")]
    playbook_bin = ensure_ansible()
    results = {}
    for n in counts:
        medians = compare(n, args.rounds, playbook_bin)
        if medians is None:
            return 1
        results[n] = medians
    if len(counts) > 1:
        one, many = results[counts[0]], results[counts[-1]]
        print(f"\n{counts[-1]} hosts / {counts[0]} host (median no-op time):")
        for label in one:
            print(f"  {label}: {many[label] / one[label]:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
