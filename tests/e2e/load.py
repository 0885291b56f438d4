"""A bounded load through a gateway, for the end-to-end tests (loopback and the simulator's
own network only): a fixed number of chat completions at a fixed concurrency, stopping by
itself after a time limit; each answer's variant (X-Gpufleet-Variant) and status recorded.

``rate`` paces it (requests per second, all workers together). Unpaced, the workers send
back to back: the stand-in engines answer in ~15 ms, so a few workers keep one of the
machine's two cores busy (client, nginx, engines) for as long as the load runs, which a
test that only needs traffic flowing through a change (a rollout) does not need."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field

MODEL = "deepseek-r1-distill-qwen-7b"


@dataclass
class Load:
    """A bounded load through the gateway: ``count`` requests at ``concurrency``, stopping by
    itself after ``seconds`` at the latest (or when stop() is called)."""

    gateway: str
    count: int
    concurrency: int = 8
    seconds: float = 300
    model: str = MODEL
    key: str | None = None  # the fleet's API key (the engines behind the gateway check it)
    rate: float | None = None  # requests per second, all workers together (None: unpaced)
    # (when the request was sent, variant, HTTP status), in the order the answers came
    results: list[tuple[float, str, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._deadline = self._started + self.seconds
        self._threads = [threading.Thread(target=self._worker, daemon=True)
                         for _ in range(self.concurrency)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self) -> Load:
        for thread in self._threads:
            thread.join(self.seconds + 60)
        return self

    def _take(self) -> bool:
        with self._lock:
            if self._next >= self.count or self._stop.is_set() \
                    or time.monotonic() > self._deadline:
                return False
            slot = self._started + self._next / self.rate if self.rate else 0.0
            self._next += 1
        # Paced: request n goes at start + n / rate (stop() ends the wait early).
        self._stop.wait(max(0.0, slot - time.monotonic()))
        return not self._stop.is_set() and time.monotonic() <= self._deadline

    def _worker(self) -> None:
        host, port = self.gateway.split(":")
        body = json.dumps({"model": self.model, "max_tokens": 4,
                           "messages": [{"role": "user", "content": "Say hello."}]})
        while self._take():
            sent = time.monotonic()
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                headers = {"Content-Type": "application/json"}
                if self.key:
                    headers["Authorization"] = f"Bearer {self.key}"
                connection.request("POST", "/v1/chat/completions", body, headers)
                response = connection.getresponse()
                response.read()
                variant = response.getheader("X-Gpufleet-Variant", "")
                with self._lock:
                    self.results.append((sent, variant, response.status))
                    if response.status != 200:
                        self.failures.append(f"HTTP {response.status} from {variant}")
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(repr(exc))
            finally:
                connection.close()

    def share(self, variant: str, since: float | None = None) -> float:
        """The share of answers from ``variant``, of the requests sent after ``since``."""
        rows = [r for r in self.results if since is None or r[0] > since]
        return sum(1 for _, v, _ in rows if v == variant) / max(1, len(rows))

    def sent_after(self, since: float) -> int:
        return sum(1 for sent, _, _ in self.results if sent > since)
