"""The `gpufleet` command (gpufleet/cli.py): the top layer, above deploys/ and tools/, which
it runs as the pyinfra and tools commands they are."""
