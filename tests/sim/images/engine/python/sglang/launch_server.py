"""TEST STAND-IN for SGLang's server entrypoint (gpufleet simulator)."""

import sys

from standin_engine import main

if __name__ == "__main__":
    main("sglang", sys.argv[1:])
