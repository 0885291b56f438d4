"""Serve the model on hosts whose GPU stack is already in place: preflight, then only the
inference step (the engine, its weights, Compose under systemd, a real completion).

    pyinfra inventory.py deploys/serve.py

deploys/gpu_host.py runs the same step at its end; use this one to change what is served
(model, context length, replicas) without walking the whole stack.
"""

from deploys.inference import inference
from deploys.locking import run_lock_done, run_lock_held
from deploys.preflight import preflight, read_host
from deploys.spec import host_spec

if run_lock_held():  # one run at a time on a host (deploys/locking.py)
    spec = host_spec()
    probe = read_host(spec)
    plan = preflight(spec, probe)
    if plan is not None:
        inference(spec=spec, plan=plan, listing=probe.weights)
    run_lock_done()
