"""End to end against a real Label Studio 1.23.2: a project with smart tools, the backend
connected as interactive, and Label Studio's own interactive-annotating API (what its editor
calls when a smart region is finished) passing our box back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from label_studio_sdk import LabelStudio
from PIL import Image

from tests import media
from tests.httpserver import LoopbackServer
from tests.labelstudio import ADMIN_TOKEN, LabelStudioServer
from tests.services import Backend, untrained_checkpoint
from tests.test_interactive import keypoint, rectangle, scene

pytestmark = pytest.mark.e2e

# The config README.md documents: both tags smart, the keypoints only as a smart tool.
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="label" toName="image" smart="true">'
          '<Label value="person"/><Label value="car"/></RectangleLabels>'
          '<KeyPointLabels name="kp" toName="image" smart="true" smartOnly="true">'
          '<Label value="person"/><Label value="car"/></KeyPointLabels></View>')


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory,
            label_studio: LabelStudioServer) -> Iterator[tuple[Backend, LoopbackServer]]:
    """The backend, and the loopback server its task images come from."""
    tmp = tmp_path_factory.mktemp("interactive")
    with LoopbackServer() as images:
        server = Backend({
            "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN,
            "MODEL_WEIGHTS": str(untrained_checkpoint(tmp / "model.pt", ["person", "car"])),
            "ALLOWED_IMAGE_HOSTS": f"127.0.0.1:{images.port}",
            # Random weights box nothing reliably: no model box may answer, so GrabCut does
            # and the box is known (the model path is tested through create_app).
            "INTERACTIVE_MIN_SCORE": "1",
        }, tmp / "backend.log").wait()
        yield server, images
        server.stop()


def interactive(label_studio: LabelStudioServer, ml: int, task: int, regions: list) -> dict:
    response = requests.post(f"{label_studio.url}/api/ml/{ml}/interactive-annotating",
                             headers={"Authorization": f"Token {ADMIN_TOKEN}"},
                             json={"task": task, "context": {"result": regions}}, timeout=30)
    response.raise_for_status()
    answer: dict = response.json()
    return answer


def pixels(region: dict) -> tuple[float, ...]:
    value = region["value"]
    w, h = region["original_width"] / 100, region["original_height"] / 100
    return (value["x"] * w, value["y"] * h, (value["x"] + value["width"]) * w,
            (value["y"] + value["height"]) * h)


def test_smart_tools_through_label_studio(
        label_studio: LabelStudioServer, backend: tuple[Backend, LoopbackServer],
        client: LabelStudio) -> None:
    server, images = backend
    project = client.projects.create(title="smart tools", label_config=CONFIG).id
    url = images.add("/scene.png", media.encode(Image.fromarray(scene())))
    client.projects.import_tasks(project, request=[{"image": url}])
    (task,) = list(client.tasks.list(project=project))
    server.wait_model()
    ml = client.ml.create(project=project, url=server.url, title="MLAssist",
                          is_interactive=True)
    assert client.ml.get(id=ml.id).state == "CO"

    # A click on the green disc (radius 40 at 480, 240 of 640x480), label "car".
    answer = interactive(label_studio, ml.id, task.id, [keypoint(75.0, 50.0, "car")])
    assert "errors" not in answer, answer
    data = answer["data"]
    assert data["source"] == "grabcut"
    (region,) = data["result"]
    assert (region["from_name"], region["to_name"], region["type"]) == \
        ("label", "image", "rectanglelabels")
    assert region["value"]["rectanglelabels"] == ["car"]
    assert pixels(region) == pytest.approx((440, 200, 521, 281), abs=4)

    # A rough box around the red block at 200..360 x 150..300.
    rough = rectangle(100 * 170 / 640, 25, 100 * 210 / 640, 100 * 210 / 480, "person")
    (region,) = interactive(label_studio, ml.id, task.id, [rough])["data"]["result"]
    assert region["value"]["rectanglelabels"] == ["person"]
    assert pixels(region) == pytest.approx((200, 150, 360, 300), abs=4)
    assert len(images.seen["/scene.png"]) == 1, "the image was fetched once for both hints"


def test_a_backend_not_marked_interactive_is_not_asked(
        label_studio: LabelStudioServer, backend: tuple[Backend, LoopbackServer],
        client: LabelStudio) -> None:
    project = client.projects.create(title="not interactive", label_config=CONFIG).id
    client.projects.import_tasks(project, request=[{"image": "http://127.0.0.1:1/x.png"}])
    (task,) = list(client.tasks.list(project=project))
    ml = client.ml.create(project=project, url=backend[0].url, title="MLAssist",
                          is_interactive=False)
    answer = interactive(label_studio, ml.id, task.id, [keypoint(50, 50)])
    assert answer == {"errors": ["Model is not set to be used for interactive preannotations"]}
