"""Files gpufleet manages on hosts, compared with what the one state read saw.

pyinfra's files.put costs two facts per file (stat and checksum); the stack already read the
content of every file it manages in one command (facts.host_state), so comparing needs none.
"""

from __future__ import annotations

import base64

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation

from facts._shell import quote
from facts.host_state import StackQuery, stack_state


def write_file_command(path: str, content: str, mode: str = "644") -> StringCommand:
    """Write next to the old file, then swap: a reader never sees half a file."""
    data = base64.b64encode(content.encode()).decode()
    new = quote(path + ".gpufleet-new")
    return StringCommand(
        f"install -d -m 0755 \"$(dirname {quote(path)})\" && "
        f"printf %s {quote(data)} | base64 -d > {new} && chmod {quote(mode)} {new} && "
        f"mv -f {new} {quote(path)}"
    )


@operation()
def managed_file(path: str, content: str | None, query: StackQuery, mode: str = "644"):
    """
    Ensure a file has exactly this content (compared with the stack state, no extra fact).

    + path: file on the host; must be one of ``query.files``
    + content: the whole file; None: the file must not exist
    + query: the stack's StackQuery (what the one state read covers)
    + mode: octal permissions

    **Example:**

    .. code:: python

        managed_file(
            name="Ensure nouveau is blacklisted",
            path="/etc/modprobe.d/gpufleet-blacklist-nouveau.conf",
            content="blacklist nouveau\\n",
            query=query,
        )
    """
    if path not in query.files:
        raise ValueError(f"{path} is not in the stack query; add it to StackQuery.files")
    if stack_state(query).files.get(path) == content:
        host.noop(f"{path} is up to date" if content is not None else f"{path} is absent")
        return
    if content is None:
        yield StringCommand(f"rm -f {quote(path)}")
    else:
        yield write_file_command(path, content, mode)


@operation()
def uploaded_file(path: str, src: str, query: StackQuery, mode: str = "644"):
    """
    Ensure a file on the host is a copy of a controller file, uploaded only when it differs.

    For files too large for a command line (CA bundles); compared with the stack state.

    + path: file on the host; must be one of ``query.files``
    + src: file on the controller
    + query: the StackQuery whose one read covers ``path``
    + mode: octal permissions

    **Example:**

    .. code:: python

        uploaded_file(
            name="Ensure the fleet's extra CA bundle is trusted",
            path="/usr/local/share/ca-certificates/gpufleet-extra-ca.crt",
            src="certs/corporate-root-ca.pem",
            query=query,
        )
    """
    if path not in query.files:
        raise ValueError(f"{path} is not in the stack query; add it to StackQuery.files")
    with open(src, encoding="utf-8", errors="replace") as handle:
        wanted = handle.read()
    if stack_state(query).files.get(path) == wanted:
        host.noop(f"{path} is up to date")
        return
    new = path + ".gpufleet-new"
    yield StringCommand(f"install -d -m 0755 \"$(dirname {quote(path)})\"")
    yield FileUploadCommand(src, new)
    yield StringCommand(f"chmod {quote(mode)} {quote(new)} && mv -f {quote(new)} {quote(path)}")
