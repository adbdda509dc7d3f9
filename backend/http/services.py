"""What the routes share in one app: settings, the served models, the predictor, the job queue
and the label configs seen per project. Built once by create_app; routes reach it through
`services()` (the app's extension), never through module globals."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from backend.core.errors import BadRequest
from backend.core.settings import Settings
from backend.http.body import project_key
from backend.http.metrics import Metrics
from backend.jobs.queues import JobQueue, connect
from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.label_config import LabelConfig, parse_label_config
from backend.media.images import ImageFetcher
from backend.model.detector import DetectorHolder, ModelSpec
from backend.model.registry import Registry, open_registry
from backend.serving.champions import ChampionServing
from backend.serving.interactive import InteractiveAnnotator, InteractiveOptions
from backend.serving.predictions import PredictOptions, Predictor
from backend.tools.dashboard import StatsCache

EXTENSION = "mlassist"
PROJECT_CONFIGS_KEPT = 256


class ProjectConfigs:
    """The label config last seen per project (at /setup or /predict), a bounded number."""

    def __init__(self, kept: int = PROJECT_CONFIGS_KEPT) -> None:
        self._xml: dict[str, str] = {}
        self._lock = threading.Lock()
        self._kept = kept

    def config_for(self, body: dict[str, Any], key: str) -> LabelConfig:
        """The body's label config under `key`, else the one last seen for its project."""
        xml = body.get(key)
        project = project_key(body)
        if xml is None and project is not None:
            with self._lock:
                xml = self._xml.get(project)
        if not isinstance(xml, str):
            raise BadRequest(f"`{key}` (the project's label config XML) must be a string")
        config = parse_label_config(xml)
        if project is not None:
            with self._lock:
                if len(self._xml) >= self._kept and project not in self._xml:
                    self._xml.pop(next(iter(self._xml)))
                self._xml[project] = xml
        return config


@dataclass
class Services:
    """One app's collaborators."""

    settings: Settings
    holder: DetectorHolder
    fetcher: ImageFetcher
    registry: Registry
    serving: ChampionServing
    predictor: Predictor
    metrics: Metrics
    interactive: InteractiveAnnotator
    configs: ProjectConfigs = field(default_factory=ProjectConfigs)
    stats_cache: StatsCache = field(default_factory=StatsCache)
    _queue: list[JobQueue] = field(default_factory=list)

    def queue(self) -> JobQueue:
        """The job queue, connected on first use: predictions are served without Redis."""
        if not self._queue:
            self._queue.append(JobQueue(connect(self.settings.redis_url, fast=True)))
        return self._queue[0]

    def labelstudio(self) -> LabelStudioAPI:
        return LabelStudioAPI(self.fetcher.auth)


def build_services(settings: Settings, holder: DetectorHolder | None,
                   fetcher: ImageFetcher | None, registry: Registry | None,
                   jobs: JobQueue | None) -> Services:
    """The collaborators, each given or built from the settings; starts loading the base model
    in the background unless a holder is given."""
    metrics = Metrics()
    if holder is None:
        holder = DetectorHolder(ModelSpec.from_settings(settings), settings.device,
                                settings.effective_torch_threads(),
                                settings.inference_runtime).start()
    if fetcher is None:
        fetcher = ImageFetcher.from_settings(settings)
    if registry is None:
        registry = open_registry(settings)
    serving = ChampionServing(registry, holder, settings.device, settings.inference_runtime,
                              settings.effective_torch_threads())
    predictor = Predictor(
        fetcher,
        PredictOptions(score_threshold=settings.score_threshold,
                       max_boxes=settings.max_boxes_per_image,
                       batch_size=settings.predict_batch_size,
                       time_budget=settings.predict_time_budget,
                       show_uncalibrated=settings.prelabel_uncalibrated == "show"),
        on_task_error=lambda reason: metrics.task_errors.labels(reason).inc(),
        on_stage=lambda stage, seconds: metrics.predict_stage.labels(stage).observe(seconds))
    interactive = InteractiveAnnotator(
        fetcher, serving, InteractiveOptions(time_budget=settings.interactive_time_budget,
                                             min_score=settings.interactive_min_score))
    return Services(settings, holder, fetcher, registry, serving, predictor, metrics,
                    interactive, _queue=[jobs] if jobs is not None else [])


def services() -> Services:
    """The current app's collaborators (inside a request)."""
    found: Services = current_app.extensions[EXTENSION]
    return found
