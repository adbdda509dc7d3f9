"""Queues, job ids, single flight and locks: everything the jobs share through Redis.

Single flight per project and kind of work ("train", "predict"):
- at most one job *pending*: a `pending` key set with NX holds the queued job's id; a second
  request while it is set collapses into the pending job (LS's two signals per annotation and a
  storm of hundreds of events become one job);
- at most one job *running*: a lock key with a short expiry, renewed by a heartbeat thread while
  the job runs, so a worker killed with SIGKILL frees the project within LOCK_TTL_S.
The pending job clears its key when it starts, so events during a training queue exactly one
more job, which runs after the current one (it waits on the lock).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from datetime import timedelta
from typing import Any, cast

from redis import Redis
from rq import Queue, Retry
from rq.job import Job, JobStatus

logger = logging.getLogger(__name__)

TRAINING_QUEUE = "training"      # GPU machines
PREDICT_QUEUE = "prelabel"       # pre-annotation: push-back and new tasks
HOUSEKEEPING_QUEUE = "housekeeping"
ALL_QUEUES = (TRAINING_QUEUE, PREDICT_QUEUE, HOUSEKEEPING_QUEUE)

TRAIN_TIMEOUT_S = 2 * 3600
PREDICT_TIMEOUT_S = 2 * 3600
RECONCILE_TIMEOUT_S = 600
LOCK_TTL_S = 60
HEARTBEAT_S = 15
PENDING_TTL_S = 6 * 3600
PENDING_GRACE_S = 30
RESULT_TTL_S = 7 * 24 * 3600
TRANSIENT_RETRY = Retry(max=3, interval=[10, 60, 300])

PREFIX = "mlassist"


def key(*parts: object) -> str:
    return ":".join([PREFIX, *(str(part) for part in parts)])


def connect(redis_url: str, fast: bool = False) -> Redis:
    """A Redis client; `fast` bounds every call to half a second (the webhook path)."""
    if fast:
        return Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    return Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5)


class ProjectLock:
    """A Redis lock with expiry and a heartbeat; `wait` seconds to get it (0 = try once)."""

    _release = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                "return redis.call('del', KEYS[1]) else return 0 end")
    _renew = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
              "return redis.call('expire', KEYS[1], ARGV[2]) else return 0 end")

    def __init__(self, redis: Redis, name: str, wait: float, ttl: int | None = None) -> None:
        self.redis = redis
        self.key = key("lock", name)
        self.wait = wait
        self.ttl = ttl or LOCK_TTL_S
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProjectLock:
        deadline = time.monotonic() + self.wait
        while not self.redis.set(self.key, self.token, nx=True, ex=self.ttl):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.key} is held by another job")
            time.sleep(1.0)
        self._thread = threading.Thread(target=self._beat, daemon=True, name=self.key)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(min(HEARTBEAT_S, self.ttl / 4)):
            renewed: Any
            try:
                renewed = self.redis.eval(self._renew, 1, self.key, self.token, str(self.ttl))
            except Exception:  # noqa: BLE001 - Redis down: the lock may expire meanwhile
                renewed = 0
            if not renewed:
                self.lost.set()
                logger.error("%s was lost (expired or taken); this job stops before its "
                             "next write", self.key)
                return

    def ensure(self) -> None:
        """Raise if the lock was lost: called before every write that must not happen twice."""
        if self.lost.is_set():
            raise RuntimeError(f"{self.key} was lost; stopping so no other job's work is "
                               "duplicated")

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Let the lock go now; only this holder's token releases it, so twice is harmless."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self.redis.eval(self._release, 1, self.key, self.token)


class JobQueue:
    """Enqueues MLAssist's jobs with single flight; the adapter the web app and jobs share."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    _cas_delete = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                   "return redis.call('del', KEYS[1]) else return 0 end")
    _cas_set = ("local v = redis.call('get', KEYS[1]) "
                "if v == false or v == ARGV[1] then "
                "return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) else return 0 end")

    # One round trip for the common case of a webhook storm: is the pending job of this kind
    # still waiting (queued and in its queue, deferred, scheduled, or a young flag whose job
    # is being enqueued)? Then keep its flag and collapse. Anything else goes the long way.
    # KEYS: pending flag; ARGV: rq's job key prefix, PENDING_TTL_S, PENDING_GRACE_S, rq's
    # queue key prefix.
    _waiting = """
        local job_id = redis.call('get', KEYS[1])
        if not job_id then return 0 end
        local status = redis.call('hget', ARGV[1] .. job_id, 'status')
        if status == 'queued' then
            local origin = redis.call('hget', ARGV[1] .. job_id, 'origin')
            if not origin or not redis.call('lpos', ARGV[4] .. origin, job_id) then
                return 0
            end
        end
        if status == 'queued' or status == 'deferred' or status == 'scheduled' then
            redis.call('expire', KEYS[1], ARGV[2])
            return 1
        end
        if not status and tonumber(ARGV[2]) - redis.call('ttl', KEYS[1]) < tonumber(ARGV[3])
            then return 1 end
        return 0"""

    def _collapses(self, kind: str, project: int) -> bool:
        """True when a pending job of `kind` will still see this event (single flight)."""
        return bool(self.redis.eval(self._waiting, 1, key("pending", kind, project),
                                    Job.redis_job_namespace_prefix, str(PENDING_TTL_S),
                                    str(PENDING_GRACE_S), Queue.redis_queue_namespace_prefix))

    def _get(self, name: str) -> bytes | None:
        return cast(bytes | None, self.redis.get(name))

    def queue(self, name: str) -> Queue:
        return Queue(name, connection=self.redis)

    def remember_project(self, project: int) -> None:
        self.redis.sadd(key("projects"), project)

    def projects(self) -> list[int]:
        members = cast(set[bytes], self.redis.smembers(key("projects")))
        return sorted(int(p) for p in members)

    # -- single flight ------------------------------------------------------------------

    def _pending_alive(self, kind: str, project: int) -> bool:
        job_id = self._get(key("pending", kind, project))
        if job_id is None:
            return False
        try:
            job = Job.fetch(job_id.decode(), connection=self.redis)
            status = job.get_status()
        except Exception:  # noqa: BLE001 - not enqueued yet, or vanished
            status = None
        if status == JobStatus.QUEUED and self.redis.lpos(
                self.queue(job.origin).key, job.id) is None:
            # Still "queued" in its hash, but no longer in its queue: a worker took it and
            # died (or Redis restarted) before it started. RQ re-queues such a job only at
            # its next maintenance, up to 10 min later; collapsing into it would swallow
            # every event and reconciliation until then.
            pass
        elif status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
            return True
        elif status is None:
            # The flag is set just before its job is enqueued: a young flag without a job is
            # an enqueue in progress, not a stale flag.
            age = PENDING_TTL_S - int(cast(int, self.redis.ttl(key("pending", kind, project))))
            if age < PENDING_GRACE_S:
                return True
        # The flag outlived its job (Redis restart, worker crash): clear it, unless another
        # caller already replaced it.
        self.redis.eval(self._cas_delete, 1, key("pending", kind, project), job_id.decode())
        return False

    def _enqueue_once(self, kind: str, project: int, queue: str, func: str,
                      args: tuple[Any, ...], timeout: int) -> str | None:
        job_id = f"{kind}-{project}-{self.redis.incr(key('seq', kind, project))}"
        if not self.redis.set(key("pending", kind, project), job_id, nx=True, ex=PENDING_TTL_S):
            if self._pending_alive(kind, project):
                # Collapsed; a job waiting behind a long backlog keeps its flag.
                self.redis.expire(key("pending", kind, project), PENDING_TTL_S)
                return None
            if not self.redis.set(key("pending", kind, project), job_id, nx=True,
                                  ex=PENDING_TTL_S):
                return None
        self.queue(queue).enqueue(func, *args, job_id=job_id, job_timeout=timeout,
                                  result_ttl=RESULT_TTL_S, failure_ttl=RESULT_TTL_S,
                                  retry=TRANSIENT_RETRY, description=f"{kind} project {project}")
        return job_id

    def release_pending(self, kind: str, project: int, job_id: str | None) -> None:
        """Called by a job once it holds the project's lock: events from now on queue one more
        job. Only the job's own flag is cleared (a retry must not clear a newer job's)."""
        if job_id is None:
            self.redis.delete(key("pending", kind, project))
        else:
            self.redis.eval(self._cas_delete, 1, key("pending", kind, project), job_id)

    def defer(self, kind: str, project: int, job_id: str | None, queue: str, func: str,
              args: tuple[Any, ...], timeout: int, delay_s: int) -> str | None:
        """Re-queue a job that found its project busy, `delay_s` later, as the pending job
        (so workers are never parked on a lock). None if another job is pending already."""
        new_id = f"{kind}-{project}-{self.redis.incr(key('seq', kind, project))}"
        if not self.redis.eval(self._cas_set, 1, key("pending", kind, project), job_id or "",
                               new_id, str(PENDING_TTL_S)):
            return None
        self.queue(queue).enqueue_in(
            timedelta(seconds=delay_s), func, *args, job_id=new_id, job_timeout=timeout,
            result_ttl=RESULT_TTL_S, failure_ttl=RESULT_TTL_S, retry=TRANSIENT_RETRY,
            description=f"{kind} project {project}")
        return new_id

    def request_training(self, project: int, forced: bool = False) -> str | None:
        """Queue a training check for the project unless one is pending; the job id or None."""
        if forced:
            self.redis.set(key("forced", project), 1, ex=PENDING_TTL_S)
        if self._collapses("train", project):
            return None
        return self._enqueue_once("train", project, TRAINING_QUEUE,
                                  "backend.jobs.tasks.train_project", (project,),
                                  TRAIN_TIMEOUT_S)

    def is_forced(self, project: int) -> bool:
        return bool(self._get(key("forced", project)))

    def clear_forced(self, project: int) -> None:
        """After a training succeeded (a failed one keeps the request for its retry)."""
        self.redis.delete(key("forced", project))

    def request_pushback(self, project: int) -> str | None:
        """Queue pre-annotation of the project's backlog by its champion (single flight)."""
        return self._enqueue_once("pushback", project, PREDICT_QUEUE,
                                  "backend.jobs.pushback.push_back", (project,), PREDICT_TIMEOUT_S)

    def request_review(self, project: int) -> str | None:
        """Queue a suspected-label-error review of the project's labeled tasks (single
        flight); on the training queue, whose workers hold the images in their cache."""
        return self._enqueue_once("review", project, TRAINING_QUEUE,
                                  "backend.jobs.review.review_labels", (project,),
                                  PREDICT_TIMEOUT_S)

    def request_new_tasks(self, project: int, task_ids: list[int]) -> str:
        """Queue predictions for tasks Label Studio just created."""
        job = self.queue(PREDICT_QUEUE).enqueue(
            "backend.jobs.pushback.predict_new_tasks", project, task_ids,
            job_timeout=PREDICT_TIMEOUT_S, result_ttl=RESULT_TTL_S, failure_ttl=RESULT_TTL_S,
            retry=TRANSIENT_RETRY, description=f"new tasks project {project}")
        return str(job.id)

    def set_assignment(self, project: int, config: dict[str, Any] | None) -> None:
        """Remember (or, with None, forget) a project's workload split for the top-ups."""
        if config is None:
            self.redis.delete(key("assign", project))
        else:
            self.redis.set(key("assign", project), json.dumps(config))

    def assignment(self, project: int) -> dict[str, Any] | None:
        raw = self._get(key("assign", project))
        return dict(json.loads(raw)) if raw else None

    def request_assign(self, project: int) -> str | None:
        """Queue a top-up of the project's labeler batches, if it has a split (single flight)."""
        if not self.redis.exists(key("assign", project)):
            return None
        return self._enqueue_once("assign", project, HOUSEKEEPING_QUEUE,
                                  "backend.jobs.tasks.top_up_assignments", (project,),
                                  RECONCILE_TIMEOUT_S)

    def request_reconcile(self, interval: int) -> str | None:
        """Queue one reconciliation pass per interval, whichever worker asks first."""
        if not self.redis.set(key("reconcile-tick"), 1, nx=True, ex=max(1, interval)):
            return None
        job = self.queue(HOUSEKEEPING_QUEUE).enqueue(
            "backend.jobs.tasks.reconcile", job_timeout=RECONCILE_TIMEOUT_S,
            result_ttl=RESULT_TTL_S, description="reconcile")
        return str(job.id)

    # -- bookkeeping --------------------------------------------------------------------

    def last_trained(self, project: int) -> int | None:
        value = self._get(key("trained-at", project))
        return int(value) if value is not None else None

    def set_last_trained(self, project: int, labeled: int) -> None:
        self.redis.set(key("trained-at", project), labeled)

    def pushback_done(self, project: int) -> dict[str, Any] | None:
        """{"version", "tasks"} of the last complete push-back, or None."""
        value = self._get(key("pushback-done", project))
        return dict(json.loads(value)) if value is not None else None

    def set_pushback_done(self, project: int, version: str, tasks: int) -> None:
        self.redis.set(key("pushback-done", project),
                       json.dumps({"version": version, "tasks": tasks}))

    def record_training(self, project: int, outcome: str, seconds: float | None = None,
                        labeled: int | None = None, has_champion: bool | None = None) -> None:
        """Count a training round by outcome (promoted, rejected, handed_back) for the metrics
        exporter; a finished round also leaves its duration, labels and whether a champion
        exists."""
        name = key("training-stats", project)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(name, outcome, 1)
            if seconds is not None:
                pipe.hincrbyfloat(name, "seconds_sum", seconds)
                pipe.hincrby(name, "seconds_count", 1)
                pipe.hset(name, mapping={"last_seconds": seconds, "last_finished": time.time()})
            if labeled is not None:
                pipe.hset(name, "labeled", str(labeled))
            if has_champion is not None:
                pipe.hset(name, "has_champion", str(int(has_champion)))
            pipe.execute()

    def training_stats(self, project: int) -> dict[str, float]:
        """What `record_training` counted for the project (empty before its first round)."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(key("training-stats", project)))
        return {name.decode(): float(value) for name, value in raw.items()}

    def clear_cursor(self, project: int, version: str) -> None:
        self.redis.delete(key("cursor", project, version))

    def cursor(self, project: int, version: str) -> int:
        value = self._get(key("cursor", project, version))
        return int(value) if value is not None else 0

    def set_cursor(self, project: int, version: str, task_id: int) -> None:
        self.redis.set(key("cursor", project, version), task_id, ex=PENDING_TTL_S * 4)

    def jobs(self, project: int | None = None) -> dict[str, list[dict[str, Any]]]:
        """Queued, running and failed jobs (of one project when given), newest first."""
        from rq.registry import FailedJobRegistry, StartedJobRegistry

        found: dict[str, list[dict[str, Any]]] = {"queued": [], "running": [], "failed": []}
        for name in ALL_QUEUES:
            queue = self.queue(name)
            groups = (("queued", queue.get_job_ids()),
                      ("running", StartedJobRegistry(queue=queue).get_job_ids()),
                      ("failed", FailedJobRegistry(queue=queue).get_job_ids()))
            for state, ids in groups:
                for job in Job.fetch_many(list(ids), connection=self.redis):
                    if job is None:
                        continue
                    if project is not None and job.args and job.args[0] != project:
                        continue
                    entry = {"id": job.id, "queue": name, "what": job.description,
                             "enqueued_at": str(job.enqueued_at), "meta": job.meta}
                    if state == "failed":
                        result = job.latest_result()
                        text = (result.exc_string if result is not None else "") or ""
                        lines = text.strip().splitlines()
                        entry["reason"] = lines[-1] if lines else "unknown"
                    found[state].append(entry)
        return found
