"""The fleet file: merging, validation and the messages a person reads when it is wrong."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from inventory.fleet import FleetError, load_fleet, pyinfra_host_name
from inventory.merge import deep_merge

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
    assert "fleet: settings.bogus = 1: unknown key; allowed here: apt, concurrency" in text
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
