"""What the controller computes once per run, not once per host: a fleet's checks read every
host's monitoring targets once (not once per host: 1,000 hosts made it 1,000,000 reads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import rules.monitoring
from inventory.fleet import load_fleet
from rules.fleet_checks import fleet_problems

HOSTS = "\n".join(f"[groups.hgx.hosts.gpu-{i:02d}]\ntarget = \"10.0.0.{10 + i}\"\n"
                  for i in range(1, 6))
FLEET = f"""
[settings]
model = "deepseek-r1-distill-qwen-7b"
weights_path = "/srv/models/m"
tensor_parallel = 1
[settings.inference]
bind = "0.0.0.0"
[settings.monitoring]
bind = "0.0.0.0"

[groups.hgx]
settings = {{ gpus = {{ count = 8, model = "H100 80GB HBM3" }}, monitoring = {{ dcgm_registry = "mirror.example.internal" }} }}
{HOSTS}
[groups.monitor]
settings = {{ role = "monitor" }}
[groups.monitor.hosts.mon-01]
target = "10.0.0.5"
"""


def test_a_fleets_checks_read_the_monitoring_targets_once(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = rules.monitoring.fleet_targets

    def counted(monitor: Any, specs: list[Any]) -> Any:
        calls.append(len(specs))
        return real(monitor, specs)

    monkeypatch.setattr(rules.monitoring, "fleet_targets", counted)
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    loaded = load_fleet(path, checks=fleet_problems)
    assert len(loaded.hosts) == 6
    assert calls == [6]  # once for the fleet, not once per GPU host (5)


def test_the_gpu_catalog_is_read_once_for_all_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    import inventory.catalog
    import rules.assessment
    import rules.gpu_inventory

    reads: list[int] = []
    real = inventory.catalog.load_gpus

    def counted(path: Path | None = None) -> Any:
        reads.append(1)
        return real(path)

    monkeypatch.setattr(inventory.catalog, "load_gpus", counted)
    inventory.catalog._gpus.cache_clear()
    for _ in range(3):  # three hosts' plans
        assert rules.gpu_inventory._catalog_by_name()
        assert rules.assessment._forward_compatible([])  == {}
    assert len(reads) == 1
    assert inventory.catalog.catalog_gpus() == real()
    inventory.catalog._gpus.cache_clear()


def _docker_save(path: Path, image: str, digest: str) -> None:
    import io
    import json
    import tarfile

    manifest = json.dumps([{"Config": f"blobs/sha256/{digest}", "RepoTags": [image]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("blobs/sha256/" + digest, b"{}"), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_an_image_archive_is_read_once_for_all_hosts_and_again_when_it_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import tarfile

    import operations.docker_config as docker_config

    opened: list[str] = []
    real_open: Any = tarfile.open

    def counted(name: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode.startswith("r"):
            opened.append(str(name))
        return real_open(name, mode, *args, **kwargs)

    monkeypatch.setattr(tarfile, "open", counted)
    docker_config._archive_image_id_of.cache_clear()
    archive = tmp_path / "engine.tar"
    _docker_save(archive, "engine:1", "a" * 64)
    for _ in range(3):  # three hosts' plans
        assert docker_config.archive_image_id(str(archive), "engine:1") == "sha256:" + "a" * 64
    assert docker_config.archive_image_id(str(archive), "other:1") is None
    assert len(opened) == 2  # once per image asked for, not once per host
    _docker_save(archive, "engine:1", "b" * 64)  # the archive rebuilt
    os.utime(archive, ns=(1, 1))
    assert docker_config.archive_image_id(str(archive), "engine:1") == "sha256:" + "b" * 64
    assert docker_config.archive_image_id(str(tmp_path / "none.tar"), "engine:1") is None


def test_a_lock_file_is_parsed_once_for_all_hosts_and_again_when_it_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import inventory.python_locks as locks

    parsed: list[int] = []
    real = locks.parse_lock

    def counted(text: str) -> Any:
        parsed.append(1)
        return real(text)

    monkeypatch.setattr(locks, "parse_lock", counted)
    locks._parse_lock_memo.cache_clear()
    folder = tmp_path / "x"
    folder.mkdir()
    path = folder / locks.lock_file_name("3.11", "x86_64")
    path.write_text("six==1.16.0 --hash=sha256:" + "a" * 64 + "\n")
    first = [locks.load_lock("x", "3.11", "x86_64", tmp_path) for _ in range(3)]  # 3 hosts
    assert len(parsed) == 1
    assert all(lock.packages == first[0].packages for lock in first)
    first[0].packages.clear()  # each host's lock is its own
    assert locks.load_lock("x", "3.11", "x86_64", tmp_path).version("six") == "1.16.0"
    path.write_text("six==1.17.0 --hash=sha256:" + "b" * 64 + "\n")
    assert locks.load_lock("x", "3.11", "x86_64", tmp_path).version("six") == "1.17.0"
    assert len(parsed) == 2


def test_a_hosts_spec_is_validated_once_per_run_and_again_when_its_data_differs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyinfra.api import Config, State
    from pyinfra.api.inventory import Inventory

    from deploys.spec import host_spec
    from inventory.fleet import HostSpec, pyinfra_host_data

    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    specs = load_fleet(path, checks=fleet_problems).hosts[:2]
    inv = Inventory(([(spec.name, pyinfra_host_data(spec)) for spec in specs], {}))
    State(inv, Config())
    validated: list[str] = []
    real = HostSpec.model_validate

    def counted(data: Any, *args: Any, **kwargs: Any) -> HostSpec:
        validated.append(data["name"])
        return real(data, *args, **kwargs)

    monkeypatch.setattr(HostSpec, "model_validate", counted)
    for _ in range(3):  # each host's deploy asks several times
        assert [host_spec(host) for host in inv] == specs
    assert validated == [specs[0].name, specs[1].name]
    # the host's data changed (a test, an override): validated again, from the new data
    host = inv.get_host(specs[0].name)
    host.data.gpufleet = pyinfra_host_data(specs[1])["gpufleet"]
    assert host_spec(host) == specs[1]
    assert len(validated) == 3


def test_a_compose_document_is_dumped_once_for_all_hosts_with_the_same_plan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    import rules.serving as serving
    from tests.unit.test_serving import plan

    dumped: list[Any] = []
    real_dump = yaml.dump

    def counted(document: Any, *args: Any, **kwargs: Any) -> Any:
        dumped.append(document)
        return real_dump(document, *args, **kwargs)

    def direct(document: Any) -> str:
        text: str = real_dump(document, Dumper=serving._NoAliases, sort_keys=False,
                              default_flow_style=False, width=100)
        return text

    serving._yaml_of_repr.cache_clear()
    monkeypatch.setattr(yaml, "dump", counted)
    engine = plan(tmp_path)
    texts = [serving.render_compose(engine) for _ in range(3)]  # three hosts, one plan
    assert len(dumped) == 1 and len(set(texts)) == 1
    assert direct(serving.compose_document(engine)) in texts[0]
    # documents that differ only in a value's type or order are told apart
    variants: list[dict[str, Any]] = [
        {"a": 1, "b": [1]}, {"a": True, "b": [1]}, {"a": 1.0, "b": [1]},
        {"b": [1], "a": 1}, {"a": "1", "b": [1]}, {"a": 1, "b": [1]}]
    assert [serving.compose_yaml(v) for v in variants] == [direct(v) for v in variants]
    assert len(dumped) == 1 + 5  # the last is the first again
    # a document holding anything but builtin values is dumped each time
    odd = {"a": (1, 2)}
    assert serving.compose_yaml(odd) == serving.compose_yaml(odd) == direct(odd)
    assert len(dumped) == 6 + 2
