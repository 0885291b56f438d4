"""Running commands inside simulated hosts (docker exec), for the end-to-end tests."""

from __future__ import annotations

import subprocess


def sh(host: str, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `script` with bash inside the container `host`; the result, whatever it is."""
    return subprocess.run(["docker", "exec", "-i", host, "bash", "-c", script],
                          capture_output=True, text=True, timeout=timeout)


def ok(host: str, script: str, timeout: float = 300) -> str:
    """Run `script` inside `host`, assert it succeeded, return its stdout."""
    proc = sh(host, script, timeout)
    assert proc.returncode == 0, f"{host}: {script}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout
