"""TEST STAND-IN package (gpufleet simulator): see standin_engine.py."""
