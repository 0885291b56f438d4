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

The steps and their order are deploys/runner.py's; this entry takes all of them
(deploys/serve.py only the serving ones).
"""

from deploys.runner import GPU_HOST, run

run(GPU_HOST)
