"""The fleet file: merging, validation and the messages a person reads when it is wrong."""

from __future__ import annotations

import errno
import gzip
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from inventory.fleet import (
    DEFAULT_FLEET_FILE,
    FLEET_ENV,
    MAX_FLEET_BYTES,
    FleetError,
    HostSpec,
    Problem,
    fleet_path_from_env,
    is_documentation_target,
    load_fleet,
    pyinfra_host_data,
    pyinfra_host_name,
)
from inventory.key_files import read_key_file
from inventory.merge import deep_merge
from inventory.schema import AptRepo, NetworkSettings, Settings
from inventory.urls import mask_url
from rules.fleet_checks import fleet_problems

REPO = Path(__file__).resolve().parents[2]

GOOD = """
[fleet]
name = "lab"

[settings]
weights_path = "/srv/models/m"
precision = "bf16"
[settings.storage]
policy = "warn"

[groups.gpu.settings]
precision = "int8"
[groups.gpu.settings.storage]
measure_read_speed = true

[groups.gpu.hosts.gpu-01]
target = "10.0.0.5"
ssh_user = "ubuntu"
ssh_port = 2222

[groups.gpu.hosts.gpu-02]
settings = { precision = "fp8", storage = { policy = "off" } }

[groups.sim.hosts.s1]
target = "@docker/sim-1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(FleetError) as caught:
        load_fleet(write(tmp_path, text))
    return caught.value.lines


def test_settings_merge_fleet_then_group_then_host(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, GOOD))
    hosts = {spec.name: spec for spec in fleet.hosts}
    assert hosts["gpu-01"].settings.precision == "int8"
    assert hosts["gpu-02"].settings.precision == "fp8"
    assert hosts["s1"].settings.precision == "bf16"
    # nested tables merge key by key
    assert hosts["gpu-01"].settings.storage.policy == "warn"
    assert hosts["gpu-01"].settings.storage.measure_read_speed is True
    assert hosts["gpu-02"].settings.storage.policy == "off"
    assert hosts["gpu-02"].settings.storage.measure_read_speed is True
    assert hosts["gpu-01"].target == "10.0.0.5"
    assert hosts["gpu-02"].target == "gpu-02"  # the host's own name by default


def test_pyinfra_groups_carry_connection_data(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, GOOD))
    groups = fleet.pyinfra_groups()
    assert set(groups) == {"gpu", "sim"}
    gpu_hosts = dict(groups["gpu"][0])
    assert gpu_hosts["gpu-01"]["ssh_hostname"] == "10.0.0.5"
    assert gpu_hosts["gpu-01"]["ssh_user"] == "ubuntu"
    assert gpu_hosts["gpu-01"]["ssh_port"] == 2222
    assert gpu_hosts["gpu-01"]["gpufleet"]["settings"]["precision"] == "int8"
    sim_hosts = dict(groups["sim"][0])
    assert "@docker/sim-1" in sim_hosts
    assert "ssh_hostname" not in sim_hosts["@docker/sim-1"]
    assert pyinfra_host_name(fleet.hosts[-1]) == "@docker/sim-1"


def test_connector_hosts_get_a_group_of_their_fleet_name(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, GOOD + """
        [groups.sim.hosts.sim]
        target = "@docker/named-like-its-group"
        """))
    # s1 is @docker/sim-1 to pyinfra; gpu-01 is already gpu-01 (SSH); the host named like its
    # group leaves `--limit sim` meaning the group
    assert fleet.pyinfra_host_aliases() == {"s1": (["@docker/sim-1"], {})}


def test_raw_pyinfra_limit_takes_the_fleet_host_name(tmp_path: Path) -> None:
    """The real pyinfra CLI: `--limit here` selects the fleet's host `here` (@local to pyinfra)
    and contacts nothing else (the other host's container does not exist)."""
    path = write(tmp_path, """
        [fleet]
        name = "lab"
        [settings]
        weights_path = "/srv/models/m"
        [groups.ctl.hosts.here]
        target = "@local"
        [groups.sim.hosts.s1]
        target = "@docker/gpufleet-no-such-container"
    """)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), "-y", "inventory.py", "--limit", "here",
         "exec", "--", "echo", "ran-on-here"],
        cwd=REPO, env={"GPUFLEET_FLEET": str(path), "PATH": "/usr/bin:/bin",
                       "GPUFLEET_CONFIG_DIR": str(tmp_path / "config")},
        capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[@local]" in output and "ran-on-here" in output
    assert "No host matches" not in output and "no-such-container" not in output


def test_deep_merge_replaces_lists_and_merges_tables() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [3]}}) == {"a": {"b": 1, "c": [3]}, "d": 1}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # not mutated


def test_every_problem_is_reported_with_place_field_value_and_rule(tmp_path: Path) -> None:
    lines = problems(tmp_path, """
        [settings]
        precision = "fp12"
        bogus = 1
        [groups.gpu.settings]
        pin_set = "nope"
        [groups.gpu.hosts.gpu-01]
        target = "user@host:22"
        [groups.gpu.hosts.gpu-02]
        settings = { weights_path = "relative/path", gpus = { count = "eight" } }
        [groups.other.hosts.x]
        settings = { weights_path = "/srv/m" }
    """)
    text = "\n".join(lines)
    assert "fleet: settings.precision = 'fp12': input should be 'bf16', 'fp16', 'fp8'" in text
    assert "fleet: settings.bogus = 1: unknown key; allowed here: apt, canary, concurrency" in text
    assert "host gpu-01 (group gpu): target = 'user@host:22': must be a DNS name" in text
    assert "host gpu-01 (group gpu): settings.weights_path = (missing): required" in text
    assert "host gpu-02 (group gpu): settings.weights_path = 'relative/path': must be an absolute" in text
    assert "host gpu-02 (group gpu): settings.gpus.count = 'eight'" in text
    assert "host gpu-02 (group gpu): settings.pin_set = 'nope': unknown pin set; pins.toml defines: r535-cuda121" in text
    # a value written once at fleet level is reported once, not once per host
    assert sum("settings.precision = 'fp12'" in line for line in lines) == 1
    # host x is fine apart from the fleet-level mistakes: nothing is reported for it
    assert not any("host x" in line for line in lines)
    assert all(line.startswith(str(tmp_path / "fleet.toml") + ": ") for line in lines)


@pytest.mark.parametrize(
    ("target", "ok"),
    [
        ("gpu-01.example.internal", True),
        ("10.1.2.3", True),
        ("fe80::1", True),
        ("@docker/gpufleet-sim-h100x8", True),
        ("@local", True),
        ("@ssh/foo", False),
        ("user@host", False),
        ("host:22", False),
        ("300.1.1.1", False),
        ("-bad", False),
        ("@docker/", False),
    ],
)
def test_host_targets(tmp_path: Path, target: str, ok: bool) -> None:
    text = f"""
        [settings]
        weights_path = "/srv/m"
        [groups.g.hosts.h]
        target = "{target}"
    """
    if ok:
        assert load_fleet(write(tmp_path, text)).hosts[0].target == target
    else:
        assert any("target" in line for line in problems(tmp_path, text))


def test_unknown_keys_in_hosts_and_groups(tmp_path: Path) -> None:
    lines = problems(tmp_path, """
        [settings]
        weights_path = "/srv/m"
        [groups.g]
        settngs = { precision = "int8" }
        hosts = { h = { adress = "x" } }
    """)
    text = "\n".join(lines)
    assert "group g: groups.g.settngs = {'precision': 'int8'}: unknown key; allowed here: hosts, settings" in text


def test_unknown_host_keys_list_allowed_ones(tmp_path: Path) -> None:
    lines = problems(tmp_path, """
        [settings]
        weights_path = "/srv/m"
        [groups.g.hosts.h]
        adress = "x"
    """)
    assert lines == [
        f"{tmp_path / 'fleet.toml'}: host h (group g): adress = 'x': unknown key; "
        "allowed here: settings, ssh_key, ssh_port, ssh_user, sudo, target"
    ]


def test_controller_files_must_exist(tmp_path: Path) -> None:
    lines = problems(tmp_path, """
        [settings]
        weights_path = "/srv/m"
        network = { extra_ca_bundle = "certs/missing.pem" }
        [groups.g.hosts.h]
    """)
    assert "settings.network.extra_ca_bundle = 'certs/missing.pem': no such file" in lines[0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("~nosuchuser/ca.pem", "names the home folder of a user this machine does not know"),
        ("x" * 5000, "cannot be checked on this machine: File name too long"),
        ("", "empty: name a file, or leave the setting out"),
        (".", "a folder on this machine, not a file"),
        ("/dev/null", "not a regular file on this machine (/dev/null)"),
        ("missing.pem", "no such file on this machine"),
    ],
)
def test_controller_file_settings_never_crash(tmp_path: Path, value: str, expected: str) -> None:
    for settings, host in ((f'network = {{ extra_ca_bundle = "{value}" }}', ""),
                           (f'verify = {{ image_archives = ["{value}"] }}', ""),
                           ("", f'ssh_key = "{value}"')):
        lines = settings_problems(tmp_path, settings, host)
        assert len(lines) == 1 and expected in lines[0], lines
        assert len(lines[0]) < 700


GOOD_KEY = "k3y-" + "0123456789abcdef" * 2  # 36 characters


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty: an empty key would turn authentication off"),
        (b" \n\n", "empty: an empty key would turn authentication off"),
        (GOOD_KEY.encode() + b"\nLD_PRELOAD=/tmp/x.so\n", "more than one line: the file holds "
         "exactly one key (a second line would add variables to the engine's environment)"),
        (b"short-key\n", "the key has 9 characters; at least 32"),
        (GOOD_KEY.encode() + b" #x", "holds a character outside letters, digits and . _ ~ + / "
         "= -"),
        (b'"' + GOOD_KEY.encode() + b'"', "holds a character outside"),
        (b"\xff" * 40, "not UTF-8 text"),
    ],
)
def test_the_api_key_file_holds_one_good_key(tmp_path: Path, content: bytes,
                                             expected: str) -> None:
    # Read where the key is read (on the controller, with the fleet file): one line naming
    # host, field and the file; never the key itself.
    (tmp_path / "api.key").write_bytes(content)
    lines = settings_problems(tmp_path, "", '[groups.g.hosts.h.settings.inference]\n'
                                            'api_key_file = "api.key"\n')
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{tmp_path / 'fleet.toml'}: host h (group g): "
                               "settings.inference.api_key_file = 'api.key': "), lines[0]
    assert expected in lines[0], lines[0]
    assert "\n" not in lines[0] and "LD_PRELOAD" not in lines[0]
    assert GOOD_KEY not in lines[0] and "short-key" not in lines[0]


def test_a_good_key_file_is_read_as_its_one_key(tmp_path: Path) -> None:
    (tmp_path / "api.key").write_text(f"  {GOOD_KEY}\n\n")  # whitespace around is ignored
    fleet = load_fleet(write(tmp_path, '[settings]\nweights_path = "/srv/m"\n'
                                       'inference = { api_key_file = "api.key" }\n'
                                       '[groups.g.hosts.h]\ntarget = "10.0.0.1"\n'))
    spec = fleet.hosts[0]
    assert spec.settings.inference.api_key_file is not None
    assert read_key_file(spec.controller_path(spec.settings.inference.api_key_file)) == GOOD_KEY


def test_the_hub_token_is_one_line_too(tmp_path: Path) -> None:
    (tmp_path / "hub.token").write_text("hf_abcdefgh\nX-Injected: 1\n")
    lines = settings_problems(tmp_path, 'weights = { source = "hub", hub_endpoint = '
                                        '"https://hub.internal", revision = "' + "a" * 40
                                        + '", token_file = "hub.token" }')
    assert len(lines) == 1 and "settings.weights.token_file = 'hub.token': more than one " \
        "line" in lines[0], lines


def test_an_engine_beyond_loopback_gets_a_key_generated_once_and_kept_0600(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", str(tmp_path / "config"))
    text = textwrap.dedent("""
        fleet = { name = "lab one" }
        [settings]
        weights_path = "/srv/m"
        [groups.g.hosts.open]
        settings = { inference = { bind = "0.0.0.0" } }
        [groups.g.hosts.local]
        [groups.g.hosts.off]
        settings = { inference = { bind = "0.0.0.0", enabled = false } }
        [groups.m.hosts.mon]
        settings = { role = "monitor", inference = { bind = "0.0.0.0" } }
    """)
    hosts = {s.name: s for s in load_fleet(write(tmp_path, text)).hosts}
    key_file = tmp_path / "config" / "keys" / "lab-one.api-key"
    assert hosts["open"].settings.inference.api_key_file == str(key_file)
    for name in ("local", "off", "mon"):  # loopback, no engine, no engine
        assert hosts[name].settings.inference.api_key_file is None, name
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.parent.stat().st_mode & 0o777 == 0o700
    key = read_key_file(key_file)
    again = load_fleet(write(tmp_path, text)).hosts[0]
    assert again.settings.inference.api_key_file == str(key_file)
    assert read_key_file(key_file) == key  # kept, not generated again


def test_a_key_that_cannot_be_generated_is_one_fleet_problem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").write_text("a file where the folder would go")
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", str(tmp_path / "config"))
    lines = settings_problems(tmp_path, 'inference = { bind = "0.0.0.0" }')
    assert len(lines) == 1 and "settings.inference.api_key_file = (missing): the engine " \
        "listens on 0.0.0.0, beyond loopback, so it needs an API key; generating one in" \
        in lines[0], lines


def test_duplicate_targets_are_refused(tmp_path: Path) -> None:
    lines = problems(tmp_path, """
        [settings]
        weights_path = "/srv/m"
        [groups.a.hosts.h1]
        target = "10.0.0.1"
        [groups.b.hosts.h2]
        target = "10.0.0.1"
    """)
    assert "also the target of host h1" in lines[0]


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    assert "not valid TOML" in problems(tmp_path, "[settings\n")[0]
    with pytest.raises(FleetError) as caught:
        load_fleet(tmp_path / "nope.toml")
    assert "fleet file not found" in caught.value.lines[0]


def test_shipped_example_fleet_is_valid() -> None:
    fleet = load_fleet(REPO / "inventory" / "fleet.toml")
    assert {spec.name for spec in fleet.hosts} == {"gpu-01", "gpu-02", "ws-01"}


def test_cli_reports_problems_without_traceback_or_connecting(tmp_path: Path) -> None:
    """The real pyinfra CLI: exit non-zero, one line per problem, no traceback, no connection."""
    path = write(tmp_path, """
        [settings]
        precision = "fp12"
        [groups.g.hosts.h]
        target = "192.0.2.10"
    """)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), "-y", "inventory.py", "exec", "--", "true"],
        cwd=REPO, env={"GPUFLEET_FLEET": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "the fleet file has 2 problem(s); no host was contacted" in result.stderr
    assert "settings.precision = 'fp12'" in result.stderr
    assert "settings.weights_path = (missing)" in result.stderr
    assert "Connecting" not in result.stdout


def test_models_come_from_the_catalog_or_the_fleet_file(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, """
        [models.tiny-llama]
        hub_repo = "example/tiny-llama"
        architecture = "LlamaForCausalLM"
        params_total = 1100000000
        layers = 22
        hidden_size = 2048
        attention_heads = 32
        kv_heads = 4
        head_dim = 64
        vocab_size = 32000
        max_context = 2048
        native_dtype = "bf16"
        weights_bytes = 2200000000
        min_transformers = "4.31.0"

        [settings]
        weights_path = "/srv/m"
        [groups.g.hosts.a]
        [groups.g.hosts.b]
        settings = { model = "tiny-llama" }
    """))
    models = {spec.name: spec.model for spec in fleet.hosts}
    assert models["a"].id == "deepseek-r1-distill-qwen-7b"
    assert models["b"].id == "tiny-llama"
    assert models["b"].kv_heads == 4


def test_unknown_and_broken_models_are_reported(tmp_path: Path) -> None:
    lines = problems(tmp_path, """
        [models.half]
        architecture = "LlamaForCausalLM"
        [settings]
        weights_path = "/srv/m"
        model = "deepseek-r2"
        [groups.g.hosts.a]
    """)
    text = "\n".join(lines)
    assert "host a (group g): settings.model = 'deepseek-r2': unknown model; the catalog has: deepseek-r1," in text
    assert "model half: models.half.layers = (missing)" in text


# --- unreadable fleet files: one clear line each, never a traceback, never a hang --------------
def load_problems(path: Path) -> list[str]:
    with pytest.raises(FleetError) as caught:
        load_fleet(path)
    return caught.value.lines


MINIMAL = '[settings]\nweights_path = "/srv/m"\n[groups.g.hosts.h]\ntarget = "10.0.0.1"\n'


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (gzip.compress(MINIMAL.encode()), "gzip-compressed, not TOML text: decompress it first"),
        (MINIMAL.encode("utf-16"), "UTF-16 text (it starts with a UTF-16 byte-order mark)"),
        (MINIMAL.encode("utf-16-be"), "UTF-16 or UTF-32 text without a byte-order mark"),
        (MINIMAL.encode("utf-32"), "UTF-32 text"),
        ("# café\n".encode("latin-1") + MINIMAL.encode(), "not UTF-8 text: byte 0xe9 on line 1"),
        (MINIMAL.encode() + b"\n# \xff\xfe\n", "not UTF-8 text: byte 0xff on line 6"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)), "binary, not TOML text"),
        (b"PK\x03\x04" + b"\x00" * 30, "a zip archive"),
        (b"", "empty: a fleet file needs [settings]"),
        (b"# only a comment\n", "empty: a fleet file needs [settings]"),
        (b"a = " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000, "nested too deeply"),
        (b"[" + b".".join(b"k%d" % i for i in range(40)) + b"]\nx = 1\n",
         "nested too deeply at k0.k1.k2.k3.k4.k5...: at most 20 levels"),
        (b"x = [" + b"[" * 25 + b"]" * 25 + b"]", "nested too deeply at x"),
    ],
    ids=["gzip", "utf16-bom", "utf16-no-bom", "utf32", "latin1", "bad-byte-late", "binary",
         "zip", "empty", "comment-only", "deep-arrays", "deep-inline-tables", "deep-header",
         "deep-but-parsable"],
)
def test_unreadable_content_is_one_clear_line(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_bytes(content)
    lines = load_problems(path)
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: ")
    assert expected in lines[0]
    assert "not found" not in lines[0]


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """Decision: a UTF-8 BOM (Windows editors write one) carries no meaning and is dropped."""
    path = tmp_path / "fleet.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert [spec.name for spec in load_fleet(path).hosts] == ["h"]


def test_nesting_within_the_limit_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[settings.docker.daemon_json]\na = [[[[{b = [[1]]}]]]]\n')
    assert load_fleet(path).hosts[0].settings.docker.daemon_json["a"] == [[[[{"b": [[1]]}]]]]


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "fleet.toml")
    return tmp_path / "fleet.toml"


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "fleet.toml").mkdir()
    return tmp_path / "fleet.toml"


def _symlink_loop(tmp_path: Path) -> Path:
    (tmp_path / "a.toml").symlink_to(tmp_path / "b.toml")
    (tmp_path / "b.toml").symlink_to(tmp_path / "a.toml")
    return tmp_path / "a.toml"


def _dangling_symlink(tmp_path: Path) -> Path:
    (tmp_path / "fleet.toml").symlink_to(tmp_path / "gone.toml")
    return tmp_path / "fleet.toml"


def _too_large(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_bytes(MINIMAL.encode() + b"#" * MAX_FLEET_BYTES)
    return path


def _sparse_huge(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    with path.open("wb") as handle:
        handle.truncate(10 * 2**30)  # 10 GiB, sparse: never read
    return path


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "fleet.toml").write_text(MINIMAL)
    return tmp_path / "fleet.toml" / "fleet.toml"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_fifo, "a named pipe (FIFO), not a regular file; it was not read"),
        (_folder, "a folder, not a file"),
        (_symlink_loop, "a loop of symbolic links"),
        (_dangling_symlink, "a symbolic link to"),
        (_too_large, f"too large: 1.0 MiB ({MAX_FLEET_BYTES + len(MINIMAL)} bytes); the limit is 1.0 MiB (1048576 bytes)"),
        (_sparse_huge, "too large: 10240.0 MiB (10737418240 bytes)"),
        (_under_a_file, "fleet file not found: a part of the path is a file, not a folder"),
        (lambda _: Path("/dev/zero"), "a character device (like /dev/zero), not a regular file"),
        (lambda _: Path("/dev/null"), "a character device"),
        (lambda _: Path("/"), "a folder, not a file"),
        (lambda _: Path("fleet\0.toml"), "not a usable path (it contains a NUL character)"),
    ],
    ids=["fifo", "folder", "symlink-loop", "dangling-symlink", "too-large", "sparse-10GiB",
         "under-a-file", "dev-zero", "dev-null", "root", "nul-in-path"],
)
def test_unusable_paths_are_one_clear_line(
    tmp_path: Path, make: Callable[[Path], Path], expected: str
) -> None:
    lines = load_problems(make(tmp_path))
    assert len(lines) == 1
    assert expected in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file; the permission "
                    "wording is tested with a refused open() below")
def test_unreadable_file_is_permission_denied(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    path.chmod(0)
    assert "cannot be read: permission denied" in load_problems(path)[0]


def test_refused_open_is_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root, where chmod 000 does not stop reading: refuse the open() itself."""
    path = write(tmp_path, MINIMAL)

    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    lines = load_problems(path)
    assert lines == [f"{path}: cannot be read: permission denied"]


def test_fifo_does_not_hang_the_cli(tmp_path: Path) -> None:
    result = run_inventory(tmp_path, fleet=_fifo(tmp_path))
    assert result.returncode == 2
    assert "a named pipe (FIFO)" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# --- $GPUFLEET_FLEET ----------------------------------------------------------------------------
def test_fleet_env_unset_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FLEET_ENV, raising=False)
    assert fleet_path_from_env() == Path(DEFAULT_FLEET_FILE)
    monkeypatch.setenv(FLEET_ENV, "site/fleet.toml")
    assert fleet_path_from_env() == Path("site/fleet.toml")


@pytest.mark.parametrize("value", ["", "  "])
def test_fleet_env_set_but_empty_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(FLEET_ENV, value)
    with pytest.raises(FleetError) as caught:
        fleet_path_from_env()
    assert caught.value.lines[0].startswith("GPUFLEET_FLEET is set but empty")
    assert "unset it to use inventory/fleet.toml" in caught.value.lines[0]


def test_cli_refuses_an_empty_fleet_env(tmp_path: Path) -> None:
    result = run_inventory(tmp_path, env_value="")
    assert result.returncode == 2
    assert "GPUFLEET_FLEET is set but empty" in result.stderr
    assert "is valid" not in result.stdout


# --- strict types: no silent coercion ---------------------------------------------------------
def settings_problems(tmp_path: Path, settings: str, host: str = "") -> list[str]:
    return problems(tmp_path, f'[settings]\nweights_path = "/srv/m"\n{settings}\n'
                              f'[groups.g.hosts.h]\ntarget = "10.0.0.1"\n{host}\n')


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("gpus = { count = true }",
         "fleet: settings.gpus.count = True: must be an integer, written without quotes"),
        ('context_length = "8192"', "fleet: settings.context_length = '8192': must be an integer"),
        ("concurrency = 8.0", "settings.concurrency = 8.0: must be an integer"),
        ('storage = { measure_read_speed = "yes" }',
         "settings.storage.measure_read_speed = 'yes': must be true or false, without quotes"),
        ("storage = { measure_read_speed = 1 }",
         "settings.storage.measure_read_speed = 1: must be true or false"),
        ("gpu_memory_utilization = true", "settings.gpu_memory_utilization = True: must be a number"),
        ('gpu_memory_utilization = "0.9"', "settings.gpu_memory_utilization = '0.9': must be a number"),
        ("python_env = { enabled = 0 }", "settings.python_env.enabled = 0: must be true or false"),
        ("precision = 16", "settings.precision = 16: input should be 'bf16'"),
        ("model = 7", "settings.model = 7: must be a string, in quotes"),
        ('network = { no_proxy = "localhost" }',
         "settings.network.no_proxy = 'localhost': must be a list"),
        ("gpus = 8", "settings.gpus = 8: must be a table"),
        ("sampling = { temperature = nan }",
         "settings.sampling.temperature = nan: must be a finite number: nan and inf are not allowed"),
        ("sampling = { top_p = inf }", "settings.sampling.top_p = inf: must be a finite number"),
        ("gpus = { memory_gib = -inf }", "settings.gpus.memory_gib = -inf: must be a finite number"),
        ("storage = { free_space_margin = nan }",
         "settings.storage.free_space_margin = nan: must be a finite number"),
        ("docker = { daemon_json = { since = 1979-05-27 } }",
         "settings.docker.daemon_json = {'since': datetime.date(1979, 5, 27)}: daemon_json.since "
         "is a TOML date or time; JSON has none"),
        ("docker = { daemon_json = { a = [1, nan] } }", "daemon_json.a[1] is nan; JSON has no nan"),
        ('verify = { image_archives = "a.tar" }', "settings.verify.image_archives = 'a.tar': must be a list"),
    ],
)
def test_wrong_types_are_refused_not_coerced(tmp_path: Path, settings: str, expected: str) -> None:
    lines = settings_problems(tmp_path, settings)
    assert any(expected in line for line in lines), "\n".join(lines)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ('ssh_port = "22"', "host h (group g): ssh_port = '22': must be an integer"),
        ("sudo = 1", "host h (group g): sudo = 1: must be true or false"),
        ('sudo = "true"', "host h (group g): sudo = 'true': must be true or false"),
        ("ssh_user = 0", "host h (group g): ssh_user = 0: must be a string"),
        ('ssh_user = "ops@gpu-01"', "ssh_user = 'ops@gpu-01': must be a user name"),
        ('ssh_user = "ops\\n"', "ssh_user = 'ops\\n': must be a user name"),
    ],
)
def test_wrong_host_field_types_are_refused(tmp_path: Path, host: str, expected: str) -> None:
    lines = settings_problems(tmp_path, "", host)
    assert any(expected in line for line in lines), "\n".join(lines)


def test_fleet_meta_is_strict_too(tmp_path: Path) -> None:
    lines = problems(tmp_path, '[fleet]\nname = 5\n' + MINIMAL)
    assert lines == [f"{tmp_path / 'fleet.toml'}: fleet: fleet.name = 5: must be a string, in quotes"]


def test_declared_models_refuse_coercion_and_non_finite_numbers(tmp_path: Path) -> None:
    lines = problems(tmp_path, """
        [models.tiny]
        hub_repo = "example/tiny"
        architecture = "LlamaForCausalLM"
        params_total = 1100000000
        layers = "22"
        hidden_size = 2048
        attention_heads = 32
        kv_heads = 4
        head_dim = 64
        vocab_size = 32000
        max_context = 2048
        native_dtype = "bf16"
        weights_bytes = 2200000000
        min_transformers = "4.31.0"
        tie_word_embeddings = 1
        recommended_temperature = inf
        [models.deepseek-r1-distill-qwen-7b]
        layers = 1
        [settings]
        weights_path = "/srv/m"
        [groups.g.hosts.h]
    """)
    text = "\n".join(lines)
    assert "model tiny: models.tiny.layers = '22': must be an integer" in text
    assert "model tiny: models.tiny.tie_word_embeddings = 1: must be true or false" in text
    assert "model tiny: models.tiny.recommended_temperature = inf: must be a finite number" in text
    assert ("model deepseek-r1-distill-qwen-7b: models = 'deepseek-r1-distill-qwen-7b': already a "
            "catalog model") in text


def test_integers_are_accepted_for_float_settings(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, MINIMAL.replace(
        "[groups", "storage = { free_space_margin = 2 }\nsampling = { temperature = 1 }\n[groups")))
    settings = fleet.hosts[0].settings
    assert settings.storage.free_space_margin == 2.0 and settings.sampling.temperature == 1.0


def test_lax_validation_still_reads_command_line_text() -> None:
    """deploys/doctor.py builds Settings from `--data key=value` strings, with strict=False."""
    settings = Settings.model_validate(
        {"weights_path": "/srv/models", "context_length": "8192", "concurrency": "4",
         "tensor_parallel": "2", "precision": "int8", "model": "deepseek-r1-distill-llama-70b"},
        strict=False,
    )
    assert (settings.context_length, settings.concurrency, settings.tensor_parallel) == (8192, 4, 2)
    with pytest.raises(ValidationError):
        Settings.model_validate({"weights_path": "/srv/models", "context_length": "8192"})
    with pytest.raises(ValidationError):  # lax, but still no nan
        Settings.model_validate({"weights_path": "/srv/m", "gpu_memory_utilization": "nan"},
                                strict=False)


def test_host_spec_survives_pyinfra_host_data(tmp_path: Path) -> None:
    """deploys rebuild the spec from host.data (JSON values) under the strict schema."""
    fleet = load_fleet(write(tmp_path, MINIMAL.replace("[groups", """
        network = { https_proxy = "http://u:p@proxy.internal:3128", no_proxy = [".internal"] }
        docker = { registry_mirrors = ["https://mirror.internal"], daemon_json = { a = 1.5 } }
        gpus = { count = 8, memory_gib = 79 }
        repos.cuda = { url = "https://m.internal/{distro}/{arch}", key_fingerprint = "EB693B3035CD5710E231E123A4B469963BF863CC" }
        [groups""")))
    spec = fleet.hosts[0]
    data = pyinfra_host_data(spec)["gpufleet"]
    assert HostSpec.model_validate(data) == spec
    assert str(spec.settings.network.https_proxy) == "http://u:p@proxy.internal:3128/"


# --- hosts and groups -----------------------------------------------------------------------
def test_a_host_name_in_two_groups_is_refused(tmp_path: Path) -> None:
    lines = problems(tmp_path, """
        [settings]
        weights_path = "/srv/m"
        [groups.a.hosts.gpu-01]
        target = "10.0.0.1"
        [groups.b.hosts.gpu-01]
        target = "10.0.0.2"
    """)
    assert lines == [f"{tmp_path / 'fleet.toml'}: host gpu-01 (group b): hosts = 'gpu-01': also a "
                     "host of group a; host names must be unique across the fleet"]


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ("[groups.a]\nhosts = {}\n[groups.b.hosts.h]\n",
         ["group a: groups.a.hosts = {}: no hosts: a group needs at least one [groups.a.hosts.HOST] table"]),
        ("[groups.a]\nhosts = {}\n",
         ["group a: groups.a.hosts = {}: no hosts",
          "fleet: groups = ['a']: no hosts in any group: a fleet needs at least one host"]),
        ("[groups]\n", ["fleet: groups = {}: no groups: a fleet needs at least one"]),
        ("[groups.a.settings]\nprecision = \"int8\"\n", ["group a: groups.a.hosts = (missing): required"]),
        ("[groups.all.hosts.h]\n", ["group all: groups = 'all': reserved by pyinfra"]),
        ("[groups.override_data.hosts.h]\n", ["group override_data: groups = 'override_data': reserved"]),
    ],
    ids=["empty-group", "no-hosts-at-all", "no-groups", "group-without-hosts-table", "all", "kwarg"],
)
def test_empty_groups_and_fleets_are_refused(tmp_path: Path, groups: str, expected: list[str]) -> None:
    lines = problems(tmp_path, '[settings]\nweights_path = "/srv/m"\n' + groups)
    for part in expected:
        assert any(part in line for line in lines), "\n".join(lines)
    assert len(lines) == len(expected)


@pytest.mark.parametrize(
    ("first", "second"),
    [("gpu-01.example.internal", "GPU-01.Example.Internal"), ("fe80::1", "fe80:0:0::1"),
     ("10.0.0.1", "10.0.0.1")],
)
def test_targets_naming_the_same_machine_are_refused(tmp_path: Path, first: str, second: str) -> None:
    lines = problems(tmp_path, f"""
        [settings]
        weights_path = "/srv/m"
        [groups.a.hosts.h1]
        target = "{first}"
        [groups.b.hosts.h2]
        target = "{second}"
    """)
    assert len(lines) == 1 and "also the target of host h1" in lines[0]


# --- anchored patterns, targets, URL templates --------------------------------------------------
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("gpu-01\\n", "must be a DNS name or IP address"),
        ("10.0.0.1\\n", "must be a DNS name or IP address"),
        ("@docker/sim\\n", "connectors allowed"),
        ("010.0.0.1", "is not a valid IPv4 address: leading zero in '010' (write 10)"),
        ("10.0.0.01", "leading zero in '01'"),
        ("10.0.0", "looks like an IPv4 address but is not one"),
        ("1.2.3.4.5", "looks like an IPv4 address but is not one"),
        (":::", "must be a DNS name or IP address"),
        ("1:2:3:4:5:6:7:8:9", "must be a DNS name or IP address"),
        ("١٠.٠.٠.١", "must be a DNS name or IP address"),
    ],
)
def test_more_bad_targets(tmp_path: Path, target: str, expected: str) -> None:
    lines = problems(tmp_path, f"""
        [settings]
        weights_path = "/srv/m"
        [groups.g.hosts.h]
        target = "{target}"
    """)
    assert len(lines) == 1
    assert lines[0].startswith(f"{tmp_path / 'fleet.toml'}: host h (group g): target = ")
    assert expected in lines[0]
    assert "\n" not in lines[0]


def test_a_host_name_used_as_target_must_be_a_valid_target(tmp_path: Path) -> None:
    lines = problems(tmp_path, """
        [settings]
        weights_path = "/srv/m"
        [groups.g.hosts.gpu_01]
        [groups.g.hosts."010.0.0.1"]
        [groups.g.hosts.fine]
        [groups.g.hosts.gpu_02]
        target = "gpu-02.example.internal"
    """)
    text = "\n".join(lines)
    assert len(lines) == 2, text
    assert ("host gpu_01 (group g): target = (missing): not set, so the host name 'gpu_01' is the "
            "SSH target: must be a DNS name or IP address") in text
    assert "host 010.0.0.1 (group g): target = (missing): not set" in text and "leading zero" in text


def test_odd_names_cannot_break_the_one_line_output(tmp_path: Path) -> None:
    lines = problems(tmp_path, """
        [settings]
        weights_path = "/srv/m"
        "bad\\nkey\\u001b[31m" = 1
        [groups.g.hosts."gpu-01\\n"]
        [groups."grp\\n".hosts.h]
    """)
    assert len(lines) == 3
    assert all("\n" not in line and "\x1b" not in line for line in lines)
    text = "\n".join(lines)
    assert "host gpu-01\\n (group g): hosts = 'gpu-01\\n': host names may use" in text
    assert "group grp\\n: groups = 'grp\\n': group names may use" in text
    assert "fleet: settings.bad\\nkey\\x1b[31m = 1: unknown key" in text


def test_fingerprints_are_anchored_at_the_end() -> None:
    good = "EB693B3035CD5710E231E123A4B469963BF863CC"
    assert AptRepo(key_fingerprint=good).key_fingerprint == good
    with pytest.raises(ValidationError, match="40-hex-digit"):
        AptRepo(key_fingerprint=good + "\n")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://m.internal/cuda/{distro}/{arch}", None),
        ("http://10.0.0.5:8080/{distro}", None),
        ("http://[fd00::5]/{arch}", None),
        ("https://m.internal/{distro}/{arch", "has an unmatched '{' or '}'"),
        ("https://m.internal/{distro}/arch}", "has an unmatched '{' or '}'"),
        ("https://m.internal/{", "has an unmatched '{' or '}'"),
        ("https://m.internal/{0}", "unknown placeholder {0}; allowed: {distro}, {arch}"),
        ("https://m.internal/{}", "unknown placeholder {}"),
        ("https://m.internal/{distro!r}", "unknown placeholder {distro!r}"),
        ("https://m.internal/{distro:>9}", "unknown placeholder {distro:>9}"),
        ("https://m.internal/{{distro}}", "unknown placeholder {}"),
        ("https://m.internal/x\n", "must be an http:// or https:// URL: '\\n' is not allowed"),
        ('https://m.internal/x"y', "must be an http:// or https:// URL: '\"' is not allowed"),
        ("http:///cuda", "must be an http:// or https:// URL: it has no host"),
        ("http://m.internal:0/", "has an invalid port"),
        ("http://010.1.1.1/", "leading zero"),
        ("HTTP://m.internal/", "must be an http:// or https:// URL"),
        ("ftp://m.internal/", "must be an http:// or https:// URL"),
    ],
)
def test_url_templates(url: str, expected: str | None) -> None:
    if expected is None:
        assert AptRepo(url=url, key_url=url).url == url
        return
    with pytest.raises(ValidationError) as caught:
        AptRepo(url=url)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ('docker = { registry_mirrors = ["http:/mirror.internal"] }',
         "settings.docker.registry_mirrors.0 = 'http:/mirror.internal': must be an http:// or https:// URL"),
        ('docker = { registry_mirrors = ["mirror.gcr.io"] }', "must be an http:// or https:// URL"),
        (r'python_env = { index_url = "https://pypi.internal/simple\\" }', r"'\\' is not allowed in a URL"),
        ('python_env = { index_url = "https://pypi.internal:99999/" }', "has an invalid port"),
        (r'python_env = { path = "/opt/venv\n" }', r"settings.python_env.path = '/opt/venv\n': must not contain newlines"),
        (r'python_env = { path = "/opt/venv\t" }', "must not contain newlines, tabs"),
    ],
)
def test_mirror_urls_and_paths_are_checked_as_written(tmp_path: Path, settings: str, expected: str) -> None:
    lines = settings_problems(tmp_path, settings)
    assert any(expected in line for line in lines), "\n".join(lines)


# --- proxies: nothing can reach apt's configuration, credentials never shown ------------------
@pytest.mark.parametrize(
    "proxy",
    ["http://proxy.internal:3128", "https://proxy.internal", "http://user:s3cret@proxy:3128",
     "http://user:p%40ss@proxy:3128/", "http://10.0.0.1:3128", "http://[fd00::1]:3128",
     "HTTP://Proxy.Internal:3128"],
)
def test_good_proxies(proxy: str) -> None:
    network = NetworkSettings.model_validate({"http_proxy": proxy, "https_proxy": proxy})
    assert str(network.http_proxy).startswith(("http://", "https://"))


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        ('http://proxy:3128";\nAcquire::http::Pipeline-Depth "0', "must not contain '\\n' ' ' '\"' ';'"),
        ("http://proxy:3128';touch /tmp/x;'", "must not contain"),
        ("http://proxy:3128`id`", "must not contain '`'"),
        ("http://proxy:3128/ ", "must not contain ' '"),
        ("http://proxy:3128\\", "must not contain '\\\\'"),
        ("http://proxy:3128/{x}", "must not contain '{' '}'"),
        ("http://proxy:3128\t", "must not contain '\\t'"),
        ("http://proxy:3128/path", "without a path, query or fragment"),
        ("http://proxy:3128?x=1", "without a path, query or fragment"),
        ("socks5://proxy:1080", "must be http://[user:password@]host[:port]"),
        ("http:proxy:3128", "must be http://[user:password@]host[:port]"),
        ("proxy:3128", "must be http://[user:password@]host[:port]"),
        ("http://proxy:99999", "has an invalid port (1 to 65535)"),
        ("http://proxy:", "has an invalid port"),
        ("http://:3128", "has no host"),
        ("http://u:p@ss@proxy:3128", "has a stray '@'"),
        ("http://pro_xy:3128", "has a host that is not a DNS name"),
        ("http://010.0.0.1:3128", "leading zero"),
    ],
)
def test_bad_proxies(proxy: str, expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        NetworkSettings.model_validate({"https_proxy": proxy})
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "entry", ["localhost", ".example.internal", "gpu-01.example.internal", "10.0.0.0/8",
              "192.168.1.7", "::1", "fd00::/8", "10.1.2.3/8"],
)
def test_good_no_proxy_entries(entry: str) -> None:
    assert NetworkSettings(no_proxy=[entry]).no_proxy == [entry]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("*.example.com", "is not a DNS name"),
        ("host:8080", "is not a DNS name"),
        ("a b", "must not contain ' '"),
        ("x\"y", "must not contain '\"'"),
        ("x;y", "must not contain ';'"),
        ("localhost\n", "must not contain '\\n'"),
        ("", "is not a DNS name"),
        (".", "is not a DNS name"),
        ("010.0.0.0/8", "is not a valid CIDR"),
        ("10.0.0.0/33", "is not a valid CIDR"),
        ("010.0.0.1", "leading zero"),
        ("http://proxy", "is not a valid CIDR"),
    ],
)
def test_bad_no_proxy_entries(entry: str, expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        NetworkSettings(no_proxy=[entry])
    assert expected in str(caught.value)
    assert "no_proxy entries are host names" in str(caught.value) or "must not contain" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("http://user:s3cret@proxy:3128", "http://***:***@proxy:3128"),
        ("http://user@proxy:3128/", "http://***@proxy:3128/"),
        ("https://u:p%40ss@proxy/", "https://***:***@proxy/"),
        ("http://u:p@ss@proxy", "http://***:***@proxy"),
        ("http://proxy:3128", "http://proxy:3128"),
        ("user:secret@proxy:3128", "***:***@proxy:3128"),
        ("user@host:22", "user@host:22"),
        ("", ""),
    ],
)
def test_mask_url(value: str, masked: str) -> None:
    assert mask_url(value) == masked


@pytest.mark.parametrize(
    "network",
    [
        'https_proxy = "http://admin:hunter2@proxy:3128/path"',
        'https_proxy = "http://admin:hun\\"ter2@proxy:3128"',
        'https_proxy = "http://admin:hunter2 @proxy:3128"',
        'http_proxy = "admin:hunter2@proxy:3128"',
        'htps_proxy = "http://admin:hunter2@proxy:3128"',
        'no_proxy = ["http://admin:hunter2@proxy"]',
        'http_proxy = "http://admin:hunter2@proxy:99999"',
    ],
)
def test_proxy_passwords_never_appear_in_messages(tmp_path: Path, network: str) -> None:
    lines = settings_problems(tmp_path, f"[settings.network]\n{network}")
    assert lines
    assert not any("hunter2" in line for line in lines), "\n".join(lines)
    assert any("***" in line for line in lines)


def test_problem_render_masks_credentials_in_lists_and_tables() -> None:
    problem = Problem("fleet", "settings.network", {"http_proxy": "http://a:b@c:1",
                                                   "x": ["https://u:pw@h"]}, "bad")
    line = problem.render("f.toml")
    assert "b@c" not in line and "pw@" not in line
    assert "'http://***:***@c:1'" in line and "'https://***:***@h'" in line


def test_long_values_are_cut(tmp_path: Path) -> None:
    lines = settings_problems(tmp_path, f'precision = "{"x" * 5000}"')
    assert len(lines[0]) < 600 and "...(cut)" in lines[0]


# --- checks against the catalog (rules/fleet_checks.py) ------------------------------------------
def checked_problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(FleetError) as caught:
        load_fleet(write(tmp_path, text), checks=fleet_problems)
    return caught.value.lines


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("tensor_parallel = 3",
         "host h (group g): settings.tensor_parallel = 3: must divide the 28 attention heads of "
         "deepseek-r1-distill-qwen-7b (and its 4 KV heads, or be a multiple of them); "
         "allowed: 1, 2, 4, 28"),
        ("tensor_parallel = 7", "settings.tensor_parallel = 7: must divide the 28 attention heads"),
        ("tensor_parallel = 4\ngpus = { count = 2 }",
         "settings.tensor_parallel = 4: tensor_parallel x pipeline_parallel = 4 x 1 = 4 GPUs, but "
         "gpus.count is 2"),
        ("tensor_parallel = 2\npipeline_parallel = 4\ngpus = { count = 4 }",
         "2 x 4 = 8 GPUs, but gpus.count is 4"),
        ("pipeline_parallel = 8\ngpus = { count = 4 }",
         "settings.pipeline_parallel = 8: needs at least 8 GPUs, but gpus.count is 4"),
        ("pipeline_parallel = 29",
         "settings.pipeline_parallel = 29: deepseek-r1-distill-qwen-7b has 28 layers"),
        ("context_length = 200000",
         "settings.context_length = 200000: deepseek-r1-distill-qwen-7b handles at most 131072 "
         "tokens (max_position_embeddings); allowed: 256 to 131072"),
        ('preflight = { downgrade_errors = ["storage-hhd"] }',
         "fleet: settings.preflight.downgrade_errors = 'storage-hhd': unknown finding code; "
         "allowed: \"all\" or a finding code; did you mean 'storage-hdd'"),
        ('preflight = { downgrade_errors = ["ALL"] }', "did you mean 'all'"),
        ('preflight = { downgrade_errors = ["zzzz"] }', "the codes are the keys of CODES"),
        ('preflight = { expected_warnings = ["image-not-pined"] }',
         "fleet: settings.preflight.expected_warnings = 'image-not-pined': unknown finding "
         "code; allowed: a finding code; did you mean 'image-not-pinned'"),
    ],
)
def test_catalog_checks(tmp_path: Path, settings: str, expected: str) -> None:
    lines = checked_problems(tmp_path, MINIMAL.replace("[groups", settings + "\n[groups"))
    assert any(expected in line for line in lines), "\n".join(lines)


@pytest.mark.parametrize(
    "settings",
    ["tensor_parallel = 4\ngpus = { count = 4 }", "tensor_parallel = 2\npipeline_parallel = 2",
     "context_length = 131072", 'preflight = { downgrade_errors = ["all", "storage-hdd"] }',
     "gpus = { count = 1 }"],
)
def test_catalog_checks_accept_good_settings(tmp_path: Path, settings: str) -> None:
    fleet = load_fleet(write(tmp_path, MINIMAL.replace("[groups", settings + "\n[groups")))
    assert fleet_problems(fleet) == []


def test_downgrade_codes_are_reported_where_written_once(tmp_path: Path) -> None:
    lines = checked_problems(tmp_path, """
        [settings]
        weights_path = "/srv/m"
        preflight = { downgrade_errors = ["storage-hhd"] }
        [groups.g.hosts.a]
        [groups.g.hosts.b]
        [groups.h.hosts.c]
        settings = { preflight = { downgrade_errors = ["reboot-requried"] } }
    """)
    assert len(lines) == 2, lines
    assert "fleet: settings.preflight.downgrade_errors = 'storage-hhd'" in lines[0]
    assert "host c (group h): settings.preflight.downgrade_errors = 'reboot-requried'" in lines[1]
    assert "did you mean 'reboot-required'" in lines[1]


def test_every_catalog_model_has_a_valid_default_parallelism(tmp_path: Path) -> None:
    for model_id in ("deepseek-r1", "deepseek-r1-distill-llama-70b"):
        fleet = load_fleet(write(tmp_path, MINIMAL.replace(
            "[groups", f'model = "{model_id}"\ntensor_parallel = 8\ngpus = {{ count = 8 }}\n[groups')))
        assert fleet_problems(fleet) == []


# --- `python inventory.py`: validate offline --------------------------------------------------
def run_inventory(
    tmp_path: Path, *args: str, fleet: Path | None = None, env_value: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if fleet is not None:
        env[FLEET_ENV] = str(fleet)
    if env_value is not None:
        env[FLEET_ENV] = env_value
    return subprocess.run([sys.executable, "inventory.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_script_refuses_the_unedited_example_and_says_how_to_start(tmp_path: Path) -> None:
    """With no fleet named, the shipped example is read: its documentation addresses are
    refused in one line that points at the simulated fleet, before anything is contacted."""
    result = run_inventory(tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "the fleet file has 1 problem(s); no host was contacted:" in result.stderr
    assert ("inventory/fleet.toml is the unedited example: its hosts gpu-01 (gpu-01.example), "
            "gpu-02 (192.0.2.12), ws-01 (ws-01.example) have documentation addresses"
            in result.stderr)
    assert "run `make rehearse`" in result.stderr and "GPUFLEET_FLEET=" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_half_edited_example_is_refused_naming_the_example_hosts(tmp_path: Path) -> None:
    text = (REPO / "inventory" / "fleet.toml").read_text()
    edited = text.replace('target = "gpu-01.example"', 'target = "10.1.2.3"')
    assert edited != text
    result = run_inventory(tmp_path, fleet=write(tmp_path, edited))
    assert result.returncode == 2
    assert "still has example hosts: gpu-02 (192.0.2.12), ws-01 (ws-01.example)" in result.stderr
    assert "gpu-01" not in result.stderr


def test_the_examples_commented_r1_group_validates_once_uncommented(tmp_path: Path) -> None:
    """The commented DeepSeek-R1 group of the example is a working starting point."""
    lines = (REPO / "inventory" / "fleet.toml").read_text().splitlines()
    start = lines.index("# [groups.r1.settings]")
    text = "\n".join(lines[:start] + [
        line[2:] for line in lines[start:] if line.startswith("# ") and not line.startswith("# #")])
    fleet = load_fleet(write(tmp_path, text), checks=fleet_problems)
    r1 = [spec for spec in fleet.hosts if spec.group == "r1"]
    assert [spec.name for spec in r1] == ["gpu-11", "gpu-12"]
    assert r1[0].settings.pin_set == "r535-fwdcompat-mla"


@pytest.mark.parametrize("target, documentation", [
    ("192.0.2.1", True), ("198.51.100.7", True), ("203.0.113.255", True), ("2001:db8::1", True),
    ("gpu.example", True), ("GPU.Example.COM.", True), ("h.example.org", True), ("x.invalid", True),
    ("10.0.40.12", False), ("192.0.3.1", False), ("example.internal", False),
    ("myexample.com", False), ("gpu-01.corp.local", False), ("@docker/sim-1", False),
])
def test_documentation_targets(target: str, documentation: bool) -> None:
    assert is_documentation_target(target) is documentation


def test_pyinfra_with_no_fleet_named_contacts_nothing() -> None:
    """The design card's command on a fresh clone: refused while loading the inventory."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), "inventory.py", "deploys/gpu_host.py"],
        cwd=REPO, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "is the unedited example" in result.stderr
    assert "Connecting" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_script_validates_a_named_fleet(tmp_path: Path) -> None:
    other = write(tmp_path, GOOD)
    named = run_inventory(tmp_path, str(other))
    assert named.returncode == 0, named.stderr
    assert named.stdout == f"gpufleet: {other} is valid: 2 group(s), 3 host(s) (no host was contacted)\n"


def test_script_reports_schema_and_catalog_problems_in_one_run(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [settings]
        weights_path = "/srv/m"
        [groups.g.hosts.a]
        settings = { tensor_parallel = 3 }
        [groups.g.hosts.b]
        settings = { precision = "fp12" }
    """)
    result = run_inventory(tmp_path, fleet=path)
    assert result.returncode == 2
    assert "the fleet file has 2 problem(s); no host was contacted:" in result.stderr
    assert "settings.tensor_parallel = 3: must divide" in result.stderr
    assert "settings.precision = 'fp12'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


def test_script_usage(tmp_path: Path) -> None:
    assert run_inventory(tmp_path, "--help").returncode == 0
    assert run_inventory(tmp_path, "a", "b").returncode == 2
    empty = run_inventory(tmp_path, "")
    assert empty.returncode == 2 and "the fleet file argument is empty" in empty.stderr


def test_pyinfra_still_gets_the_groups_as_module_globals(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """pyinfra executes inventory.py with its own globals (no __name__ of "__main__")."""
    monkeypatch.chdir(REPO)
    text = (REPO / "inventory" / "fleet.toml").read_text()
    for example, edited in [("gpu-01.example", "gpu-01.corp.local"),
                            ("192.0.2.12", "10.0.40.12"), ("ws-01.example", "ws-01.corp.local")]:
        text = text.replace(f'target = "{example}"', f'target = "{edited}"')
    monkeypatch.setenv(FLEET_ENV, str(write(tmp_path, text)))
    namespace: dict[str, object] = {"__file__": str(REPO / "inventory.py")}
    exec(compile((REPO / "inventory.py").read_text(), "inventory.py", "exec"), namespace)
    groups = {key: value for key, value in namespace.items()
              if not key.startswith("_") and isinstance(value, tuple)}
    assert set(groups) == {"hgx", "workstation"}
    assert [name for name, _ in groups["hgx"][0]] == ["gpu-01", "gpu-02"]
