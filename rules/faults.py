"""The fault summary: for each host a run lost, the step, the cause in one line, what to do.

Pure: the run's recorder (deploys/fault_summary.py) hands over each failed host's error lines
as pyinfra printed them (apt's and dpkg's own lines, gpufleet's "gpufleet: ..." lines,
pyinfra's "could not load fact" / connection errors); ``cause_of`` picks the line that says
why and turns it into one sentence and one action. pyinfra's own lines stay where they were:
the summary is added after them, never instead of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
RERUN = "then run gpufleet again (a re-run repeats only what is missing)"


@dataclass(frozen=True)
class Cause:
    what: str  # one line: why the host stopped
    todo: str  # one line: what the operator does


@dataclass(frozen=True)
class HostFault:
    host: str
    step: str  # the deploy and operation that failed, or the stage before any operation
    cause: Cause


def _lock_holder(m: re.Match[str]) -> Cause:
    # apt (apt-pkg/contrib/fileutl.cc, GetLock): "Could not get lock %s. It is held by
    # process %d (%s)"
    return Cause(f"another process holds apt's lock {m['path']}: {m['name']} (pid {m['pid']})",
                 f"let pid {m['pid']} finish (ps -fp {m['pid']}) or stop it if it is stuck, "
                 f"{RERUN}; settings.apt.lock_timeout_seconds sets how long gpufleet waits")


def _gave_up(m: re.Match[str]) -> Cause:
    return Cause(f"waited {m['seconds']} s for the apt/dpkg lock, held by {m['holder']}",
                 "let that process finish (ps -fp PID) or stop it if it is stuck, "
                 f"{RERUN}; settings.apt.lock_timeout_seconds sets how long gpufleet waits")


def _fetch(m: re.Match[str]) -> Cause:
    url, error = m["url"], " ".join(m["error"].split())
    return Cause(f"apt could not fetch {url}: {error}",
                 f"check that the host reaches {url.split('/')[2]} (settings.network proxy, "
                 f"settings.repos mirror, DNS, firewall), {RERUN}")


def _interrupted(_: re.Match[str]) -> Cause:
    # apt (apt-pkg/deb/debsystem.cc): "dpkg was interrupted, you must manually run '%s' to
    # correct the problem."
    return Cause("dpkg was interrupted (an earlier install stopped half way)",
                 f"run `dpkg --configure -a` on the host, {RERUN}")


def _configure_failed(_: re.Match[str]) -> Cause:
    return Cause("`dpkg --configure -a` failed: a package left half installed cannot be "
                 "configured (dpkg's lines above name it)",
                 f"fix or remove that package until `dpkg --configure -a` succeeds, {RERUN}")


def _did_not_answer(error: str) -> Cause:
    return Cause(f"the host did not answer: {error.strip()}",
                 "check that the host is up and reachable (ping, ssh, its console); the other "
                 f"hosts are not affected; {RERUN}")


def _unreachable(m: re.Match[str]) -> Cause:
    return _did_not_answer(m["error"])


def _reboot(m: re.Match[str]) -> Cause:
    return Cause(f"the host did not come back within {m['seconds']} s after the reboot",
                 "look at the host's console (a kernel or driver that does not boot, a stuck "
                 "shutdown); when it is up, run gpufleet again; "
                 "settings.driver.reboot_timeout_seconds sets the wait")


def _disk_space(m: re.Match[str]) -> Cause:
    # rules/disk_space.py: shortage() before writing, no_space_left() when the disk filled anyway
    return Cause(m["cause"], f"free space on that filesystem (df -h, du -sh), or set "
                             f"{m['setting']} to one with room, {RERUN}")


def _disk_full(m: re.Match[str]) -> Cause:
    return Cause(f"a disk of the host is full: {m['line'].strip()}",
                 f"free space on that filesystem (df -h on the host says which is full), {RERUN}")


def _refused(_: re.Match[str]) -> Cause:
    return Cause("preflight refused the host; nothing was changed",
                 "read the host's report above and fix what it names (or accept it with "
                 f"settings.preflight.downgrade_errors), {RERUN}")


# Most specific first: the first pattern found in a host's lines decides.
_KNOWN: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], Cause]], ...] = (
    (re.compile(r"gpufleet: (?P<cause>(?:not enough disk space|no space left on device) .+?)\. "
                r"Free space there, or set (?P<setting>\S+) to a filesystem with room"),
     _disk_space),
    (re.compile(r"gpufleet: gave up after (?P<seconds>\d+) s waiting for the apt/dpkg lock, "
                r"held by (?P<holder>.+?)\.?$"), _gave_up),
    (re.compile(r"Could not get lock (?P<path>\S+?)\.? It is held by process (?P<pid>\d+) "
                r"\((?P<name>[^)]*)\)"), _lock_holder),
    (re.compile(r"gpufleet: dpkg --configure -a failed"), _configure_failed),
    (re.compile(r"dpkg was interrupted, you must manually run"), _interrupted),
    # strerror(ENOSPC) from any other step (apt's "Write error - write (28: No space left on
    # device)", also after "Failed to fetch URL", dpkg, Docker's daemon in Go's lower case)
    (re.compile(r"(?P<line>.*no space left on device.*)", re.I), _disk_full),
    (re.compile(r"Failed to fetch (?P<url>https?://\S+)\s+(?P<error>.+)$"), _fetch),
    (re.compile(r"did not come back within (?P<seconds>\d+) s after the reboot"), _reboot),
    (re.compile(r"preflight refused this host; nothing was changed"), _refused),
    # pyinfra's SSH connector (connectors/ssh.py) and Docker's daemon (docker exec on a paused
    # or removed container)
    (re.compile(r"(?P<error>(?:Could not connect|Could not resolve hostname|SSH error|EOF error|"
                r"Authentication error) \(.*|Error response from daemon: .*)"), _unreachable),
)
# pyinfra's own summary lines, which say that something failed but not why.
_GENERIC = re.compile(r"^(?:Error(?: \(ignored\))?:? ?(?:executed \d+ commands|could not load "
                      r"fact.*)?|Error in nested operation|Unexpected error.*|"
                      r"E: Unable to acquire the dpkg frontend lock.*|"
                      r"E: Some index files failed to download.*|"
                      r"Run '[^']+ --help' for more information)$")


def clean(line: str) -> str:
    """A log line without colours and without the host prefix pyinfra puts before it."""
    text = _ANSI.sub("", line).strip()
    return re.sub(r"^\[[^\]]+\]\s*(?:nested\s+)?", "", text).strip()


def cause_of(lines: Sequence[str], quiet: Sequence[str] = ()) -> Cause:
    """The cause of a host's failure, from the error lines printed for it (oldest first);
    ``quiet``: its other lines (commands' output with -vvv), searched for known causes only."""
    cleaned = [clean(part) for line in lines for part in line.splitlines()]
    searched = cleaned + [clean(part) for line in quiet for part in line.splitlines()]
    for pattern, build in _KNOWN:
        for i, line in enumerate(searched):
            found = pattern.search(line)
            if found:
                cause = build(found)
                if build is _refused and i + 1 < len(searched) and searched[i + 1]:
                    # the refusal's first reason follows it ("  [code] what")
                    cause = Cause(f"preflight refused the host, nothing was changed: "
                                  f"{_clip(searched[i + 1])}", cause.todo)
                return cause
    specific = [line for line in cleaned if line and not _GENERIC.match(line)]
    # A failed check's finding: its "ERROR [code] what" line, with what it found.
    for i, line in enumerate(specific):
        if line.startswith("ERROR ["):
            seen = next((f.removeprefix("found:").strip() for f in specific[i + 1:i + 3]
                         if f.startswith("found:")), "")
            return Cause(_clip(line.removeprefix("ERROR ") + (f" ({seen})" if seen else "")),
                         f"read the lines above for this host, fix what they name, {RERUN}")
    gpufleet = [line for line in specific if line.startswith("gpufleet:")]
    last = (gpufleet or specific or ["no error line was printed"])[-1]
    return Cause(last.removeprefix("gpufleet:").strip(),
                 f"read the lines above for this host, fix what they name, {RERUN}")


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def lost_before_any_step(lines: Sequence[str], quiet: Sequence[str] = ()) -> Cause:
    """The cause for a host that failed before any operation ran (connecting, or the probe):
    only its lines up to that failure count (what gpufleet printed for it afterwards, from a
    probe it never got, says nothing)."""
    cleaned = [clean(part) for line in lines for part in line.splitlines()]
    upto = next((i + 1 for i, line in enumerate(cleaned) if "could not load fact" in line),
                len(cleaned))
    cause = cause_of(cleaned[:upto], quiet)
    if cause.todo.startswith("read the lines above"):
        failed = next((line for line in cleaned[:upto] if "could not load fact" in line),
                      cause.what)
        return _did_not_answer(failed.removeprefix("Error: "))
    return cause


def render_summary(faults: Sequence[HostFault], hosts_total: int) -> str:
    """The block printed at the end of a run with failed hosts ("" when none failed)."""
    if not faults:
        return ""
    others = "; the others were not affected" if len(faults) < hosts_total else ""
    lines = [f"--> gpufleet fault summary: {len(faults)} of {hosts_total} host(s) failed{others}"]
    for fault in sorted(faults, key=lambda f: f.host):
        lines += [f"    {fault.host}",
                  f"      step:  {fault.step}",
                  f"      cause: {fault.cause.what}",
                  f"      do:    {fault.cause.todo}"]
    return "\n".join(lines)
