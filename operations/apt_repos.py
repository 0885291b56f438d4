"""Apt repositories pyinfra has no operation for: a keyring holding exactly one pinned key,
and package lists refreshed whenever what they must answer for changed.
"""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import FunctionCommand, OperationValueError, StringCommand, operation

from facts._shell import quote
from facts.host_state import KEYRING_DIR, require_watched
from inventory.schema import APT_LOCK_TIMEOUT_SECONDS
from inventory.urls import http_url_problem, mask_url
from operations.apt_lock import after_apt_lock, apt_get
from operations.apt_pins import APT_ENV, with_env_file
from operations.desired import desired
from operations.host_files import write_file_command
from operations.host_reading import host_state
from operations.messages import tell

_FINGERPRINT = re.compile(r"[0-9A-F]{40}")


def key_url_problem(url: str) -> str | None:
    """The schema's own URL rule (inventory/urls.py), so a key_url the fleet file was accepted
    with is never refused here: the URL is shell-quoted, any character the rule allows is
    safe on the command line."""
    return http_url_problem(url, credentials=True)


@operation()
def keyring(path: str, url: str, fingerprint: str, env_file: str | None = None):
    """
    Ensure an apt keyring holds exactly one key, with this fingerprint, fetched from a URL.

    The key is downloaded on the host, de-armored when needed and installed only when its
    primary keys are exactly the expected one: a key with another fingerprint, or a file that
    carries other keys beside it, is refused, so a mirror or a man in the middle cannot slip a
    key of its own into apt's trust.

    + path: keyring file to write (under /etc/apt/keyrings)
    + url: where the key is published (armored or binary)
    + fingerprint: the 40-hex-digit fingerprint of the key
    + env_file: a VAR=value file on the host sourced before downloading (proxies)

    **Example:**

    .. code:: python

        keyring(
            name="Ensure NVIDIA's CUDA repository key is trusted",
            path="/etc/apt/keyrings/gpufleet-cuda.gpg",
            url="https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/3bf863cc.pub",
            fingerprint="EB693B3035CD5710E231E123A4B469963BF863CC",
        )
    """
    fingerprint = fingerprint.replace(" ", "").upper()
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise OperationValueError(f"fingerprint must have 40 hex digits, got {fingerprint!r}")
    require_watched(path)
    if not path.startswith(KEYRING_DIR + "/"):
        raise OperationValueError(f"keyrings live in {KEYRING_DIR}, got {path}")
    problem = key_url_problem(url)
    if problem:
        raise OperationValueError(f"not a plain http(s) URL: {mask_url(url)!r} {problem}")

    desired().keyrings[path] = fingerprint
    if host_state().keyrings.get(path) == frozenset({fingerprint}):
        host.noop(f"keyring {path} holds exactly {fingerprint}")
        return

    folder = quote(KEYRING_DIR)
    script = f"""set -e
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
curl -fsSL --retry 3 --max-time 60 -o "$work/key" {quote(url)}
if grep -q 'BEGIN PGP PUBLIC KEY BLOCK' "$work/key"; then
  gpg --homedir "$work" --batch --dearmor < "$work/key" > "$work/key.gpg"
else
  cp "$work/key" "$work/key.gpg"
fi
found=$(gpg --homedir "$work" --batch --show-keys --with-colons "$work/key.gpg" |
  awk -F: '$1 == "pub" {{p = 1; next}} $1 == "fpr" && p {{print $10}} {{p = 0}}' | sort -u)
if [ "$found" != {quote(fingerprint)} ]; then
  printf 'gpufleet: the key at %s has primary key(s) %s,\\n' {quote(url)} "$(echo $found)" >&2
  printf 'gpufleet: but exactly %s is expected; not trusting it.\\n' {quote(fingerprint)} >&2
  echo "gpufleet: check repos.*.key_url / key_fingerprint in the fleet file." >&2
  exit 1
fi
install -d -m 0755 {folder}
new=$(mktemp {folder}/.gpufleet-new.XXXXXX); trap 'rm -rf "$work" "$new"' EXIT
install -m 0644 "$work/key.gpg" "$new"
mv -f "$new" {quote(path)}"""
    yield StringCommand(with_env_file(script, env_file))


@operation()
def apt_lists_refreshed(
    stamp: str,
    digest: str,
    max_age_seconds: int,
    installs_pending: bool,
    env_file: str | None = None,
    lock_timeout: int = APT_LOCK_TIMEOUT_SECONDS,
):
    """
    Ensure apt's package lists answer for the current sources and pins.

    Lists are refreshed (`apt-get update`) when ``digest`` — what the sources, their keys and
    the pins are — differs from the one recorded by the last refresh, or when packages are
    about to be installed from lists older than ``max_age_seconds``. The digest is recorded in
    ``stamp`` only after a successful refresh.

    + stamp: file recording the digest of the last refresh
    + digest: the current sources / keys / pins digest
    + max_age_seconds: how old lists may be when something is installed
    + installs_pending: whether this run installs or moves packages
    + env_file: a VAR=value file on the host sourced first (proxies)
    + lock_timeout: seconds to wait for another process's apt/dpkg lock

    **Example:**

    .. code:: python

        apt_lists_refreshed(
            name="Ensure apt's package lists are current for these sources and pins",
            stamp="/var/lib/gpufleet/apt-lists.digest", digest="3f2a...",
            max_age_seconds=3600, installs_pending=True,
        )
    """
    require_watched(stamp)
    if max_age_seconds < 0:
        raise OperationValueError("max_age_seconds must be >= 0")
    state = host_state()
    current = state.file(stamp)
    recorded = (current.content or "").strip() if current else None
    age = state.now - current.mtime if current and state.now is not None else None
    if recorded is None:
        reason = "gpufleet has not refreshed them on this host yet"
    elif recorded != digest:
        reason = "the sources, their keys or the pins changed since the last refresh"
    elif installs_pending and (age is None or age > max_age_seconds):
        reason = (f"packages are about to be installed and the lists are "
                  f"{'of unknown age' if age is None else f'{age} s old'} "
                  f"(more than {max_age_seconds} s)")
    else:
        host.noop("apt's package lists are current for these sources and pins")
        return
    yield FunctionCommand(tell, (f"refreshing apt package lists: {reason}",), {})
    script = after_apt_lock(f"{apt_get(lock_timeout)} update -q && "
                            f"{write_file_command(stamp, digest + chr(10))}", lock_timeout)
    yield StringCommand(with_env_file(script, env_file), _env=APT_ENV)
