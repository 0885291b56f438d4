"""Turn a bare Linux GPU server into an LLM inference host.

    pyinfra inventory.py deploys/gpu_host.py

One probe (a single remote command) reads the host; preflight decides from it whether the
host can serve its model and stops it, with a report, before anything changes. The steps
then run in order, one module under deploys/ each.
"""

from pyinfra import host

from deploys.apt_repos import nvidia_repositories, repo_query
from deploys.common import host_spec, stop_host
from deploys.host_network import host_network
from deploys.nvidia_stack import nvidia_stack
from deploys.plan import Refusal, plan_host
from deploys.preflight import preflight
from deploys.python_env import python_env
from facts.probe import GpuHostProbe

spec = host_spec()
probe = host.get_fact(GpuHostProbe, weights_path=spec.settings.weights_path)

if not preflight(spec, probe).refused:
    plan = plan_host(spec, probe)
    if isinstance(plan, Refusal):
        stop_host(name="Refuse: this host cannot be provisioned as configured",
                  message=plan.message)
    else:
        # One state read serves both steps (and again after each change they make).
        query = repo_query(plan)
        host_network(spec=spec, query=query)
        nvidia_repositories(spec=spec, plan=plan, query=query)
        stack = nvidia_stack(spec, probe, plan)
        if stack is not None:
            # After the driver (and its reboot), so the venv's CUDA check sees the GPUs.
            python_env()
