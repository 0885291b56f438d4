"""Serve the model on hosts whose GPU stack is already in place: the same preflight as
deploys/gpu_host.py, then only what is served (the engine, its weights, Compose under systemd,
a real completion; on a monitored host the DCGM exporter beside it), the monitoring host's
scrape targets and gateway, and the host manifest.

    pyinfra inventory.py deploys/serve.py

Use it to change what is served (model, context length, replicas) without walking the whole
stack. The steps are deploys/runner.py's, so this entry cannot drift from gpu_host.py's.
"""

from deploys.runner import SERVE, run

run(SERVE)
