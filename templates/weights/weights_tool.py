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
"""

import errno
import hashlib
import json
import os
import sys
import time
import urllib.parse
import urllib.request

META = ".gpufleet"
MANIFEST = "manifest.json"
VERIFIED = "verified.txt"
CHUNK = 8 * 2**20
PARTIAL = ".gpufleet-partial"


def say(message):
    print(f"gpufleet: {message}", flush=True)


def files_of(folder):
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (root == folder and d == META))
        for name in sorted(names):
            path = os.path.join(root, name)
            if os.path.isfile(path) and not name.endswith(PARTIAL):
                found.append(os.path.relpath(path, folder))
    return found


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(CHUNK)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def write_atomic(path, text):
    tmp = f"{path}.gpufleet-new.{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def record_verified(folder):
    lines = []
    for name in files_of(folder):
        st = os.stat(os.path.join(folder, name))
        ns = st.st_mtime_ns  # printed exactly as `find -printf %T@` does
        lines.append(f"{st.st_size} {ns // 10**9}.{ns % 10**9:09d}0 {name}")
    os.makedirs(os.path.join(folder, META), exist_ok=True)
    write_atomic(os.path.join(folder, META, VERIFIED), "\n".join(lines) + "\n")


def load_manifest(folder):
    with open(os.path.join(folder, META, MANIFEST)) as handle:
        return json.load(handle)


def record(folder, model):
    files = {}
    for name in files_of(folder):
        path = os.path.join(folder, name)
        files[name] = {"size": os.path.getsize(path), "sha256": sha256(path)}
    os.makedirs(os.path.join(folder, META), exist_ok=True)
    manifest = {"model": model, "source": "present (recorded on first use)", "files": files}
    write_atomic(os.path.join(folder, META, MANIFEST), json.dumps(manifest, indent=1) + "\n")
    record_verified(folder)
    say(f"recorded a manifest of {len(files)} files in {folder}/{META}/{MANIFEST}")
    return 0


def verify(folder, names):
    manifest = load_manifest(folder)["files"]
    present = set(files_of(folder))
    bad = []
    for name in sorted(set(manifest) - present):
        bad.append(f"weights file {name} is missing from {folder}")
    checked = 0
    for name in names or sorted(manifest):
        if name not in manifest:
            continue
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue  # reported as missing above
        want = manifest[name]
        size = os.path.getsize(path)
        if size != want["size"]:
            bad.append(f"weights file {name} has {size} bytes, its manifest says {want['size']}")
            continue
        found = sha256(path)
        checked += 1
        if found != want["sha256"]:
            bad.append(f"weights file {name} differs from its manifest: sha256 {found}, "
                       f"expected {want['sha256']}")
    if bad:
        for line in bad:
            say(line)
        say(f"the weights in {folder} do not match their manifest: fix or restore the files "
            "named above (the engine was not restarted)")
        return 1
    record_verified(folder)
    say(f"{checked} weights file(s) match their manifest ({len(manifest)} in all)")
    return 0


def commit(folder):
    """Move the pushed files (NAME.gpufleet-partial) over their names once each matches the new
    manifest (.gpufleet/manifest.json.gpufleet-partial), then that manifest over the old one.
    A file that does not match is removed, and nothing is moved."""
    staged = os.path.join(folder, META, MANIFEST + PARTIAL)
    with open(staged) as handle:
        manifest = json.load(handle)
    ready, bad = [], []
    for name, want in sorted(manifest["files"].items()):
        partial = os.path.join(folder, name + PARTIAL)
        if not os.path.isfile(partial):
            continue
        size = os.path.getsize(partial)
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
    return 0


def free_bytes(folder):
    """Bytes available on the filesystem that holds (or will hold) FOLDER."""
    path = folder
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def hub(folder, endpoint, repo, revision, token_file=None):
    """Download every file of REPO at REVISION that is missing or differs, resumably."""
    headers = {}
    if token_file:
        with open(token_file) as handle:
            headers["Authorization"] = f"Bearer {handle.read().strip()}"
    base = endpoint.rstrip("/")
    quoted = urllib.parse.quote(repo, safe="/")
    listing_url = f"{base}/api/models/{quoted}/tree/{revision}?recursive=true"
    with urllib.request.urlopen(urllib.request.Request(listing_url, headers=headers),
                                timeout=60) as response:
        entries = [e for e in json.load(response) if e.get("type") == "file"]
    total = sum(int(e.get("size", 0)) for e in entries)
    files, fetch = {}, []
    for entry in entries:
        name, size = entry["path"], int(entry.get("size", 0))
        path = os.path.join(folder, name)
        want = (entry.get("lfs") or {}).get("oid")  # LFS files: the hub publishes sha256
        if os.path.isfile(path) and os.path.getsize(path) == size and (
                want is None or sha256(path) == want):
            files[name] = {"size": size, "sha256": want or sha256(path)}
        else:
            fetch.append((name, size, want))
    # Before writing: the partial files (the old ones stay until the end) must fit.
    def have(name):
        partial = os.path.join(folder, name + PARTIAL)
        return os.path.getsize(partial) if os.path.isfile(partial) else 0
    need = sum(max(size - have(name), 0) for name, size, _ in fetch)
    if need > free_bytes(folder):
        print(f"gpufleet-space-needed {need} short", flush=True)
        say(f"the download needs {need} bytes in {folder}, {free_bytes(folder)} are free; "
            "nothing was written")
        return 1
    os.makedirs(os.path.join(folder, META), exist_ok=True)
    done = total - sum(size for _, size, _ in fetch)
    started = time.monotonic()
    written = []
    try:
        for name, size, want in fetch:
            path = os.path.join(folder, name)
            os.makedirs(os.path.dirname(path) or folder, exist_ok=True)
            partial = path + PARTIAL
            written.append(partial)
            start = have(name)
            if start > size:  # not this file's beginning: start again
                os.remove(partial)
                start = 0
            if start < size or size == 0:
                request = urllib.request.Request(
                    f"{base}/{quoted}/resolve/{revision}/{urllib.parse.quote(name)}",
                    headers={**headers, **({"Range": f"bytes={start}-"} if start else {})})
                with urllib.request.urlopen(request, timeout=60) as response, \
                        open(partial, "ab" if start and response.status == 206 else "wb") as out:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        out.write(block)
            got = sha256(partial)
            if want is not None and got != want:
                os.remove(partial)
                say(f"weights file {name} from the hub has sha256 {got}, the hub says {want}")
                return 1
            files[name] = {"size": size, "sha256": got}
            done += size
            rate = done / max(time.monotonic() - started, 0.001)
            say(f"{name}: {done / 1e9:.2f} of {total / 1e9:.2f} GB, {rate / 1e6:.0f} MB/s, "
                f"{(total - done) / max(rate, 1):.0f} s left")
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
            if os.path.isfile(partial):
                os.remove(partial)
        print(f"gpufleet-space-needed {need}", flush=True)
        say(f"downloading into {folder} failed: {exc}; the partial files were removed, the "
            "previous weights are untouched")
        return 1
    for name, _, _ in fetch:
        path = os.path.join(folder, name)
        os.replace(path + PARTIAL, path)
    os.replace(staged, os.path.join(folder, META, MANIFEST))
    try:
        record_verified(folder)
    except OSError as exc:  # the weights are in place; the next run hashes them again
        say(f"could not record the verification in {folder}/{META}: {exc}")
    say(f"{len(files)} files of {repo}@{revision} in {folder}, verified")
    return 0


def main(argv):
    command, folder = argv[0], argv[1]
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
    say(f"unknown command {command}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
