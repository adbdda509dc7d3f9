"""Label Studio-format tasks and annotations made from generated scenes."""

from __future__ import annotations

import base64
import io

from backend.boxes import to_region
from backend.scenes import SHAPES, Scene, make_scene

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="label" toName="image">'
          + "".join(f'<Label value="{shape}"/>' for shape in SHAPES)
          + "</RectangleLabels></View>")


def regions_of(scene: Scene) -> list[dict]:
    """The scene's ground truth as a Label Studio annotation result."""
    width, height = scene.image.size
    regions = []
    for box, label in zip(scene.boxes, scene.labels, strict=True):
        region = to_region(box, score=1.0, label=label, width=width, height=height,
                           from_name="label", to_name="image")
        if region is not None:
            region.pop("score")
            regions.append(region)
    return regions


def data_uri(scene: Scene) -> str:
    buffer = io.BytesIO()
    scene.image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def exported_tasks(seeds: range, width: int = 320, height: int = 240) -> list[dict]:
    """Tasks as Label Studio's JSON export gives them: data + one annotation each."""
    tasks = []
    for seed in seeds:
        scene = make_scene(seed, width, height)
        tasks.append({"id": seed, "data": {"image": data_uri(scene)}, "annotations": [{
            "id": seed, "result": regions_of(scene), "was_cancelled": False,
            "ground_truth": False, "updated_at": "2026-11-26T00:00:00Z"}]})
    return tasks


class FakeLabelStudio:
    """Our LabelStudioAPI adapter, answering from memory (no server needed)."""

    def __init__(self, tasks: list[dict], config: str = CONFIG) -> None:
        self.tasks = tasks
        self.config = config

    def project(self, project: int) -> dict:
        return {"id": project, "label_config": self.config}

    def labeled_tasks(self, project: int) -> list[dict]:
        return [task for task in self.tasks if task.get("annotations")]
