"""`gpufleet report`: one offline HTML page built from the controller's records, run as a user
runs it (a subprocess) on a fleet-state folder made here, then opened in a real headless
browser (Debian's chromium): the key numbers must be in the page it renders, and its
screenshot must not be blank."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from facts.canary_figures import CanaryFiguresResult, VariantFigures
from inventory.schema import CanarySettings
from rules.canary_verdict import judge, verdict_record
from rules.gateway import canary_share

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
COST_FLAGS = ("--gpus", "1xa100-40gb", "--requests-per-day", "100000",
              "--cloud-per-million-tokens", "0.6")

FLEET = """\
[fleet]
name = "report-test"

[settings]
model = "deepseek-r1-distill-qwen-7b"
precision = "bf16"
weights_path = "/srv/models/deepseek-r1-distill-qwen-7b"
storage = { policy = "warn" }

[groups.pcie.settings]
gpus = { count = 2, model = "A100-PCIE-40GB", memory_gib = 39 }
inference = { replicas = 2 }

[groups.pcie.hosts.gpu-a]
target = "@docker/gpufleet-report-a"

[groups.pcie.hosts.gpu-b]
target = "@docker/gpufleet-report-b"

[groups.old.settings]
pin_set = "r535-fwdcompat"

[groups.old.hosts.gpu-c]
target = "@docker/gpufleet-report-c"
"""


def gpufleet(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "GPUFLEET_FLEET"}
    environ["PYTHONPATH"] = str(REPO)
    return subprocess.run([PYTHON, "-m", "gpufleet", *args], cwd=cwd, text=True,
                          capture_output=True, env=environ, timeout=120)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """A fleet file and what the controller records for it: manifests (gpu-c made with the
    pin set before the fleet file's), an audit (gpu-b drifted), a smoke test (gpu-b's second
    replica failed) and a canary status."""
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET)
    state = tmp_path / "fleet-state" / "report-test"
    for host, pins in (("gpu-a", "r535-cuda121"), ("gpu-b", "r535-cuda121"),
                       ("gpu-c", "r535-cuda121")):
        write_json(state / f"{host}.json", {"gpufleet_manifest": 1, "host": host,
                                            "pin_set": pins, "written_at": "2026-12-07T14:42Z"})
    write_json(state / "audit.json", {"gpu-a": [], "gpu-b": [
        {"area": "files", "what": "/etc/gpufleet/inference/docker-compose.yml changed",
         "since": "2026-12-07 15:00"}]})
    write_json(state / "smoke.json", {"written_at": "2026-12-07T15:41:14Z", "endpoints": [
        {"endpoint": "gpu-a", "url": "http://10.0.0.1:8000", "ok": True, "problem": None,
         "completion_ms": 83.8, "e2e_p50_ms": 177.0},
        {"endpoint": "gpu-a", "url": "http://10.0.0.1:8001", "ok": True, "problem": None,
         "completion_ms": 91.4, "e2e_p50_ms": 180.2},
        {"endpoint": "gpu-b", "url": "http://10.0.0.2:8000", "ok": True, "problem": None,
         "completion_ms": 95.2, "e2e_p50_ms": 177.1},
        {"endpoint": "gpu-b", "url": "http://10.0.0.2:8001", "ok": False,
         "problem": "ConnectionError: refused", "completion_ms": None}]})
    # what `canary status` records (deploys/canary.py), from a real verdict
    verdict = judge(CanaryFiguresResult({
        "canary": VariantFigures(requests=12, ttft_p99=0.0421, tokens_per_second=31.5),
        "stable": VariantFigures(requests=48, ttft_p99=0.0388, tokens_per_second=33.0)}),
        CanarySettings(), ttft_alert_seconds=0.5)
    assert verdict.verdict == "hold"
    (state / "canary.json").write_text(verdict_record(
        verdict, "running", canary_share("running", CanarySettings().weight),
        "deepseek-r1-distill-qwen-7b", "2026-12-07T15:50:00Z"))
    return fleet


def cost_json() -> dict[str, Any]:
    """The cost tool's own figures for the same flags: what the page must show."""
    out = subprocess.run([PYTHON, str(REPO / "tools" / "cost.py"), "--model",
                          "deepseek-r1-distill-qwen-7b", "--precision", "bf16", *COST_FLAGS,
                          "--json"], capture_output=True, text=True, timeout=120, check=False)
    return json.loads(out.stdout)["cost"]


def report(fleet: Path, out: Path, *extra: str, hosts: int = 3) -> str:
    result = gpufleet("report", "--fleet", str(fleet), "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == \
        f"report: {out} ({hosts} host(s), {3 if extra else 0} chart(s))"
    return out.read_text()


def test_the_page_is_self_contained_and_shows_what_the_controller_recorded(
        recorded: Path, tmp_path: Path) -> None:
    page = report(recorded, tmp_path / "fleet.html", *COST_FLAGS)
    # offline: no script, nothing fetched (the SVG namespace is a name, not a download)
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert page.count("<svg") == 3
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert "83.8 ms" in text and "91.4 ms" in text  # each replica's last completion
    assert "FAILED: ConnectionError: refused" in text
    assert "NOT serving: 1/2 replica(s) answered" in text
    assert "serving: 2/2 replica(s) answered" in text
    assert "no drift" in text
    assert "drifted: files: /etc/gpufleet/inference/docker-compose.yml changed" in text
    assert "behind: made with r535-cuda121, the fleet file asks for r535-fwdcompat" in text
    assert "Phase running : the canary gets 20 %" in text and "HOLD" in text
    assert "the canary answered 12 requests in the window; 50 are needed" in text
    assert "42.1 ms" in text and "38.8 ms" in text  # both variants' TTFT P99
    figures = cost_json()
    assert f"break-even {figures['break_even_requests_per_day']:,.0f} requests/day" in text


def test_without_a_load_the_page_says_how_to_get_the_charts(recorded: Path,
                                                            tmp_path: Path) -> None:
    page = report(recorded, tmp_path / "fleet.html")
    assert "<svg" not in page
    assert "No capacity or cost charts: give the load and a cloud price" in page


def test_nothing_recorded_yet_is_said_not_guessed(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET)
    page = report(fleet, tmp_path / "fleet.html")
    assert page.count("never converged (no manifest in fleet-state)") == 3
    assert "not checked (gpufleet smoke)" in page
    assert "No canary status recorded" in page
    # the default place is beside the records
    result = gpufleet("report", "--fleet", str(fleet))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fleet-state" / "report-test" / "report.html").is_file()


@pytest.mark.parametrize(("args", "says"), [
    (("--gpus", "1xa100-40gb", "--requests-per-day", "-5", "--cloud-per-million-tokens",
      "0.6"), "--requests-per-day -5.0: a positive rate"),
    (("--json",), "report: --json: not a report flag"),
])
def test_bad_flags_are_one_line_and_exit_2(recorded: Path, tmp_path: Path,
                                           args: tuple[str, ...], says: str) -> None:
    result = gpufleet("report", "--fleet", str(recorded), "--out", str(tmp_path / "x.html"),
                      *args)
    assert result.returncode == 2
    assert says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.html").exists()


def test_the_unedited_example_is_refused_like_everywhere_else(tmp_path: Path) -> None:
    result = gpufleet("report", "--fleet", str(REPO / "inventory" / "fleet.toml"), "--out",
                      str(tmp_path / "x.html"))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "is the unedited example" in line and "make rehearse" in line
    assert not (tmp_path / "x.html").exists()


def test_a_corrupt_record_is_one_line(recorded: Path, tmp_path: Path) -> None:
    (tmp_path / "fleet-state" / "report-test" / "smoke.json").write_text("{not json")
    result = gpufleet("report", "--fleet", str(recorded), "--out", str(tmp_path / "x.html"))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "smoke.json: cannot be read as JSON" in line


class _Engine(http.server.BaseHTTPRequestHandler):
    """A stand-in OpenAI API: the models list and one completion with tokens."""

    def _send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send({"data": [{"id": "deepseek-r1-distill-qwen-7b"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send({"choices": [{"message": {"content": "Hi"}}],
                    "usage": {"completion_tokens": 2}})

    def log_message(self, *args: Any) -> None:
        pass


def test_smoke_records_each_replicas_completion_for_the_report(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.split("[groups.pcie")[0] + f"""
[groups.local.settings]
inference = {{ replicas = 1, port = {server.server_address[1]} }}

[groups.local.hosts.gpu-l]
target = "@local"
""")
    try:
        result = gpufleet("smoke", "--fleet", str(fleet), "--requests", "0")
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "fleet-state" / "report-test" / "smoke.json").read_text())
    (endpoint,) = record["endpoints"]
    assert endpoint["endpoint"] == "gpu-l" and endpoint["ok"] is True
    assert 0 < endpoint["completion_ms"] < 60_000
    page = report(fleet, tmp_path / "fleet.html", hosts=1)
    assert f"{endpoint['completion_ms']:.1f} ms" in page


def chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        pytest.skip("Debian's chromium is not installed (tools/ensure-host-tools.sh installs it)")
    return found


def browser(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", "--disable-extensions", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_headless_browser_renders_the_numbers_and_the_charts(recorded: Path,
                                                               tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "fleet.html"
    report(recorded, page, *COST_FLAGS)
    dom = browser("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = re.sub(r"<[^>]+>", " ", dom.stdout)
    figures = cost_json()
    for number in ("83.8 ms", "95.2 ms", "20 %", "HOLD",
                   f"{figures['break_even_requests_per_day']:,.0f}"):
        assert number in rendered, number
    assert dom.stdout.count("<svg") == 3
    shot = tmp_path / "fleet.png"
    taken = browser(f"--screenshot={shot}", "--window-size=1200,2400",
                    "--hide-scrollbars", page.as_uri())
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, f"{len(colours)} colours: a blank page"
    # the charts' lines are drawn: matplotlib's blue, orange, green and red are on screen
    present = {rgb for _, rgb in colours}
    for rgb in ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)):
        assert rgb in present, rgb
