"""Apt operations pyinfra does not have: signed keyrings with a pinned fingerprint, and a
check that the repositories offer the exact versions a pin set asks for.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import FunctionCommand, OperationValueError, StringCommand, operation

from deploys.common import refuse
from facts._shell import quote
from facts.apt import AptPackages, KeyringFingerprints


@operation()
def keyring(path: str, url: str, fingerprint: str, env: Mapping[str, str] | None = None):
    """
    Ensure an apt keyring holds the key with this fingerprint, fetched from a URL.

    The key is downloaded on the host, de-armored when needed and checked against the
    fingerprint before it is installed; a key with another fingerprint is refused, so a
    mirror or a man in the middle cannot swap it.

    + path: keyring file to write (under /etc/apt/keyrings)
    + url: where the key is published (armored or binary)
    + fingerprint: the 40-hex-digit fingerprint the key must have
    + env: environment for the download (proxies)

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
    if len(fingerprint) != 40:
        raise OperationValueError(f"fingerprint must have 40 hex digits, got {fingerprint!r}")

    present = host.get_fact(KeyringFingerprints, paths=[path]).get(path, frozenset())
    if fingerprint in present:
        host.noop(f"keyring {path} holds {fingerprint}")
        return

    script = f"""set -e
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
curl -fsSL --retry 3 --max-time 60 -o "$tmp/key" {quote(url)}
if grep -q 'BEGIN PGP PUBLIC KEY BLOCK' "$tmp/key"; then
  gpg --homedir "$tmp" --batch --dearmor < "$tmp/key" > "$tmp/key.gpg"
else
  cp "$tmp/key" "$tmp/key.gpg"
fi
found=$(gpg --homedir "$tmp" --batch --show-keys --with-colons "$tmp/key.gpg" |
  awk -F: '$1 == "fpr" {{print $10}}')
if ! printf '%s\\n' "$found" | grep -qx '{fingerprint}'; then
  echo "gpufleet: the key at {url} has fingerprint(s) $(echo $found)," >&2
  echo "gpufleet: but {fingerprint} is expected; not trusting it." >&2
  echo "gpufleet: check repos.*.key_url / key_fingerprint in the fleet file." >&2
  exit 1
fi
install -d -m 0755 "$(dirname {quote(path)})"
install -m 0644 "$tmp/key.gpg" {quote(path + '.gpufleet-new')}
mv -f {quote(path + '.gpufleet-new')} {quote(path)}"""
    yield StringCommand(script, _env=dict(env or {}))


@operation()
def versions_offered(
    packages: Mapping[str, str], repositories: str = "the configured repositories"
):
    """
    Stop the host unless the repositories offer every package at exactly the pinned version.

    Runs at execution time, after `apt-get update`, and reads what apt sees then. Reports
    every missing package with what the repositories do offer.

    + packages: package name -> exact apt version
    + repositories: how to name the repositories in the message

    **Example:**

    .. code:: python

        versions_offered(
            name="Ensure the pinned CUDA toolkit is offered",
            packages={"cuda-toolkit-12-1": "12.1.1-1"},
        )
    """
    if not host.state.is_executing:
        # Before execution (the change-detection pass) the repositories may not be configured
        # yet; the answer only means something once they are.
        return
    state = host.get_fact(AptPackages, packages=sorted(packages))
    missing = []
    for name, version in sorted(packages.items()):
        offered = state.offered.get(name, ())
        if version not in offered:
            what = ", ".join(offered) if offered else "nothing"
            missing.append(f"  {name} {version}: {repositories} offer {what}")
    if missing:
        message = "\n".join([
            "the pinned versions are not offered by " + repositories + ":",
            *missing,
            "Fix: correct inventory/pins.toml, or point repos.* in the fleet file at a mirror "
            "that carries these versions; then run `apt-get update` on the host to check.",
        ])
        yield FunctionCommand(refuse, (message,), {})
    else:
        host.noop(f"all {len(packages)} pinned versions are offered")
