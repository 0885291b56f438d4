"""gpufleet's weights tool, run on a host with python3 (stdlib only): check model weights
against their manifest, record a manifest for weights that are already there, and download
weights from a hub at a pinned revision.

    python3 - record FOLDER MODEL_ID        hash every file, write .gpufleet/manifest.json
    python3 - verify FOLDER [NAME ...]      hash NAMEs (all when none) against the manifest
    python3 - hub FOLDER ENDPOINT REPO REVISION [TOKEN_FILE]

Every command that succeeds leaves .gpufleet/verified.txt: the `size mtime name` of every
file, which later runs compare cheaply to find what changed. Exit 1 with one line per bad
file ("gpufleet: weights file NAME ...") when something does not match.
"""

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


def say(message):
    print(f"gpufleet: {message}", flush=True)


def files_of(folder):
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (root == folder and d == META))
        for name in sorted(names):
            path = os.path.join(root, name)
            if os.path.isfile(path) and not name.endswith(".gpufleet-partial"):
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
    os.makedirs(os.path.join(folder, META), exist_ok=True)
    total = sum(int(e.get("size", 0)) for e in entries)
    done = 0
    started = time.monotonic()
    files = {}
    for entry in entries:
        name, size = entry["path"], int(entry.get("size", 0))
        path = os.path.join(folder, name)
        want = (entry.get("lfs") or {}).get("oid")  # LFS files: the hub publishes sha256
        if os.path.isfile(path) and os.path.getsize(path) == size and (
                want is None or sha256(path) == want):
            files[name] = {"size": size, "sha256": want or sha256(path)}
            done += size
            continue
        os.makedirs(os.path.dirname(path) or folder, exist_ok=True)
        partial = path + ".gpufleet-partial"
        have = os.path.getsize(partial) if os.path.isfile(partial) else 0
        request = urllib.request.Request(
            f"{base}/{quoted}/resolve/{revision}/{urllib.parse.quote(name)}",
            headers={**headers, **({"Range": f"bytes={have}-"} if have else {})})
        with urllib.request.urlopen(request, timeout=60) as response, \
                open(partial, "ab" if have and response.status == 206 else "wb") as out:
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
        os.replace(partial, path)
        files[name] = {"size": size, "sha256": got}
        done += size
        rate = done / max(time.monotonic() - started, 0.001)
        say(f"{name}: {done / 1e9:.2f} of {total / 1e9:.2f} GB, {rate / 1e6:.0f} MB/s, "
            f"{(total - done) / max(rate, 1):.0f} s left")
    manifest = {"model": repo, "source": f"hub {repo}@{revision}", "files": files}
    write_atomic(os.path.join(folder, META, MANIFEST), json.dumps(manifest, indent=1) + "\n")
    record_verified(folder)
    say(f"{len(files)} files of {repo}@{revision} in {folder}, verified")
    return 0


def main(argv):
    command, folder = argv[0], argv[1]
    if command == "record":
        return record(folder, argv[2])
    if command == "verify":
        return verify(folder, argv[2:])
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
