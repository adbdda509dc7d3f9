"""Prometheus metrics of one server process (one registry per app, nothing global).

With several gunicorn workers each process reports its own numbers; scrape each worker, or
run one worker per container (the default, WEB_WORKERS=1).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 100)


class Metrics:
    """The counters, gauges and histograms the server exports at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mlassist_http_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("mlassist_http_request_seconds", "HTTP request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tasks_predicted = Counter("mlassist_tasks_predicted",
                                       "Tasks answered with a prediction",
                                       registry=self.registry)
        self.task_errors = Counter("mlassist_task_errors",
                                   "Tasks answered without a prediction, by reason",
                                   ["reason"], registry=self.registry)
        self.predict_stage = Histogram(
            "mlassist_predict_stage_seconds", "Time spent in each stage of /predict and "
            "push-back: fetch and decode per image, forward and results per chunk of tasks",
            ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.boxes = Counter("mlassist_boxes_predicted", "Boxes returned in predictions",
                             registry=self.registry)
        self.webhooks = Counter("mlassist_webhooks", "Webhook events received, by action",
                                ["action"], registry=self.registry)
        self.model_loaded = Gauge("mlassist_model_loaded", "1 when the detector is loaded",
                                  registry=self.registry)
        self.model_info = Gauge("mlassist_model_info", "The served model version (value 1)",
                                ["version", "arch"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
