"""The end-to-end tests' bounded load (tests/e2e/load.py), against a server on loopback."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e.load import Load


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("X-Gpufleet-Variant", "stable")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_paced_load_sends_no_faster_than_its_rate(gateway: str) -> None:
    load = Load(gateway, count=10, concurrency=4, seconds=30, rate=20).start().wait()
    sent = sorted(at for at, _, _ in load.results)
    assert len(sent) == 10 and load.failures == []
    # request n leaves at start + n / rate: the tenth 9/20 s after the first, at the earliest
    assert sent[-1] - sent[0] >= 9 / 20 - 0.01
    assert load.share("stable") == 1.0


def test_stop_ends_a_paced_load_while_it_waits_for_its_next_slot(gateway: str) -> None:
    load = Load(gateway, count=1000, concurrency=2, seconds=30, rate=1).start()
    time.sleep(0.2)
    started = time.monotonic()
    load.stop()
    load.wait()
    assert time.monotonic() - started < 5  # not the 999 s the slots would take
    assert 1 <= len(load.results) <= 2
