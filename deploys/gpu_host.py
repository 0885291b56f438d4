"""Turn a bare Linux GPU server into an LLM inference host.

    pyinfra inventory.py deploys/gpu_host.py        # preview first, then asks
    pyinfra -y inventory.py deploys/gpu_host.py     # no questions

How a setting travels, one layer down at a time:

    fleet file ─ inventory/ ─▶ HostSpec (validated settings, pins, model)   before any host
    HostSpec + GpuHostProbe (facts/, one command) ─ rules/ ─▶ findings + HostPlan
        preflight refuses here, before anything changes, when a finding is an error
    HostPlan + HostState (the probe's reading) ─ deploys/ ─▶ operations with decided
        arguments: what to write, install, hold, whether to reboot          the preview
    operations/ ─ pyinfra ─▶ commands, comparing with HostState (read again after changes)
    checks (operations.checks.check) ─▶ verify at execution only: driver running, GPUs,
        CUDA, a GPU container, the engine answering a chat completion       execution
    last: the host manifest (/etc/gpufleet/manifest.json, and fleet-state/ on the controller)

Every decision to act is made before execution, so the preview (no -y) shows it, reboots
included; code that runs at execution only verifies. The preview reads facts and changes
nothing: no command that writes, no container, no reboot.
"""

from typing import cast

from pyinfra import state
from pyinfra.api.operation import OperationMeta

from deploys.container_toolkit import container_toolkit
from deploys.cuda_toolkit import cuda_toolkit
from deploys.docker_engine import docker_engine
from deploys.exporters import exporters
from deploys.fault_summary import install_fault_summary
from deploys.host_network import host_network
from deploys.host_record import host_record
from deploys.inference import inference
from deploys.monitoring_host import monitoring_host
from deploys.nvidia_driver import nvidia_driver
from deploys.nvidia_repositories import nvidia_repositories
from deploys.preflight import monitor_preflight, preflight, read_host, replicas_agree
from deploys.python_env import python_env, python_env_plan
from deploys.spec import fleet_specs, host_spec
from deploys.verify_stack import verify_stack
from rules.assessment import exporter_pin_findings
from rules.monitoring import is_monitor
from rules.serving import dcgm_exporter

# Every run ends with a summary of the hosts it lost: step, cause, what to do.
install_fault_summary(state)
spec = host_spec()
fleet = fleet_specs()
# pyinfra's result table has one row per call site (an operation's hash is the line numbers of
# its call stack): a step both kinds of host take is called from one line, or it shows twice.
if is_monitor(spec):
    # A monitoring host needs no GPU: its own small stack, read from one state read.
    monitor_preflight(spec, fleet)
    venv, plan = None, None
    converge = True
else:
    probe = read_host(spec)
    venv = python_env_plan(spec)
    # A fleet with a monitoring host scrapes every replica: the host must run what the fleet
    # file says (rules.monitoring.fleet_replicas), checked before anything changes.
    monitored = spec.settings.monitoring.enabled and any(is_monitor(s) for s in fleet)
    plan = preflight(spec, probe, extra=[*(venv.findings() if venv else ()),
                                         *(exporter_pin_findings(spec) if monitored else ())])
    if plan is not None and monitored and not replicas_agree(spec, plan):
        plan = None
    converge = plan is not None

if converge:
    host_network(spec=spec)
if is_monitor(spec):
    monitoring_host(spec=spec, fleet=fleet)
elif plan is not None:
    nvidia_repositories(spec=spec, plan=plan)
    # @deploy passes the return value through (pyinfra's typing says otherwise).
    driver = cast(OperationMeta, nvidia_driver(spec=spec, plan=plan,
                                               secure_boot=probe.secure_boot.enforcing))
    cuda_toolkit(spec=spec, plan=plan)
    docker_engine(spec=spec, plan=plan)
    container_toolkit(spec=spec, plan=plan, driver_install=driver)
    verify_stack(spec=spec, plan=plan)
    # After the driver (and its reboot), so the venv's CUDA check sees the GPUs.
    python_env(plan=venv)
    if monitored:
        exporters(spec=spec)
    inference(spec=spec, plan=plan, listing=probe.weights,
              exporter=dcgm_exporter(spec) if monitored else None)
if converge:
    host_record(spec=spec, plan=plan, venv=venv)
