"""The backend's own small adapter for Label Studio's REST API: projects, tasks, predictions,
webhooks, views (authentication in auth.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import requests

from backend.core.errors import LabelStudioAuthError, LabelStudioError
from backend.labelstudio.auth import LabelStudioAuth, origin

__all__ = ["LabelStudioAPI", "LabelStudioAuth", "id_runs", "labeled_task_count", "origin"]

# Ids at most this far apart are read in one walk (reading the few tasks between them costs
# less than a request of its own).
ID_RUN_GAP = 50


def _validation_errors(response: requests.Response) -> str:
    """Label Studio's field-level complaints (its messages, never the values we sent)."""
    try:
        errors = response.json().get("validation_errors")
    except (ValueError, AttributeError):
        return ""
    if not isinstance(errors, dict):
        return ""
    parts = []
    for field, messages in errors.items():
        text = " ".join(str(m) for m in messages) if isinstance(messages, list) else ""
        parts.append(f"{field}: {text[:160]}")
    return (": " + "; ".join(parts)) if parts else ""


def labeled_task_count(project: dict) -> int:
    """Labeled tasks in a project record. Label Studio's `num_tasks_with_annotations` leaves
    out imported annotations (it counts only those that are not ground truth, and an import
    marks its annotations as ground truth); `finished_task_number` (tasks annotated as often
    as the project asks) counts them."""
    return max(int(project.get("num_tasks_with_annotations") or 0),
               int(project.get("finished_task_number") or 0))


def id_runs(ids: list[int], gap: int = ID_RUN_GAP) -> list[tuple[int, int]]:
    """(first, last) of each run of sorted ids whose neighbours are at most `gap` apart."""
    runs: list[tuple[int, int]] = []
    for task_id in ids:
        if runs and task_id - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], task_id)
        else:
            runs.append((task_id, task_id))
    return runs


class LabelStudioAPI:
    """The few Label Studio API calls training needs, with the backend's own auth."""

    def __init__(self, auth: LabelStudioAuth, timeout: float = 120.0) -> None:
        self.auth = auth
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False

    def _get(self, path: str, **params: str) -> object:
        return self._call("GET", path, params=params)

    def _call(self, method: str, path: str, params: dict[str, str] | None = None,
              body: object = None, files: list | None = None) -> object:
        url = f"{self.auth.base_url}{path}"
        try:
            response = self._session.request(method, url, params=params,
                                             json=body if files is None else None,
                                             files=files, headers=self.auth.headers(),
                                             timeout=self.timeout)
        except requests.RequestException as exc:
            raise LabelStudioError(f"Label Studio at {self.auth.base_url} is unreachable "
                                   f"({type(exc).__name__}); is it running?") from None
        if response.status_code in (401, 403):
            raise LabelStudioAuthError(f"Label Studio refused LABEL_STUDIO_API_KEY on {path} "
                                       f"(HTTP {response.status_code})")
        if response.status_code == 404:
            raise LabelStudioError(f"Label Studio has no {path} (HTTP 404): wrong project id?")
        if response.status_code not in (200, 201):
            raise LabelStudioError(f"Label Studio answered HTTP {response.status_code} on "
                                   f"{method} {path}{_validation_errors(response)}")
        return response.json() if response.content else None

    def project(self, project: int) -> dict:
        """The project record (title, label_config, counts)."""
        found = self._get(f"/api/projects/{project}")
        if not isinstance(found, dict):
            raise LabelStudioError(f"unexpected answer for project {project}")
        return found

    def labeled_tasks(self, project: int) -> list[dict]:
        """Every task with at least one annotation, annotations included (one export call)."""
        tasks = self._get(f"/api/projects/{project}/export", exportType="JSON",
                          download_all_tasks="false")
        if not isinstance(tasks, list):
            raise LabelStudioError(f"unexpected export format for project {project}")
        return [task for task in tasks if isinstance(task, dict)]

    def tasks_after(self, project: int, after_id: int, limit: int,
                    lacking: str | None = None) -> list[dict]:
        """Up to `limit` unlabeled tasks with id > after_id, in id order, with raw data
        (keyset paging: labelers working meanwhile cannot make it skip tasks): with their
        predictions, or, given `lacking`, only those without a prediction of that version and
        without listing predictions (Label Studio's default fields, about half its work per
        task). Label Studio matches versions as substrings: `lacking` also leaves out tasks
        holding a version that contains it (`-v1` in `-v10`)."""
        if lacking is None:
            return self._task_walk(project, after_id, limit, unlabeled_only=True, full=True)
        return self._task_walk(project, after_id, limit, unlabeled_only=True, full=False,
                               extra=[{"filter": "filter:tasks:predictions_model_versions",
                                       "operator": "not_contains", "type": "List",
                                       "value": [lacking]}])

    def task_page(self, project: int, after_id: int, limit: int,
                  where: list[dict] | None = None, full: bool = False) -> list[dict]:
        """Up to `limit` tasks with id > after_id, in id order, data only (`full`: every
        field, `annotators` included, which the default fields list empty); `where` adds Data
        Manager filter items (all must hold)."""
        return self._task_walk(project, after_id, limit, unlabeled_only=False, full=full,
                               extra=where)

    def labeled_task_page(self, project: int, after_id: int, limit: int) -> list[dict]:
        """Up to `limit` labeled tasks with id > after_id, in id order, with annotations and
        predictions (keyset paging, for reading projects of any size)."""
        return self._task_walk(project, after_id, limit, unlabeled_only=False, full=True,
                               labeled_only=True)

    def flagged_task_page(self, project: int, field: str, after_id: int,
                          limit: int) -> list[dict]:
        """Up to `limit` tasks with id > after_id whose `data.<field>` is a number above 0."""
        return self._task_walk(project, after_id, limit, unlabeled_only=False, full=False,
                               extra=[{"filter": f"filter:tasks:data.{field}",
                                       "operator": "greater", "type": "Number", "value": 0}])

    def assigned_unlabeled_page(self, project: int, field: str, after_id: int,
                                limit: int) -> list[dict]:
        """Up to `limit` unlabeled tasks with id > after_id whose `data.<field>` holds a
        comma-separated list, in id order, with `annotators` (which only `fields=all` fills
        in: the default fields list it empty, skips included)."""
        return self._task_walk(project, after_id, limit, unlabeled_only=True, full=True,
                               extra=[{"filter": f"filter:tasks:data.{field}",
                                       "operator": "contains", "type": "String",
                                       "value": ","}])

    def _task_walk(self, project: int, after_id: int, limit: int, unlabeled_only: bool,
                   full: bool, labeled_only: bool = False,
                   extra: list[dict] | None = None) -> list[dict]:
        items: list[dict] = [{"filter": "filter:tasks:id", "operator": "greater",
                              "type": "Number", "value": after_id}, *(extra or [])]
        if unlabeled_only or labeled_only:
            items.append({"filter": "filter:tasks:total_annotations",
                          "operator": "equal" if unlabeled_only else "greater",
                          "type": "Number", "value": 0})
        query = {"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:id"]}
        params = {"project": str(project), "page": "1", "page_size": str(limit),
                  "resolve_uri": "false", "query": json.dumps(query)}
        if full:
            params["fields"] = "all"
        found = self._call("GET", "/api/tasks", params=params)
        if not isinstance(found, dict):
            raise LabelStudioError(f"unexpected task list for project {project}")
        return [task for task in found.get("tasks") or [] if isinstance(task, dict)]

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int] | None:
        """Bulk-create tasks ([{"data": {...}}, ...]) in one request: the new tasks' ids, in
        the order given (None when Label Studio does not say)."""
        found = self._call("POST", f"/api/projects/{project}/import",
                           params={"return_task_ids": "true"}, body=tasks)
        ids = found.get("task_ids") if isinstance(found, dict) else None
        if isinstance(ids, list) and len(ids) == len(tasks) \
                and all(isinstance(i, int) for i in ids):
            return [int(i) for i in ids]
        return None

    def task_data(self, project: int, task_id: int) -> dict:
        """A task's `data` as stored (URIs unresolved), read just before changing it. Read
        through the task list: Label Studio's `GET /api/tasks/<id>` asks the connected ML
        backend for a prediction of any task without one (labeled tasks too) and stores it."""
        found = self._task_walk(project, task_id - 1, 1, unlabeled_only=False, full=False,
                                extra=[{"filter": "filter:tasks:id", "operator": "equal",
                                        "type": "Number", "value": task_id}])
        if not found or int(found[0].get("id", -1)) != task_id:
            raise LabelStudioError(f"project {project} has no task {task_id}")
        data = found[0].get("data")
        return dict(data) if isinstance(data, dict) else {}

    def update_task(self, task_id: int, **fields: object) -> None:
        self._call("PATCH", f"/api/tasks/{task_id}", body=fields)

    def set_data_field(self, project: int, task_ids: list[int], field: str, value: str) -> None:
        """Set `data.<field>` to the string `value` on the given tasks in one request, leaving
        their other data keys as they are: the Data Manager's "Add Or Modify Data Field" action
        (experimental: hidden from the menu, but `/api/dm/actions` runs it), which reads and
        writes each task's data inside Label Studio, so no client-side read races a writer."""
        if not task_ids:  # an empty selection means every task of the project to Label Studio
            return
        self._call("POST", "/api/dm/actions",
                   params={"id": "add_data_field", "project": str(project)},
                   body={"selectedItems": {"all": False, "included": task_ids},
                         "value_name": field, "value_type": "String", "value": value})

    def count_tasks(self, project: int, items: list[dict]) -> int:
        """How many tasks of the project match the Data Manager filter `items` (all of them):
        the `total` of a one-task page, so the cost does not grow with what matches."""
        query = {"filters": {"conjunction": "and", "items": items}}
        found = self._call("GET", "/api/tasks", params={
            "project": str(project), "page": "1", "page_size": "1", "resolve_uri": "false",
            "query": json.dumps(query)})
        if not isinstance(found, dict) or not isinstance(found.get("total"), int):
            raise LabelStudioError(f"unexpected task count for project {project}")
        return int(found["total"])

    def count_tasks_with_prediction(self, project: int, version: str) -> int | None:
        """How many tasks hold a prediction of `version` (None if Label Studio cannot say).
        The value must be a list: Label Studio ORs a substring match over its items, so a
        bare string matched any version sharing one character with it. A version that
        another contains (`-v1` in `-v10`) also counts the other's tasks: with versions
        numbered upward, only after the longer one was promoted and rolled back."""
        try:
            return self.count_tasks(project, [
                {"filter": "filter:tasks:predictions_model_versions", "operator": "contains",
                 "type": "List", "value": [version]}])
        except LabelStudioError:
            return None

    def task_pages_by_id(self, project: int, task_ids: list[int],
                         limit: int = 200) -> Iterator[list[dict]]:
        """Pages of at most `limit` of the given tasks of the project (in id order, with
        predictions and raw data): a keyset walk over each run of nearby ids, so the
        consecutive ids of one import cost a request per page, not per task."""
        wanted = set(task_ids)
        for low, high in id_runs(sorted(wanted)):
            after = low - 1
            while after < high:
                page = self._task_walk(project, after, limit, unlabeled_only=False, full=True,
                                       extra=[{"filter": "filter:tasks:id", "operator": "less",
                                               "type": "Number", "value": high + 1}])
                if found := [task for task in page if task.get("id") in wanted]:
                    yield found
                if len(page) < limit:
                    break
                after = int(page[-1]["id"])

    def import_predictions(self, project: int, predictions: list[dict]) -> None:
        """Bulk-create predictions: [{"task", "result", "score", "model_version"}, ...]."""
        self._call("POST", f"/api/projects/{project}/import/predictions", body=predictions)

    def model_versions(self, project: int) -> dict[str, int]:
        """The prediction versions in the project, with how many predictions each has."""
        found = self._call("GET", f"/api/projects/{project}/model-versions/")
        return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def update_project(self, project: int, **fields: object) -> dict:
        found = self._call("PATCH", f"/api/projects/{project}", body=fields)
        return found if isinstance(found, dict) else {}

    def ml_backends(self, project: int) -> list[dict]:
        found = self._call("GET", "/api/ml", params={"project": str(project)})
        return list(found) if isinstance(found, list) else []

    def create_ml_backend(self, **fields: object) -> dict:
        found = self._call("POST", "/api/ml", body=fields)
        return found if isinstance(found, dict) else {}

    def webhooks(self, project: int) -> list[dict]:
        found = self._call("GET", "/api/webhooks", params={"project": str(project)})
        return list(found) if isinstance(found, list) else []

    def update_webhook(self, webhook: int, **fields: object) -> dict:
        found = self._call("PATCH", f"/api/webhooks/{webhook}", body=fields)
        return found if isinstance(found, dict) else {}

    def create_webhook(self, **fields: object) -> dict:
        found = self._call("POST", "/api/webhooks", body=fields)
        return found if isinstance(found, dict) else {}

    def projects(self) -> list[dict]:
        """The projects the API key can see (id, title, counts)."""
        found = self._call("GET", "/api/projects", params={"page_size": "1000"})
        items = found.get("results") if isinstance(found, dict) else found
        return [p for p in items if isinstance(p, dict)] if isinstance(items, list) else []

    def users(self) -> list[dict]:
        """The organization's users (id, email, username)."""
        found = self._call("GET", "/api/users")
        return [u for u in found if isinstance(u, dict)] if isinstance(found, list) else []

    def upload_files(self, project: int, paths: list[Path]) -> list[str]:
        """Upload files into the project without creating tasks; their `/data/upload/...` URLs
        in the same order (for tasks that are imported as JSON afterwards)."""
        form = [(f"file{i}", (path.name, path.read_bytes())) for i, path in enumerate(paths)]
        stored = self._call("POST", f"/api/projects/{project}/import",
                            params={"commit_to_project": "false"}, files=form)
        ids = (stored.get("file_upload_ids") if isinstance(stored, dict) else None) or []
        found = self._call("GET", f"/api/projects/{project}/file-uploads",
                           params={"ids": json.dumps(ids)})
        names = {u.get("id"): u.get("file") for u in found or [] if isinstance(u, dict)} \
            if isinstance(found, list) else {}
        if len(ids) != len(paths) or not all(names.get(i) for i in ids):
            raise LabelStudioError(f"Label Studio stored {len(ids)} of {len(paths)} uploads")
        return [f"/data/{names[i]}" for i in ids]

    def views(self, project: int) -> list[dict]:
        """The project's Data Manager views (tabs)."""
        found = self._call("GET", "/api/dm/views", params={"project": str(project)})
        return [v for v in found if isinstance(v, dict)] if isinstance(found, list) else []

    def create_view(self, project: int, data: dict) -> dict:
        found = self._call("POST", "/api/dm/views", body={"project": project, "data": data})
        return found if isinstance(found, dict) else {}

    def update_view(self, view: int, project: int, data: dict) -> dict:
        found = self._call("PUT", f"/api/dm/views/{view}",
                           body={"project": project, "data": data})
        return found if isinstance(found, dict) else {}

    def local_storages(self, project: int) -> list[dict]:
        """The project's local-files import storages (they grant /data/local-files/ access)."""
        found = self._call("GET", "/api/storages/localfiles", params={"project": str(project)})
        return list(found) if isinstance(found, list) else []

    def create_local_storage(self, **fields: object) -> dict:
        found = self._call("POST", "/api/storages/localfiles", body=fields)
        return found if isinstance(found, dict) else {}
