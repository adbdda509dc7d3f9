from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.model.registry import (
    AzureBlobStore,
    LocalStore,
    Registry,
    RegistryError,
    promotion_decision,
)
from tests.azurite import Azurite

PROJECT = 7


def test_promotion_gate() -> None:
    assert promotion_decision({"ap50": 0.42}, None, 0.01, 0.3) == (
        True, "first model: AP50 0.420 >= minimum 0.300")
    assert promotion_decision({"ap50": 0.2}, None, 0.01, 0.3)[0] is False
    assert promotion_decision({"ap50": 0.80}, {"ap50": 0.78}, 0.01, 0.3)[0] is True
    better_by_less = promotion_decision({"ap50": 0.785}, {"ap50": 0.78}, 0.01, 0.3)
    assert better_by_less == (False, "AP50 0.785 does not beat champion 0.780 by 0.010")
    assert promotion_decision({"ap50": 0.5}, {"ap50": 0.78}, 0.01, 0.3)[0] is False


def test_first_model_passes_on_what_its_calibrated_prelabels_get_right() -> None:
    weak = {"ap50": 0.19}
    passed, reason = promotion_decision(weak, None, 0.01, 0.3, 0.1, assist=0.14)
    assert passed and "14% of the validation boxes right (>= 10%)" in reason
    refused, reason = promotion_decision(weak, None, 0.01, 0.3, 0.1, assist=0.06)
    assert not refused and "6%" in reason and "< 10%" in reason
    assert promotion_decision(weak, None, 0.01, 0.3, 0.1, assist=None)[0] is False
    assert promotion_decision(weak, None, 0.01, 0.3, 0.0, assist=0.9)[0] is False  # off
    # a champion is only ever beaten on AP50, however helpful the candidate's pre-labels
    assert promotion_decision(weak, {"ap50": 0.5}, 0.01, 0.3, 0.1, assist=0.9)[0] is False


def fake_checkpoint(tmp_path: Path, name: str, payload: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(payload)
    return path


def add(registry: Registry, tmp_path: Path, ap50: float, promote: bool, keep: int = 10) -> str:
    version = registry.reserve_version(PROJECT, "arch")
    registry.add(PROJECT, {"version": version, "metrics": {"ap50": ap50},
                           "class_names": ["__background__", "a"]},
                 fake_checkpoint(tmp_path, f"{version}.bin", version.encode()),
                 promote=promote, keep=keep)
    return version


def exercise(registry: Registry, tmp_path: Path) -> None:
    assert registry.champion(PROJECT) is None
    v1 = add(registry, tmp_path, 0.5, promote=True)
    v2 = add(registry, tmp_path, 0.4, promote=False)
    v3 = add(registry, tmp_path, 0.7, promote=True)
    assert (v1, v2, v3) == ("arch-v1", "arch-v2", "arch-v3")
    assert registry.champion(PROJECT)["version"] == v3
    assert [v["status"] for v in registry.versions(PROJECT)] == ["retired", "rejected",
                                                                 "champion"]
    assert registry.checkpoint_path(PROJECT, v3).read_bytes() == b"arch-v3"
    assert registry.rollback(PROJECT) == v1
    assert registry.champion(PROJECT)["version"] == v1
    assert registry.checkpoint_path(PROJECT, v1).read_bytes() == b"arch-v1"
    registry.promote(PROJECT, v2, "operator says so")
    assert registry.champion(PROJECT)["promoted_reason"] == "operator says so"
    with pytest.raises(RegistryError, match="no model version"):
        registry.record(PROJECT, "arch-v99")
    with pytest.raises(RegistryError):
        registry.promote(PROJECT, "arch-v99")


def test_local_registry(tmp_path: Path) -> None:
    exercise(Registry(LocalStore(tmp_path / "store"), tmp_path / "cache"), tmp_path)


def test_azure_registry_against_azurite(tmp_path: Path, azurite: Azurite) -> None:
    store = AzureBlobStore(azurite.connection_string, "registry-test")
    exercise(Registry(store, tmp_path / "cache"), tmp_path)
    # A second machine (its own cache dir) sees the same registry and downloads checkpoints.
    other = Registry(AzureBlobStore(azurite.connection_string, "registry-test"),
                     tmp_path / "other-cache")
    assert other.champion(PROJECT)["version"] == "arch-v2"
    assert other.checkpoint_path(PROJECT, "arch-v3").read_bytes() == b"arch-v3"
    assert str(tmp_path / "other-cache") in str(other.checkpoint_path(PROJECT, "arch-v3"))


def test_pruning_keeps_the_champion_and_the_records(tmp_path: Path) -> None:
    registry = Registry(LocalStore(tmp_path / "store"), tmp_path / "cache")
    first = add(registry, tmp_path, 0.9, promote=True, keep=2)
    for _ in range(3):
        add(registry, tmp_path, 0.1, promote=False, keep=2)
    versions = registry.versions(PROJECT)
    assert len(versions) == 4
    kept = [v["version"] for v in versions if v["checkpoint"]]
    assert kept == [first, "arch-v3", "arch-v4"]
    assert not (tmp_path / "store" / str(PROJECT) / "arch-v2.pt").exists()
    with pytest.raises(RegistryError, match="pruned"):
        registry.checkpoint_path(PROJECT, "arch-v2")


class FailingUpload(LocalStore):
    def upload(self, name: str, path: Path) -> None:
        (self.root / f"{name}.partial").write_bytes(b"half")
        raise OSError("disk full")


def test_interrupted_save_leaves_the_registry_consistent(tmp_path: Path) -> None:
    registry = Registry(LocalStore(tmp_path / "store"), tmp_path / "cache")
    champion = add(registry, tmp_path, 0.6, promote=True)
    before = (tmp_path / "store" / str(PROJECT) / "registry.json").read_text()
    broken = Registry(FailingUpload(tmp_path / "store"), tmp_path / "cache")
    version = broken.reserve_version(PROJECT, "arch")
    with pytest.raises(OSError):
        broken.add(PROJECT, {"version": version, "metrics": {"ap50": 0.9}},
                   fake_checkpoint(tmp_path, "x.bin", b"x"), promote=True, keep=10)
    state = json.loads((tmp_path / "store" / str(PROJECT) / "registry.json").read_text())
    assert state["champion"] == champion
    assert [v["version"] for v in state["versions"]] == [champion]
    assert state["next"] == json.loads(before)["next"] + 1  # the number is not reused
    for entry in state["versions"]:
        assert (tmp_path / "store" / entry["checkpoint"]).exists()


def test_promotion_needs_the_champion_it_was_measured_against(tmp_path: Path) -> None:
    registry = Registry(LocalStore(tmp_path / "store"), tmp_path / "cache")
    v1 = add(registry, tmp_path, 0.5, promote=True)
    v2 = add(registry, tmp_path, 0.6, promote=True)
    registry.rollback(PROJECT)  # an operator rolls back to v1 while v3 trains against v2
    v3 = registry.reserve_version(PROJECT, "arch")
    entry = registry.add(PROJECT, {"version": v3, "metrics": {"ap50": 0.9}},
                         fake_checkpoint(tmp_path, "v3.bin", b"v3"), promote=True, keep=10,
                         expected_champion=v2)
    assert entry["status"] == "rejected" and "champion changed to arch-v1" in entry["reason"]
    assert registry.champion(PROJECT)["version"] == v1


def test_azure_refuses_to_overwrite_a_version(tmp_path: Path, azurite: Azurite) -> None:
    store = AzureBlobStore(azurite.connection_string, "registry-overwrite")
    store.upload("1/arch-v1.pt", fake_checkpoint(tmp_path, "a.bin", b"first"))
    with pytest.raises(RegistryError, match="refusing to overwrite"):
        store.upload("1/arch-v1.pt", fake_checkpoint(tmp_path, "b.bin", b"second"))
    assert store.read("1/arch-v1.pt") == b"first"
