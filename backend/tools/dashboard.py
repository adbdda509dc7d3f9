"""The numbers behind `/dashboard`: what the labelers did with the pre-labels, per project.

Nothing here reads every task of a project (issue 16: 118,000 tasks). Unlabeled tasks with
and without a pre-label are two filtered counts (the `total` of a one-task page); each
labeler's open batch is read from the unlabeled assigned tasks only (bounded by the batches);
a keyset walk over the labeled tasks (annotations and predictions) gives: tasks labeled from
scratch or from a pre-label; pre-label boxes accepted unchanged, edited, rejected (shown and
removed), boxes drawn by hand; the same per labeler. A pre-label counts as shown when a
prediction with boxes existed before the annotation was created. The walk grows with the
labeled tasks, so `StatsCache` computes them in the background: a project's first request
waits for them at most `FIRST_WAIT_S` (then the page says they are coming), later requests
get the cached numbers, refreshed once older than `CACHE_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from html import escape
from typing import Any

from backend.core.errors import MLAssistError
from backend.labelstudio.client import LabelStudioAPI
from backend.model.dataset import chosen_annotation
from backend.tools.assign import FIELD, decode
from backend.tools.provenance import (
    ACCEPTED,
    DRAWN,
    EDITED,
    labeled_tasks,
    region_provenance,
    same_box,
)

logger = logging.getLogger(__name__)

CACHE_S = 30.0
# The longest a request waits for a project's first numbers before the page says they are coming
FIRST_WAIT_S = 10.0
REJECTED = "rejected"
UNLABELED = {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number",
             "value": 0}
PRELABELED = {"filter": "filter:tasks:total_predictions", "operator": "greater",
              "type": "Number", "value": 0}


def _boxes(result: object) -> list[dict]:
    if not isinstance(result, list):
        return []
    return [r for r in result if isinstance(r, dict) and r.get("type") == "rectanglelabels"]


def shown_prediction(annotation: dict, predictions: list[dict]) -> dict | None:
    """The pre-label the labeler saw: the annotation's parent, else the newest prediction with
    boxes made before the annotation."""
    parent = annotation.get("parent_prediction")
    for prediction in predictions:
        if parent and prediction.get("id") == parent:
            return prediction
    made = str(annotation.get("created_at") or "~")
    earlier = [p for p in predictions if _boxes(p.get("result"))
               and str(p.get("created_at") or "") <= made]
    return max(earlier, key=lambda p: str(p.get("created_at") or "")) if earlier else None


def task_outcome(annotation: dict, predictions: list[dict]) -> Counter:
    """Box counts of one annotation: accepted / edited / drawn, and rejected pre-label boxes."""
    shown = shown_prediction(annotation, predictions)
    basis = [shown] if shown is not None else []
    counts: Counter = Counter()
    kept_ids = set()
    for region in _boxes(annotation.get("result")):
        provenance, _ = region_provenance(region, basis)
        counts[provenance] += 1
        if provenance != DRAWN:
            kept_ids.add(region.get("id"))
    if shown is not None:
        submitted = _boxes(annotation.get("result"))
        for region in _boxes(shown.get("result")):
            if region.get("id") not in kept_ids and not any(
                    same_box(r.get("value") or {}, region.get("value") or {})
                    for r in submitted):
                counts[REJECTED] += 1
    return counts


def unlabeled_counts(api: LabelStudioAPI, project: int) -> Counter:
    """Unlabeled tasks (no annotation that is not a skip) with and without a prediction: two
    counts, whatever the size of the project."""
    unlabeled = api.count_tasks(project, [UNLABELED])
    prelabeled = api.count_tasks(project, [UNLABELED, PRELABELED])
    return Counter(unlabeled_prelabeled=prelabeled, unlabeled_bare=unlabeled - prelabeled)


def open_batches(api: LabelStudioAPI, project: int, users: dict[Any, str]) -> Counter:
    """Each assignee's open tasks: assigned to them, unlabeled, and not skipped by them (what
    their Data Manager tab lists). Only unlabeled assigned tasks are read, which the batch
    size bounds. (The walk over every task this replaced read the default fields, whose
    `annotators` is always empty, so it counted the tasks a labeler skipped as open.)"""
    assigned_open: Counter = Counter()
    after = 0
    while page := api.assigned_unlabeled_page(project, FIELD, after, 1000):
        for task in page:
            if int(task.get("total_annotations") or 0) > 0:
                continue
            annotators = {users.get(a) for a in task.get("annotators") or []}
            for email in decode((task.get("data") or {}).get(FIELD)):
                if email not in annotators:
                    assigned_open[email] += 1
        after = int(page[-1]["id"])
    return assigned_open


def project_stats(api: LabelStudioAPI, project: int,
                  labelers_wanted: list[str] | None = None) -> dict[str, Any]:
    """The dashboard's numbers of one project (see the module's docstring)."""
    users = {u.get("id"): str(u.get("email") or u.get("username") or u.get("id"))
             for u in api.users()}
    tasks = unlabeled_counts(api, project)
    assigned_open = open_batches(api, project, users) if labelers_wanted is not None \
        else Counter()
    boxes: Counter = Counter()
    per_labeler: dict[str, Counter] = {}
    for task in labeled_tasks(api, project, 100):
        annotation = chosen_annotation(task)
        if annotation is None:
            continue
        predictions = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
        outcome = task_outcome(annotation, predictions)
        with_prelabel = shown_prediction(annotation, predictions) is not None
        tasks["labeled_from_prelabel" if with_prelabel else "labeled_from_scratch"] += 1
        boxes.update(outcome)
        who = users.get(annotation.get("completed_by"), str(annotation.get("completed_by")))
        mine = per_labeler.setdefault(who, Counter())
        mine.update(outcome)
        mine["tasks"] += 1
        mine["tasks_with_prelabel"] += int(with_prelabel)
    labelers = []
    for email in sorted(set(per_labeler) | set(labelers_wanted or [])):
        mine = per_labeler.get(email, Counter())
        judged = mine[ACCEPTED] + mine[EDITED] + mine[REJECTED]
        labelers.append({"labeler": email, "tasks": mine["tasks"],
                         "tasks_with_prelabel": mine["tasks_with_prelabel"],
                         ACCEPTED: mine[ACCEPTED], EDITED: mine[EDITED],
                         REJECTED: mine[REJECTED], DRAWN: mine[DRAWN],
                         "acceptance": round(mine[ACCEPTED] / judged, 3) if judged else None,
                         "open_batch": assigned_open.get(email)
                         if labelers_wanted is not None else None})
    judged = boxes[ACCEPTED] + boxes[EDITED] + boxes[REJECTED]
    total_boxes = boxes[ACCEPTED] + boxes[EDITED] + boxes[DRAWN]
    return {"tasks": {k: tasks[k] for k in ("labeled_from_scratch", "labeled_from_prelabel",
                                            "unlabeled_prelabeled", "unlabeled_bare")},
            "boxes": {k: boxes[k] for k in (ACCEPTED, EDITED, REJECTED, DRAWN)},
            "acceptance": round(boxes[ACCEPTED] / judged, 3) if judged else None,
            "not_drawn_share": round((boxes[ACCEPTED] + boxes[EDITED]) / total_boxes, 3)
            if total_boxes else None,
            "labelers": labelers}


Stats = Callable[[LabelStudioAPI, int, list[str] | None], dict[str, Any]]


class _Run:
    """One computation of a project's numbers, under way in a thread of its own."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.error: Exception | None = None


class StatsCache:
    """project_stats per project, stale while revalidated. A project's numbers are computed
    in a thread of their own: the request that first asks waits for them at most `first_wait`
    seconds (None: as long as it takes) and otherwise gets `{"pending": True, "pending_s":
    ...}` (the labeled walk of a project with 100,000 labels takes minutes, past the web
    timeout); concurrent first requests wait for the same computation. Once older than `ttl`,
    the numbers are recomputed in the background (one computation per project at a time)
    while the older ones are served. Each answer carries `age_s`, how old its numbers are."""

    def __init__(self, ttl: float = CACHE_S, compute: Stats = project_stats,
                 first_wait: float | None = FIRST_WAIT_S) -> None:
        self.ttl = ttl
        self.first_wait = first_wait
        self._compute = compute
        self._lock = threading.Lock()
        self._entries: dict[tuple, tuple[float, dict[str, Any]]] = {}
        self._runs: dict[tuple, _Run] = {}

    def get(self, api: LabelStudioAPI, project: int,
            labelers: list[str] | None) -> dict[str, Any]:
        cache_key = (project, tuple(labelers) if labelers is not None else None)
        with self._lock:
            hit = self._entries.get(cache_key)
            run = self._runs.get(cache_key)
            stale = hit is not None and time.monotonic() - hit[0] >= self.ttl
            if run is None and (hit is None or stale and not self._busy(project)):
                run = self._start(api, project, labelers, cache_key)
        if hit is not None:
            return self._aged(hit)
        assert run is not None
        run.done.wait(self.first_wait)
        with self._lock:
            hit = self._entries.get(cache_key)
        if hit is not None:
            return self._aged(hit)
        if run.error is not None:
            raise run.error  # the first computation failed: say why, the next request retries
        return {"pending": True, "pending_s": round(time.monotonic() - run.started, 1)}

    def refreshing(self, project: int) -> bool:
        """Whether the project's numbers are being computed."""
        with self._lock:
            return self._busy(project)

    def _busy(self, project: int) -> bool:
        return any(key[0] == project for key in self._runs)

    def _start(self, api: LabelStudioAPI, project: int, labelers: list[str] | None,
               cache_key: tuple) -> _Run:
        run = self._runs[cache_key] = _Run()
        threading.Thread(target=self._run, name=f"stats-{project}",
                         args=(api, project, labelers, cache_key, run), daemon=True).start()
        return run

    def _run(self, api: LabelStudioAPI, project: int, labelers: list[str] | None,
             cache_key: tuple, run: _Run) -> None:
        try:
            stats = self._compute(api, project, labelers)
            with self._lock:
                self._entries[cache_key] = (time.monotonic(), stats)
        except MLAssistError as exc:  # the older numbers stay; the next request tries again
            run.error = exc
            logger.warning("project %s: dashboard numbers not computed: %s", project, exc)
        except Exception as exc:  # a thread's error would otherwise go unlogged
            run.error = exc
            logger.exception("project %s: dashboard numbers not computed", project)
        finally:
            with self._lock:
                self._runs.pop(cache_key, None)
            run.done.set()

    @staticmethod
    def _aged(hit: tuple[float, dict[str, Any]]) -> dict[str, Any]:
        return {**hit[1], "age_s": round(time.monotonic() - hit[0], 1)}


def learning_curve_svg(versions: list[dict[str, Any]], width: int = 520,
                       height: int = 220) -> str:
    """An inline SVG of validation AP50 against training labels (promoted: filled dots)."""
    points = [(int(v.get("train_labels") or 0), float((v.get("metrics") or {})["ap50"]),
               v.get("status") == "champion" or v.get("promoted_at") is not None, v["version"])
              for v in versions if (v.get("metrics") or {}).get("ap50") is not None]
    pad = 40
    if not points:
        return (f'<svg width="{width}" height="{height}" role="img" aria-label="no models yet">'
                f'<text x="{pad}" y="{height // 2}" fill="#666">no models yet</text></svg>')
    most = max(p[0] for p in points) or 1

    def x(labels: int) -> float:
        return pad + (width - 2 * pad) * labels / most

    def y(ap50: float) -> float:
        return height - pad - (height - 2 * pad) * ap50

    path = " ".join(f"{'M' if i == 0 else 'L'}{x(p[0]):.1f},{y(p[1]):.1f}"
                    for i, p in enumerate(points))
    dots = "".join(
        f'<circle cx="{x(p[0]):.1f}" cy="{y(p[1]):.1f}" r="4" '
        f'fill="{"#2b7a3d" if p[2] else "#fff"}" stroke="#2b7a3d"><title>{escape(p[3])}: AP50 '
        f'{p[1]:.3f} on {p[0]} labels</title></circle>' for p in points)
    grid = "".join(f'<line x1="{pad}" x2="{width - pad}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                   f'stroke="#eee"/><text x="{pad - 6}" y="{y(t) + 4:.1f}" font-size="10" '
                   f'text-anchor="end" fill="#666">{t:.1f}</text>' for t in (0, 0.5, 1.0))
    return (f'<svg width="{width}" height="{height}" role="img" '
            f'aria-label="validation AP50 against training labels">{grid}'
            f'<path d="{path}" fill="none" stroke="#2b7a3d" stroke-width="2"/>{dots}'
            f'<text x="{width / 2:.0f}" y="{height - 8}" font-size="11" text-anchor="middle" '
            f'fill="#666">labeled tasks used for training (max {most})</text></svg>')
