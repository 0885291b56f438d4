"""Model weights: the manifest decisions from the probe's listing, the controller's manifest, and
the host tool (templates/weights/weights_tool.py) run for real here — record, verify, and a hub
download against a local test server that answers like a hub's API (TEST STAND-IN, loopback).
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest

from facts.storage import read_speed_script
from facts.weights_files import WeightsListing, parse_weights, weights_script
from inventory.catalog import find_model
from rules.checkpoint import (
    PARTIAL,
    TOOL,
    WeightsSourceError,
    config_findings,
    controller_manifest,
    hub_download_needed,
    name_problem,
    progress_line,
    render_manifest,
    same_weights,
    to_push,
    weights_check,
)
from rules.disk_space import needed_mark
from tests.sim.weights import config_json, write_weights

MODEL = "deepseek-r1-distill-qwen-1.5b"


def tool(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-", *args], input=prelude + TOOL.read_text(),
                          capture_output=True, text=True, timeout=120)


def full_disk_for(name: str) -> str:
    """A prelude to the tool (fault injection): writing NAME's partial file writes /dev/full,
    so every write fails with ENOSPC, as on a full disk."""
    return f"""import os as _os
_open = _os.open
def _full(path, flags, *rest):
    if str(path).endswith({name + PARTIAL!r}) and flags & _os.O_WRONLY:
        return _open("/dev/full", _os.O_WRONLY)
    return _open(path, flags, *rest)
_os.open = _full
"""


def listing(folder: Path) -> WeightsListing:
    out = subprocess.run(["sh", "-c", weights_script(str(folder))], capture_output=True,
                         text=True, check=True).stdout
    return parse_weights(out)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return write_weights(MODEL, tmp_path / "m", shard_bytes=65536)


def test_the_catalog_checks_config_json(weights: Path) -> None:
    model = find_model(MODEL)
    assert config_findings(json.loads((weights / "config.json").read_text()), model, "x") == []
    wrong = {**config_json(MODEL), "num_hidden_layers": 80}
    (finding,) = config_findings(wrong, model, "/srv/m")
    assert finding.code == "weights-config-differs" and "num_hidden_layers 80" in finding.measured
    assert config_findings(None, model, "/srv/m")[0].code == "weights-missing"


def test_record_then_a_quick_check_finds_nothing_to_hash(weights: Path) -> None:
    before = listing(weights)
    assert weights_check(before, full=False).record  # no manifest yet
    done = tool("record", str(weights), MODEL)
    assert done.returncode == 0, done.stderr
    after = listing(weights)
    check = weights_check(after, full=False)
    assert not check.record and check.changed == () and check.corrupt == ()
    assert len(weights_check(after, full=True).changed) == 5  # full: every file again


def test_a_changed_shard_is_found_by_mtime_then_named_by_its_hash(weights: Path) -> None:
    assert tool("record", str(weights), MODEL).returncode == 0
    shard = weights / "model-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    check = weights_check(listing(weights), full=False)
    assert check.changed == (shard.name,) and check.corrupt == ()
    failed = tool("verify", str(weights), *check.changed)
    assert failed.returncode == 1
    assert f"weights file {shard.name} differs from its manifest" in failed.stdout
    assert "the engine was not restarted" in failed.stdout
    # a file that shrank or went is known bad without hashing
    shard.write_bytes(b"x")
    (weights / "tokenizer.json").unlink()
    corrupt = weights_check(listing(weights), full=False).corrupt
    assert corrupt == (f"{shard.name} (1 bytes, manifest: 65536)", "tokenizer.json (missing)")


def test_verify_records_what_it_checked(weights: Path) -> None:
    assert tool("record", str(weights), MODEL).returncode == 0
    (weights / "config.json").touch()  # same bytes, new mtime
    check = weights_check(listing(weights), full=False)
    assert check.changed == ("config.json",)
    assert tool("verify", str(weights), "config.json").returncode == 0
    assert weights_check(listing(weights), full=False).changed == ()


def test_the_controller_manifest_and_what_to_push(weights: Path, tmp_path: Path) -> None:
    manifest = controller_manifest(weights, MODEL)
    shard = manifest["files"]["model-00002-of-00002.safetensors"]
    data = (weights / "model-00002-of-00002.safetensors").read_bytes()
    assert shard == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (weights / ".gpufleet" / "controller-cache.json").exists()  # not hashed again
    host = tmp_path / "host"
    host.mkdir()
    (host / "config.json").write_bytes((weights / "config.json").read_bytes())
    (host / "model-00001-of-00002.safetensors").write_bytes(b"half")  # an interrupted push
    assert to_push(manifest, listing(host)) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json"]


def blob_id(data: bytes) -> str:
    """A file's git blob id, as a hub lists it for files kept outside LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStandIn(http.server.BaseHTTPRequestHandler):
    """TEST STAND-IN for a model hub's API, on loopback only: the file listing (LFS files with
    their sha256, the rest with their git blob id; `page` entries a page, with Link rel=next as
    the hub paginates), and downloads with HTTP ranges. With `cdn` set, LFS files are redirected
    there, as the hub sends them to its CDN; the CDN answers without a token and notes any it
    was sent. It never accepts more than a hub: a request without the token gets 401."""

    files: ClassVar[dict[str, bytes]] = {}
    token = "hf_test_token"
    inflate: ClassVar[int] = 0  # added to the sizes the listing claims for the shards
    page: ClassVar[int] = 1000
    extra: ClassVar[list[dict[str, object]]] = []  # entries listed as they are
    served: ClassVar[dict[str, bytes]] = {}  # name -> other bytes than the listing's
    cdn: ClassVar[str] = ""
    cdn_address: ClassVar[str] = ""  # the second stand-in server, another port: another host
    tokens_seen_by_cdn: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def entries(self) -> list[dict[str, object]]:
        listed: list[dict[str, object]] = []
        for name, data in self.files.items():
            if name.endswith(".safetensors"):
                size = len(data) + self.inflate
                listed.append({"type": "file", "path": name, "size": size, "oid": "f" * 40,
                               "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": size,
                                       "pointerSize": 134}})
            else:
                listed.append({"type": "file", "path": name, "size": len(data),
                               "oid": blob_id(data)})
        return [{"type": "directory", "path": "d", "oid": "e" * 40}, *listed, *self.extra]

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/cdn/"):
            if self.headers.get("Authorization"):
                self.tokens_seen_by_cdn.append(self.headers["Authorization"])
            self.body(urllib.parse.unquote(self.path[5:]))
            return
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_error(401)
            return
        if "/api/models/org/model/tree/" in self.path:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            start = int(query.get("cursor", ["0"])[0])
            entries = self.entries()
            headers = {}
            if start + self.page < len(entries):
                following = f"{self.path.split('?')[0]}?recursive=true&cursor={start + self.page}"
                headers["Link"] = f'<{following}>; rel="next"'
            self.send(200, json.dumps(entries[start:start + self.page]).encode(), headers)
            return
        name = urllib.parse.unquote(self.path.split("/resolve/", 1)[1].split("/", 1)[1])
        if self.cdn and name.endswith(".safetensors"):
            self.send(302, b"", {"Location": f"{self.cdn}/cdn/{urllib.parse.quote(name)}"})
            return
        self.body(name)

    def body(self, name: str) -> None:
        body = self.served.get(name, self.files.get(name, b"hostile"))
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
        self.send(206 if start else 200, body[start:])


@pytest.fixture
def hub(weights: Path) -> Iterator[str]:
    HubStandIn.files = {p.name: p.read_bytes() for p in weights.iterdir() if p.is_file()}
    HubStandIn.inflate, HubStandIn.page, HubStandIn.cdn = 0, 1000, ""
    HubStandIn.extra, HubStandIn.served, HubStandIn.tokens_seen_by_cdn = [], {}, []
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubStandIn) for _ in (1, 2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    HubStandIn.cdn_address = f"http://127.0.0.1:{servers[1].server_address[1]}"
    yield f"http://127.0.0.1:{servers[0].server_address[1]}"
    for server in servers:
        server.shutdown()


def test_a_hub_download_resumes_checks_hashes_and_records(hub: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(HubStandIn.token + "\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    shard = "model-00001-of-00002.safetensors"
    (dest / f"{shard}.gpufleet-partial").write_bytes(HubStandIn.files[shard][:1000])
    done = tool("hub", str(dest), hub, "org/model", "0" * 40, str(token))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (dest / shard).read_bytes() == HubStandIn.files[shard]
    assert "GB" in done.stdout  # progress; a download of a few kB in a blink promises no ETA
    assert "s left" not in done.stdout and "MB/s" not in done.stdout
    check = weights_check(listing(dest), full=False)
    assert not check.record and check.changed == () and check.corrupt == ()
    denied = tool("hub", str(tmp_path / "other"), hub, "org/model", "0" * 40)
    assert denied.returncode == 1 and "failed: HTTP Error 401" in denied.stdout


def test_a_file_changed_on_the_host_is_pushed_again_from_the_controller(
        weights: Path, tmp_path: Path) -> None:
    host = tmp_path / "host"
    subprocess.run(["cp", "-a", str(weights), str(host)], check=True)
    assert tool("record", str(host), MODEL).returncode == 0
    manifest = controller_manifest(weights, MODEL)
    assert to_push(manifest, listing(host)) == []
    shard = host / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[0] ^= 0xFF  # same size: only the verification record tells it moved
    shard.write_bytes(bytes(data))
    assert to_push(manifest, listing(host)) == [shard.name]


def test_the_same_weights_from_another_checkout_are_the_same_weights(tmp_path: Path) -> None:
    """The folder's path is provenance: another checkout of the fleet must not push again."""
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"w" * 64)
    first = controller_manifest(tmp_path / "a", "m")
    second = controller_manifest(tmp_path / "b", "m")
    assert first["source"] != second["source"]
    assert same_weights(first, second)
    (tmp_path / "b" / "model.safetensors").write_bytes(b"x" * 64)
    assert not same_weights(first, controller_manifest(tmp_path / "b", "m"))
    assert not same_weights(None, first)


# --- a change arrives whole or not at all -------------------------------------------------------
def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "verified.txt"}


def stage_push(weights: Path, host: Path, manifest: dict[str, object], names: list[str]) -> None:
    """What operations.model_weights.weights_pushed uploads before its commit."""
    for name in names:
        (host / f"{name}{PARTIAL}").write_bytes((weights / name).read_bytes())
    (host / ".gpufleet" / f"manifest.json{PARTIAL}").write_text(render_manifest(manifest))


def test_a_push_is_moved_into_place_only_once_every_file_matches(
        weights: Path, tmp_path: Path) -> None:
    host = tmp_path / "host"
    subprocess.run(["cp", "-a", str(weights), str(host)], check=True)
    assert tool("record", str(host), MODEL).returncode == 0
    before = snapshot(host)
    shard = "model-00002-of-00002.safetensors"
    first = "model-00001-of-00002.safetensors"
    # a new version of the same size: the host's manifest says it differs
    (weights / first).write_bytes(bytes(reversed((weights / first).read_bytes())))
    assert to_push(controller_manifest(weights, MODEL), listing(host)) == [first]
    (weights / first).write_bytes((host / first).read_bytes())
    (weights / shard).write_bytes(b"n" * 70000)  # a new version of one shard, and an extra file
    (weights / "extra.safetensors").write_bytes(b"e" * 5000)
    manifest = controller_manifest(weights, MODEL)
    push = to_push(manifest, listing(host))
    assert push == ["extra.safetensors", shard]

    # one file arrived damaged: nothing moves, the damaged one goes, the good one stays
    stage_push(weights, host, manifest, push)
    (host / f"{shard}{PARTIAL}").write_bytes(b"n" * 69999 + b"X")
    failed = tool("commit", str(host))
    assert failed.returncode == 1
    assert f"weights file {shard} arrived with sha256" in failed.stdout
    assert "the previous weights in" in failed.stdout and "are untouched" in failed.stdout
    assert {k: v for k, v in snapshot(host).items() if PARTIAL not in k} == before
    assert not (host / f"{shard}{PARTIAL}").exists()
    assert (host / f"extra.safetensors{PARTIAL}").exists()  # complete: kept for the next run
    # the next run pushes only what is missing (the complete partial is not pushed again)
    assert to_push(manifest, listing(host)) == [shard]

    stage_push(weights, host, manifest, [shard])
    done = tool("commit", str(host))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (host / shard).read_bytes() == b"n" * 70000
    assert (host / "extra.safetensors").read_bytes() == b"e" * 5000
    assert json.loads((host / ".gpufleet" / "manifest.json").read_text()) == manifest
    assert not list(host.rglob(f"*{PARTIAL}"))
    assert tool("verify", str(host)).returncode == 0


def test_a_hub_download_that_does_not_fit_writes_nothing(hub: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(HubStandIn.token)
    HubStandIn.inflate = 10**18
    dest = tmp_path / "dest"
    short = tool("hub", str(dest), hub, "org/model", "0" * 40, str(token))
    assert short.returncode == 1, short.stdout + short.stderr
    every = sum(len(data) for data in HubStandIn.files.values())
    assert needed_mark(short.stdout) == (2 * 10**18 + every, True)
    assert "nothing was written" in short.stdout
    assert not dest.exists()


def test_a_hub_download_that_fills_the_disk_leaves_the_previous_weights(
        hub: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(HubStandIn.token)
    dest = tmp_path / "dest"
    assert tool("hub", str(dest), hub, "org/model", "0" * 40, str(token)).returncode == 0
    before = snapshot(dest)
    shard = "model-00002-of-00002.safetensors"
    first = "model-00001-of-00002.safetensors"
    HubStandIn.files = {**HubStandIn.files, first: b"1" * 65536, shard: b"2" * 65536}
    # the first shard arrives; the second is written onto /dev/full (ENOSPC on every write)
    full = tool("hub", str(dest), hub, "org/model", "0" * 40, str(token),
                prelude=full_disk_for(shard))
    assert full.returncode == 1, full.stdout + full.stderr
    assert "No space left on device" in full.stdout and needed_mark(full.stdout) == (
        2 * 65536, False)
    assert "the partial files were removed, the previous weights are untouched" in full.stdout
    assert snapshot(dest) == before
    assert not (dest / f"{first}{PARTIAL}").exists()


def test_a_new_hub_revision_is_downloaded() -> None:
    repo, old, new = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "a" * 40, "b" * 40
    files = {"config.json": {"size": 700, "sha256": "0" * 64}}
    listing = WeightsListing("ok", files={"config.json": (700, "1.0")},
                             manifest={"model": repo, "source": f"hub {repo}@{old}",
                                       "files": files})
    check = weights_check(listing, full=False)
    assert not hub_download_needed(listing, repo, old, check)
    assert hub_download_needed(listing, repo, new, check)  # the fleet moved the revision
    assert hub_download_needed(WeightsListing("absent"), repo, old,
                               weights_check(WeightsListing("absent"), full=False))


# --- progress: no ETA before the rate is worth trusting ----------------------------------------
def test_a_small_first_file_promises_no_eta() -> None:
    # The issue's line: a few kB pushed after seconds of connection set-up ("0 MB/s, about
    # 5180 s left" for a transfer that took seconds).
    assert progress_line(2_000, 10_000_000, 2_000, 5.0) == "0.00 of 0.01 GB"


@pytest.mark.parametrize(("moved", "seconds"), [
    (0, 60.0),                   # nothing moved: a rate of 0, never an ETA
    (1024 * 2**20, 1.0),         # plenty moved, but too soon to trust
    (64 * 2**20 - 1, 60.0),      # long enough, but too little moved
])
def test_no_eta_until_enough_time_and_bytes(moved: int, seconds: float) -> None:
    line = progress_line(moved, 10 * 2**30, moved, seconds)
    assert "s left" not in line and "MB/s" not in line, line


def test_an_eta_once_the_rate_is_trusted() -> None:
    # 1 GB in 10 s: 100 MB/s, 9 GB to go in 90 s
    assert progress_line(10**9, 10 * 10**9, 10**9, 10.0) == (
        "1.00 of 10.00 GB, 100 MB/s, about 90 s left")
    # bytes already there (a resumed download) do not count towards the rate
    assert progress_line(5 * 10**9, 10 * 10**9, 10**9, 10.0) == (
        "5.00 of 10.00 GB, 100 MB/s, about 50 s left")
    # done: nothing left to promise
    assert progress_line(10**9, 10**9, 10**9, 10.0) == "1.00 of 1.00 GB"


# --- nothing from a hub or a controller is written outside the weights folder --------------------
def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("weights_tool_under_test", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hub_run(hub: str, dest: Path, tmp_path: Path, prelude: str = ""
            ) -> subprocess.CompletedProcess[str]:
    token = tmp_path / "token"
    token.write_text(HubStandIn.token)
    return tool("hub", str(dest), hub, "org/model", "0" * 40, str(token), prelude=prelude)


@pytest.mark.parametrize("hostile", ["../x", "ABS", "sub/../../x", "bad\nname", "nul\0name",
                                     ".gpufleet/manifest.json", "x.gpufleet-partial", ""])
def test_a_hub_listing_naming_a_file_outside_the_folder_is_refused(
        hub: str, tmp_path: Path, hostile: str) -> None:
    name = str(tmp_path / "x") if hostile == "ABS" else hostile
    HubStandIn.extra = [{"type": "file", "path": name, "size": 7, "oid": blob_id(b"hostile")}]
    dest = tmp_path / "dest"
    refused = hub_run(hub, dest, tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"the hub's listing names {name!r}" in refused.stdout
    assert "nothing was written" in refused.stdout
    assert not (tmp_path / "x").exists() and not dest.exists()


def test_one_name_rule_for_listings_pushes_and_verification(weights: Path) -> None:
    for bad in ("../x", "/etc/passwd", "a/../../b", "a//b", "a\0b", "a\nb", "a\rb", "./a",
                ".gpufleet/manifest.json", "m.safetensors.gpufleet-partial", ""):
        assert name_problem(bad), bad
    for good in ("config.json", "sub/dir/model-00001-of-00002.safetensors", "..x", "a..b"):
        assert name_problem(good) is None, good
    assert tool("record", str(weights), MODEL).returncode == 0
    meta = weights / ".gpufleet"
    manifest = json.loads((meta / "manifest.json").read_text())
    manifest["files"]["../escaped"] = {"size": 1, "sha256": "0" * 64}
    (meta / f"manifest.json{PARTIAL}").write_text(json.dumps(manifest))
    (weights / f"../escaped{PARTIAL}").write_text("x")
    pushed = tool("commit", str(weights))
    assert pushed.returncode == 1 and "the pushed manifest names '../escaped'" in pushed.stdout
    assert not (weights.parent / "escaped").exists()
    assert not (meta / f"manifest.json{PARTIAL}").exists()
    (meta / "manifest.json").write_text(json.dumps(manifest))
    verified = tool("verify", str(weights))
    assert verified.returncode == 1 and "the manifest names '../escaped'" in verified.stdout


@pytest.mark.parametrize("cdn", ["another port", "localhost"])
def test_the_token_is_not_sent_on_a_redirect_to_another_host(
        hub: str, tmp_path: Path, cdn: str) -> None:
    HubStandIn.cdn = (HubStandIn.cdn_address if cdn == "another port"
                      else hub.replace("127.0.0.1", "localhost"))
    dest = tmp_path / "dest"
    done = hub_run(hub, dest, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    shard = "model-00001-of-00002.safetensors"
    assert (dest / shard).read_bytes() == HubStandIn.files[shard]  # the redirect was followed
    assert HubStandIn.tokens_seen_by_cdn == []


def test_https_is_never_redirected_to_http_and_the_token_stays_with_its_host() -> None:
    module = load_tool()
    redirects = module.Redirects()

    def follow(old: str, new: str) -> urllib.request.Request:
        request = urllib.request.Request(old, headers={"Authorization": "Bearer t"})
        followed: urllib.request.Request = redirects.redirect_request(
            request, None, 302, "Found", {}, new)
        return followed

    with pytest.raises(module.Refused, match="does not follow https to anything else"):
        follow("https://hub.test/a", "http://hub.test/b")
    assert follow("https://hub.test/a", "https://hub.test/b").get_header("Authorization")
    for elsewhere in ("https://cdn.test/b", "https://hub.test:8443/b"):
        assert follow("https://hub.test/a", elsewhere).get_header("Authorization") is None
    assert follow("http://hub.test/a", "https://hub.test/b").get_header("Authorization") is None
    with pytest.raises(module.Refused):  # a next link or any address the tool is sent to
        module.Hub("https://hub.test", "t").open("http://hub.test/api")


def test_every_page_of_the_listing_is_downloaded(hub: str, tmp_path: Path) -> None:
    HubStandIn.page = 2
    dest = tmp_path / "dest"
    done = hub_run(hub, dest, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((dest / ".gpufleet" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(HubStandIn.files)
    assert all((dest / name).read_bytes() == data for name, data in HubStandIn.files.items())


def test_a_file_outside_lfs_is_checked_by_its_git_blob_id(hub: str, tmp_path: Path) -> None:
    assert blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git hash-object
    good = HubStandIn.files["tokenizer.json"]
    HubStandIn.served = {"tokenizer.json": bytes(reversed(good))}  # same size, other bytes
    dest = tmp_path / "dest"
    bad = hub_run(hub, dest, tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert (f"weights file tokenizer.json from the hub is not what the hub's listing says "
            f"(its git blob id should be {blob_id(good)})") in bad.stdout
    assert not (dest / "tokenizer.json").exists()
    assert not (dest / ".gpufleet" / "manifest.json").exists()


def test_a_file_kept_from_an_older_revision_is_checked_again(hub: str, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    config = HubStandIn.files["config.json"]
    (dest / "config.json").write_bytes(bytes(reversed(config)))  # the older one, same size
    done = hub_run(hub, dest, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (dest / "config.json").read_bytes() == config


def test_a_planted_partial_link_is_never_written_through(hub: str, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_bytes(b"precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    shard = "model-00001-of-00002.safetensors"
    (dest / f"{shard}{PARTIAL}").symlink_to(precious)
    refused = hub_run(hub, dest, tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"{shard}{PARTIAL} is a symbolic link" in refused.stdout
    assert precious.read_bytes() == b"precious"
    (dest / f"{shard}{PARTIAL}").unlink()
    (dest / "sub").symlink_to(tmp_path)  # a folder link on the way to a listed name
    HubStandIn.files = {**HubStandIn.files, "sub/x": b"hostile"}
    refused = hub_run(hub, dest, tmp_path)
    assert refused.returncode == 1 and "'sub/x' is a symbolic link" in refused.stdout
    assert not (tmp_path / "x").exists()


def test_a_hub_cache_snapshot_is_refused_on_the_first_run_and_a_linked_folder_works(
        weights: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "blobs").mkdir(parents=True)
    snapshot_dir = cache / "snapshots" / ("0" * 40)
    snapshot_dir.mkdir(parents=True)
    for path in sorted(weights.iterdir()):
        blob = cache / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.write_bytes(path.read_bytes())
        (snapshot_dir / path.name).symlink_to(Path("../../blobs") / blob.name)
    first = tool("record", str(snapshot_dir), MODEL)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "is a symbolic link" in first.stdout and "snapshots/<rev>/" in first.stdout
    seen = listing(snapshot_dir)
    assert seen.links == tuple(sorted(p.name for p in weights.iterdir()))
    recorded = {"files": {name: {"size": 1, "sha256": "0"} for name in seen.links}}
    check = weights_check(replace(seen, manifest=recorded), full=False)
    assert check.refused and all("symbolic link" in line for line in check.refused)
    # the folder itself may be a link: probe and tool see the same files
    linked = tmp_path / "linked"
    linked.symlink_to(weights)
    assert tool("record", str(linked), MODEL).returncode == 0
    again = weights_check(listing(linked), full=False)
    assert not again.record and again.changed == () and again.corrupt == () == again.refused


def test_the_read_speed_probe_reads_a_linked_weights_folder_as_the_tool_does(
        tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "model.safetensors").write_bytes(b"w" * (2 * 2**20))
    (tmp_path / "linked").symlink_to(real)
    out = subprocess.run(["sh", "-c", read_speed_script(str(tmp_path / "linked"), 1, 1)],
                         capture_output=True, text=True, timeout=60).stdout
    assert f"file={tmp_path}/linked/model.safetensors" in out.splitlines(), out


def test_files_the_manifest_does_not_name_are_reported(weights: Path) -> None:
    assert tool("record", str(weights), MODEL).returncode == 0
    (weights / "README.md").write_text("notes\n")
    noted = tool("verify", str(weights))
    assert noted.returncode == 0 and "README.md is in" in noted.stdout
    assert weights_check(listing(weights), full=False).refused == ()
    (weights / "old-00003-of-00003.safetensors").write_bytes(b"x" * 100)
    refused = tool("verify", str(weights))
    assert refused.returncode == 1, refused.stdout
    assert ("old-00003-of-00003.safetensors is in" in refused.stdout
            and "an engine would load it too" in refused.stdout)
    assert weights_check(listing(weights), full=False).refused == (
        "old-00003-of-00003.safetensors (not in the manifest: an engine would load it too)",)


def test_the_quick_check_sees_a_file_rewritten_with_its_mtime_put_back(weights: Path) -> None:
    assert tool("record", str(weights), MODEL).returncode == 0
    shard = weights / "model-00001-of-00002.safetensors"
    before = shard.stat()
    time.sleep(0.01)
    shard.write_bytes(bytes(reversed(shard.read_bytes())))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert shard.stat().st_mtime_ns == before.st_mtime_ns
    assert weights_check(listing(weights), full=False).changed == (shard.name,)


def test_the_controller_push_refuses_links_that_leave_its_folder(
        weights: Path, tmp_path: Path) -> None:
    (weights / "same.json").symlink_to("config.json")  # stays inside: pushed as a file
    assert "same.json" in controller_manifest(weights, MODEL)["files"]
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0\n")
    (weights / "extra.json").symlink_to(secret)
    with pytest.raises(WeightsSourceError, match=r"extra.json links to .*secret, outside"):
        controller_manifest(weights, MODEL)
    (weights / "extra.json").unlink()
    (weights / "linked").symlink_to(tmp_path)
    with pytest.raises(WeightsSourceError, match="is a link to a folder"):
        controller_manifest(weights, MODEL)


def test_the_push_from_the_controller_reports_by_the_same_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from operations import model_weights
    said: list[str] = []

    def tell(state: object, host: object, message: str, color: str) -> bool:
        said.append(message)
        return True

    monkeypatch.setattr(model_weights, "tell", tell)
    started: list[float] = []
    assert model_weights._progress(None, None, 0, 10_000_000, started, "start")  # type: ignore[arg-type]
    started[0] -= 5.0  # the first small file lands five seconds in (the connection's set-up)
    model_weights._progress(None, None, 2_000, 10_000_000, started,  # type: ignore[arg-type]
                            "config.json")
    assert said == ["weights: config.json pushed, 0.00 of 0.01 GB"]
