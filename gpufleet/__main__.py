"""`python -m gpufleet`: the same as the installed `gpufleet` command."""

from gpufleet.cli import main

raise SystemExit(main())
