"""What the DCGM exporter's operations touch, which the state read must cover (plain data, read by
facts.coverage).

The exporter writes no file of its own: its service is part of the engine's compose file
(/etc/gpufleet/inference, serving's folder) and runs under serving's unit; its image is in
Docker's image list, which the state read lists whole. It reads the state read only.
"""

SECTIONS = ("state",)
