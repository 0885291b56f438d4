"""The Python environment step: its fact (run for real on this machine), its decisions, its
install script and the verification script."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from facts.venv_state import (
    MARKER_NAME,
    VERIFY_SCRIPT,
    PythonEnvState,
    PythonEnvStateResult,
    parse_python_env_state,
    parse_wheelhouse_listing,
)
from inventory.catalog import find_model
from inventory.fleet import HostSpec
from inventory.pins import load_pins
from inventory.python_locks import load_lock
from inventory.schema import Settings
from operations.locked_venv import TEMPLATE, _pip_args
from rules.network import PROXY_ENV_PATH, proxy_env_file
from rules.python_env_plan import (
    SYSTEM_CA_BUNDLE,
    InstallSource,
    choose_interpreter,
    expected_marker,
    plan_python_env,
)
from rules.render import render

PINS = load_pins().sets["r535-cuda121"]
LOCK = load_lock(PINS.python.lock, "3.11", "x86_64")
MARKER = expected_marker(LOCK, PINS.cuda.release)
GOOD_VERIFY = {"python": "3.11.2", "problems": [], "driver_loaded": False,
               "torch": {"version": "2.1.0", "cuda": "12.1", "devices": []},
               "transformers": "4.43.4"}


def spec(**settings: Any) -> HostSpec:
    return HostSpec(
        name="gpu-01", group="hgx", target="gpu-01.example.internal",
        settings=Settings.model_validate({"weights_path": "/srv/models/m", **settings}),
        pin_set_name="r535-cuda121", pins=PINS, fleet_dir=Path("."),
        model=find_model(Settings.model_fields["model"].default),
    )


def state(**fields: Any) -> PythonEnvStateResult:
    base = PythonEnvStateResult(
        "ok", machine="x86_64", apt=True,
        interpreters={"python3": "3.11.2", "python3.11": "3.11.2"},
        venv_capable=("python3", "python3.11"),
    )
    return replace(base, **fields)


def run_fact(path: str) -> PythonEnvStateResult:
    command = PythonEnvState().command(path=path, candidates=("python3", "python3.11"))
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return parse_python_env_state(proc.stdout.splitlines())


# --- the fact, run for real on this machine --------------------------------------------------
def test_fact_on_an_absent_path(tmp_path: Path) -> None:
    result = run_fact(str(tmp_path / "venv"))
    assert result.status == "ok"
    assert result.machine is not None and result.path_kind == "absent"
    assert result.marker is None and result.verify is None
    assert "python3" in result.interpreters


def test_fact_on_a_managed_venv_runs_the_verification(tmp_path: Path) -> None:
    real = tmp_path / "venv.0123456789ab"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(real)], check=True)
    (tmp_path / "venv").symlink_to(real)
    marker = {"digest": "d", "dists": {"six": "1.17.0"}, "imports": ["json"]}
    (real / MARKER_NAME).write_text(json.dumps(marker))

    result = run_fact(str(tmp_path / "venv"))
    assert result.path_kind == "link" and result.link_target == str(real)
    assert result.marker == marker
    assert result.verify is not None
    assert result.verify["python"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    assert result.verify["problems"] == ["six: locked 1.17.0, installed nothing"]


def test_fact_on_a_plain_folder(tmp_path: Path) -> None:
    (tmp_path / "venv").mkdir()
    assert run_fact(str(tmp_path / "venv")).path_kind == "other"


def test_fact_parser_never_raises_on_garbage() -> None:
    assert parse_python_env_state(["garbage", "__gpufleet_section=venv"]).status == "unknown"


def test_wheelhouse_listing() -> None:
    lines = ["11050 six-1.17.0-py2.py3-none-any.whl", "12 notes.txt", "x y.whl"]
    assert parse_wheelhouse_listing(lines) == {"six-1.17.0-py2.py3-none-any.whl": 11050}


# --- decisions ------------------------------------------------------------------------------------
def test_converged_host_is_a_noop_that_reports_versions() -> None:
    plan = plan_python_env(spec(), state(path_kind="link", marker=MARKER, verify=GOOD_VERIFY))
    assert plan.action == "noop"
    assert "torch 2.1.0 (CUDA 12.1)" in plan.message and "transformers 4.43.4" in plan.message
    # the host manifest records the lock whether this run installs it or finds it in place
    installed = plan_python_env(spec(), state())
    assert plan.lock is not None and installed.lock is not None
    assert plan.lock.digest == installed.lock.digest


def test_fresh_host_installs_with_the_system_python() -> None:
    plan = plan_python_env(spec(), state())
    assert plan.action == "install" and plan.message == "no environment yet"
    assert plan.interpreter == "python3" and plan.venv_package is None
    assert plan.new == f"/opt/gpufleet/venv.{LOCK.digest[:12]}"
    assert plan.marker["torch_cuda"] == "12.1" and plan.marker["dists"]["torch"] == "2.1.0"
    assert plan.source == InstallSource()


def test_missing_ensurepip_installs_the_distro_venv_package() -> None:
    plan = plan_python_env(spec(), state(venv_capable=()))
    assert plan.action == "install" and plan.venv_package == "python3.11-venv"


def test_missing_ensurepip_without_apt_refuses() -> None:
    plan = plan_python_env(spec(), state(venv_capable=(), apt=False))
    assert plan.action == "refuse" and "ensurepip" in plan.message


def test_system_python_out_of_range_falls_back_to_a_versioned_one() -> None:
    found = state(interpreters={"python3": "3.12.3", "python3.10": "3.10.14"},
                  venv_capable=("python3", "python3.10"))
    assert choose_interpreter(found, ["3.10", "3.11"]) == ("python3.10", "3.10")
    plan = plan_python_env(spec(), found)
    assert plan.action == "install" and plan.lock is not None and plan.lock.python == "3.10"


def test_no_python_in_range_refuses_with_options() -> None:
    plan = plan_python_env(spec(), state(interpreters={"python3": "3.12.3"}))
    assert plan.action == "refuse"
    assert "python3 3.12.3" in plan.message and "3.10 or 3.11" in plan.message
    assert "python3.11-venv" in plan.message and "python_env.enabled = false" in plan.message


def test_aarch64_refuses() -> None:
    plan = plan_python_env(spec(), state(machine="aarch64"))
    assert plan.action == "refuse" and "aarch64" in plan.message and "CPU-only" in plan.message


def test_a_foreign_folder_at_the_path_is_never_replaced() -> None:
    plan = plan_python_env(spec(), state(path_kind="other"))
    assert plan.action == "refuse" and "not an environment gpufleet manages" in plan.message


def test_changed_lock_rebuilds_beside_the_live_venv() -> None:
    old = dict(MARKER, digest="0" * 64, file="cp311-x86_64.txt")
    live = "/opt/gpufleet/venv.000000000000"
    plan = plan_python_env(spec(), state(path_kind="link", link_target=live, marker=old,
                                         verify=GOOD_VERIFY))
    assert plan.action == "install" and plan.message.startswith("lock changed")
    assert plan.new != live


def test_a_broken_live_venv_is_rebuilt_in_another_folder() -> None:
    live = f"/opt/gpufleet/venv.{LOCK.digest[:12]}"
    broken = dict(GOOD_VERIFY, problems=["numpy: locked 1.26.4, installed 2.1.0"])
    plan = plan_python_env(spec(), state(path_kind="link", link_target=live, marker=MARKER,
                                         verify=broken))
    assert plan.action == "install" and "numpy: locked 1.26.4" in plan.message
    assert plan.new == live + "-b"


def test_lock_disagreeing_with_the_pins_refuses() -> None:
    other = PINS.model_copy(update={"python": PINS.python.model_copy(
        update={"transformers": "4.35.0"})})
    plan = plan_python_env(spec().model_copy(update={"pins": other}), state())
    assert plan.action == "refuse" and "4.35.0" in plan.message


def test_wheelhouse_mode_without_a_wheelhouse_refuses_with_the_command(tmp_path: Path) -> None:
    plan = plan_python_env(spec(python_env={"wheelhouse": True}), state(),
                           wheelhouse_root=tmp_path)
    assert plan.action == "refuse" and "tools/wheelhouse.py --lock torch210-cu121" in plan.message


def test_proxies_mirror_and_extra_ca_reach_pip() -> None:
    host = spec(network={"https_proxy": "http://proxy.internal:3128",
                         "no_proxy": ["localhost", ".internal"],
                         "extra_ca_bundle": __file__},
                python_env={"index_url": "https://mirror.internal/simple"})
    env = proxy_env_file(host.settings.network) or ""
    assert "https_proxy='http://proxy.internal:3128/'" in env.splitlines()
    assert "HTTPS_PROXY='http://proxy.internal:3128/'" in env.splitlines()
    assert "no_proxy='localhost,.internal'" in env.splitlines() and "http_proxy" not in env
    plan = plan_python_env(host, state())
    assert plan.source is not None and plan.source.cert == SYSTEM_CA_BUNDLE
    # pip reads the proxies from the root-only file, never from its command line
    assert plan.source.env_file == PROXY_ENV_PATH
    assert _pip_args(plan.source) == ["--index-url", "https://mirror.internal/simple",
                                      "--cert", SYSTEM_CA_BUNDLE]


# --- the install script ----------------------------------------------------------------------------
@pytest.mark.parametrize("wheelhouse", [False, True])
def test_install_script_is_valid_sh_and_quotes_values(wheelhouse: bool) -> None:
    script = render(TEMPLATE, **{
        "path": "'/opt/my venv'", "new": "'/opt/my venv.0123456789ab'",
        "requirements": "'/opt/my venv.0123456789ab.requirements.txt'",
        "marker": "'/opt/my venv.0123456789ab.marker.json'",
        "verify": "'/opt/my venv.0123456789ab.verify.py'", "interpreter": "python3.11",
        "env_file": "/etc/gpufleet/proxy.env", "pip_args": "--no-index --find-links /opt/wh",
        "wheelhouse": "/opt/wh" if wheelhouse else "", "lock_label": "x/cp311-x86_64.txt",
        "marker_name": MARKER_NAME,
    })
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    assert "--require-hashes --no-deps --only-binary :all:" in script
    assert ("sha256sum" in script) is wheelhouse


# --- the verification script ----------------------------------------------------------------------
def run_verify(expect: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([sys.executable, str(VERIFY_SCRIPT), json.dumps(expect)],
                          capture_output=True, text=True, timeout=120)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("GPUFLEET_VERIFY "))
    return proc.returncode, json.loads(line.split(" ", 1)[1])


def test_verify_reports_version_drift_and_import_failures() -> None:
    import pydantic

    code, result = run_verify({"dists": {"pydantic": "0.0.1"},
                               "imports": ["gpufleet_no_such_module"]})
    assert code == 1
    assert f"pydantic: locked 0.0.1, installed {pydantic.VERSION}" in result["problems"]
    assert any(p.startswith("not in the lock but installed:") for p in result["problems"])
    assert any("import gpufleet_no_such_module failed" in p for p in result["problems"])


def test_verify_passes_when_nothing_is_expected() -> None:
    code, result = run_verify({})
    assert code == 0 and result["problems"] == []


def _script_values(tmp_path: Path, new: Path, interpreter: str) -> dict[str, str]:
    return {
        "path": str(tmp_path / "venv"), "new": str(new),
        "requirements": f"{new}.requirements.txt", "marker": f"{new}.marker.json",
        "verify": f"{new}.verify.py", "interpreter": interpreter, "env_file": "",
        "pip_args": "", "wheelhouse": "", "lock_label": "x/cp311-x86_64.txt",
        "marker_name": MARKER_NAME,
    }


def test_install_script_never_touches_the_live_venv(tmp_path: Path) -> None:
    live = tmp_path / "venv.0123456789ab"
    live.mkdir()
    (live / "keep").write_text("x")
    (tmp_path / "venv").symlink_to(live)
    script = render(TEMPLATE, **_script_values(tmp_path, live, "python3"))
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1 and "refusing to rebuild the live environment" in proc.stderr
    assert (live / "keep").read_text() == "x"


def test_a_failed_build_is_cleaned_up_and_the_old_link_kept(tmp_path: Path) -> None:
    live = tmp_path / "venv.0123456789ab"
    live.mkdir()
    (tmp_path / "venv").symlink_to(live)
    new = tmp_path / "venv.ba9876543210"
    for suffix in (".requirements.txt", ".marker.json", ".verify.py"):
        Path(f"{new}{suffix}").write_text("{}")
    # `false -m venv NEW` fails like an interpreter without ensurepip would.
    script = render(TEMPLATE, **_script_values(tmp_path, new, "false"))
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"the previous environment is untouched: {tmp_path / 'venv'} -> {live}" in proc.stderr
    assert (tmp_path / "venv").resolve() == live
    assert sorted(p.name for p in tmp_path.iterdir()) == ["venv", "venv.0123456789ab"]
