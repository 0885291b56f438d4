"""The driver's decisions: when a host reboots (decided before execution, so the preview shows
it), whether the pinned driver runs afterwards, headers for DKMS, and the refusals preflight
makes for the driver (Secure Boot, precompiled modules) before anything is installed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from facts.nvidia import KernelModuleState, SecureBootState
from facts.system import OsRelease, SystemInfoResult
from inventory.fleet import load_fleet
from operations.reboot import reboot_line
from rules.assessment import assess
from rules.driver_state import (
    RebootPlan,
    headers_package,
    module_findings,
    reboot_pending_finding,
    reboot_plan,
)
from tests.unit.test_preflight import bare_host, spec

PINNED = "535.183.06"


def loaded(version: str | None = PINNED, nouveau: bool = False) -> KernelModuleState:
    if version is None:
        return KernelModuleState("not_loaded", nouveau_loaded=nouveau)
    return KernelModuleState("loaded", loaded_version=version, nouveau_loaded=nouveau)


def plan(module: KernelModuleState, installed: str | None = PINNED,
         will_change: bool = False) -> RebootPlan:
    return reboot_plan(module=module, installed_driver=installed, pinned_upstream=PINNED,
                       driver_will_change=will_change)


def test_no_reboot_when_the_pinned_driver_runs() -> None:
    assert plan(loaded()) == RebootPlan()


def test_no_reboot_when_only_a_package_beside_the_running_driver_is_added() -> None:
    # e.g. Fabric Manager appears on a host whose pinned module already runs
    assert plan(loaded(), will_change=True) == RebootPlan()


def test_a_fresh_install_reboots_only_if_the_install_changes_something() -> None:
    decided = plan(loaded(None), installed=None, will_change=True)
    assert decided.now == ()
    (reason,) = decided.after_install
    assert "no driver -> 535.183.06 installed" in reason


def test_a_pin_change_reboots_after_the_install_and_names_both_versions() -> None:
    decided = plan(loaded("535.161.08"), installed="535.161.08", will_change=True)
    assert decided.now == ()
    (reason,) = decided.after_install
    assert "driver 535.161.08 -> 535.183.06" in reason and "535.161.08" in reason


def test_an_installed_driver_that_is_not_loaded_reboots_now() -> None:
    assert plan(loaded(None)).now == (
        f"driver {PINNED} is installed but no nvidia module is loaded",)


def test_a_module_userspace_mismatch_reboots_now() -> None:
    (reason,) = plan(loaded("535.161.08")).now
    assert "535.161.08" in reason and PINNED in reason and "mismatch" in reason


def test_nouveau_holding_the_gpus_reboots_now_even_before_any_install() -> None:
    decided = plan(loaded(None, nouveau=True), installed=None, will_change=True)
    assert decided.now and "nouveau" in decided.now[0]
    assert decided.after_install  # the install's own reason travels with it


def test_one_reboot_says_every_reason_on_one_line() -> None:
    decided = plan(loaded(None, nouveau=True), installed=None, will_change=True)
    reasons = [*decided.now, *decided.after_install]  # what deploys.nvidia_driver passes
    line = reboot_line(reasons)
    assert "\n" not in line and line.count("rebooting:") == 1, line
    assert line == "rebooting: " + "; ".join(reasons)
    assert reboot_line(["a", "b", "a"]) == "rebooting: a; b"  # each reason once


def test_secure_boot_with_dkms_is_refused_by_preflight_with_the_three_ways_out(
        tmp_path: Path) -> None:
    probe = bare_host(secure_boot=SecureBootState("enabled", source="mokutil"))
    (finding,) = [f for f in assess(spec(tmp_path), probe).findings.errors
                  if f.code == "secure-boot-unsigned-driver"]
    assert "precompiled-signed" in finding.fix and "MOK" in finding.fix
    assert "Secure Boot off" in finding.fix


def test_secure_boot_refusal_can_be_accepted(tmp_path: Path) -> None:
    probe = bare_host(secure_boot=SecureBootState("enabled", source="mokutil"))
    accepted = spec(tmp_path, """
        [settings.preflight]
        downgrade_errors = ["secure-boot-unsigned-driver"]
    """)
    assessment = assess(accepted, probe)
    assert not assessment.refused
    assert "secure-boot-unsigned-driver" in [f.code for f in assessment.findings.warnings]


def test_legacy_bios_and_secure_boot_off_pass(tmp_path: Path) -> None:
    assert not assess(spec(tmp_path), bare_host()).refused
    not_efi = bare_host(secure_boot=SecureBootState("not_efi", source="firmware"))
    assert not_efi.secure_boot.enforcing is False
    assert not assess(spec(tmp_path), not_efi).refused


def test_signed_precompiled_modules_are_refused_where_the_distro_has_none(tmp_path: Path) -> None:
    pins = (Path("inventory/pins.toml").read_text()
            .replace('flavour = "dkms"', 'flavour = "precompiled-signed"'))
    pin_file = tmp_path / "pins.toml"
    pin_file.write_text(pins)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[settings]\nweights_path = "/srv/m"\n[groups.g.hosts.h]\n'
                     '[settings.repos.cuda]\nurl = "https://mirror.example/{distro}/{arch}"\n')
    host_spec = load_fleet(fleet, pin_file).hosts[0]
    debian = bare_host(system=SystemInfoResult(
        "ok", OsRelease("debian", "12", "bookworm", "Debian 12"), "x86_64", "amd64",
        "6.1.0-18-amd64", True))
    assert "no-signed-precompiled-modules" in [
        f.code for f in assess(host_spec, debian).findings.errors]
    assert "no-signed-precompiled-modules" not in [  # Ubuntu builds them
        f.code for f in assess(host_spec, bare_host()).findings]


def test_headers_are_wanted_only_for_dkms_without_them() -> None:
    assert headers_package("dkms", "5.15.0-105-generic", False) == \
        "linux-headers-5.15.0-105-generic"
    assert headers_package("open-dkms", "6.1.0-18-amd64", False) == "linux-headers-6.1.0-18-amd64"
    assert headers_package("dkms", "5.15.0-105-generic", True) is None
    assert headers_package("dkms", "5.15.0-105-generic", None) is None  # unknown: leave it
    assert headers_package("precompiled-signed", "5.15.0-105-generic", False) is None


def test_mismatch_still_there_after_the_reboot_is_refused() -> None:
    (finding,) = module_findings(loaded("535.161.08"), PINNED, secure_boot=False)
    assert finding.code == "driver-library-mismatch"
    assert "535.161.08" in finding.measured


def test_module_refused_by_secure_boot_says_so() -> None:
    (finding,) = module_findings(loaded(None), PINNED, secure_boot=True)
    assert finding.code == "driver-module-not-loaded" and "Secure Boot" in finding.what


def test_nouveau_after_the_reboot_is_refused() -> None:
    codes = [f.code for f in module_findings(loaded(nouveau=True), PINNED, secure_boot=False)]
    assert codes == ["nouveau-still-loaded"]


def test_reboot_never_turns_a_needed_reboot_into_a_refusal_at_verification() -> None:
    finding = reboot_pending_finding(["driver installed but not loaded"])
    assert finding.severity == "error" and "settings.driver.reboot" in finding.fix


def test_the_probe_kernel_feeds_the_headers_rule() -> None:
    probe = bare_host(system=replace(bare_host().system, kernel_headers_installed=False))
    assert headers_package("dkms", probe.system.kernel,
                           probe.system.kernel_headers_installed) == \
        "linux-headers-5.15.0-105-generic"
