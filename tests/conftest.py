"""Test order for `make test` (two pytest-xdist workers, a whole file each, --dist loadfile).

xdist hands a file to whichever worker is free, in collection order. Its default reorders
files by their number of tests, which puts the longest end-to-end files (few tests, minutes
each) last, and one worker then finishes minutes after the other. Longest first instead: the
classic longest-processing-time rule, with the durations measured on the 2-core development
machine (docs/performance.md). Files not listed keep their order, after these.
"""

from __future__ import annotations

import os
import tempfile

import pytest

# Keys generated for fleets whose engines listen beyond loopback (inventory.key_files) go to a
# folder of the test run, never the user's ~/.config/gpufleet; the deploys the end-to-end tests
# run inherit it, so test and deploy see the same key.
os.environ.setdefault("GPUFLEET_CONFIG_DIR", tempfile.mkdtemp(prefix="gpufleet-test-config-"))

# End-to-end files, longest first (minutes on the 2-core machine, one worker each).
LONGEST_FIRST = (
    "tests/e2e/test_rollout.py",  # 7.5: five hosts, two rollouts under load
    "tests/e2e/test_faults.py",  # 6.5: locks, dpkg, lost hosts, reboots, mirror, disks
    "tests/e2e/test_fleet_state.py",  # 5: converge, drift, rebuild from bare
    "tests/e2e/test_monitoring.py",  # 4: monitoring host, gateway, canary
    "tests/e2e/test_python_env.py",  # 4: the real torch lock on the HGX copy
    "tests/e2e/test_inference.py",
    "tests/e2e/test_gpu_host.py",  # 2.7
    "tests/e2e/test_multinode.py",  # 1.8: two hosts, one replica across them
    "tests/e2e/test_nvidia_stack.py",
)


def _rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the order within a file, and of the rest, is kept
