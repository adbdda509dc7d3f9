"""A worker (and its RQ work horse) SIGKILLed early in a push-back (issue 9): a new worker
finishes the backlog from the saved cursor; every unlabeled task ends with exactly one
prediction of the champion.

A worker killed in the middle of *training* is covered by
tests/test_e2e_loop.py::test_worker_killed_mid_training_leaves_no_stuck_lock."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from label_studio_sdk import LabelStudio
from redis import Redis

from backend.demo.localstack import Process
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
from tests.redis_server import RedisServer
from tests.services import mlassist_bin, untrained_checkpoint

pytestmark = pytest.mark.e2e


BACKLOG = 160
LABELED_TOO = 2      # labeled tasks, which must get no prediction


@pytest.mark.timeout(240)
def test_worker_killed_during_push_back_finishes_the_backlog_once(
        tmp_path: Path, label_studio: LabelStudioServer, client: LabelStudio,
        redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url)
    redis.flushall()
    env = {**base_env(tmp_path, label_studio, redis_server.url), "JOB_LOCK_TTL": "4",
           "RECONCILE_INTERVAL": "2", "PUSHBACK_BATCH": "8"}
    api = ls_api(label_studio)
    tasks = new_project(client, api, "killed push-back", range(500, 500 + LABELED_TOO + BACKLOG),
                         labeled=LABELED_TOO)
    project = tasks[0]["project"]
    labeled = {t["id"] for t in tasks[:LABELED_TOO]}
    unlabeled = {t["id"] for t in tasks[LABELED_TOO:]}
    registry = Registry(LocalStore(tmp_path / "models" / "registry"), tmp_path / "cache")
    version = registry.reserve_version(project, ARCH)
    registry.add(project, {"version": version, "arch": ARCH, "class_names": CLASS_NAMES,
                           "metrics": {"ap50": 0.5}},
                 untrained_checkpoint(tmp_path / "champion.pt", CLASS_NAMES[1:]),
                 promote=True, keep=3)

    first = Process([mlassist_bin(), "worker", "--queues", "prelabel,housekeeping"],
                    {**os.environ, **env}, tmp_path / "worker-1.log")
    second: Process | None = None
    logs = [tmp_path / "worker-1.log"]
    try:
        wait_for("the worker registered", lambda: redis.scard("rq:workers"), 60, *logs)
        done = subprocess.run([mlassist_bin(), "reconcile", "--project", str(project)],
                              env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and project in json.loads(done.stdout)["pushback"], \
            done.stdout + done.stderr

        # Kill the worker and its work horse once the push-back's first pages are in.
        at_kill = wait_for("the first predictions in Label Studio",
                            lambda: api.count_tasks_with_prediction(project, version), 120,
                            *logs, every=0.05)
        family = sigkill_tree(first)
        assert family, "the push-back ran in a work horse"
        assert at_kill < BACKLOG, f"the push-back finished ({at_kill}) before the kill"
        lock = f"mlassist:lock:predict:{project}"
        wait_for("the killed job's lock to expire", lambda: not redis.exists(lock), 20, *logs)
        settled = api.count_tasks_with_prediction(project, version)
        assert settled is not None and 0 < settled < BACKLOG, settled
        assert redis.get(f"mlassist:pushback-done:{project}") is None

        # A new worker; no one asks for anything: its reconciliation ticker re-queues the
        # push-back, which resumes at the saved cursor and skips what is already predicted.
        second = Process([mlassist_bin(), "worker", "--queues", "prelabel,housekeeping"],
                         {**os.environ, **env}, tmp_path / "worker-2.log")
        logs.append(tmp_path / "worker-2.log")
        finished = wait_for(
            "the push-back finished by the new worker",
            lambda: redis.get(f"mlassist:pushback-done:{project}"), 180, *logs, every=0.5)
        assert json.loads(finished) == {"version": version, "tasks": LABELED_TOO + BACKLOG}

        per_task: dict[int, int] = {}
        for prediction in client.predictions.list(project=project):
            if prediction.model_version == version:
                per_task[prediction.task] = per_task.get(prediction.task, 0) + 1
        duplicated = sum(count - 1 for count in per_task.values() if count > 1)
        reliability.duplicates(duplicated)
        missing = unlabeled - set(per_task)
        assert duplicated == 0, {t: c for t, c in per_task.items() if c > 1}
        assert not missing, f"{len(missing)} unlabeled tasks without a prediction"
        assert not labeled & set(per_task), "a labeled task got a pre-annotation"
        assert set(per_task) == unlabeled
        # The new worker predicted only what the killed one had not imported.
        pushed = [int(n) for n in re.findall(rf"pushed (\d+) predictions of {re.escape(version)}",
                                             (tmp_path / "worker-2.log").read_text())]
        assert sum(pushed) == BACKLOG - settled, (pushed, settled)
        assert client.projects.get(id=project).model_version == version
        print(f"push-back: killed at {at_kill} of {BACKLOG} predictions (SIGKILL to "
              f"{len(family) + 1} processes), {settled} imported; the new worker pushed "
              f"{pushed}")
        reliability.fault_survived("worker and work horse SIGKILLed during push-back")
    finally:
        if second is not None:
            second.stop()
        first.stop()


