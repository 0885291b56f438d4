"""The driver step's decisions: reboots, Secure Boot and flavour refusals, the post-reboot
check (mismatch detected), and the headers a DKMS flavour needs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from deploys.driver import driver_refusal, headers_package
from facts.nvidia import SecureBootState
from facts.system import OsRelease, SystemInfoResult
from inventory.nvidia_stack import module_findings, reboot_pending_finding, reboot_reasons
from tests.unit.test_preflight import bare_host, spec

PINNED = "535.183.06"


def reasons(**kw: object) -> list[str]:
    base: dict[str, object] = dict(driver_installed=True, module_loaded=True,
                                   loaded_version=PINNED, pinned_upstream=PINNED,
                                   nouveau_loaded=False)
    return reboot_reasons(**{**base, **kw})  # type: ignore[arg-type]


def test_no_reboot_when_the_pinned_driver_runs() -> None:
    assert reasons() == []


def test_no_reboot_before_anything_is_installed() -> None:
    assert reasons(driver_installed=False, module_loaded=False, loaded_version=None) == []


def test_reboot_for_a_new_driver_that_is_not_loaded_yet() -> None:
    assert reasons(module_loaded=False, loaded_version=None) == [
        f"driver {PINNED} is installed but no nvidia module is loaded"]


def test_reboot_for_a_module_userspace_mismatch() -> None:
    (reason,) = reasons(loaded_version="535.161.08")
    assert "535.161.08" in reason and PINNED in reason and "mismatch" in reason


def test_reboot_while_nouveau_holds_the_gpus() -> None:
    (reason,) = reasons(nouveau_loaded=True)
    assert "nouveau" in reason


def test_secure_boot_with_dkms_is_refused_with_the_three_ways_out(tmp_path: Path) -> None:
    probe = bare_host(secure_boot=SecureBootState("enabled", source="mokutil"))
    message = driver_refusal(spec(tmp_path), probe)
    assert message is not None
    assert "secure-boot-unsigned-driver" in message
    assert "precompiled-signed" in message and "MOK" in message
    assert "Secure Boot off" in message


def test_secure_boot_refusal_can_be_accepted_like_in_preflight(tmp_path: Path) -> None:
    probe = bare_host(secure_boot=SecureBootState("enabled", source="mokutil"))
    accepted = spec(tmp_path, """
        [settings.preflight]
        downgrade_errors = ["secure-boot-unsigned-driver"]
    """)
    assert driver_refusal(accepted, probe) is None


def test_legacy_bios_and_secure_boot_off_pass(tmp_path: Path) -> None:
    assert driver_refusal(spec(tmp_path), bare_host()) is None
    not_efi = bare_host(secure_boot=SecureBootState("not_efi", source="firmware"))
    assert not_efi.secure_boot.enforcing is False
    assert driver_refusal(spec(tmp_path), not_efi) is None


def test_signed_precompiled_modules_are_refused_where_the_distro_has_none(tmp_path: Path) -> None:
    pins = (Path("inventory/pins.toml").read_text()
            .replace('flavour = "dkms"', 'flavour = "precompiled-signed"'))
    pin_file = tmp_path / "pins.toml"
    pin_file.write_text(pins)
    from inventory.fleet import load_fleet
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[settings]\nweights_path = "/srv/m"\n[groups.g.hosts.h]\n')
    host_spec = load_fleet(fleet, pin_file).hosts[0]
    debian = bare_host(system=SystemInfoResult(
        "ok", OsRelease("debian", "12", "bookworm", "Debian 12"), "x86_64", "amd64",
        "6.1.0-18-amd64", True))
    message = driver_refusal(host_spec, debian)
    assert message is not None and "no-signed-precompiled-modules" in message
    assert driver_refusal(host_spec, bare_host()) is None  # Ubuntu builds them


def test_headers_are_wanted_only_for_dkms_without_them(tmp_path: Path) -> None:
    no_headers = bare_host(system=replace(bare_host().system, kernel_headers_installed=False))
    assert headers_package(spec(tmp_path), no_headers) == "linux-headers-5.15.0-105-generic"
    assert headers_package(spec(tmp_path), bare_host()) is None


def test_mismatch_still_there_after_the_reboot_is_refused() -> None:
    (finding,) = module_findings(module_loaded=True, loaded_version="535.161.08",
                                 pinned_upstream=PINNED, nouveau_loaded=False, secure_boot=False)
    assert finding.code == "driver-library-mismatch"
    assert "535.161.08" in finding.measured


def test_module_refused_by_secure_boot_says_so() -> None:
    (finding,) = module_findings(module_loaded=False, loaded_version=None,
                                 pinned_upstream=PINNED, nouveau_loaded=False, secure_boot=True)
    assert finding.code == "driver-module-not-loaded" and "Secure Boot" in finding.what


def test_nouveau_after_the_reboot_is_refused() -> None:
    codes = [f.code for f in module_findings(module_loaded=True, loaded_version=PINNED,
                                             pinned_upstream=PINNED, nouveau_loaded=True,
                                             secure_boot=False)]
    assert codes == ["nouveau-still-loaded"]


def test_reboot_never_turns_a_needed_reboot_into_a_refusal_at_verification() -> None:
    finding = reboot_pending_finding(["driver installed but not loaded"])
    assert finding.severity == "error" and "settings.driver.reboot" in finding.fix
