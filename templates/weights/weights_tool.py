"""gpufleet's weights tool, run on a host with python3 (stdlib only): check model weights
against their manifest, record a manifest for weights that are already there, and download
weights from a hub at a pinned revision.

    python3 - record FOLDER MODEL_ID        hash every file, write .gpufleet/manifest.json
    python3 - verify FOLDER [NAME ...]      hash NAMEs (all when none) against the manifest
    python3 - commit FOLDER                 move pushed files into place (see below)
    python3 - hub FOLDER ENDPOINT REPO REVISION [TOKEN_FILE]

New files are written to NAME.gpufleet-partial and moved over NAME only once every file of the
change is complete and matches its sha256, the new manifest last: a push or a download that
fails (a full disk, a lost connection, a bad file) leaves the previous files and manifest as
they were. `commit` does that for a push from the controller: the files were uploaded to their
partial names and the new manifest to .gpufleet/manifest.json.gpufleet-partial.

Every command that succeeds leaves .gpufleet/verified.txt: the `size mtime name` of every
file, which later runs compare cheaply to find what changed. Exit 1 with one line per bad
file ("gpufleet: weights file NAME ...") when something does not match. A download that does
not fit prints "gpufleet-space-needed BYTES short" before writing anything; one that fills the
disk anyway removes its partial files and prints "gpufleet-space-needed BYTES" (the deploy
turns both into its disk-space message).

Every name, from a hub's listing, a pushed manifest or the folder itself, passes one rule
(name_problem): relative, no `.`/`..`/empty part, no NUL or line break, not gpufleet's own
folder, and it resolves inside the folder through no symbolic link. Files in the weights folder
are regular files: a symbolic link in it (a hub cache's snapshots/<rev>/ layout links every
file into ../../blobs) is refused by every command, on the first run. Partial files are opened
without following links. The hub's token goes only to the endpoint's own scheme, host and port:
a redirect elsewhere (a CDN) is followed without it, and https is never redirected to http.
"""

import errno
import hashlib
import json
import os
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

META = ".gpufleet"
MANIFEST = "manifest.json"
VERIFIED = "verified.txt"
CHUNK = 8 * 2**20
PARTIAL = ".gpufleet-partial"
MAX_PAGES = 10000  # of the hub's listing: a loop of next links ends here
# Files an engine loads by their suffix, whether a manifest names them or not.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
LINK_HINT = ("gpufleet keeps only regular files in a weights folder (a hub cache's "
             "snapshots/<rev>/ folder links every file into ../../blobs: download into a plain "
             "folder, e.g. with --local-dir, or copy the files)")


class Refused(Exception):
    """A name, link or redirect gpufleet does not follow: one line, nothing written."""


def say(message):
    print(f"gpufleet: {message}", flush=True)


# A rate is worth an ETA only once this long and this much into the transfer: the first small
# file of a push or a download mostly measures the connection's set-up, and its "rate" would
# promise hours for a transfer that takes seconds.
ETA_AFTER_SECONDS = 3.0
ETA_AFTER_BYTES = 64 * 2**20


def progress_line(done, total, moved, seconds):
    """How far a transfer is: "DONE of TOTAL GB", then its rate and the time left once
    ``moved`` bytes (this run's, not those already there) over ``seconds`` are enough to trust
    (ETA_AFTER_SECONDS, ETA_AFTER_BYTES); never a rate of 0 nor a time left when done."""
    line = f"{done / 1e9:.2f} of {total / 1e9:.2f} GB"
    if seconds < ETA_AFTER_SECONDS or moved < ETA_AFTER_BYTES or done >= total:
        return line
    rate = moved / seconds
    return f"{line}, {rate / 1e6:.0f} MB/s, about {(total - done) / rate:.0f} s left"


def name_problem(name):
    """Why NAME cannot be a file of a weights folder, or None. The one rule for the names of a
    hub's listing, of a pushed manifest and of what is verified (rules.checkpoint uses it on the
    controller too)."""
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if "\0" in name or "\n" in name or "\r" in name:
        return "contains a NUL or a line break"
    if name.startswith("/"):
        return "is absolute"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "has an empty, '.' or '..' part"
    if parts[0] == META or name.endswith(PARTIAL):
        return "is a name gpufleet keeps for itself"
    return None


def path_problem(folder, name):
    """Why FOLDER/NAME is not a place gpufleet reads or writes, or None: the name rule, then
    no symbolic link on the way (the folder itself may be one) and the path stays inside."""
    problem = name_problem(name)
    if problem:
        return problem
    path = folder
    for part in name.split("/"):
        path = os.path.join(path, part)
        if os.path.islink(path):
            return f"is a symbolic link ({path} -> {os.readlink(path)}); {LINK_HINT}"
    base = os.path.realpath(folder)
    if os.path.commonpath([base, os.path.realpath(os.path.join(folder, name))]) != base:
        return f"resolves outside {folder}"
    return None


def checked_path(folder, name, what):
    problem = path_problem(folder, name)
    if problem:
        raise Refused(f"{what} {name!r} {problem}")
    return os.path.join(folder, name)


def files_of(folder):
    """Every regular file's name under FOLDER (not .gpufleet/, not partial files); refused when
    a name breaks the rule or a symbolic link is found."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (root == folder and d == META))
        for name in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                raise Refused(f"weights file {rel!r} is a symbolic link ({path} -> "
                              f"{os.readlink(path)}); {LINK_HINT}")
            if stat.S_ISREG(os.lstat(path).st_mode) and not name.endswith(PARTIAL):
                problem = name_problem(rel)
                if problem:
                    raise Refused(f"weights file {rel!r} {problem}")
                found.append(rel)
    return found


def open_nofollow(path, flags=os.O_RDONLY):
    """A file descriptor for PATH, never through a symbolic link at PATH itself."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"{path} is a symbolic link: gpufleet does not read or write weights "
                          "through links (remove it)") from None
        raise


def digests(path):
    """(sha256, git blob id) of the regular file at PATH: the hub publishes the first for LFS
    files and the second (sha1 of "blob <size>\\0" and the bytes) for the rest."""
    fd = open_nofollow(path)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        sha, blob = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
        while True:
            block = handle.read(CHUNK)
            if not block:
                return sha.hexdigest(), blob.hexdigest()
            sha.update(block)
            blob.update(block)


def sha256(path):
    return digests(path)[0]


def write_atomic(path, text):
    tmp = f"{path}.gpufleet-new.{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def stamp(ns):
    """A time in ns as `find -printf %T@` prints it."""
    return f"{ns // 10**9}.{ns % 10**9:09d}0"


def record_verified(folder):
    """`size mtime,ctime name` of every file (facts.weights_files prints the same with find):
    a file rewritten and its mtime set back still has a new ctime."""
    lines = []
    for name in files_of(folder):
        st = os.lstat(os.path.join(folder, name))
        lines.append(f"{st.st_size} {stamp(st.st_mtime_ns)},{stamp(st.st_ctime_ns)} {name}")
    os.makedirs(os.path.join(folder, META), exist_ok=True)
    write_atomic(os.path.join(folder, META, VERIFIED), "\n".join(lines) + "\n")


def load_manifest(folder):
    with open(os.path.join(folder, META, MANIFEST)) as handle:
        return json.load(handle)


def unnamed(folder, manifest, present):
    """Say which files the manifest does not name; True when one is a weights file (an engine
    loads every *.safetensors in the folder)."""
    extra = sorted(set(present) - set(manifest))
    weights = [n for n in extra if n.endswith(WEIGHT_SUFFIXES)]
    for name in extra:
        say(f"weights file {name} is in {folder} but not in its manifest"
            + (": an engine would load it too" if name in weights else ""))
    return bool(weights)


def record(folder, model):
    files = {}
    for name in files_of(folder):
        path = os.path.join(folder, name)
        files[name] = {"size": os.lstat(path).st_size, "sha256": sha256(path)}
    os.makedirs(os.path.join(folder, META), exist_ok=True)
    manifest = {"model": model, "source": "present (recorded on first use)", "files": files}
    write_atomic(os.path.join(folder, META, MANIFEST), json.dumps(manifest, indent=1) + "\n")
    record_verified(folder)
    say(f"recorded a manifest of {len(files)} files in {folder}/{META}/{MANIFEST}")
    return 0


def verify(folder, names):
    manifest = load_manifest(folder)["files"]
    for name in manifest:
        checked_path(folder, name, "the manifest names")
    present = set(files_of(folder))
    bad = []
    for name in sorted(set(manifest) - present):
        bad.append(f"weights file {name} is missing from {folder}")
    checked = 0
    for name in names or sorted(manifest):
        if name not in manifest:
            continue
        path = os.path.join(folder, name)
        if name not in present:
            continue  # reported as missing above
        want = manifest[name]
        size = os.lstat(path).st_size
        if size != want["size"]:
            bad.append(f"weights file {name} has {size} bytes, its manifest says {want['size']}")
            continue
        found = sha256(path)
        checked += 1
        if found != want["sha256"]:
            bad.append(f"weights file {name} differs from its manifest: sha256 {found}, "
                       f"expected {want['sha256']}")
    if unnamed(folder, manifest, present):
        bad.append(f"{folder} holds weights files its manifest does not name (listed above): "
                   "remove them or record them")
    if bad:
        for line in bad:
            say(line)
        say(f"the weights in {folder} do not match their manifest: fix or restore the files "
            "named above (the engine was not restarted)")
        return 1
    record_verified(folder)
    say(f"{checked} weights file(s) match their manifest ({len(manifest)} in all)")
    return 0


def regular_size(path):
    """The size of the regular file at PATH (never through a link), None when there is none."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise Refused(f"{path} is a symbolic link: gpufleet does not read or write weights "
                      "through links (remove it)")
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def commit(folder):
    """Move the pushed files (NAME.gpufleet-partial) over their names once each matches the new
    manifest (.gpufleet/manifest.json.gpufleet-partial), then that manifest over the old one.
    A file that does not match is removed, and nothing is moved."""
    staged = os.path.join(folder, META, MANIFEST + PARTIAL)
    with open(staged) as handle:
        manifest = json.load(handle)
    try:
        for name in manifest["files"]:
            checked_path(folder, name, "the pushed manifest names")
    except Refused:
        os.remove(staged)
        raise
    ready, bad = [], []
    for name, want in sorted(manifest["files"].items()):
        partial = os.path.join(folder, name + PARTIAL)
        size = regular_size(partial)
        if size is None:
            continue
        if size != want["size"]:
            bad.append((partial, f"weights file {name} arrived with {size} bytes, its manifest "
                                 f"says {want['size']}"))
            continue
        found = sha256(partial)
        if found != want["sha256"]:
            bad.append((partial, f"weights file {name} arrived with sha256 {found}, its "
                                 f"manifest says {want['sha256']}"))
            continue
        ready.append(name)
    if bad:
        for partial, line in bad:
            os.remove(partial)
            say(line)
        os.remove(staged)
        say(f"nothing was moved into place: the previous weights in {folder} and their manifest "
            "are untouched (the files named above are pushed again on the next run)")
        return 1
    for name in ready:
        os.replace(os.path.join(folder, name + PARTIAL), os.path.join(folder, name))
    os.replace(staged, os.path.join(folder, META, MANIFEST))
    say(f"{len(ready)} pushed file(s) match the new manifest and are in place")
    if os.path.isdir(folder):
        unnamed(folder, manifest["files"], files_of(folder))
    return 0


def free_bytes(folder):
    """Bytes available on the filesystem that holds (or will hold) FOLDER."""
    path = folder
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def origin(url):
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


class Redirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect without the token when it leaves the endpoint's scheme, host or port
    (as the hub's own client does: a CDN never sees it), and never from https to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = origin(req.full_url), origin(newurl)
        if old[0] == "https" and new[0] != "https":
            raise Refused(f"the hub redirected {req.full_url} to {newurl}: gpufleet does not "
                          "follow https to anything else")
        request = super().redirect_request(req, fp, code, msg, headers, newurl)
        if request is not None and new != old:
            for key in [k for k in request.headers if k.lower() == "authorization"]:
                del request.headers[key]
        return request


def next_link(header):
    """The rel="next" address of a Link header, or None."""
    for part in (header or "").split(","):
        pieces = [p.strip() for p in part.split(";")]
        if pieces[0].startswith("<") and pieces[0].endswith(">") and any(
                p.replace(" ", "").lower() in ('rel="next"', "rel=next") for p in pieces[1:]):
            return pieces[0][1:-1]
    return None


class Hub:
    """Requests to a hub: the token only to the endpoint's origin, redirects as above."""

    def __init__(self, endpoint, token):
        self.base = endpoint.rstrip("/")
        self.origin = origin(self.base)
        self.token = token
        self.opener = urllib.request.build_opener(Redirects)

    def open(self, url, headers=None):
        headers = dict(headers or {})
        if origin(url)[0] != self.origin[0] and self.origin[0] == "https":
            raise Refused(f"the hub sent gpufleet to {url}: gpufleet does not follow https to "
                          "anything else")
        if self.token and origin(url) == self.origin:
            headers["Authorization"] = f"Bearer {self.token}"
        return self.opener.open(urllib.request.Request(url, headers=headers), timeout=60)

    def listing(self, repo, revision):
        """Every file entry of REPO at REVISION, following the listing's next links."""
        url = f"{self.base}/api/models/{repo}/tree/{revision}?recursive=true"
        entries, seen = [], set()
        while url:
            if url in seen or len(seen) >= MAX_PAGES:
                raise Refused(f"the hub's listing does not end (page {url} again)")
            seen.add(url)
            with self.open(url) as response:
                page = json.load(response)
                following = next_link(response.headers.get("Link"))
            if not isinstance(page, list):
                raise Refused(f"the hub's listing at {url} is not a list of files")
            entries += [e for e in page if isinstance(e, dict) and e.get("type") == "file"]
            url = urllib.parse.urljoin(url, following) if following else None
        return entries


def wanted(entry):
    """(name, size, kind, digest) of a listing entry: kind "sha256" for LFS files (the hub
    publishes their sha256), "blob" for the rest (their git blob id)."""
    name = entry.get("path")
    problem = name_problem(name)
    if problem:
        raise Refused(f"the hub's listing names {name!r}, which {problem}; nothing was written")
    lfs = entry.get("lfs") or {}
    size = lfs.get("size", entry.get("size", 0)) if isinstance(lfs, dict) else None
    digest = lfs.get("oid") if isinstance(lfs, dict) and lfs else entry.get("oid")
    if not isinstance(size, int) or size < 0 or not isinstance(digest, str) or not digest:
        raise Refused(f"the hub's listing gives no size or id for {name!r}; nothing was written")
    return name, size, "sha256" if lfs else "blob", digest.lower()


def matches(path, kind, digest):
    """(whether the file at PATH is what the hub says, its sha256)."""
    sha, blob = digests(path)
    return (sha if kind == "sha256" else blob) == digest, sha


def hub(folder, endpoint, repo, revision, token_file=None):
    """Download every file of REPO at REVISION that is missing or differs, resumably."""
    token = None
    if token_file:
        with open(token_file) as handle:
            token = handle.read().strip()
    client = Hub(endpoint, token)
    quoted = urllib.parse.quote(repo, safe="/")
    entries = [wanted(e) for e in client.listing(quoted, revision)]
    if len({name for name, _, _, _ in entries}) != len(entries):
        raise Refused("the hub's listing names a file twice; nothing was written")
    total = sum(size for _, size, _, _ in entries)
    files, fetch = {}, []
    for name, size, kind, digest in entries:
        path = checked_path(folder, name, "the hub's listing names")
        # A file kept from an earlier revision is checked again against this one.
        if regular_size(path) == size:
            same, sha = matches(path, kind, digest)
            if same:
                files[name] = {"size": size, "sha256": sha}
                continue
        fetch.append((name, size, kind, digest))

    # Before writing: the partial files (the old ones stay until the end) must fit.
    def have(name):
        return regular_size(os.path.join(folder, name + PARTIAL)) or 0

    need = sum(max(size - have(name), 0) for name, size, _, _ in fetch)
    if need > free_bytes(folder):
        print(f"gpufleet-space-needed {need} short", flush=True)
        say(f"the download needs {need} bytes in {folder}, {free_bytes(folder)} are free; "
            "nothing was written")
        return 1
    os.makedirs(os.path.join(folder, META), exist_ok=True)
    done = total - sum(size for _, size, _, _ in fetch)
    moved, started = 0, time.monotonic()  # bytes this run fetched (not those resumed)
    written = []
    try:
        for name, size, kind, digest in fetch:
            path = os.path.join(folder, name)
            os.makedirs(os.path.dirname(path) or folder, exist_ok=True)
            partial = checked_path(folder, name, "the hub's listing names") + PARTIAL
            written.append(partial)
            start = have(name)
            if start > size:  # not this file's beginning: start again
                os.remove(partial)
                start = 0
            if start < size or size == 0:
                url = f"{client.base}/{quoted}/resolve/{revision}/{urllib.parse.quote(name)}"
                with client.open(url, {"Range": f"bytes={start}-"} if start else {}) as response:
                    append = bool(start) and response.status == 206
                    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
                    with os.fdopen(open_nofollow(partial, flags), "wb") as out:
                        while True:
                            block = response.read(CHUNK)
                            if not block:
                                break
                            out.write(block)
                            moved += len(block)
            same, got = matches(partial, kind, digest)
            if not same:
                os.remove(partial)
                say(f"weights file {name} from the hub is not what the hub's listing says "
                    f"(its {'sha256' if kind == 'sha256' else 'git blob id'} should be "
                    f"{digest}); it was removed")
                return 1
            files[name] = {"size": size, "sha256": got}
            done += size
            say(f"{name}: "
                + progress_line(done, total, moved, time.monotonic() - started))
        # Every file is complete and checked: move them into place, the manifest last (written
        # beside first, so that nothing after the first move needs space).
        manifest = {"model": repo, "source": f"hub {repo}@{revision}", "files": files}
        staged = os.path.join(folder, META, MANIFEST + PARTIAL)
        written.append(staged)
        with open(staged, "w") as handle:
            handle.write(json.dumps(manifest, indent=1) + "\n")
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise  # the partial files stay: the next run resumes them
        for partial in written:  # a full disk: give the space back
            if regular_size(partial) is not None:
                os.remove(partial)
        print(f"gpufleet-space-needed {need}", flush=True)
        say(f"downloading into {folder} failed: {exc}; the partial files were removed, the "
            "previous weights are untouched")
        return 1
    for name, _, _, _ in fetch:
        path = os.path.join(folder, name)
        os.replace(path + PARTIAL, path)
    os.replace(staged, os.path.join(folder, META, MANIFEST))
    try:
        record_verified(folder)
    except (OSError, Refused) as exc:  # the weights are in place; the next run hashes them
        say(f"could not record the verification in {folder}/{META}: {exc}")
    say(f"{len(files)} files of {repo}@{revision} in {folder}, verified")
    if unnamed(folder, files, files_of(folder)):
        say(f"{folder} holds weights files this revision does not name (listed above): an "
            "engine loads every one; remove them")
        return 1
    return 0


def main(argv):
    command, folder = argv[0], argv[1]
    try:
        if command == "record":
            return record(folder, argv[2])
        if command == "verify":
            return verify(folder, argv[2:])
        if command == "commit":
            return commit(folder)
        if command == "hub":
            try:
                return hub(folder, *argv[2:])
            except (OSError, ValueError) as exc:  # HTTP errors, unreachable hub, bad listing
                say(f"downloading from {argv[2]} failed: {exc}")
                return 1
    except Refused as exc:
        say(f"refused: {exc}")
        return 1
    say(f"unknown command {command}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
