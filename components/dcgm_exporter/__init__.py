"""NVIDIA's DCGM exporter beside the engine on a monitored GPU host (see README.md)."""
