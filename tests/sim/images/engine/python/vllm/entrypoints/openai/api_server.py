"""TEST STAND-IN for vLLM's OpenAI server entrypoint (gpufleet simulator)."""

import sys

from standin_engine import main

if __name__ == "__main__":
    main("vllm", sys.argv[1:])
