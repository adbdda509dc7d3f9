"""`/dashboard` in headless Chromium against a real Label Studio: the numbers the page shows
match what was done to the project and what `/status` says; a screenshot is kept in
test-artifacts/dashboard.png."""

from __future__ import annotations

import copy
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio

from backend.demo.localstack import free_port, upload_images
from backend.demo.scenes import make_scene
from backend.model.registry import LocalStore, Registry
from backend.tools.dashboard import task_outcome
from tests.conftest import require
from tests.labels import CONFIG, regions_of
from tests.labelstudio import ADMIN_EMAIL, ADMIN_TOKEN, LabelStudioServer
from tests.redis_server import RedisServer
from tests.services import Backend, mlassist_bin, untrained_checkpoint

REPO = Path(__file__).resolve().parents[1]
AUTH = ("mlassist", "dash-pass")
VERSION = "ssdlite320_mobilenet_v3_large-v2"


def test_outcome_counts_accepted_edited_rejected_and_drawn() -> None:
    shown = {"id": 7, "created_at": "2026-01-01T00:00:00", "model_version": VERSION,
             "result": [{"id": f"p{i}", "type": "rectanglelabels",
                         "value": {"x": 10 * i, "y": 5, "width": 5, "height": 5,
                                   "rectanglelabels": ["circle"]}} for i in range(4)]}
    kept, moved = copy.deepcopy(shown["result"][0]), copy.deepcopy(shown["result"][1])
    moved["value"]["x"] += 3
    drawn = {"id": "h1", "type": "rectanglelabels",
             "value": {"x": 70, "y": 70, "width": 9, "height": 9, "rectanglelabels": ["square"]}}
    annotation = {"created_at": "2026-01-02T00:00:00", "result": [kept, moved, drawn]}
    assert task_outcome(annotation, [shown]) == {"accepted": 1, "edited": 1, "drawn": 1,
                                                 "rejected": 2}
    # As Label Studio's editor sends it: every region says its origin.
    edited_in_editor = {**annotation, "result": [{**kept, "origin": "prediction"},
                                                 {**moved, "origin": "prediction-changed"},
                                                 {**drawn, "origin": "manual"}]}
    assert task_outcome(edited_in_editor, [shown]) == {"accepted": 1, "edited": 1, "drawn": 1,
                                                       "rejected": 2}
    later = {**shown, "created_at": "2026-01-03T00:00:00"}
    assert task_outcome(annotation, [later]) == {"drawn": 3}, \
        "a prediction made after the annotation was not shown to the labeler"


def chromium() -> str:
    return require(shutil.which("chromium") or shutil.which("chromium-browser")
                   or shutil.which("google-chrome"), "Chromium")


def browse(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic", f"--user-data-dir={tmp_path / 'chromium'}", *extra, url],
        capture_output=True, text=True, timeout=120)


def stat(dom: str, name: str) -> str:
    found = re.search(rf'data-stat="{re.escape(name)}"[^>]*>([^<]*)<', dom)
    assert found, f"no {name} on the page"
    return found.group(1).strip()


@pytest.mark.e2e
def test_dashboard_in_chromium_shows_what_happened(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio,
        redis_server: RedisServer) -> None:
    chromium()
    project = client.projects.create(title="dashboard", label_config=CONFIG).id
    files = []
    for seed in range(300, 310):
        buffer = io.BytesIO()
        make_scene(seed).image.save(buffer, format="PNG")
        files.append((f"scene-{seed:05d}.png", buffer.getvalue(), "image/png"))
    upload_images(label_studio.url, {"Authorization": f"Token {ADMIN_TOKEN}"}, project, files)
    tasks = sorted(client.tasks.list(project=project), key=lambda t: t.id)
    truth = {t.id: regions_of(make_scene(300 + i)) for i, t in enumerate(tasks)}
    predicted = {t.id: [{**r, "id": f"p{t.id}-{j}"} for j, r in enumerate(truth[t.id])]
                 for t in tasks[:6]}
    requests.post(f"{label_studio.url}/api/projects/{project}/import/predictions", timeout=60,
                  headers={"Authorization": f"Token {ADMIN_TOKEN}"},
                  json=[{"task": tid, "result": r, "score": 0.9, "model_version": VERSION}
                        for tid, r in predicted.items()]).raise_for_status()
    a, b, c, d = (t.id for t in tasks[:4])
    expected = {"accepted": 0, "edited": 0, "rejected": 0, "drawn": 0}
    client.annotations.create(id=a, result=copy.deepcopy(predicted[a]))   # all accepted
    expected["accepted"] += len(predicted[a])
    edited = copy.deepcopy(predicted[b])
    edited[0]["value"]["y"] += 3.0
    client.annotations.create(id=b, result=edited)                         # one moved
    expected["edited"] += 1
    expected["accepted"] += len(edited) - 1
    client.annotations.create(id=c, result=copy.deepcopy(predicted[c][1:]))  # one removed
    expected["rejected"] += 1
    expected["accepted"] += len(predicted[c]) - 1
    hand = [{**r, "id": f"hand-{j}"} for j, r in enumerate(truth[tasks[7].id])]
    for region in hand:
        region["value"]["height"] -= 0.5
    client.annotations.create(id=tasks[7].id, result=hand)                 # no pre-label
    expected["drawn"] += len(hand)
    client.annotations.create(id=d, result=[])                             # all rejected
    expected["rejected"] += len(predicted[d])

    models = tmp_path / "models"
    registry = Registry(LocalStore(models / "registry"), tmp_path / "cache")
    checkpoint = untrained_checkpoint(tmp_path / "c.pt", ["circle", "square", "triangle"])
    for n, (labels, ap50) in enumerate([(30, 0.62), (45, 0.81)], 1):
        registry.add(project, {"version": f"ssdlite320_mobilenet_v3_large-v{n}",
                               "metrics": {"ap50": ap50, "ap": ap50 / 2},
                               "train_labels": labels, "reason": "test"}, checkpoint,
                     promote=True, keep=10)
    port = free_port()
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
           "REDIS_URL": redis_server.url, "MODEL_DIR": str(models), "PORT": str(port),
           "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1], "MODEL_WEIGHTS": "none"}
    backend = Backend(env, tmp_path / "backend.log").wait()
    try:
        subprocess.run([mlassist_bin(), "assign", "--project", str(project), "--labelers",
                        ADMIN_EMAIL, "--batch", "3"], env={**os.environ, **env}, check=True,
                       capture_output=True, timeout=120)
        assert requests.get(f"{backend.url}/dashboard", timeout=30).status_code == 401
        url = f"http://{AUTH[0]}:{AUTH[1]}@127.0.0.1:{port}/dashboard?project={project}"
        done = browse(url, tmp_path, "--dump-dom")
        dom = done.stdout
        assert "data-stat" in dom, done.stderr[-2000:]
        status = requests.get(f"{backend.url}/status", params={"project": project},
                              auth=AUTH, timeout=30).json()
        assert int(stat(dom, "tasks")) == status["tasks"] == 10
        assert int(stat(dom, "labeled")) == status["labeled"] == 5
        assert stat(dom, "champion") == status["champion"]["version"] == \
            "ssdlite320_mobilenet_v3_large-v2"
        for name, count in expected.items():
            assert int(stat(dom, name)) == count, name
        assert int(stat(dom, "labeled_from_prelabel")) == 4
        assert int(stat(dom, "labeled_from_scratch")) == 1
        assert int(stat(dom, "unlabeled_prelabeled")) == 2
        assert int(stat(dom, "unlabeled_bare")) == 3
        judged = expected["accepted"] + expected["edited"] + expected["rejected"]
        assert stat(dom, "acceptance") == f"{100 * expected['accepted'] / judged:.0f}%"
        assert int(stat(dom, f"open-{ADMIN_EMAIL}")) == 3, "the admin's open batch"
        assert dom.count("<circle") == 2, "two versions on the learning curve"

        artifacts = REPO / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        shot = artifacts / "dashboard.png"
        shot.unlink(missing_ok=True)
        browse(url, tmp_path, f"--screenshot={shot}", "--window-size=1280,1500")
        assert shot.exists() and shot.stat().st_size > 10_000, "the screenshot was saved"
        index = browse(f"http://{AUTH[0]}:{AUTH[1]}@127.0.0.1:{port}/dashboard", tmp_path,
                       "--dump-dom").stdout
        assert f"?project={project}" in index
    finally:
        backend.stop()
