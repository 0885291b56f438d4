"""`simctl up --hosts N` (make sim-up HOSTS=N): N identical hosts and the fleet file for them."""

from __future__ import annotations

from pathlib import Path

from tests.sim import simctl


def test_scale_hosts_copy_the_template_hardware_under_their_own_names() -> None:
    template = next(h for h in simctl.load_hosts() if h.name == simctl.SCALE_TEMPLATE)
    hosts = simctl.scale_hosts(3)
    assert [h.name for h in hosts] == [f"gpufleet-sim-node0{i}" for i in (1, 2, 3)]
    for host in hosts:
        assert host.hardware["hostname"] == host.name
        assert [g["name"] for g in host.hardware["gpus"]] == \
            [g["name"] for g in template.hardware["gpus"]]
    # GPU UUIDs are unique across the fleet, as on real hosts.
    uuids = [g["uuid"] for h in hosts for g in h.hardware["gpus"]]
    assert len(set(uuids)) == len(uuids)


def test_the_scale_fleet_file_is_the_rehearsal_fleet_with_one_group_of_n_hosts(
        tmp_path: Path) -> None:
    path = simctl.write_scale_fleet(simctl.scale_hosts(8), tmp_path / "scale.toml")
    fleet = simctl.tomllib.loads(path.read_text())
    rehearsal = simctl.tomllib.loads(simctl.SIM_FLEET.read_text())
    assert fleet["fleet"]["name"] == "sim-scale"
    # The same settings; paths into tests/sim/build are absolute, so the file works anywhere.
    assert fleet["settings"]["model"] == rehearsal["settings"]["model"]
    archives = fleet["settings"]["inference"]["image_archives"]
    assert archives == [str(simctl.BUILD_DIR / "images" / "engine.tar")]
    group = fleet["groups"][simctl.SCALE_GROUP]
    assert group["settings"] == rehearsal["groups"][simctl.SCALE_GROUP]["settings"]
    assert {name: h["target"] for name, h in group["hosts"].items()} == {
        f"sim-node0{i}": f"@docker/gpufleet-sim-node0{i}" for i in range(1, 9)}
    assert set(fleet["groups"]) == {simctl.SCALE_GROUP}  # no monitoring host


def test_sim_up_starts_only_the_hosts_the_rehearsal_fleet_uses() -> None:
    """`make sim-up` starts what `make rehearse` converges, not the tests' RTX 4090 host."""
    names = [h.name for h in simctl.rehearsal_hosts()]
    assert sorted(names) == ["gpufleet-sim-a100x2", "gpufleet-sim-h100x8",
                             "gpufleet-sim-monitor"]
    assert "gpufleet-sim-rtx4090" in [h.name for h in simctl.load_hosts()]


def _inspected(sources: dict[str, str]) -> dict[str, object]:
    """The part of `docker container inspect` that foreign_binds reads (its "Mounts" entries)."""
    return {"Mounts": [
        {"Type": "bind", "Source": src, "Destination": dest, "Mode": "ro", "RW": False}
        for dest, src in sources.items()] + [
        {"Type": "volume", "Name": "h-docker", "Source": "/var/lib/docker/volumes/h-docker/_data",
         "Destination": "/var/lib/docker", "RW": True}]}


def test_a_host_mounting_a_checkouts_files_is_recognised_by_its_mounts() -> None:
    """Hosts once mounted their files from a checkout's build folder: a clone that was deleted
    left hosts whose mounts the engine could not make again ("not a directory" at `docker
    start`). Their files now live in one folder per machine; a host mounting anything else is
    made again."""
    here = simctl.HOST_FILES_DIR / "h"
    assert not here.is_relative_to(simctl.SIM_DIR)
    binds = {simctl.HARDWARE_IN_HOST: here / "hardware.json", simctl.PCI_IN_HOST: here / "pci"}
    same = _inspected({dest: str(src) for dest, src in binds.items()})
    assert simctl.foreign_binds(same, binds) == []
    other = "/work/deleted-clone/tests/sim/build/hosts/h"
    elsewhere = _inspected({simctl.HARDWARE_IN_HOST: f"{other}/hardware.json",
                            simctl.PCI_IN_HOST: f"{other}/pci"})
    assert simctl.foreign_binds(elsewhere, binds) == [f"{other}/hardware.json", f"{other}/pci"]
    # A container without the mount at all (made by an older simctl) is not this checkout's.
    assert simctl.foreign_binds({"Mounts": []}, binds) == ["(none)", "(none)"]
