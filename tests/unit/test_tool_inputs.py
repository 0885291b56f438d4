"""Hostile input to the offline tools (size, cost, smoke), run as an operator would.

Every numeric flag of each tool gets every kind of bad number (nan, inf, -inf, 1e308, a huge
integer, -1, 0 where zero is not allowed, text, nothing), every file a tool reads gets every
kind of bad file (missing, a folder, not UTF-8, unreadable, empty), and every text flag gets
control characters. Each must end in exit status 2 with one line on stderr: no traceback, no
raw control character (an escape sequence would reach the terminal), and nothing on stdout.
The smoke cases never reach the network: they are refused before any request.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.forked_tools import ToolServer

ROOT = Path(__file__).resolve().parents[2]
MAX_LINE = 400  # characters: one clear line, not a dump


@dataclass(frozen=True)
class Case:
    tool: str  # module under tools/
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    label: str = ""  # what is bad about it (the test id)

    def __str__(self) -> str:
        return f"{self.tool} {' '.join(self.args)}"

    @property
    def id(self) -> str:
        return repr(f"{self.tool} {self.label or ' '.join(self.args)}")[1:-1][:80]


# --- the batteries ------------------------------------------------------------------------
BAD_NUMBERS = ("nan", "inf", "-inf", "1e308", "-1", "abc", "")
HUGE_INT = "1" + "0" * 30  # argparse's int() takes it: the tool must bound it

# A valid run of each tool (the bad flag replaces its own entry, or is added).
SIZE_BASE = {"--model": "deepseek-r1-distill-qwen-7b", "--gpus": "1xh100",
             "--requests-per-day": "1000", "--ttft": "2", "--tokens-per-second": "20"}
COST_BASE = {**SIZE_BASE, "--cloud-per-million-tokens": "0.6", "--staff-per-year": "60000"}
# Flags that exclude one another: giving the first drops the others from the base.
EXCLUDES = {"--requests-per-second": ("--requests-per-day",),
            "--cloud-per-gpu-hour": ("--cloud-per-million-tokens",
                                     "--cloud-per-million-output-tokens")}

# flag -> (an integer flag, 0 is a valid value)
SIZE_NUMBERS = {
    "--gpu-memory-gib": (False, False), "--context": (True, False),
    "--concurrency": (True, False), "--tp": (True, False), "--pp": (True, False),
    "--max-num-seqs": (True, False), "--gpu-memory-utilization": (False, False),
    "--requests-per-second": (False, False), "--requests-per-day": (False, False),
    "--peak-factor": (False, False), "--prompt-tokens": (True, False),
    "--output-tokens": (True, False), "--ttft": (False, False),
    "--tokens-per-second": (False, False), "--headroom": (False, True),
}
COST_NUMBERS = {
    "--years": (True, False), "--gpu-price": (False, True), "--host-price": (False, True),
    "--gpus-per-host": (True, False), "--gpu-watts": (False, True),
    "--host-watts": (False, True), "--pue": (False, False), "--kwh-price": (False, True),
    "--staff-per-year": (False, True), "--cloud-per-gpu-hour": (False, True),
    "--cloud-per-million-tokens": (False, True),
    "--cloud-per-million-output-tokens": (False, True),
}
SMOKE_NUMBERS = {"--requests": (True, True), "--seconds": (False, False)}
# COUNTxGPU and NODESx(COUNTxGPU): the counts are numbers too.
BAD_GPUS = ("0xh100", "nanxh100", "1e308xh100", HUGE_INT + "xh100", HUGE_INT,
            HUGE_INT + "x(8xh100)", "2x(0xh100)", "")
CONTROL = ("\x1b[31mred", "a\nb\tc\x07")


def _with(base: dict[str, str], flag: str, value: str) -> tuple[str, ...]:
    args = {k: v for k, v in base.items() if k not in EXCLUDES.get(flag, ())}
    args[flag] = value
    # --flag=value: a value starting with '-' stays a value (argparse would read -inf as a flag)
    return tuple(f"{k}={v}" for k, v in args.items())


def _numeric_cases(tool: str, base: dict[str, str], flags: dict[str, tuple[bool, bool]],
                   values: tuple[str, ...] = BAD_NUMBERS) -> list[Case]:
    cases = []
    for flag, (integer, zero_ok) in flags.items():
        extra = (*((HUGE_INT,) if integer else ()), *(() if zero_ok else ("0",)))
        for value in (*values, *extra):
            cases.append(Case(tool, _with(base, flag, value), label=f"{flag}={value!r}"))
    return cases


def _text_cases() -> list[Case]:
    cases = []
    for text in CONTROL:
        for flag in ("--model", "--gpus", "--precision", "--engine-version"):
            cases.append(Case("size", _with(SIZE_BASE, flag, text), label=f"{flag}={text!r}"))
        cases.append(Case("size", (*_with(SIZE_BASE, "--model", SIZE_BASE["--model"]), text),
                          label=f"stray argument {text!r}"))
        cases.append(Case("cost", _with(COST_BASE, "--currency", text),
                          label=f"--currency={text!r}"))
        cases.append(Case("smoke", (f"--url={text}", "--model=m"), label=f"--url={text!r}"))
        cases.append(Case("smoke", ("--url=http://127.0.0.1:9", f"--model={text}"),
                          label=f"--model={text!r}"))
        cases.append(Case("smoke", (f"--fleet=/nonexistent/{text}.toml",),
                          label=f"--fleet={text!r}"))
        cases.append(Case("smoke", (f"--api-key-file=/nonexistent/{text}",
                                    "--url=http://127.0.0.1:9", "--model=m"),
                          label=f"--api-key-file={text!r}"))
    return cases


BATTERY = [
    *_numeric_cases("size", SIZE_BASE, SIZE_NUMBERS),
    *[Case("size", _with(SIZE_BASE, "--gpus", g), label=f"--gpus={g!r}") for g in BAD_GPUS],
    *_numeric_cases("cost", COST_BASE, COST_NUMBERS),
    # The flags cost shares with size go through cost's own path (money after capacity).
    *_numeric_cases("cost", COST_BASE, {f: (False, True) for f in SIZE_NUMBERS},
                    values=("nan",)),
    *_numeric_cases("smoke", {"--url": "http://127.0.0.1:9", "--model": "m"}, SMOKE_NUMBERS),
    *[Case("smoke", (f"--url={url}", "--model=m"), label=f"--url={url!r}") for url in (
        "abc", "", "127.0.0.1:8000", "file:///etc/passwd", "http://", "http://h:99999",
        "http://[::1", "http://h/ x", "http://user:s3cret@h:8000")],
    Case("smoke", ("--url=http://127.0.0.1:9",), label="--url without --model"),
    *_text_cases(),
]


def _environment(case: Case) -> dict[str, str]:
    env = {**os.environ, **dict(case.env)}
    env.pop("GPUFLEET_FLEET", None)
    env.update(dict(case.env))
    return env


def run_process(case: Case, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python tools/<tool>.py ARGS`, a new interpreter, as an operator runs it."""
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{case.tool}.py"), *case.args],
                          cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
                          env=_environment(case), errors="backslashreplace")


_SERVER: list[ToolServer] = []


@pytest.fixture(scope="module", autouse=True)
def _tool_server() -> Iterator[None]:
    yield
    while _SERVER:
        _SERVER.pop().close()


def run(case: Case, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The same run, forked from one process that has imported the tools' libraries
    (tests/unit/forked_tools.py): the battery's hundreds of runs without a second of start
    each. test_a_forked_run_is_the_same_as_a_new_interpreter checks the two agree."""
    if not _SERVER:
        _SERVER.append(ToolServer())
    return _SERVER[0].run(case.tool, case.args, cwd, _environment(case))


def assert_refused(p: subprocess.CompletedProcess[str], case: Case) -> str:
    shown = f"{case}\nstdout: {p.stdout!r}\nstderr: {p.stderr!r}"
    assert "Traceback" not in p.stderr, shown
    assert p.returncode == 2, shown
    assert p.stdout == "", shown
    lines = p.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), shown
    own = lines[0]  # the message's own words: what it echoes of a long argument aside
    for value in sorted((a.split("=", 1)[-1] for a in case.args), key=len, reverse=True):
        own = own.replace(value, "<argument>") if len(value) > 20 else own
    assert len(own) <= MAX_LINE, shown
    raw = [c for c in lines[0] if not c.isprintable()]
    assert raw == [], shown
    return lines[0]


def test_the_battery_is_large_and_systematic() -> None:
    by_tool = {t: sum(c.tool == t for c in BATTERY) for t in ("size", "cost", "smoke")}
    assert sum(by_tool.values()) >= 200 and min(by_tool.values()) >= 30, by_tool
    assert len({c.id for c in BATTERY}) == len(BATTERY)  # no case twice


# Cases whose forked run must equal a new interpreter's: the first two of each tool, those
# with control characters or a secret in an argument, and one that reads the environment.
SAME_EITHER_WAY = [
    *[c for tool in ("size", "cost", "smoke") for c in [b for b in BATTERY if b.tool == tool][:2]],
    *[c for c in BATTERY if any(not a.isprintable() or "s3cret" in a for a in c.args)][:6],
    Case("smoke", ("--requests=0",), env=(("GPUFLEET_FLEET", "/nonexistent/fleet.toml"),),
         label="GPUFLEET_FLEET"),
    Case("size", ("--help",), label="--help: status 0, text on stdout"),
    Case("size", (*_with(SIZE_BASE, "--model", SIZE_BASE["--model"]),), label="a valid run"),
]


@pytest.mark.parametrize("case", SAME_EITHER_WAY, ids=[c.id for c in SAME_EITHER_WAY])
def test_a_forked_run_is_the_same_as_a_new_interpreter(case: Case) -> None:
    forked, new = run(case), run_process(case)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        new.returncode, new.stdout, new.stderr)


@pytest.mark.parametrize("case", BATTERY, ids=[c.id for c in BATTERY])
def test_bad_input_is_one_line_and_exit_2(case: Case) -> None:
    assert_refused(run(case), case)


@pytest.mark.parametrize(("case", "shown"), [
    (Case("size", _with(SIZE_BASE, "--model", "\x1b[31mred")), "--model \\x1b[31mred"),
    (Case("size", _with(SIZE_BASE, "--gpus", "2xh\n100")), "--gpus 2xh\\n100"),
    (Case("cost", _with(COST_BASE, "--currency", "E\x1b]0;x\x07")), "E\\x1b]0;x\\x07"),
    (Case("smoke", ("--url=http://h\x1b[2J", "--model=m")), "http://h\\x1b[2J"),
    (Case("smoke", ("--url=http://user:s3cret@h:8000", "--model=m")), "http://***@h:8000"),
])
def test_the_offending_value_is_shown_escaped(case: Case, shown: str) -> None:
    line = assert_refused(run(case), case)
    assert shown in line and "s3cret" not in line


# --- files: the smoke test's key file and fleet file --------------------------------------
FLEET = """
[settings]
model = "deepseek-r1-distill-qwen-7b"
weights_path = "/srv/models/m"
tensor_parallel = 1
[settings.inference]
bind = "0.0.0.0"
{key}
[groups.gpu]
settings = {{ gpus = {{ count = 2, model = "A100-PCIE-40GB" }} }}
[groups.gpu.hosts.gpu-01]
target = "192.0.2.10"
"""


def _bad_files(folder: Path) -> dict[str, Path]:
    """name -> a path that is not a readable UTF-8 text file of one line."""
    files = {"missing": folder / "missing", "folder": folder / "a-folder",
             "not-utf8": folder / "latin1", "empty": folder / "empty",
             "blank": folder / "blank", "two-lines": folder / "two-lines",
             "control": folder / "control", "symlink-loop": folder / "loop",
             "name-too-long": folder / ("x" * 300), "through-a-file": folder / "latin1" / "x",
             "socket": folder / "sock"}
    files["folder"].mkdir()
    files["not-utf8"].write_bytes(b"caf\xe9-\xff\xfe key\n")
    files["empty"].write_bytes(b"")
    files["blank"].write_bytes(b" \n\n")
    files["two-lines"].write_text("sk-first-line-of-key\nVLLM_EVIL=1\n")
    files["control"].write_text("sk-\x1b[31mkey\n")
    files["symlink-loop"].symlink_to(files["symlink-loop"])
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(files["socket"]))
    sock.close()
    return files


FILE_KINDS = ("missing", "folder", "not-utf8", "empty", "blank", "two-lines", "control",
              "symlink-loop", "name-too-long", "through-a-file", "socket")


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_a_bad_key_file_on_the_command_line(tmp_path: Path, kind: str) -> None:
    path = _bad_files(tmp_path)[kind]
    case = Case("smoke", (f"--api-key-file={path}", "--url=http://127.0.0.1:9", "--model=m",
                          "--requests=0"))
    line = assert_refused(run(case), case)
    assert "--api-key-file" in line


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_a_bad_key_file_named_by_the_fleet(tmp_path: Path, kind: str) -> None:
    path = _bad_files(tmp_path)[kind]
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(key=f"api_key_file = {str(path)!r}".replace("'", '"')))
    case = Case("smoke", (f"--fleet={fleet}", "--requests=0"))
    line = assert_refused(run(case), case)
    assert "api_key_file" in line


@pytest.mark.parametrize("kind", [k for k in FILE_KINDS if k not in ("empty", "blank")])
def test_a_bad_fleet_file(tmp_path: Path, kind: str) -> None:
    path = _bad_files(tmp_path)[kind]
    case = Case("smoke", (f"--fleet={path}", "--requests=0"))
    assert_refused(run(case), case)


@pytest.mark.parametrize("text", [
    "[settings\n",  # not TOML
    "x = \"\x1b[2J\"\n",  # a control character inside
    FLEET.format(key="port = \"8000\""),  # a schema problem
    FLEET.format(key="bind = \"0.0.0.0\"\nbind = \"::\""),  # a key twice
])
def test_a_fleet_file_with_one_problem(tmp_path: Path, text: str) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(text)
    case = Case("smoke", (f"--fleet={fleet}", "--requests=0"))
    assert_refused(run(case), case)


def test_the_default_fleet_file_from_the_environment(tmp_path: Path) -> None:
    case = Case("smoke", ("--requests=0",), env=(("GPUFLEET_FLEET", str(tmp_path / "nope")),))
    assert "nope" in assert_refused(run(case), case)


# --- smoke.py contacts only the replicas the fleet configures --------------------------------
ENDPOINT_FLEET = """
[settings]
model = "deepseek-r1-distill-qwen-7b"
weights_path = "/srv/models/m"
[settings.inference]
bind = "0.0.0.0"

[groups.three]  # replicas said outright, with a key
settings = { inference = { replicas = 3, api_key_file = "key-a" } }
[groups.three.hosts.gpu-01]
target = "192.0.2.10"

[groups.derived]  # gpus.count / tensor_parallel: 2 replicas, from port 9000
settings = { gpus = { count = 2 }, tensor_parallel = 1, inference = { port = 9000 } }
[groups.derived.hosts.gpu-02]
target = "2001:db8::2"

[groups.unsaid]  # the file does not say how many: the first only, and a note
[groups.unsaid.hosts.gpu-03]
target = "192.0.2.13"

[groups.private]
settings = { inference = { bind = "127.0.0.1", replicas = 2 } }
[groups.private.hosts.gpu-04]
target = "192.0.2.14"

[groups.off]
settings = { inference = { enabled = false, replicas = 2 } }
[groups.off.hosts.gpu-05]
target = "192.0.2.15"

[groups.span]  # one replica over two hosts: only its head serves
settings = { gpus = { count = 2 }, multinode = { nodes = 2, interface = "eth1" } }
[groups.span.hosts.node-0]
target = "192.0.2.20"
settings = { multinode = { address = "10.0.0.1" } }
[groups.span.hosts.node-1]
target = "192.0.2.21"
settings = { multinode = { address = "10.0.0.2" } }

[groups.monitor]
settings = { role = "monitor", gateway = { bind = "0.0.0.0" } }
[groups.monitor.hosts.mon-01]
target = "192.0.2.5"
"""


def test_smoke_tests_exactly_the_replicas_the_fleet_configures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inventory.fleet import load_fleet
    from tools import smoke

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a request while choosing endpoints: {args}")

    monkeypatch.setattr(smoke.requests, "get", no_network)
    monkeypatch.setattr(smoke.requests, "post", no_network)
    (tmp_path / "key-a").write_text("sk-key-of-group-three-0123456789abcdef\n")
    (tmp_path / "fleet.toml").write_text(ENDPOINT_FLEET)
    fleet = load_fleet(tmp_path / "fleet.toml")
    endpoints, skipped = smoke.select_endpoints(fleet, smoke.api_keys(fleet), smoke.host_address)
    assert [(e.host, e.url) for e in endpoints] == [
        ("gpu-01", "http://192.0.2.10:8000"), ("gpu-01", "http://192.0.2.10:8001"),
        ("gpu-01", "http://192.0.2.10:8002"),
        ("gpu-02", "http://[2001:db8::2]:9000"), ("gpu-02", "http://[2001:db8::2]:9001"),
        ("gpu-03", "http://192.0.2.13:8000"),
        ("node-0", "http://192.0.2.20:8000"),
    ]
    # Each replica gets the key its own host's settings name: group three's file, or the key
    # the loader generated for the APIs beyond loopback that named none; never another's.
    named = {spec.name: spec.settings.inference.api_key_file for spec in fleet.hosts}
    assert named["gpu-01"] == "key-a"
    generated = named["gpu-02"]
    assert generated and generated != named["gpu-01"]
    keys = {e.url: e.api_key for e in endpoints}
    assert {url for url, key in keys.items() if key == "sk-key-of-group-three-0123456789abcdef"} \
        == {"http://192.0.2.10:8000", "http://192.0.2.10:8001", "http://192.0.2.10:8002"}
    other = Path(generated).read_text().strip()
    assert {url for url, key in keys.items() if key == other} == {
        "http://[2001:db8::2]:9000", "http://[2001:db8::2]:9001", "http://192.0.2.13:8000",
        "http://192.0.2.20:8000"}
    # The gateway passes the client's key on to engines that do not share one: no key would do.
    assert [line.split(":")[0] for line in skipped] == ["gpu-03", "gpu-04", "mon-01 (gateway)"]
    assert "does not say how many" in skipped[0] and "bound to 127.0.0.1" in skipped[1]
    assert "different API keys" in skipped[2]


def test_smoke_sends_the_gateway_the_key_of_the_engines_behind_it(tmp_path: Path) -> None:
    from inventory.fleet import load_fleet
    from tools import smoke

    key = "sk-one-key-for-the-fleet-0123456789abcdef"
    (tmp_path / "key").write_text(key + "\n")
    (tmp_path / "fleet.toml").write_text(textwrap.dedent("""
        [settings]
        model = "deepseek-r1-distill-qwen-7b"
        weights_path = "/srv/models/m"
        inference = { bind = "0.0.0.0", replicas = 1, api_key_file = "key" }
        [groups.gpu.hosts.gpu-01]
        target = "192.0.2.10"
        [groups.gpu.hosts.gpu-02]
        target = "192.0.2.11"
        [groups.monitor]
        settings = { role = "monitor", gateway = { bind = "0.0.0.0" } }
        [groups.monitor.hosts.mon-01]
        target = "192.0.2.5"
    """))
    fleet = load_fleet(tmp_path / "fleet.toml")
    endpoints, skipped = smoke.select_endpoints(fleet, smoke.api_keys(fleet), smoke.host_address)
    assert skipped == []
    assert [(e.host, e.api_key) for e in endpoints] == [
        ("gpu-01", key), ("gpu-02", key), ("mon-01 (gateway)", key)]


def test_smoke_reads_every_key_before_any_request(tmp_path: Path) -> None:
    from inventory.fleet import FleetError, load_fleet
    from tools import smoke

    (tmp_path / "key-a").write_text("two\nlines\n")
    (tmp_path / "fleet.toml").write_text(ENDPOINT_FLEET)
    # The fleet file's own check refuses it, before smoke can send anything.
    with pytest.raises(FleetError, match=r"gpu-01.*api_key_file.*more than one line"):
        smoke.api_keys(load_fleet(tmp_path / "fleet.toml"))
