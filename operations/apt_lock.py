"""Waiting for the apt/dpkg lock, with a bound, naming who holds it.

On a fresh host unattended-upgrades or cloud-init often holds the dpkg lock for minutes; apt
then fails at once ("Could not get lock /var/lib/dpkg/lock-frontend"). Every apt-get, apt-mark
and dpkg command gpufleet runs goes through ``after_apt_lock``: a shell prelude that waits
until no process holds apt's or dpkg's locks, at most ``timeout`` seconds, saying who holds
them (process name, pid, command line) while it waits and when it gives up. apt-get also gets
``-o DPkg::Lock::Timeout`` (apt >= 1.9.11: Debian 11+, Ubuntu 20.04+) for a lock taken between
the wait and apt's own start.

The holders come from /proc/locks (the lock files' inodes) and /proc/<pid>: no fuser or lsof
needed. apt and dpkg lock with fcntl (POSIX) locks, which is what /proc/locks lists.
"""

from __future__ import annotations

from pyinfra.api import OperationValueError

# What apt-get, apt-mark and dpkg lock: dpkg's frontend lock and database lock, the package
# lists (apt-get update) and the download cache.
APT_LOCKS = (
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/lock",
    "/var/lib/apt/lists/lock",
    "/var/cache/apt/archives/lock",
)
# How often the wait looks again, and says again who holds the lock.
POLL_SECONDS = 5
REPORT_EVERY_SECONDS = 30


def lock_holders_script(paths: tuple[str, ...] = APT_LOCKS) -> str:
    """A shell function, gpufleet_apt_lock_holders, printing "name (pid N: command line); "
    for each process holding a lock on one of ``paths``."""
    # /proc/locks: "1: POSIX  ADVISORY  WRITE 1234 fd:01:262401 0 EOF"; waiters read
    # "1: -> ...". An OFD lock shows pid -1 (its owner is a file description, not a process).
    return (
        "gpufleet_apt_lock_holders() {\n"
        f"  for f in {' '.join(paths)}; do\n"
        '    i=$(stat -L -c %i "$f" 2>/dev/null) || continue\n'
        "    awk -v i=\"$i\" '$2 == \"POSIX\" || $2 == \"OFDLCK\" "
        "{ n = split($6, d, \":\"); if (d[n] == i) print $5 }' /proc/locks 2>/dev/null\n"
        "  done | sort -un | while read -r p; do\n"
        '    if [ "$p" = -1 ]; then printf \'a process (OFD lock, no pid shown); \'; continue; fi\n'
        '    [ -r "/proc/$p/comm" ] || continue\n'
        "    c=$(tr '\\000' ' ' < \"/proc/$p/cmdline\" 2>/dev/null | cut -c1-120)\n"
        '    printf \'%s (pid %s: %s); \' "$(cat "/proc/$p/comm")" "$p" "${c% }"\n'
        "  done\n"
        "}\n"
    )


def wait_script(paths: tuple[str, ...] = APT_LOCKS) -> str:
    """Shell functions; ``gpufleet_wait_for_apt_lock SECONDS`` returns 0 once no process holds
    a lock on ``paths``, 1 (saying who holds it, and what to do) after SECONDS."""
    return lock_holders_script(paths) + WAIT_FUNCTION


WAIT_FUNCTION = (
    "gpufleet_wait_for_apt_lock() {\n"
    "  waited=0\n"
    '  while h=$(gpufleet_apt_lock_holders); [ -n "$h" ]; do\n'
    '    if [ "$waited" -ge "$1" ]; then\n'
    '      echo "gpufleet: gave up after $1 s waiting for the apt/dpkg lock, held by ${h%; }." '
    ">&2\n"
    '      echo "gpufleet: nothing was changed by this step. Let that process finish (ps -fp '
    "PID shows it), or stop it if it is stuck, then run gpufleet again; "
    'settings.apt.lock_timeout_seconds sets how long to wait." >&2\n'
    "      return 1\n"
    "    fi\n"
    f'    if [ $((waited % {REPORT_EVERY_SECONDS})) -eq 0 ]; then echo "gpufleet: waiting '
    'for the apt/dpkg lock (up to $1 s), held by ${h%; }" >&2; fi\n'
    f"    sleep {POLL_SECONDS}; waited=$((waited + {POLL_SECONDS}))\n"
    "  done\n"
    '  if [ "$waited" -gt 0 ]; then echo "gpufleet: the apt/dpkg lock is free after $waited s"'
    " >&2; fi\n"
    "  return 0\n"
    "}\n"
)


def _check(timeout: int) -> None:
    if not isinstance(timeout, int) or timeout < 0:
        raise OperationValueError(f"lock timeout must be whole seconds >= 0, got {timeout!r}")


def apt_get(timeout: int) -> str:
    """apt-get, waiting up to ``timeout`` seconds for dpkg's lock itself."""
    _check(timeout)
    return f"apt-get -o DPkg::Lock::Timeout={timeout}"


def after_apt_lock(script: str, timeout: int) -> str:
    """``script`` (apt-get / apt-mark / dpkg commands), run once apt's and dpkg's locks are
    free; fails naming the holder after ``timeout`` seconds."""
    _check(timeout)
    return f"{wait_script()}gpufleet_wait_for_apt_lock {timeout} && {{ {script}; }}"
