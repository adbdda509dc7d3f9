"""End to end against a real Label Studio 1.23.2: connect the backend to a project with Basic
auth, run Label Studio's own "Retrieve predictions" action, and check what Label Studio stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from backend.core.errors import ImageError
from backend.demo.localstack import upload_images
from backend.labelstudio.client import LabelStudioAuth
from backend.media.images import ImageFetcher
from tests import media
from tests.httpserver import LoopbackServer
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer
from tests.services import Backend, untrained_checkpoint

pytestmark = pytest.mark.e2e

AUTH = ("mlassist", "e2e-basic-pass")
LABELS = ["person", "car", "widget"]
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="label" toName="image" model_score_threshold="0.05">'
          + "".join(f'<Label value="{label}"/>' for label in LABELS)
          + "</RectangleLabels></View>")
IMAGE_SIZES = [(320, 240), (640, 480), (200, 300), (500, 500)]


@pytest.fixture(scope="module")
def images() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, label_studio: LabelStudioServer,
            images: LoopbackServer) -> Iterator[Backend]:
    tmp = tmp_path_factory.mktemp("backend")
    # Random weights over two of the project's labels: boxes of every kind, no training.
    checkpoint = untrained_checkpoint(tmp / "model.pt", ["person", "car"])
    server = Backend({
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
        "MODEL_WEIGHTS": str(checkpoint),
        "ALLOWED_IMAGE_HOSTS": f"127.0.0.1:{images.port}",
        "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
    }, tmp / "backend.log").wait()
    yield server
    server.stop()


def upload_image(label_studio: LabelStudioServer, project: int, data: bytes) -> None:
    response = requests.post(f"{label_studio.url}/api/projects/{project}/import",
                             headers={"Authorization": f"Token {ADMIN_TOKEN}"},
                             files={"file": ("uploaded.png", data, "image/png")}, timeout=60)
    response.raise_for_status()


def stored_predictions(client: LabelStudio, project: int) -> dict[int, list]:
    found: dict[int, list] = {}
    for prediction in client.predictions.list(project=project):
        found.setdefault(prediction.task, []).append(prediction)
    return found


def test_retrieve_predictions_through_label_studio(
        label_studio: LabelStudioServer, backend: Backend, images: LoopbackServer,
        client: LabelStudio) -> None:
    project = client.projects.create(title="mlassist e2e", label_config=CONFIG).id
    urls = [images.add(f"/scene{i}.png", media.png(w, h, i))
            for i, (w, h) in enumerate(IMAGE_SIZES)]
    broken = images.add("/broken.jpg", b"", headers={"Content-Type": "image/jpeg"})
    client.projects.import_tasks(project, request=[{"image": url} for url in [*urls, broken]])
    upload_image(label_studio, project, media.png(256, 128, 9))
    tasks = {task.id: task for task in client.tasks.list(project=project)}
    assert len(tasks) == len(urls) + 2
    uploaded = [t for t in tasks.values() if t.data["image"].startswith("/data/upload/")]
    assert len(uploaded) == 1, "Label Studio serves uploads under /data/upload/"

    backend.wait_model()
    setup = requests.post(f"{backend.url}/setup", auth=AUTH, timeout=3,
                          json={"project": f"{project}.1", "schema": CONFIG}).json()
    version = setup["model_version"]
    assert setup["labels_covered"] == ["car", "person"]
    assert setup["labels_uncovered"] == ["widget"]

    ml = client.ml.create(project=project, url=backend.url, title="MLAssist",
                          auth_method="BASIC_AUTH", basic_auth_user=AUTH[0],
                          basic_auth_pass=AUTH[1], is_interactive=False)
    assert client.ml.get(id=ml.id).state == "CO", "Label Studio reports the backend connected"

    client.actions.create(id="retrieve_tasks_predictions", project=project,
                          selected_items={"all": True, "excluded": []})
    stored = stored_predictions(client, project)
    broken_task = next(t.id for t in tasks.values() if t.data["image"] == broken)
    assert broken_task not in stored, "a failed image stores nothing, so LS asks again later"
    assert set(stored) == set(tasks) - {broken_task}
    sizes = dict(zip(urls, IMAGE_SIZES, strict=True))
    sizes[uploaded[0].data["image"]] = (256, 128)
    for task_id, predictions in stored.items():
        assert len(predictions) == 1
        prediction = predictions[0]
        assert prediction.model_version == version
        assert prediction.result, f"task {task_id} got boxes"
        for region in prediction.result:
            value = region["value"]
            assert region["from_name"] == "label" and region["to_name"] == "image"
            assert value["rectanglelabels"][0] in LABELS
            assert value["x"] >= 0 and value["x"] + value["width"] <= 100 + 1e-6
            assert value["y"] >= 0 and value["y"] + value["height"] <= 100 + 1e-6
            assert (region["original_width"], region["original_height"]) == \
                sizes[tasks[task_id].data["image"]]

    # A second run asks only for what is missing: no duplicates.
    client.actions.create(id="retrieve_tasks_predictions", project=project,
                          selected_items={"all": True, "excluded": []})
    again = stored_predictions(client, project)
    assert {t: len(p) for t, p in again.items()} == {t: 1 for t in stored}

    log = Path(backend.log).read_text()
    assert ADMIN_TOKEN not in log and AUTH[1] not in log


def test_label_studio_refuses_a_project_without_boxes(
        backend: Backend, client: LabelStudio) -> None:
    config = ('<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
              '<Choice value="cat"/></Choices></View>')
    project = client.projects.create(title="no boxes", label_config=config).id
    with pytest.raises(ApiError) as info:
        client.ml.create(project=project, url=backend.url, title="MLAssist",
                         auth_method="BASIC_AUTH", basic_auth_user=AUTH[0],
                         basic_auth_pass=AUTH[1])
    assert info.value.status_code == 400
    assert "422 Client Error" in str(info.value.body)
    # Label Studio says "check the ML backend server console logs": the reason is there.
    assert "label config has no <RectangleLabels> tag" in Path(backend.log).read_text()


def test_wrong_basic_auth_is_not_connected(backend: Backend, client: LabelStudio) -> None:
    project = client.projects.create(title="bad auth", label_config=CONFIG).id
    with pytest.raises(ApiError) as info:
        client.ml.create(project=project, url=backend.url, title="MLAssist",
                         auth_method="BASIC_AUTH", basic_auth_user=AUTH[0],
                         basic_auth_pass="not-the-password")
    assert info.value.status_code == 400
    assert "401 Client Error" in str(info.value.body)
    assert "not-the-password" not in Path(backend.log).read_text()


def test_personal_access_token_fetches_uploaded_images(
        label_studio: LabelStudioServer, client: LabelStudio) -> None:
    response = requests.post(f"{label_studio.url}/api/token/", timeout=30,
                             headers={"Authorization": f"Token {ADMIN_TOKEN}"})
    assert response.status_code in (200, 201), response.text[:300]
    pat = response.json()["token"]
    project = client.projects.create(title="pat", label_config=CONFIG).id
    upload_image(label_studio, project, media.png(64, 32, 5))
    [task] = list(client.tasks.list(project=project))
    auth = LabelStudioAuth(label_studio.url, pat)
    assert auth.is_personal_access_token
    fetcher = ImageFetcher(auth, (), max_bytes=10**7, max_pixels=10**8, timeout=10)
    loaded = fetcher.load(task.data["image"], task.id)
    assert (loaded.width, loaded.height) == (64, 32)
    assert auth.headers()["Authorization"].startswith("Bearer ")
    # A wrong key is refused with a message that does not echo it.
    bad = ImageFetcher(LabelStudioAuth(label_studio.url, pat[:-4] + "abcd"), (),
                       max_bytes=10**7, max_pixels=10**8, timeout=10)
    with pytest.raises(ImageError) as info:
        bad.load(task.data["image"], task.id)
    assert info.value.reason == "label_studio_auth"
    assert "refused the personal access token" in str(info.value)
    assert pat[:-4] not in str(info.value)


def test_upload_images_makes_one_task_per_file(label_studio: LabelStudioServer,
                                               client: LabelStudio) -> None:
    project = client.projects.create(title="uploads", label_config=CONFIG).id
    files = [(f"u{i}.png", media.png(20, 20, i), "image/png") for i in range(5)]
    upload_images(label_studio.url, {"Authorization": f"Token {ADMIN_TOKEN}"}, project, files,
                  per_request=2)
    tasks = list(client.tasks.list(project=project))
    assert len(tasks) == 5
    assert all(task.data["image"].startswith("/data/upload/") for task in tasks)
