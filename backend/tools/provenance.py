"""Where a labeled box came from: `drawn` by hand, a pre-label `accepted` unchanged, or a
pre-label `edited`, with the model version of that pre-label. Label Studio's editor records
that itself on each region (`origin`: manual / prediction / prediction-changed); for
annotations made without the editor (the API), regions are compared with the task's
predictions by region id and box. Also the keyset walk over a project's labeled tasks, which
the COCO export and the dashboard share."""

from __future__ import annotations

from collections.abc import Iterator

from backend.labelstudio.client import LabelStudioAPI

DRAWN, ACCEPTED, EDITED = "drawn", "accepted", "edited"
ORIGINS = {"manual": DRAWN, "prediction": ACCEPTED, "prediction-changed": EDITED}
COORD_TOLERANCE = 1e-3  # percent of the image: a box moved less than this is unchanged


def same_box(a: dict, b: dict) -> bool:
    keys = ("x", "y", "width", "height")
    try:
        return all(abs(float(a[k]) - float(b[k])) <= COORD_TOLERANCE for k in keys) \
            and float(a.get("rotation") or 0) == float(b.get("rotation") or 0) \
            and list(a.get("rectanglelabels") or []) == list(b.get("rectanglelabels") or [])
    except (KeyError, TypeError, ValueError):
        return False


def region_provenance(region: dict, predictions: list[dict]) -> tuple[str, str | None]:
    """(drawn | accepted | edited, model version of the pre-label it came from)."""
    by_id = {r.get("id"): (r, p.get("model_version")) for p in predictions
             for r in p.get("result") or [] if isinstance(r, dict) and r.get("id")}
    value = region.get("value") or {}
    matched = by_id.get(region.get("id")) if region.get("id") else None
    origin = region.get("origin")
    if origin == "manual":
        return DRAWN, None
    if origin in ORIGINS:
        return ORIGINS[origin], matched[1] if matched else _version_of_only(predictions)
    if matched is not None:
        return (ACCEPTED if same_box(value, matched[0].get("value") or {}) else EDITED), \
            matched[1]
    for prediction in predictions:  # the same box, with an id the editor re-issued
        for other in prediction.get("result") or []:
            if isinstance(other, dict) and same_box(value, other.get("value") or {}):
                return ACCEPTED, prediction.get("model_version")
    return DRAWN, None


def _version_of_only(predictions: list[dict]) -> str | None:
    versions = {p.get("model_version") for p in predictions}
    return versions.pop() if len(versions) == 1 else None




def labeled_tasks(api: LabelStudioAPI, project: int, page: int) -> Iterator[dict]:
    after = 0
    while batch := api.labeled_task_page(project, after, page):
        yield from batch
        after = int(batch[-1]["id"])
