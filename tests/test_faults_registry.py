"""Writers of the model registry SIGKILLed inside every write window (and at random moments),
including a real training parked inside its commit (issue 9): the registry only ever lists
complete versions, and a later training succeeds."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from label_studio_sdk import LabelStudio

from backend.demo.localstack import Process
from backend.model.checkpoint import load_checkpoint
from backend.model.registry import LocalStore, Registry
from tests import reliability
from tests.faults import (
    ARCH,
    CLASS_NAMES,
    base_env,
    ls_api,
    new_project,
    sigkill_tree,
    wait_for,
)
from tests.labelstudio import LabelStudioServer
from tests.services import REPO, mlassist_bin, untrained_checkpoint

pytestmark = pytest.mark.e2e


# A registry writer (what a training's commit does, in a loop) that parks itself just before
# its Nth rename or delete: the file is written and fsynced, not yet in place (or the old
# checkpoint is no longer named, not yet deleted). N = 0: never park (killed at random).
REGISTRY_WRITER = r"""
import os, sys, time
from pathlib import Path

from backend.model.registry import LocalStore, Registry

root, checkpoint, project, park_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4])
names = ["__background__", "circle", "square", "triangle"]
events = 0


def parking(real):
    def call(*args, **kwargs):
        global events
        events += 1
        if events == park_at:
            (root / "parked").write_text(f"{real.__name__} {os.path.basename(args[-1])}")
            time.sleep(3600)
        return real(*args, **kwargs)
    return call


os.replace, os.unlink = parking(os.replace), parking(os.unlink)
registry = Registry(LocalStore(root / "registry"), root / "cache")
print("ready", flush=True)
while True:
    version = registry.reserve_version(project, "ssdlite320_mobilenet_v3_large")
    registry.add(project, {"version": version, "arch": "ssdlite320_mobilenet_v3_large",
                           "class_names": names, "metrics": {"ap50": 0.5}},
                 checkpoint, promote=True, keep=2)
    print("added", version, flush=True)
"""

# `mlassist train`, parked just before the registry.json write that records its new version
# (the second: reserve_version writes the first); its checkpoint is already in the registry.
TRAIN_PARKED_IN_COMMIT = r"""
import os, sys, time
from pathlib import Path

marker, registry_json = Path(sys.argv[1]), sys.argv[2]
real_replace = os.replace
writes = 0


def replace(src, dst, *args, **kwargs):
    global writes
    if os.fspath(dst) == registry_json:
        writes += 1
        if writes == 2:
            marker.write_text(os.fspath(src))
            time.sleep(3600)
    return real_replace(src, dst, *args, **kwargs)


os.replace = replace
from backend.cli import main

sys.exit(main(sys.argv[3:]))
"""


class RegistryChecker:
    """Checks that a registry lists only complete versions (each checkpoint loads)."""

    def __init__(self, root: Path, project: int) -> None:
        self.root, self.project = root, project
        self.registry = Registry(LocalStore(root), root.parent / "check-cache")
        self._loaded: dict[str, tuple[int, int, float]] = {}

    def _loads(self, path: Path) -> None:
        stat = path.stat()  # a missing file fails here
        key = (stat.st_ino, stat.st_size, stat.st_mtime)
        if self._loaded.get(str(path)) != key:
            checkpoint = load_checkpoint(path)
            assert checkpoint["arch"] == ARCH and checkpoint["class_names"] == CLASS_NAMES
            self._loaded[str(path)] = key

    def problems(self) -> list[str]:
        raw = (self.root / str(self.project) / "registry.json")
        if not raw.exists():
            return []
        state = json.loads(raw.read_text())  # a half-written file fails here
        found = []
        listed = {entry["version"]: entry for entry in state["versions"]}
        for version, entry in listed.items():
            if not entry.get("checkpoint"):
                continue  # pruned on purpose (KEEP_VERSIONS), the record stays
            try:
                self._loads(self.registry.checkpoint_path(self.project, version))
            except Exception as exc:  # noqa: BLE001 - collected
                found.append(f"{version}: {exc}")
        champion = state["champion"]
        if champion is not None and not (listed.get(champion) or {}).get("checkpoint"):
            found.append(f"the champion {champion} is not a kept version")
        return found


def _run_parked(argv: list[str], marker: Path, log: Path, timeout: float) -> str:
    """Start `argv`, wait until it parks (writes `marker`), SIGKILL it; what it parked at."""
    marker.unlink(missing_ok=True)
    process = Process(argv, {**os.environ}, log, cwd=REPO)
    try:
        wait_for("the writer parked", lambda: marker.exists() or not process.running(),
                  timeout, log, every=0.02)
        assert marker.exists(), log.read_text()[-3000:]
        parked = marker.read_text()
    finally:
        sigkill_tree(process)
    return parked


@pytest.mark.timeout(240)
def test_registry_writers_killed_leave_only_complete_versions(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio) -> None:
    api = ls_api(label_studio)
    tasks = new_project(client, api, "killed registry writes", range(700, 712), labeled=12)
    project = tasks[0]["project"]
    models = tmp_path / "models"
    root = models / "registry"
    checker = RegistryChecker(root, project)
    template = untrained_checkpoint(tmp_path / "template.pt", CLASS_NAMES[1:])
    writer = tmp_path / "writer.py"
    writer.write_text(REGISTRY_WRITER)

    # Parked at each rename/delete of the first versions' writes: a reserve, a checkpoint,
    # its record, and (from the third version on, KEEP 2) a pruned checkpoint's deletion.
    # Each run starts on what the previous one left behind, like a crash-looping worker.
    parked_at = []
    for park_at in range(1, 11):
        parked_at.append(_run_parked(
            [sys.executable, str(writer), str(models), str(template), str(project),
             str(park_at)], models / "parked", tmp_path / f"writer-{park_at}.log", 60))
        assert checker.problems() == [], f"after a kill at {parked_at[-1]}"
    assert any(p.startswith("replace") and p.endswith(".pt") for p in parked_at)
    assert any(p.startswith("replace") and p.endswith("registry.json") for p in parked_at)
    assert any(p.startswith("unlink") for p in parked_at), parked_at

    # And at moments nobody chose: in the middle of a checkpoint's bytes, a rename, a read.
    rng = random.Random(9)
    for run in range(6):
        log = tmp_path / f"writer-random-{run}.log"
        process = Process([sys.executable, str(writer), str(models), str(template),
                           str(project), "0"], {**os.environ}, log, cwd=REPO)
        try:
            wait_for("the writer started", lambda log=log: "ready" in log.read_text(), 30,
                      log, every=0.01)
            time.sleep(rng.uniform(0.0, 0.6))  # the fault's moment, not a wait for a result
        finally:
            sigkill_tree(process)
        assert checker.problems() == [], f"after random kill {run}"

    registry = Registry(LocalStore(root), tmp_path / "cache")
    champion = registry.champion(project)
    assert champion is not None and champion.get("checkpoint"), "no complete version at all"
    complete = [v["version"] for v in registry.versions(project)]
    reserved = json.loads((root / str(project) / "registry.json").read_text())["next"] - 1
    orphans = sorted(p.name for p in (root / str(project)).glob(".*"))

    # A real training, SIGKILLed inside its commit: its checkpoint is in the registry, the
    # record naming it is not.
    env = {**os.environ, **base_env(tmp_path, label_studio, "redis://127.0.0.1:1/0"),
           "TRAIN_STEPS": "2"}  # a training needs no Redis
    trainer = tmp_path / "trainer.py"
    trainer.write_text(TRAIN_PARKED_IN_COMMIT)
    marker = tmp_path / "train-parked"
    process = Process([sys.executable, str(trainer), str(marker),
                       str(root / str(project) / "registry.json"), "train", "--project",
                       str(project)], env, tmp_path / "train-killed.log", cwd=REPO)
    try:
        wait_for("the training reached its commit",
                  lambda: marker.exists() or not process.running(), 150,
                  tmp_path / "train-killed.log", every=0.1)
        assert marker.exists(), (tmp_path / "train-killed.log").read_text()[-3000:]
    finally:
        sigkill_tree(process)
    killed = f"{ARCH}-v{reserved + 1}"
    assert (root / str(project) / f"{killed}.pt").exists(), "parked after the upload"
    assert killed not in [v["version"] for v in registry.versions(project)]
    assert registry.champion(project) == champion
    assert checker.problems() == []

    # A later training succeeds: it starts from the champion's checkpoint, records a new
    # complete version under a new name, and leaves nothing half-written behind.
    done = subprocess.run([mlassist_bin(), "train", "--project", str(project)], env=env,
                          capture_output=True, text=True, timeout=150, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    after = registry.versions(project)
    assert [v["version"] for v in after][:-1] == complete
    latest = after[-1]
    assert latest["version"] == f"{ARCH}-v{reserved + 2}", latest["version"]
    assert latest["started_from"] == f"champion {champion['version']}"
    assert latest["labeled_tasks"] == 12 and latest["train_labels"] + latest["val_images"] == 12
    assert checker.problems() == []
    load_checkpoint(registry.checkpoint_path(project, latest["version"]))
    print(f"registry: {len(parked_at) + 6 + 1} writers killed ({parked_at}); "
          f"{len(complete)} of {reserved} reserved versions complete, the rest never listed; "
          f"leftover temp files: {len(orphans)}; then {latest['version']} trained, "
          f"{latest['status']}")
    reliability.fault_survived("registry writers SIGKILLed in every write window and a "
                               "training SIGKILLed inside its commit")
