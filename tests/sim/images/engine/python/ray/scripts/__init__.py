"""TEST STAND-IN package (gpufleet simulator): the `ray` CLI, see scripts.py."""
