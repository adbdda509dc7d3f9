"""COCO export and import against a real Label Studio: provenance of every box (drawn,
pre-label accepted, pre-label edited), pycocotools loads the file, images download, and an
import of the export into a new project reproduces the boxes, once."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from label_studio_sdk import LabelStudio

from backend.demo.localstack import upload_images
from backend.demo.scenes import make_scene
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from backend.tools.coco_export import CocoError
from backend.tools.coco_import import import_coco, read_coco
from backend.tools.provenance import region_provenance
from tests.labels import CONFIG, regions_of
from tests.labelstudio import ADMIN_EMAIL, ADMIN_TOKEN, LabelStudioServer
from tests.services import mlassist_bin

pytestmark = pytest.mark.e2e

SEEDS = list(range(200, 208))
VERSION = "ssdlite320_mobilenet_v3_large-v3"


def run(label_studio: LabelStudioServer, *args: str) -> dict:
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": ADMIN_TOKEN}
    done = subprocess.run([mlassist_bin(), *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def with_ids(regions: list[dict], prefix: str) -> list[dict]:
    return [{**region, "id": f"{prefix}{i}"} for i, region in enumerate(regions)]


@pytest.fixture(scope="module")
def labeled(label_studio: LabelStudioServer
            ) -> tuple[int, dict[int, int], dict[str, int], set[int]]:
    """A project whose tasks were labeled every way there is; returns the project, the seed
    of each task, the provenance counts the export must report, and the tasks whose boxes
    are the scene's ground truth exactly."""
    client = LabelStudio(base_url=label_studio.url, api_key=ADMIN_TOKEN)
    project = client.projects.create(title="coco export", label_config=CONFIG).id
    files = []
    for seed in SEEDS:
        buffer = io.BytesIO()
        make_scene(seed).image.save(buffer, format="PNG")
        files.append((f"scene-{seed:05d}.png", buffer.getvalue(), "image/png"))
    upload_images(label_studio.url, {"Authorization": f"Token {ADMIN_TOKEN}"}, project, files)
    tasks = sorted(client.tasks.list(project=project), key=lambda t: t.id)
    seeds = {t.id: int(Path(t.data["image"]).stem.split("-")[-1]) for t in tasks}
    truth = {t.id: regions_of(make_scene(seeds[t.id])) for t in tasks}
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    predicted = {t.id: with_ids(truth[t.id], f"p{t.id}-") for t in tasks[:4]}
    api.import_predictions(project, [{"task": tid, "result": result, "score": 0.8,
                                      "model_version": VERSION}
                                     for tid, result in predicted.items()])
    expected = {"drawn": 0, "accepted": 0, "edited": 0}
    a, b, c, d, e, f, g, _unlabeled = (t.id for t in tasks)
    # a: every pre-label accepted as it was
    client.annotations.create(id=a, result=copy.deepcopy(predicted[a]))
    expected["accepted"] += len(predicted[a])
    # b: the first pre-label moved, the others kept
    edited = copy.deepcopy(predicted[b])
    edited[0]["value"]["x"] += 2.0
    client.annotations.create(id=b, result=edited)
    expected["edited"] += 1
    expected["accepted"] += len(edited) - 1
    # c: pre-labels ignored, boxes drawn by hand (new ids; a hand never lands exactly on one)
    drawn = with_ids(truth[c], "hand-")
    for region in drawn:
        region["value"]["width"] -= 0.5
    client.annotations.create(id=c, result=drawn)
    expected["drawn"] += len(truth[c])
    # d: what Label Studio's editor sends: each region says its origin
    origins = copy.deepcopy(predicted[d])
    for region, origin in zip(origins, ["prediction", "prediction-changed", "manual"] * 3,
                              strict=False):
        region["origin"] = origin
    client.annotations.create(id=d, result=origins)
    for region in origins:
        key = {"prediction": "accepted", "prediction-changed": "edited", "manual": "drawn"}
        expected[key[region["origin"]]] += 1
    # e: no prediction, drawn; f: a negative image; g: skipped (not exported)
    client.annotations.create(id=e, result=with_ids(truth[e], "hand-"))
    expected["drawn"] += len(truth[e])
    client.annotations.create(id=f, result=[])
    client.annotations.create(id=g, result=with_ids(truth[g], "x-"), was_cancelled=True)
    return project, seeds, {k: v for k, v in expected.items() if v}, {a, d, e}


def test_export_loads_in_pycocotools_with_provenance(
        tmp_path: Path, label_studio: LabelStudioServer,
        labeled: tuple[int, dict[int, int], dict[str, int], set[int]]) -> None:
    from pycocotools.coco import COCO

    project, seeds, expected, exact = labeled
    out = tmp_path / "export.json"
    report = run(label_studio, "export-coco", "--project", str(project), "-o", str(out),
                 "--images-dir", str(tmp_path / "images"))
    assert report["provenance"] == expected
    coco = COCO(str(out))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == \
        ["circle", "square", "triangle"]
    images = coco.loadImgs(coco.getImgIds())
    assert len(images) == 6, "labeled tasks only; the skipped one and the unlabeled one not"
    assert report["images"] == 6 and report["downloaded"] == 6
    for image in images:
        assert (tmp_path / "images" / image["file_name"]).is_file()
        assert (image["width"], image["height"]) == (320, 240)
    boxes = 0
    for task_id, seed in seeds.items():
        image = next((i for i in images if i["mlassist"]["task_id"] == task_id), None)
        if image is None:
            continue
        scene = make_scene(seed)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        boxes += len(anns)
        if task_id in exact:
            got = sorted(tuple(a["bbox"]) for a in anns)
            want = sorted((x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in scene.boxes)
            assert np.allclose(got, want, atol=0.02), (got, want)
        for ann in anns:
            meta = ann["mlassist"]
            assert meta["annotator"] == ADMIN_EMAIL and meta["task_id"] == task_id
            assert (meta["model_version"] == VERSION) == (meta["provenance"] != "drawn")
            assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3], abs=0.05)
    assert boxes == sum(expected.values()) == report["annotations"]


def test_import_of_the_export_reproduces_the_boxes_once(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio,
        labeled: tuple[int, dict[int, int], dict[str, int], set[int]]) -> None:
    project = labeled[0]
    first = tmp_path / "first.json"
    run(label_studio, "export-coco", "--project", str(project), "-o", str(first),
        "--images-dir", str(tmp_path / "images"))
    target = client.projects.create(title="coco import", label_config=CONFIG).id
    report = run(label_studio, "import-coco", str(first), "--images", str(tmp_path / "images"),
                 "--project", str(target), "--as", "annotations")
    source = json.loads(first.read_text())
    assert report["tasks_created"] == 6 and report["boxes"] == len(source["annotations"])
    again = run(label_studio, "import-coco", str(first), "--images", str(tmp_path / "images"),
                "--project", str(target), "--as", "annotations")
    assert again["tasks_created"] == 0 and again["already_there"] == 6
    assert len(list(client.tasks.list(project=target))) == 6

    second = tmp_path / "second.json"
    run(label_studio, "export-coco", "--project", str(target), "-o", str(second))
    copy_of = json.loads(second.read_text())

    def boxes(coco: dict) -> dict[str, list]:
        names = {i["id"]: i["file_name"] for i in coco["images"]}
        found: dict[str, list] = {name: [] for name in names.values()}
        for ann in coco["annotations"]:
            found[names[ann["image_id"]]].append((ann["category_id"], *ann["bbox"]))
        return {name: sorted(b) for name, b in found.items()}

    original, reproduced = boxes(source), boxes(copy_of)
    assert set(reproduced) == set(original), "file names survive the round trip"
    for name, want in original.items():
        got = reproduced[name]
        assert len(got) == len(want), name
        assert np.allclose(np.array(got, float).reshape(-1, 5),
                           np.array(want, float).reshape(-1, 5), atol=0.05), name
    assert {a["mlassist"]["provenance"] for a in copy_of["annotations"]} == {"drawn"}


def test_import_as_predictions_under_a_url_prefix(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio,
        labeled: tuple[int, dict[int, int], dict[str, int], set[int]]) -> None:
    project = labeled[0]
    out = tmp_path / "export.json"
    run(label_studio, "export-coco", "--project", str(project), "-o", str(out))
    target = client.projects.create(title="coco predictions", label_config=CONFIG).id
    report = run(label_studio, "import-coco", str(out), "--images",
                 "https://images.example.com/set a/", "--project", str(target),
                 "--as", "predictions")
    assert report["tasks_created"] == 6
    tasks = list(client.tasks.list(project=target))
    names = {t.data["mlassist_coco"] for t in tasks}
    assert {t.data["image"] for t in tasks} == \
        {"https://images.example.com/set a/" + quote(name) for name in names}
    predictions = list(client.predictions.list(project=target))
    assert len(predictions) == 6, "one per image; the negative image's says: nothing here"
    assert sorted(len(p.result) > 0 for p in predictions) == [False] + [True] * 5
    assert {p.model_version for p in predictions} == {"coco-import"}
    assert not any(t.total_annotations for t in tasks)


def test_bad_coco_files_and_unknown_categories_are_refused_before_anything_is_imported(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio) -> None:
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    target = client.projects.create(title="coco refused", label_config=CONFIG).id
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(CocoError, match="not a readable JSON"):
        read_coco(broken)
    broken.write_text('{"images": [{"id": 1}], "categories": []}')
    with pytest.raises(CocoError, match="file_name"):
        read_coco(broken)
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
            "categories": [{"id": 1, "name": "dragon"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]}
    with pytest.raises(CocoError, match=r"\['dragon'\] are not labels"):
        import_coco(api, target, coco, "https://x.example/", "annotations")
    assert list(client.tasks.list(project=target)) == []
    missing = {**coco, "categories": [{"id": 1, "name": "circle"}]}
    report = import_coco(api, target, missing, str(tmp_path), "annotations")
    assert report.skipped == {"image_file_missing": 1} and report.tasks_created == 0


def test_provenance_without_editor_origins() -> None:
    prediction = {"model_version": "m-v1", "result": [
        {"id": "r1", "value": {"x": 10, "y": 10, "width": 5, "height": 5,
                               "rectanglelabels": ["circle"]}}]}
    same = {"id": "r1", "value": dict(prediction["result"][0]["value"])}
    moved = {"id": "r1", "value": {**same["value"], "x": 11}}
    relabeled = {"id": "r1", "value": {**same["value"], "rectanglelabels": ["square"]}}
    reissued = {"id": "zz", "value": dict(same["value"])}
    new = {"id": "n1", "value": {**same["value"], "x": 50}}
    assert region_provenance(same, [prediction]) == ("accepted", "m-v1")
    assert region_provenance(moved, [prediction]) == ("edited", "m-v1")
    assert region_provenance(relabeled, [prediction]) == ("edited", "m-v1")
    assert region_provenance(reissued, [prediction]) == ("accepted", "m-v1")
    assert region_provenance(new, [prediction]) == ("drawn", None)
    assert region_provenance({**moved, "origin": "manual"}, [prediction]) == ("drawn", None)


def test_file_names_that_leave_the_folder_are_refused_or_made_safe() -> None:
    from backend.tools.coco_export import _file_name, safe_name

    for bad in ("../../etc/passwd", "/etc/passwd", "a/../../b.jpg", "a\\..\\b.jpg", "", "a//b",
                None, 3):
        assert safe_name(bad) is None, bad
    assert safe_name("set 1/img-01.jpg") == "set 1/img-01.jpg"
    task = {"id": 9, "data": {"mlassist_coco": "../../home/u/.ssh/id_rsa"}}
    assert _file_name(task, "image", "x") == "task-9-id_rsa"
    blob = {"id": 4, "data": {"mlassist_blob": "box/a/b.jpg"}}
    assert _file_name(blob, "image", "x") == "a/b.jpg"


def test_import_skips_unsafe_names_and_duplicates(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio) -> None:
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    target = client.projects.create(title="coco unsafe", label_config=CONFIG).id
    (tmp_path / "ok.png").write_bytes(b"not really a png, only uploaded")
    coco = {"images": [{"id": 1, "file_name": "../secret.png"},
                       {"id": 2, "file_name": "ok.png"}, {"id": 3, "file_name": "ok.png"}],
            "categories": [{"id": 1, "name": "circle"}],
            "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5],
                             "score": None}]}
    report = import_coco(api, target, coco, "https://x.example/")
    assert report.skipped == {"unsafe_file_name": 1} and report.tasks_created == 1
    assert report.already_there == 1


def test_export_writes_no_sas_signature(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio) -> None:
    project = client.projects.create(title="coco sas", label_config=CONFIG).id
    api = LabelStudioAPI(LabelStudioAuth(label_studio.url, ADMIN_TOKEN))
    url = "https://acct.blob.core.windows.net/c/scene.jpg?sv=2024&sp=r&sig=SECRETSIG"
    api.import_tasks(project, [{"data": {"image": url, "mlassist_blob": "c/scene.jpg"},
                                "annotations": [{"result": regions_of(make_scene(1))}]}])
    out = tmp_path / "sas.json"
    run(label_studio, "export-coco", "--project", str(project), "-o", str(out))
    text = out.read_text()
    assert "SECRETSIG" not in text and "sig=" not in text
    image = json.loads(text)["images"][0]
    assert image["mlassist"]["image"] == "https://acct.blob.core.windows.net/c/scene.jpg"
    assert image["file_name"] == "scene.jpg"
