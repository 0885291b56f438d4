"""Benchmarks on the simulated fleet; each module runs as a script (see its docstring)."""
