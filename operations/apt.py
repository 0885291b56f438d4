"""Apt operations pyinfra does not have: signed keyrings with a pinned fingerprint, packages
present (compared with the one state read), and a check that the repositories offer the
exact versions a pin set asks for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyinfra import host
from pyinfra.api import FunctionCommand, OperationValueError, StringCommand, operation

from deploys.common import refuse
from facts._shell import quote
from facts.host_state import StackQuery, stack_state
from operations.apt_pins import APT_ENV, APT_INSTALL


@operation()
def keyring(path: str, url: str, fingerprint: str, query: StackQuery,
            env: Mapping[str, str] | None = None):
    """
    Ensure an apt keyring holds the key with this fingerprint, fetched from a URL.

    The key is downloaded on the host, de-armored when needed and checked against the
    fingerprint before it is installed; a key with another fingerprint is refused, so a
    mirror or a man in the middle cannot swap it.

    + path: keyring file to write (under /etc/apt/keyrings); must be in ``query.keyrings``
    + url: where the key is published (armored or binary)
    + fingerprint: the 40-hex-digit fingerprint the key must have
    + query: the StackQuery whose one read lists the keyring's fingerprints
    + env: environment for the download (proxies)

    **Example:**

    .. code:: python

        keyring(
            name="Ensure NVIDIA's CUDA repository key is trusted",
            path="/etc/apt/keyrings/gpufleet-cuda.gpg",
            url="https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/3bf863cc.pub",
            fingerprint="EB693B3035CD5710E231E123A4B469963BF863CC",
            query=query,
        )
    """
    fingerprint = fingerprint.replace(" ", "").upper()
    if len(fingerprint) != 40:
        raise OperationValueError(f"fingerprint must have 40 hex digits, got {fingerprint!r}")
    if path not in query.keyrings:
        raise OperationValueError(f"{path} is not in the state query; add it to keyrings")

    if fingerprint in stack_state(query).keyrings.get(path, frozenset()):
        host.noop(f"keyring {path} holds {fingerprint}")
        return

    new = quote(path + ".gpufleet-new")
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
install -m 0644 "$tmp/key.gpg" {new}
mv -f {new} {quote(path)}"""
    yield StringCommand(script, _env=dict(env or {}))


@operation()
def packages_present(packages: Sequence[str], query: StackQuery,
                     env: Mapping[str, str] | None = None):
    """
    Ensure packages are installed (any version), refreshing apt's lists first when needed.

    + packages: package names; each must be in ``query.packages``
    + query: the StackQuery whose one read lists installed packages
    + env: extra environment (proxies)

    **Example:**

    .. code:: python

        packages_present(name="Ensure curl and gnupg are installed",
                         packages=["curl", "gnupg"], query=query)
    """
    missing = [p for p in packages if p not in stack_state(query).installed]
    if not missing:
        host.noop(f"{len(packages)} packages installed")
        return
    yield StringCommand(
        f"apt-get update -q && {APT_INSTALL} {' '.join(quote(p) for p in missing)}",
        _env={**APT_ENV, **(env or {})},
    )


@operation()
def versions_offered(packages: Mapping[str, str], query: StackQuery,
                     repositories: str = "the configured repositories"):
    """
    Stop the host unless the repositories offer every package at exactly the pinned version.

    Runs at execution time, after `apt-get update`, and reads what apt sees then (the state is
    read again when an earlier operation changed the host). Reports every missing package with
    what the repositories do offer.

    + packages: package name -> exact apt version; each must be in ``query.offered``
    + query: the StackQuery whose one read includes `apt-cache madison`
    + repositories: how to name the repositories in the message

    **Example:**

    .. code:: python

        versions_offered(
            name="Ensure the pinned CUDA toolkit is offered",
            packages={"cuda-toolkit-12-1": "12.1.1-1"},
            query=query,
        )
    """
    if not host.state.is_executing:
        # Before execution (the change-detection pass) the repositories may not be configured
        # yet; the answer only means something once they are.
        return
    offered_now = stack_state(query).offered
    missing = []
    for name, version in sorted(packages.items()):
        offered = offered_now.get(name, ())
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
