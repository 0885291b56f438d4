"""A replica spanning hosts (settings.multinode): the fleet file's checks, the layout across the
nodes, the sizing through preflight, what each node renders (validated by the real
`docker-compose config`), and what a node's probe reads of the network between the nodes."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from facts.node_network import NodeNetworkResult, node_network_script, parse_node_network
from facts.nvidia import NvidiaPci, PciDevice
from facts.probe import HostProbe
from facts.replica_node import parse_replica_node, replica_node_script
from facts.weights_files import WeightsListing
from inventory.fleet import FleetError, HostSpec, load_fleet
from rules.assessment import assess
from rules.fleet_checks import fleet_problems
from rules.monitoring import fleet_replicas
from rules.multinode import (
    node_check,
    node_network_findings,
    peer_findings,
    replica_layout,
    weights_agreement_findings,
)
from rules.serving import EnginePlan, compose_document, engine_args, plan_engine, render_compose
from rules.sizing import render_sizing
from tests.sim.weights import config_json
from tests.unit.test_preflight import bare_host

A100 = '{ count = 2, model = "A100-PCIE-40GB", memory_gib = 39 }'


def fleet_text(group: str = "", hosts: int = 2, addresses: tuple[str | None, ...] = (),
               head: str = "") -> str:
    lines = [textwrap.dedent(f"""
        [settings]
        weights_path = "/srv/models/deepseek-r1-distill-qwen-7b"
        {head}
        [groups.v3.settings]
        gpus = {A100}
        multinode = {{ nodes = 2, interface = "eth1" }}
        {group}
    """)]
    for i in range(hosts):
        address = addresses[i] if i < len(addresses) else f"10.0.0.{i + 1}"
        lines.append(f"[groups.v3.hosts.node-{i}]\ntarget = \"@docker/node-{i}\"")
        if address is not None:
            lines.append(f'settings = {{ multinode = {{ address = "{address}" }} }}')
    return "\n".join(lines) + "\n"


def load(tmp_path: Path, text: str) -> list[HostSpec]:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return load_fleet(path, checks=fleet_problems).hosts


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(FleetError) as caught:
        load(tmp_path, text)
    return "\n".join(caught.value.lines)


# --- the fleet file ------------------------------------------------------------------------------
def test_a_group_is_cut_into_replicas_in_the_order_listed(tmp_path: Path) -> None:
    specs = load(tmp_path, fleet_text(hosts=4))
    spans = [s.replica for s in specs]
    assert all(span is not None for span in spans)
    assert [(s.index, s.rank, s.head.name) for s in spans if s] == [
        (0, 0, "node-0"), (0, 1, "node-0"), (1, 0, "node-2"), (1, 1, "node-2")]
    # only the heads serve: the monitoring host scrapes and the gateway routes to them
    assert [fleet_replicas(s) for s in specs] == [1, 0, 1, 0]


def test_a_single_host_group_has_no_span(tmp_path: Path) -> None:
    spec = load(tmp_path, fleet_text().replace("nodes = 2", "nodes = 1"))[0]
    assert spec.replica is None


@pytest.mark.parametrize(("text", "expected"), [
    (fleet_text(hosts=3),
     "group v3: settings.multinode.nodes = 2: the group lists 3 host(s); each replica takes 2"),
    (fleet_text(addresses=("10.0.0.1", None)),
     "host node-1 (group v3): settings.multinode.address = (missing): required on every node"),
    (fleet_text(addresses=("10.0.0.1", "10.0.0.1")),
     "settings.multinode.address = '10.0.0.1': also the address of node-0"),
    (fleet_text().replace('{ multinode = { address = "10.0.0.2" } }',
                          '{ model = "deepseek-r1-distill-qwen-1.5b", multinode = '
                          '{ address = "10.0.0.2" } }'),
     "host node-1 (group v3): settings.model = 'deepseek-r1-distill-qwen-1.5b': differs from "
     "the head node-0's 'deepseek-r1-distill-qwen-7b'"),
    (fleet_text(group="inference = { replicas = 2 }"),
     "settings.inference.replicas = 2: a replica spans 2 hosts"),
    (fleet_text(group="tensor_parallel = 2"),
     "tensor_parallel x pipeline_parallel = 2 x 1 = 2, but the replica has 2 x 2 = 4 GPUs"),
    (fleet_text().replace(f"gpus = {A100}", ""),
     "settings.gpus.count = (missing): required with settings.multinode.nodes = 2"),
    (fleet_text(addresses=("8.8.8.8", "10.0.0.2")),
     "settings.multinode.address = '8.8.8.8': must be an address on a private network"),
    (fleet_text().replace('interface = "eth1"', 'interface = "eth 1"'),
     "settings.multinode.interface = 'eth 1': must be a network interface name"),
])
def test_the_file_alone_shows_what_cannot_span_hosts(tmp_path: Path, text: str,
                                                     expected: str) -> None:
    assert expected in problems(tmp_path, text)


def test_an_interface_is_required(tmp_path: Path) -> None:
    text = fleet_text().replace(', interface = "eth1"', "")
    assert ("settings.multinode.interface = (missing): required with settings.multinode.nodes"
            in problems(tmp_path, text))


# --- the layout ----------------------------------------------------------------------------------
def test_vllm_0_4_puts_tensor_parallel_over_every_gpu(tmp_path: Path) -> None:
    layout = replica_layout(load(tmp_path, fleet_text())[0], 2)
    assert (layout.tp, layout.pp, layout.total) == (4, 1, 4)


def test_vllm_with_online_pipeline_parallel_splits_by_node(tmp_path: Path) -> None:
    spec = load(tmp_path, fleet_text(head='pin_set = "r535-fwdcompat"'))[0]
    layout = replica_layout(spec, 2)
    assert (layout.tp, layout.pp) == (2, 2)  # tensor parallel within a node, pipeline across


def test_sglang_runs_tensor_parallel_across_nodes(tmp_path: Path) -> None:
    spec = load(tmp_path, fleet_text(group='inference = { engine = "sglang" }',
                                     head='pin_set = "r535-fwdcompat"'))[0]
    assert replica_layout(spec, 2).tp == 4


# --- sizing through preflight ----------------------------------------------------------------------
R1 = """
    pin_set = "r535-fwdcompat-mla"
    model = "deepseek-r1"
    precision = "fp8"
    context_length = 8192
    concurrency = 8
    inference = { trust_remote_code = true }
"""


def r1_fleet(nodes: int, pin_set: str = "r535-fwdcompat-mla",
             gpus: str = '{ count = 8, model = "H100 80GB HBM3", memory_gib = 79 }') -> str:
    lines = [textwrap.dedent(f"""
        [settings]
        weights_path = "/srv/models/deepseek-r1"
        {textwrap.dedent(R1).replace("r535-fwdcompat-mla", pin_set)}
        [groups.hgx.settings]
        gpus = {gpus}
        multinode = {{ nodes = {nodes}, interface = "ib0" }}
    """)]
    for i in range(nodes):
        lines.append(f'[groups.hgx.hosts.gpu-{i}]\ntarget = "10.0.40.{i + 1}"\n'
                     f'settings = {{ multinode = {{ address = "10.0.50.{i + 1}" }} }}')
    return "\n".join(lines) + "\n"


def r1_node(spec: HostSpec, pci: NvidiaPci | None = None) -> HostProbe:
    """A bare HGX H100 node holding R1's weights, its inter-node network as it should be: the
    interface with the node's address, the routes to the other nodes through it and their
    ports answering (refused: nothing listens before the engines start)."""
    check = node_check(spec)
    assert check is not None and spec.replica is not None
    seen = NodeNetworkResult(
        True, (str(spec.replica.me.address),), ("lo", "eth0", check.interface),
        routes={address: check.interface for _, address, _ in check.peers},
        connects={f"{address}:{port}": "refused"
                  for _, address, ports in check.peers for _, port in ports})
    return bare_host(weights=WeightsListing("ok", files={"config.json": (700, "1.0")},
                                            config=config_json("deepseek-r1")),
                     node_network=seen, **({"pci": pci} if pci else {}))


# The KV budget of one H100 (79 GiB as the fleet file gives it) in this layout, per GPU:
# CUDA sees 78.85 GiB; x 0.9 = 70.97 GiB usable; weights 688 GB / 16 GPUs = 40.05 GiB;
# activation peak 0.44 GiB (an 8192-token profiling pass); non-torch 0.55 GiB (NCCL at tp 8):
# 29.93 GiB for the KV cache (32,138,... bytes; kv_budget_per_gpu below).
R1_KV_BUDGET_GIB = 29.93


def test_r1_fp8_needs_two_h100_nodes_and_fits_on_them(tmp_path: Path) -> None:
    one = load(tmp_path, r1_fleet(1))[0]
    fits_one = {f.code for f in assess(one, bare_host()).findings}
    assert "model-does-not-fit" in fits_one
    two = load(tmp_path, r1_fleet(2))[0]
    assessment = assess(two, bare_host())
    fit = [f for f in assessment.findings if f.code == "model-fits"]
    assert fit, [f.what for f in assessment.findings]
    assert "tensor parallel 8 x pipeline parallel 2 over 2 nodes of 8 GPU(s)" in fit[0].what
    assert "MLA latent" in fit[0].fix
    assert assessment.sizing is not None
    sizing = assessment.sizing
    assert (sizing.request.gpu_count, sizing.tp, sizing.pp) == (16, 8, 2)
    assert round(sizing.kv_budget_per_gpu / 2**30, 2) == R1_KV_BUDGET_GIB
    # vLLM 0.7.3 caches the MLA latent: (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes
    # x 31 layers (61 over pp 2, rounded up) = 35,712 bytes per token on a GPU, the same on
    # every tensor-parallel rank. Blocks of 16 tokens: 571,392 bytes; the budget holds
    # floor(kv_budget / 571,392) = 56,246 blocks = 899,936 tokens; a sequence of 8192 tokens
    # takes 512 blocks: 109 of them at once.
    assert sizing.kv_per_token_per_gpu == (512 + 64) * 2 * 31 == 35_712
    blocks = sizing.kv_budget_per_gpu // (16 * 35_712)
    assert (blocks, sizing.kv_tokens, sizing.max_concurrency) == (56_246, 899_936, 109)
    engine = assessment.plan.engine if assessment.plan else None
    assert engine is not None and engine.span is not None and engine.span.is_head
    args = engine_args(engine)
    assert args[args.index("--tensor-parallel-size") + 1] == "8"
    assert args[args.index("--pipeline-parallel-size") + 1] == "2"
    assert "--trust-remote-code" in args  # settings.inference.trust_remote_code
    assert args[-2:] == ["--distributed-executor-backend", "ray"]


def test_vllm_0_6_6_caches_full_kv_for_r1_and_two_h100_nodes_do_not_hold_it(
        tmp_path: Path) -> None:
    """vLLM 0.6.6.post1 has no MLA: config.py pads the heads to 256 and caches K and V of
    every head (tensor parallelism splits the 128 heads): 2 x 16 heads x 256 x 2 bytes x 31
    layers = 507,904 bytes per token on a GPU, 14.2 times the latent. The same 29.93 GiB then
    holds floor(kv_budget / (16 x 507,904)) = 3,954 blocks = 63,264 tokens: 7 sequences of
    8192, not the 8 asked for."""
    spec = load(tmp_path, r1_fleet(2, pin_set="r535-fwdcompat"))[0]
    assessment = assess(spec, bare_host())
    sizing = assessment.sizing
    assert sizing is not None and round(sizing.kv_budget_per_gpu / 2**30, 2) == R1_KV_BUDGET_GIB
    assert sizing.kv_per_token_per_gpu == 2 * 16 * 256 * 2 * 31 == 507_904
    assert sizing.kv_budget_per_gpu // (16 * 507_904) == 3_954
    assert (sizing.kv_tokens, sizing.max_concurrency) == (63_264, 7)
    assert "model-does-not-fit" in {f.code for f in assessment.findings.errors}
    assert "no MLA in vLLM 0.6.6.post1: full K and V of 128 heads x 256" in render_sizing(sizing)


def test_r1_block_fp8_is_refused_on_a100_with_the_alternatives(tmp_path: Path) -> None:
    a100 = '{ count = 8, model = "NVIDIA A100-SXM4-80GB", memory_gib = 79 }'
    spec = load(tmp_path, r1_fleet(2, gpus=a100))[0]
    pci = NvidiaPci("ok", gpus=tuple(
        PciDevice(f"0000:{0x18 + i:02x}:00.0", "0302", "3D controller",
                  "NVIDIA Corporation GA100 [A100 SXM4 80GB]", "10de", "20b2", "a1")
        for i in range(8)))
    assessment = assess(spec, r1_node(spec, pci=pci))
    refused = [f for f in assessment.findings.errors if f.code == "precision-not-supported-on-gpu"]
    assert refused, [f.what for f in assessment.findings]
    assert "vLLM 0.7.3 cannot run deepseek-r1's block-wise FP8 weights (128x128 blocks)" in \
        refused[0].what
    assert "compute capability 8.0" in refused[0].what
    assert "they need compute capability >= 8.9" in refused[0].what
    assert "GPUs it runs on (" in refused[0].fix
    assert "NVIDIA H100 80GB HBM3" in refused[0].fix
    assert "precision = 'int4'" in refused[0].fix and "precision = 'bf16'" in refused[0].fix


def test_r1_loads_with_the_image_transformers_and_remote_code_only_when_accepted(
        tmp_path: Path) -> None:
    text = r1_fleet(2)
    spec = load(tmp_path, text)[0]
    found = {f.code: f for f in assess(spec, bare_host()).findings}
    # The host venv's transformers (4.43.4) is not what loads the model: the image's is.
    assert found["transformers-remote-code"].severity == "warning"
    assert "transformers 4.48.2 (in the vllm 0.7.3 image" in found["transformers-remote-code"].what
    spec = load(tmp_path, text.replace("inference = { trust_remote_code = true }", ""))[0]
    assessment = assess(spec, bare_host())
    refused = [f for f in assessment.findings.errors if f.code == "transformers-too-old-for-model"]
    assert refused and "set settings.inference.trust_remote_code = true" in refused[0].fix
    plan = node_plans_for(spec)
    assert "--trust-remote-code" not in engine_args(plan)  # rendered only when set


def node_plans_for(spec: HostSpec) -> EnginePlan:
    layout = replica_layout(spec, 8)
    plan = plan_engine(spec, 8, layout.tp, 8192, 8, 60.0, pp=layout.pp)
    assert isinstance(plan, EnginePlan), plan
    return plan


def readme_r1_example() -> str:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "multi-node.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    found = [b for b in blocks if 'model = "deepseek-r1"' in b and "multinode" in b]
    assert len(found) == 1, "docs/multi-node.md's two-node R1 example"
    return found[0]


def test_the_readme_two_node_r1_example_validates_and_passes_preflight(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(readme_r1_example())
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "inventory.py", str(path)], cwd=root,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    head, worker = load(tmp_path, readme_r1_example())
    assert head.pins.inference.vllm.version == "0.7.3"
    for spec in (head, worker):
        assessment = assess(spec, r1_node(spec))
        assert assessment.findings.errors == [], [f.what for f in assessment.findings.errors]
        assert assessment.plan is not None and assessment.plan.engine is not None
    head_plan = assess(head, r1_node(head)).plan
    assert head_plan is not None and head_plan.engine is not None
    args = engine_args(head_plan.engine)
    # every flag is one vLLM 0.7.3's own parser defines (vllm/engine/arg_utils.py,
    # vllm/entrypoints/openai/cli_args.py of the released wheel)
    assert [a for a in args if a.startswith("--")] == [
        "--model", "--served-model-name", "--host", "--port", "--tensor-parallel-size",
        "--max-model-len", "--gpu-memory-utilization", "--max-num-seqs",
        "--pipeline-parallel-size", "--quantization", "--trust-remote-code",
        "--disable-log-requests", "--distributed-executor-backend"]
    assert args[args.index("--quantization") + 1] == "fp8"


def test_the_doctor_sizes_nodes_like_this_one_without_a_fleet(tmp_path: Path) -> None:
    # `pyinfra @local deploys/doctor.py --data nodes=2 ...`: no fleet file, no replica
    path = tmp_path / "fleet.toml"
    path.write_text(r1_fleet(1).replace("nodes = 1", "nodes = 2"))
    spec = load_fleet(path).hosts[0]  # the doctor's spec: no fleet checks, no replica
    assert spec.replica is None
    assessment = assess(spec, bare_host())
    assert "model-fits" in {f.code for f in assessment.findings}
    assert assessment.sizing is not None and assessment.sizing.request.gpu_count == 16


# --- what each node renders ----------------------------------------------------------------------
def node_plans(tmp_path: Path, text: str) -> list[EnginePlan]:
    plans = []
    for spec in load(tmp_path, text):
        layout = replica_layout(spec, 2)
        plan = plan_engine(spec, 2, layout.tp, 32768, 8, 60.0, pp=layout.pp)
        assert isinstance(plan, EnginePlan), plan
        plans.append(plan)
    return plans


# Every port Ray opens on a node, fixed so a firewall between the nodes can be written (Ray
# 2.40.0's `ray start` flags: the Ray vLLM 0.7.3 pins); the head adds its GCS (--port) and
# client server ports.
RAY_FIXED = ["--node-manager-port=6380", "--object-manager-port=6381",
             "--min-worker-port=10002", "--max-worker-port=10999",
             "--dashboard-agent-grpc-port=6382", "--dashboard-agent-listen-port=52365",
             "--runtime-env-agent-port=6383", "--metrics-export-port=6384"]


def test_vllm_head_runs_ray_then_the_server_and_the_worker_joins_it(tmp_path: Path) -> None:
    head, worker = node_plans(tmp_path, fleet_text())
    head_doc = compose_document(head)["services"]
    worker_doc = compose_document(worker)["services"]
    assert list(head_doc) == ["engine-0"] and list(worker_doc) == ["ray-node"]
    service = head_doc["engine-0"]
    assert service["network_mode"] == "host" and service["ipc"] == "host"
    assert "ports" not in service  # on the host's network, the server binds the address itself
    # NCCL matches a bare name as a prefix (eth1 would take eth10 too); '=' makes it exact.
    assert service["environment"]["NCCL_SOCKET_IFNAME"] == "=eth1"
    assert service["environment"]["GLOO_SOCKET_IFNAME"] == "eth1"  # Gloo takes a name
    assert service["environment"]["VLLM_HOST_IP"] == "10.0.0.1"
    command = service["command"]
    assert service["entrypoint"] == ["python3", "/gpufleet/multinode-launch.py"]
    assert command[:command.index("--")] == [
        "--address=10.0.0.1", "--port=6379", "--gpus=2", "--timeout=600",
        # No --ray-client-server-port: a Ray without ray[client] (vLLM's images) refuses it.
        *(f"--ray={flag}" for flag in RAY_FIXED),
        "--node=node-0=10.0.0.1", "--node=node-1=10.0.0.2"]
    server = command[command.index("--") + 1:]
    assert server[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert server[server.index("--host") + 1] == "127.0.0.1"  # loopback unless opened
    assert server[server.index("--tensor-parallel-size") + 1] == "4"
    assert server[-1] == "--worker-use-ray"  # vLLM 0.4.2's flag
    assert int(service["healthcheck"]["start_period"].rstrip("s")) >= 600
    ray = worker_doc["ray-node"]
    assert ray["entrypoint"] == ["ray", "start", "--block", "--address=10.0.0.1:6379",
                                 "--node-ip-address=10.0.0.2", "--num-gpus=2",
                                 "--disable-usage-stats", *RAY_FIXED]
    assert ray["environment"]["NCCL_SOCKET_IFNAME"] == "=eth1"
    assert ray["environment"]["VLLM_HOST_IP"] == "10.0.0.2"
    assert "healthcheck" not in ray and "env_file" not in ray
    assert ray["volumes"] == [{"type": "bind", "source": "/srv/models/deepseek-r1-distill-qwen-7b",
                               "target": "/models/deepseek-r1-distill-qwen-7b",
                               "read_only": True}]  # the same path


def test_sglang_runs_the_same_command_on_every_node(tmp_path: Path) -> None:
    text = fleet_text(group='inference = { engine = "sglang" }')
    head, worker = (compose_document(p)["services"]["engine-0"]
                    for p in node_plans(tmp_path, text))
    assert head["command"][-6:] == ["--nnodes", "2", "--node-rank", "0",
                                    "--dist-init-addr", "10.0.0.1:5000"]
    assert worker["command"][-6:] == ["--nnodes", "2", "--node-rank", "1",
                                      "--dist-init-addr", "10.0.0.1:5000"]
    rank = head["command"].index("--node-rank") + 1  # the only difference between the nodes
    assert (head["command"][:rank] + head["command"][rank + 1:]
            == worker["command"][:rank] + worker["command"][rank + 1:])
    assert "healthcheck" in head and "healthcheck" not in worker
    assert "VLLM_HOST_IP" not in head["environment"]


def test_infiniband_hands_the_devices_and_memory_locking_to_the_nodes(tmp_path: Path) -> None:
    text = fleet_text().replace('interface = "eth1" }',
                                'interface = "ib0", infiniband_hca = "mlx5" }')
    head, _ = node_plans(tmp_path, text)
    service = compose_document(head)["services"]["engine-0"]
    assert service["environment"]["NCCL_IB_HCA"] == "mlx5"
    assert service["devices"] == ["/dev/infiniband:/dev/infiniband"]
    assert service["cap_add"] == ["IPC_LOCK"] and service["ulimits"]["memlock"] == -1


def test_docker_init_reaps_rays_daemons_on_vllm_nodes_only(tmp_path: Path) -> None:
    """The launcher and `ray start --block` run as PID 1 and reap nothing; Ray's daemons that
    exit would stay zombies: Docker's init (init: true) runs as PID 1 instead."""
    for plan in node_plans(tmp_path, fleet_text()):
        assert next(iter(compose_document(plan)["services"].values()))["init"] is True
    for plan in node_plans(tmp_path, fleet_text(group='inference = { engine = "sglang" }')):
        assert "init" not in compose_document(plan)["services"]["engine-0"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs docker-compose")
@pytest.mark.parametrize("group", ["", 'inference = { engine = "sglang" }'])
def test_docker_compose_accepts_every_node_file(tmp_path: Path, group: str) -> None:
    for i, plan in enumerate(node_plans(tmp_path, fleet_text(group=group))):
        path = tmp_path / f"node-{i}.yml"
        path.write_text(render_compose(plan))
        proc = subprocess.run(["docker-compose", "--file", str(path), "config"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        service = next(iter(yaml.safe_load(proc.stdout)["services"].values()))
        assert service["network_mode"] == "host"
        assert service.get("init") is (True if not group else None)


# --- what a node reads of the network --------------------------------------------------------------
# Real iproute2 output (Debian 12's ip, in a simulated host on this machine's Docker engine),
# as the probe's parts frame it.
LINK = ("2713: eth0@if2714: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP "
        "mode DEFAULT group default \\    link/ether 02:42:ac:11:00:03 brd ff:ff:ff:ff:ff:ff "
        "link-netnsid 0")
ADDR = ("2713: eth0    inet 172.17.0.3/16 brd 172.17.255.255 scope global eth0\\       "
        "valid_lft forever preferred_lft forever")
ROUTE = "172.17.0.1 dev eth0 src 172.17.0.3 uid 0 \\    cache "


def framed(**parts: tuple[str, int]) -> str:
    return "\n".join(f"__gpufleet_part={name}\n{text}\n__gpufleet_part_rc={rc}"
                     for name, (text, rc) in parts.items())


def worker_spec(tmp_path: Path, interface: str = "eth0", address: str = "172.17.0.3") -> HostSpec:
    text = fleet_text(addresses=("172.17.0.1", address)).replace('"eth1"', f'"{interface}"')
    return load(tmp_path, text)[1]


HEAD_PORTS = (6379, 10001, 6380, 6381, 10002, 10999)  # GCS, client, NM, OM, worker range ends


def connects(address: str, ports: tuple[int, ...], rc: int = 1,
             message: str = "Connection refused") -> tuple[str, int]:
    return ("\n".join(f"__gpufleet_connect={address}:{p} {rc} bash: line 1: "
                      f"/dev/tcp/{address}/{p}: {message}" for p in ports), 0)


def test_a_worker_that_sees_its_interface_and_reaches_the_head_passes(tmp_path: Path) -> None:
    seen = parse_node_network(framed(**{
        "interfaces": ("eth0\nlo", 0), "link": (LINK, 0), "addr": (ADDR, 0),
        "route 172.17.0.1": (ROUTE, 0), "connects": connects("172.17.0.1", HEAD_PORTS)}), 0)
    assert seen.interface_exists and seen.addresses == ("172.17.0.3",)
    assert seen.routes == {"172.17.0.1": "eth0"}
    assert seen.connects == {f"172.17.0.1:{p}": "refused" for p in HEAD_PORTS}
    assert node_network_findings(worker_spec(tmp_path), seen) == []


def test_a_worker_checks_every_ray_port_of_the_head(tmp_path: Path) -> None:
    check = node_check(worker_spec(tmp_path))
    assert check is not None
    assert [(name, address, [p for _, p in ports]) for name, address, ports in check.peers] == [
        ("node-0", "172.17.0.1", list(HEAD_PORTS))]
    script = node_network_script(check.spec())
    assert all(f"/dev/tcp/'172.17.0.1'/{p}'" in script for p in HEAD_PORTS)
    # one port firewalled (its connect times out): named, with what it is
    text = connects("172.17.0.1", HEAD_PORTS[:3])[0] + "\n" + connects(
        "172.17.0.1", HEAD_PORTS[3:4], 124, "")[0] + "\n" + connects(
        "172.17.0.1", HEAD_PORTS[4:])[0]
    seen = parse_node_network(framed(**{
        "interfaces": ("eth0\nlo", 0), "link": (LINK, 0), "addr": (ADDR, 0),
        "route 172.17.0.1": (ROUTE, 0), "connects": (text, 0)}), 0)
    found = node_network_findings(worker_spec(tmp_path), seen)
    assert [f.code for f in found] == ["multinode-head-unreachable"]
    assert found[0].what == ("node-1 cannot reach the head node-0 (172.17.0.1) on 6381 "
                             "(object manager)")
    assert found[0].measured == "TCP connect: 6381 timeout"


def test_a_worker_without_the_interface_is_refused_naming_what_it_has(tmp_path: Path) -> None:
    seen = parse_node_network(framed(**{
        "interfaces": ("eth0\nlo", 0), "link": ('Device "eth1" does not exist.', 1),
        "addr": ('Device "eth1" does not exist.', 1), "route 172.17.0.1": (ROUTE, 0)}), 0)
    found = node_network_findings(worker_spec(tmp_path, interface="eth1"), seen)
    assert [f.code for f in found] == ["multinode-interface-missing"]
    assert found[0].what == "the inter-node interface eth1 does not exist on node-1"
    assert found[0].measured == "interfaces: eth0, lo"


def test_a_wrong_address_a_wrong_route_and_a_silent_head_are_each_named(tmp_path: Path) -> None:
    seen = parse_node_network(framed(**{
        "interfaces": ("eth0\neth1\nlo", 0), "link": (LINK, 0), "addr": (ADDR, 0),
        "route 172.17.0.1": (ROUTE.replace("eth0", "eth1"), 0),
        "connects": connects("172.17.0.1", HEAD_PORTS, 124, "")}), 0)
    found = node_network_findings(worker_spec(tmp_path, address="172.17.0.9"), seen)
    assert [f.code for f in found] == ["multinode-address-missing", "multinode-route",
                                       "multinode-head-unreachable"]
    assert found[2].measured.startswith("TCP connect: 6379 timeout, 10001 timeout")


def test_the_head_checks_the_workers_ray_ports_not_its_own(tmp_path: Path) -> None:
    head = load(tmp_path, fleet_text())[0]
    check = node_check(head)
    assert check is not None
    assert [(name, address, [p for _, p in ports]) for name, address, ports in check.peers] == [
        ("node-1", "10.0.0.2", [6380, 6381, 10002, 10999])]
    script = node_network_script(check.spec())
    assert "/dev/tcp/'10.0.0.1'" not in script and "ip -o link show dev eth1" in script
    seen = NodeNetworkResult(True, ("10.0.0.1",), ("eth1",), routes={"10.0.0.2": "eth1"},
                             connects={"10.0.0.2:6380": "refused", "10.0.0.2:6381": "refused",
                                       "10.0.0.2:10002": "timeout",
                                       "10.0.0.2:10999": "timeout"})
    found = node_network_findings(head, seen)
    assert [f.code for f in found] == ["multinode-peer-unreachable"]
    assert found[0].what == ("node-0 cannot reach node-1 (10.0.0.2) on 10002 (lowest worker "
                             "port), 10999 (highest worker port)")


def test_sglang_nodes_check_only_the_heads_rendezvous(tmp_path: Path) -> None:
    text = fleet_text(group='inference = { engine = "sglang" }')
    head, worker = load(tmp_path, text)
    check = node_check(head)
    assert check is not None and check.peers == ()  # nobody connects to a worker's port
    check = node_check(worker)
    assert check is not None and check.peers == (("node-0", "10.0.0.1", (("rendezvous", 5000),)),)


def test_the_gcs_port_may_not_be_one_of_rays_other_ports(tmp_path: Path) -> None:
    text = fleet_text().replace('interface = "eth1"', 'interface = "eth1", port = 10500')
    assert ("settings.multinode.port = 10500: is one of the other ports gpufleet gives Ray"
            in problems(tmp_path, text))


def test_another_nodes_refusal_refuses_the_replica_and_other_weights_too(tmp_path: Path) -> None:
    head = load(tmp_path, fleet_text())[0]
    assert head.replica is not None
    worker_seen = parse_node_network(framed(interfaces=("eth0", 0), link=("", 1), addr=("", 1)),
                                     0)
    refused = {"node-1": node_network_findings(load(tmp_path, fleet_text())[1], worker_seen)}
    found = peer_findings(head.replica, refused, unread=[])
    assert [f.code for f in found] == ["multinode-node-refused"]
    assert "[multinode-interface-missing]" in found[0].measured
    assert [f.code for f in peer_findings(head.replica, {}, unread=["node-1"])] == [
        "multinode-node-unread"]
    assert weights_agreement_findings(head.replica, {"node-0": "a", "node-1": None}) == []
    differ = weights_agreement_findings(head.replica, {"node-0": "a", "node-1": "b"})
    assert [f.measured for f in differ] == ["manifest differs on node-1"]


# Real output of Ray 2.20.0 (the simulator's engine image) for one two-node cluster: `ray
# status` names the nodes by id only; the join check's driver (RAY_NODES) prints the node
# table, tests/fixtures/facts/ray_nodes/*.txt (their .source files say how each was captured).
RAY_NODE_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "facts" / "ray_nodes"
RAY_STATUS = """======== Autoscaler status: 2026-12-07 15:37:47.695700 ========
Node status
---------------------------------------------------------------
Active:
 1 node_3f408485120e1661d24ea7526ab9ebaa5e73447c96fba739cf97338a
 1 node_c53b9a43484f163e30ea3bf93fb7d7566eaf08ce5e0c6b6901bfb7a3
Pending:
 (no pending nodes)
Recent failures:
 (no failures)
"""
# What `import ray` finds in the test's container: a Ray whose node table is a fixture's.
FAKE_RAY = """import json, os
def init(**_kwargs):
    pass
def nodes():
    line = open(os.environ["RAY_NODES_FIXTURE"]).read().splitlines()[0]
    return json.loads(line.split("=", 1)[1])
"""


@pytest.mark.parametrize(("fixture", "address", "joined"), [
    ("two_nodes_joined", "10.219.3.12", True),
    ("two_nodes_joined", "10.219.3.13", False),  # not in the cluster
    ("two_nodes_joined", "10.219.3.1", False),  # an address, not a prefix of one
    ("worker_stopped", "10.219.3.12", False),  # in the table, dead
    ("worker_started_again", "10.219.3.12", True),  # alive again beside its dead entry
])
def test_the_join_check_asks_rays_node_table_not_ray_status(
        tmp_path: Path, fixture: str, address: str, joined: bool) -> None:
    """`ray status` names no address, so the worker's check runs its driver in the node's
    container: a `docker` on PATH runs that driver here, the GCS being a port that listens,
    its `import ray` answering with the fixture's table (or `ray status` with the real one)."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text(FAKE_RAY)
    shim = tmp_path / "docker"
    shim.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = exec ] && [ "$3" = timeout ] && [ "$5" = python3 ]; then
          shift 2; exec "$@"
        elif [ "$1" = exec ] && [ "$3" = ray ] && [ "$4" = status ]; then
          cat <<'OUT'
        {RAY_STATUS}OUT
        fi
        """))
    shim.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "PYTHONPATH": str(tmp_path),
           "RAY_NODES_FIXTURE": str(RAY_NODE_FIXTURES / f"{fixture}.txt")}
    with socket.create_server(("127.0.0.1", 0)) as gcs:
        rendezvous = f"127.0.0.1:{gcs.getsockname()[1]}"
        script = replica_node_script("c", "vllm", rendezvous, address, 0)
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env,
                             timeout=60).stdout
    seen = parse_replica_node(out.splitlines())
    assert seen.joined is joined, out
    assert "alive 10.219.3.11 (node 3f408485120e)" in seen.detail.splitlines()


def test_the_join_check_says_when_the_head_is_not_reachable() -> None:
    out = (RAY_NODE_FIXTURES / "head_unreachable.txt").read_text()
    seen = parse_replica_node(["__gpufleet_node=missing", *out.splitlines(), "@log"])
    assert not seen.joined
    assert seen.detail == ("Ray's GCS at 10.219.3.99:6379 not reachable: [Errno 113] "
                           "No route to host")


def test_the_join_check_reads_its_verdict_and_the_log() -> None:
    seen = parse_replica_node(["__gpufleet_node=missing", "Node status", "@log",
                               "ConnectionError: Unable to connect to GCS at 10.0.0.1:6379."])
    assert not seen.joined and "Unable to connect to GCS" in seen.log
    assert parse_replica_node(["__gpufleet_node=joined", "10.0.0.2"]).joined
