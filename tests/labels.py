"""Label Studio-format tasks and annotations made from generated scenes."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

from backend.demo.scenes import LABEL_CONFIG, Scene, make_scene, scene_regions

CONFIG = LABEL_CONFIG
regions_of = scene_regions


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


def unlabeled_tasks(seeds: range, width: int = 320, height: int = 240) -> list[dict]:
    """Tasks without annotations, as Label Studio lists them."""
    return [{"id": seed, "data": {"image": data_uri(make_scene(seed, width, height))},
             "annotations": [], "predictions": [], "total_annotations": 0}
            for seed in seeds]


class FakeLabelStudio:
    """Our LabelStudioAPI adapter, answering from memory (no server needed)."""

    def __init__(self, tasks: list[dict], config: str = CONFIG) -> None:
        self.tasks = tasks
        self.config = config
        self.model_version = ""
        self.imports: list[list[dict]] = []
        self.project_calls = 0

    def project(self, project: int) -> dict:
        self.project_calls += 1
        labeled = sum(1 for task in self.tasks if task.get("annotations"))
        return {"id": project, "label_config": self.config, "task_number": len(self.tasks),
                "num_tasks_with_annotations": labeled, "model_version": self.model_version}

    def labeled_tasks(self, project: int) -> list[dict]:
        return [task for task in self.tasks if task.get("annotations")]

    def tasks_after(self, project: int, after_id: int, limit: int,
                    lacking: str | None = None) -> list[dict]:
        found = sorted((t for t in self.tasks if not t.get("annotations") and t["id"] > after_id
                        and not (lacking and any(lacking in str(p.get("model_version"))
                                                 for p in t.get("predictions") or []))),
                       key=lambda t: t["id"])
        if lacking:  # as Label Studio answers it: the default fields, no predictions
            return [{k: v for k, v in t.items() if k != "predictions"} for t in found[:limit]]
        return [dict(t) for t in found[:limit]]

    def model_versions(self, project: int) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self.tasks:
            for prediction in task.get("predictions") or []:
                name = str(prediction.get("model_version"))
                counts[name] = counts.get(name, 0) + 1
        return counts

    def task_pages_by_id(self, project: int, task_ids: list[int]) -> Iterator[list[dict]]:
        if found := [dict(t) for t in self.tasks if t["id"] in task_ids]:
            yield found

    def import_predictions(self, project: int, predictions: list[dict]) -> None:
        self.imports.append(predictions)
        by_id = {task["id"]: task for task in self.tasks}
        for prediction in predictions:
            by_id[prediction["task"]].setdefault("predictions", []).append(prediction)

    def update_project(self, project: int, **fields: object) -> dict:
        if "model_version" in fields:
            self.model_version = str(fields["model_version"])
        return {}

    def count_tasks_with_prediction(self, project: int, version: str) -> int:
        return sum(1 for t in self.tasks
                   if any(p.get("model_version") == version for p in t.get("predictions", [])))
