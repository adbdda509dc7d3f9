"""The one settings object, built from the environment in one place.

Every setting has one environment variable name, a default and a one-line description; the
README's settings table is generated from `FIELDS` (`mlassist settings --markdown`), so the
documentation cannot drift from the code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from backend.core import parsers as parse
from backend.core.errors import SettingsError


def setting(env: str, parser: Callable[[str], Any], default: str | None, doc: str,
            secret: bool = False) -> Any:
    """Declare one setting: its variable name, parser, default (None = required) and doc."""
    return field(repr=not secret, metadata={"env": env, "parse": parser, "default": default,
                                            "doc": doc, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """All of MLAssist's configuration, read once from the environment."""

    label_studio_url: str = setting(
        "LABEL_STUDIO_URL", parse.url, None,
        "Base URL the backend uses to reach Label Studio (API, uploaded images, presign).")
    label_studio_api_key: str = setting(
        "LABEL_STUDIO_API_KEY", parse.text, None,
        "Label Studio legacy token or personal access token (JWT); both work.", secret=True)
    redis_url: str = setting(
        "REDIS_URL", parse.redis_url, "redis://localhost:6379/0",
        "Redis used by the job queues and locks, and by `mlassist sync` to cache which blobs "
        "it imported (Label Studio stays the record; without Redis a start reads all tasks).")
    model_dir: Path = setting(
        "MODEL_DIR", parse.path, "~/.local/share/mlassist/models",
        "Directory of the model registry (checkpoints, versions).")
    model_arch: str = setting(
        "MODEL_ARCH", parse.text, "ssdlite320_mobilenet_v3_large",
        "Detector architecture; see `mlassist archs` for the list.")
    model_weights: str = setting(
        "MODEL_WEIGHTS", parse.weights, "coco",
        "`coco` (torchvision's COCO weights from the torch cache), `imagenet` (an ImageNet "
        "backbone with new heads: training starts there), `none`, or a checkpoint path; "
        "`mlassist weights fetch` gets the files.")
    model_weights_fallback: str = setting(
        "MODEL_WEIGHTS_FALLBACK", parse.choice("error", "none"), "error",
        "When COCO or ImageNet weights are absent: `error` stops start-up (and an ImageNet "
        "start's training), `none` serves an untrained model (and trains from scratch).")
    weights_base_url: str = setting(
        "WEIGHTS_BASE_URL", parse.url, "https://download.pytorch.org/models",
        "Where `mlassist weights fetch` downloads torchvision's weight files from (replaces "
        "the start of torchvision's URLs; a mirror, or a loopback server in tests).")
    device: str = setting("DEVICE", parse.device, "auto", f"Torch device: {parse.DEVICES_HELP}.")
    torch_threads: int = setting(
        "TORCH_THREADS", parse.non_negative_int, "0",
        "Torch (and ONNX Runtime) threads per process: each web worker, each RQ worker; 0 = "
        "CPU cores / WEB_WORKERS in the server, torch's default in RQ workers. Set it per role "
        "when a server and a worker share cores.")
    inference_runtime: str = setting(
        "INFERENCE_RUNTIME", parse.choice("auto", "onnxruntime", "torch"), "auto",
        "What runs the model forward: `auto` = ONNX Runtime for SSD models on the CPU (about "
        "3x faster, checked against torch at load) and torch otherwise; `onnxruntime` "
        "requires it; `torch` = eager torch.")
    basic_auth_user: str = setting(
        "BASIC_AUTH_USER", parse.text, "",
        "HTTP Basic user required on every route but /health (empty = auth off).")
    basic_auth_pass: str = setting(
        "BASIC_AUTH_PASS", parse.text, "", "HTTP Basic password (set both or neither).",
        secret=True)
    allowed_image_hosts: tuple[str, ...] = setting(
        "ALLOWED_IMAGE_HOSTS", parse.host_list, "",
        "Comma list of extra hosts images may be fetched from (`host`, `host:port`, "
        "`*.domain`); the Label Studio host is always allowed.")
    score_threshold: float = setting(
        "SCORE_THRESHOLD", parse.fraction, "0.5",
        "Default minimum box score; a `model_score_threshold` attribute on the tag wins.")
    max_boxes_per_image: int = setting(
        "MAX_BOXES_PER_IMAGE", parse.positive_int, "100", "Most boxes kept per image, best first.")
    max_image_bytes: int = setting(
        "MAX_IMAGE_BYTES", parse.positive_int, str(50 * 1024 * 1024),
        "Largest image download accepted, in bytes.")
    max_image_pixels: int = setting(
        "MAX_IMAGE_PIXELS", parse.positive_int, "100000000",
        "Largest image accepted, in pixels (guards against decompression bombs).")
    image_fetch_timeout: float = setting(
        "IMAGE_FETCH_TIMEOUT", parse.positive_float, "15",
        "Seconds allowed to download one image, in total.")
    predict_batch_size: int = setting(
        "PREDICT_BATCH_SIZE", parse.positive_int, "4", "Images per model forward in /predict.")
    predict_time_budget: float = setting(
        "PREDICT_TIME_BUDGET", parse.positive_float, "80",
        "Seconds one /predict may spend; Label Studio gives up after 100 s and keeps nothing.")
    interactive_time_budget: float = setting(
        "INTERACTIVE_TIME_BUDGET", parse.positive_float, "3",
        "Seconds a smart-tool request (a click or rough box) may spend before the GrabCut "
        "fallback is skipped; Label Studio waits up to 100 s, the annotator much less.")
    interactive_min_score: float = setting(
        "INTERACTIVE_MIN_SCORE", parse.fraction, "0.05",
        "Lowest score of a model box a smart-tool click or rough box may pick.")
    max_request_bytes: int = setting(
        "MAX_REQUEST_BYTES", parse.positive_int, str(64 * 1024 * 1024),
        "Largest request body accepted, in bytes.")
    host: str = setting("HOST", parse.text, "0.0.0.0", "Address `mlassist serve` binds.")  # noqa: S104
    port: int = setting("PORT", parse.positive_int, "9090", "Port `mlassist serve` binds.")
    web_workers: int = setting(
        "WEB_WORKERS", parse.positive_int, "1", "Gunicorn worker processes (each loads the model).")
    web_threads: int = setting(
        "WEB_THREADS", parse.positive_int, "4",
        "Threads per worker; model forwards are serialized per process.")
    web_timeout: int = setting(
        "WEB_TIMEOUT", parse.positive_int, "120",
        "Gunicorn worker timeout in seconds (above PREDICT_TIME_BUDGET).")
    registry_azure_container: str = setting(
        "REGISTRY_AZURE_CONTAINER", parse.text, "",
        "Azure Blob container holding the model registry, shared by every machine "
        "(empty = the local MODEL_DIR).")
    azure_storage_connection_string: str = setting(
        "AZURE_STORAGE_CONNECTION_STRING", parse.text, "",
        "Connection string of the storage account (needed with REGISTRY_AZURE_CONTAINER).",
        secret=True)
    image_cache_dir: Path = setting(
        "IMAGE_CACHE_DIR", parse.path, "~/.cache/mlassist/images",
        "Where training keeps downloaded task images, keyed by the task's image reference.")
    train_steps: int = setting(
        "TRAIN_STEPS", parse.positive_int, "500",
        "Optimizer steps per training round (5-6 min for SSDlite on 2 CPU cores); the "
        "most a round takes when TRAIN_EPOCHS is set.")
    train_epochs: float = setting(
        "TRAIN_EPOCHS", parse.non_negative_float, "0",
        "Rounds that grow with the training set: TRAIN_EPOCHS passes over its images, between "
        "TRAIN_MIN_STEPS and TRAIN_STEPS steps (0 = always TRAIN_STEPS).")
    train_min_steps: int = setting(
        "TRAIN_MIN_STEPS", parse.positive_int, "500",
        "The fewest steps a round takes with TRAIN_EPOCHS (fewer lost AP50 on 24 images: "
        "benchmarks/curves.py).")
    train_batch_size: int = setting(
        "TRAIN_BATCH_SIZE", parse.positive_int, "4", "Images per training step (at least 2).")
    train_lr: float = setting(
        "TRAIN_LR", parse.positive_float, "0.001", "Peak AdamW learning rate.")
    train_seed: int = setting(
        "TRAIN_SEED", parse.non_negative_int, "0", "Seed of a training round.")
    validation_fraction: float = setting(
        "VALIDATION_FRACTION", parse.fraction, "0.2",
        "Share of labeled tasks held out for validation (chosen by a hash of the task id).")
    min_validation_images: int = setting(
        "MIN_VALIDATION_IMAGES", parse.positive_int, "5",
        "Validation images needed before a model can be measured, hence trained.")
    target_precision: float = setting(
        "TARGET_PRECISION", parse.fraction, "0.9",
        "Precision each class's calibrated pre-label threshold must reach on validation.")
    prelabel_uncalibrated: str = setting(
        "PRELABEL_UNCALIBRATED", parse.choice("hide", "show"), "hide",
        "Classes of a trained model that cannot reach TARGET_PRECISION: `hide` their boxes, "
        "or `show` them at SCORE_THRESHOLD.")
    promotion_margin: float = setting(
        "PROMOTION_MARGIN", parse.fraction, "0.01",
        "AP50 a candidate must gain over the champion (same validation set) to be promoted.")
    min_first_ap50: float = setting(
        "MIN_FIRST_AP50", parse.fraction, "0.3", "AP50 the first model of a project must reach...")
    min_first_assist: float = setting(
        "MIN_FIRST_ASSIST", parse.fraction, "0.1",
        "... or the share of validation boxes its calibrated pre-labels must get right "
        "(0 = AP50 alone decides).")
    keep_versions: int = setting(
        "KEEP_VERSIONS", parse.positive_int, "10",
        "Checkpoints kept per project (the champion always is); older records stay.")
    webhook_secret: str = setting(
        "WEBHOOK_SECRET", parse.text, "",
        "Shared secret Label Studio's webhooks send in the X-MLAssist-Secret header "
        "(`mlassist connect` sets it up); /webhook also accepts Basic auth.", secret=True)
    backend_public_url: str = setting(
        "BACKEND_PUBLIC_URL", parse.url, "http://localhost:9090",
        "URL Label Studio uses to reach this backend (`mlassist connect` registers it).")
    train_min_labeled: int = setting(
        "TRAIN_MIN_LABELED", parse.positive_int, "30",
        "Labeled tasks before a project's first training (about 6 held out for validation).")
    train_every: int = setting(
        "TRAIN_EVERY", parse.positive_int, "50",
        "Newly labeled tasks after which a project trains again.")
    train_growth: float = setting(
        "TRAIN_GROWTH", parse.fraction, "0.5",
        "... or when the labeled tasks grew by this fraction since the last training "
        "(frequent rounds early on); 0 = off.")
    review_min_issue: float = setting(
        "REVIEW_MIN_ISSUE", parse.fraction, "0.3",
        "Issue score from which a labeled task is flagged for review (`mlassist review`, the "
        "Data Manager tab `mlassist: review`); 0 flags every scored task.")
    review_min_score: float = setting(
        "REVIEW_MIN_SCORE", parse.fraction, "0.5",
        "Lowest detection score the review trusts, for classes without a calibrated "
        "threshold (a calibrated one above it wins).")
    review_max_flagged: int = setting(
        "REVIEW_MAX_FLAGGED", parse.positive_int, "500",
        "Most tasks marked for review in Label Studio per pass, worst first (one task update "
        "each); the report keeps every score.")
    job_lock_ttl: int = setting(
        "JOB_LOCK_TTL", parse.positive_int, "60",
        "Seconds a project's training/pre-label lock outlives a worker killed while holding "
        "it (renewed every quarter of this while the worker lives).")
    reconcile_interval: int = setting(
        "RECONCILE_INTERVAL", parse.positive_int, "300",
        "Seconds between reconciliation passes of `mlassist worker` (catches lost webhooks).")
    worker_stop_timeout: int = setting(
        "WORKER_STOP_TIMEOUT", parse.positive_int, "240",
        "Seconds `mlassist worker` gives its running job after SIGTERM: a training hands "
        "itself back (queued again) within a step; a job still running then is killed and "
        "retried elsewhere. Keep it under the pod's terminationGracePeriodSeconds.")
    pushback_batch: int = setting(
        "PUSHBACK_BATCH", parse.positive_int, "1000",
        "Tasks the push-back lists per page, and the fewest it imports at once: while Label "
        "Studio's bulk import is slow (a stock 1.23 recounts the whole project per call) it "
        "gathers more pages per import, up to 10,000 predictions.")
    sync_project: int = setting(
        "SYNC_PROJECT", parse.non_negative_int, "0",
        "Project `mlassist sync` imports into when `--project` is not given (containers).")
    sync_heartbeat_file: str = setting(
        "SYNC_HEARTBEAT_FILE", parse.text, "",
        "File `mlassist sync --watch` touches while it works (`mlassist healthcheck sync`).")
    sync_container: str = setting(
        "SYNC_CONTAINER", parse.text, "",
        "Azure Blob container `mlassist sync` imports from (with AZURE_STORAGE_CONNECTION_STRING).")
    sync_account_url: str = setting(
        "SYNC_ACCOUNT_URL", parse.text, "",
        "Blob service URL (instead of a connection string), with AZURE_STORAGE_KEY, "
        "AZURE_STORAGE_SAS, or DefaultAzureCredential when azure-identity is installed.")
    azure_storage_key: str = setting(
        "AZURE_STORAGE_KEY", parse.text, "", "Account key for SYNC_ACCOUNT_URL.", secret=True)
    azure_storage_sas: str = setting(
        "AZURE_STORAGE_SAS", parse.text, "",
        "SAS token for SYNC_ACCOUNT_URL (read + list; it is also put in task URLs).",
        secret=True)
    sync_local_dir: str = setting(
        "SYNC_LOCAL_DIR", parse.text, "",
        "A local directory to sync instead of a container (no Azure needed).")
    sync_local_url_prefix: str = setting(
        "SYNC_LOCAL_URL_PREFIX", parse.text, "",
        "URL prefix of files from SYNC_LOCAL_DIR, e.g. `/data/local-files/?d=images/` when "
        "Label Studio serves local files from the directory above.")
    sync_prefix: str = setting("SYNC_PREFIX", parse.text, "", "Only blobs under this prefix.")
    sync_recursive: str = setting(
        "SYNC_RECURSIVE", parse.choice("true", "false"), "true",
        "Whether blobs in sub-folders of the prefix are imported.")
    sync_pattern: str = setting(
        "SYNC_PATTERN", parse.regex, r"(?i)\.(jpe?g|png|bmp|gif|tiff?|webp)$",
        "Regular expression a blob name must match (default: image extensions).")
    sync_interval: int = setting(
        "SYNC_INTERVAL", parse.positive_int, "60",
        "Seconds between passes of `mlassist sync --watch`.")
    sync_batch: int = setting(
        "SYNC_BATCH", parse.positive_int, "500", "Tasks per import request.")
    sync_sas_ttl_hours: float = setting(
        "SYNC_SAS_TTL_HOURS", parse.positive_float, "168",
        "Lifetime of the read-only SAS URLs put in tasks; re-signed when a third is left.")
    task_order: str = setting(
        "TASK_ORDER", parse.choice("mean-score", "detection"), "detection",
        "What a push-back prediction's `score` says: `mean-score` = the mean shown box score "
        "(low = uncertain), `detection` = 1 - the task's usefulness from the ORDER_WEIGHT_* "
        "signals (backend/serving/ordering.py). Either way ascending = most useful first; a "
        "box's own score stays its confidence.")
    order_weight_uncertainty: float = setting(
        "ORDER_WEIGHT_UNCERTAINTY", parse.non_negative_float, "1",
        "Weight of the mean box-score entropy in the detection order.")
    order_weight_flip: float = setting(
        "ORDER_WEIGHT_FLIP", parse.non_negative_float, "0",
        "Weight of flip instability (1 - mean IoU of boxes on the image and its mirror); "
        "above 0 costs a second forward per task, which benchmarks/ordering.py did not repay.")
    order_weight_diversity: float = setting(
        "ORDER_WEIGHT_DIVERSITY", parse.non_negative_float, "0.5",
        "Weight of greedy k-center diversity over the tasks' predicted class profiles (a "
        "cheap proxy, not a backbone embedding), within one push-back page.")
    order_weight_rare: float = setting(
        "ORDER_WEIGHT_RARE", parse.non_negative_float, "0.5",
        "Weight of the rare-class bonus: box score x sqrt((fewest + 1) / (class + 1)) "
        "training boxes per class of the champion.")
    order_priority_field: str = setting(
        "ORDER_PRIORITY_FIELD", parse.choice("false", "true"), "false",
        "Also write the usefulness into `data.mlassist_priority` (sorted by the Data Manager "
        "tab `mlassist: next`); costs a read and a PATCH per task.")
    log_level: str = setting(
        "LOG_LEVEL", parse.choice("debug", "info", "warning", "error"), "info", "Log level.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: the process environment).

        Raises SettingsError naming the first missing or malformed variable.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            meta = spec.metadata
            raw = environ.get(meta["env"])
            if raw is None or (raw.strip() == "" and meta["default"] is None):
                if meta["default"] is None:
                    raise SettingsError(f"{meta['env']} is required: {meta['doc']}")
                raw = meta["default"]
            try:
                values[spec.name] = meta["parse"](raw)
            except ValueError as exc:
                shown = "<hidden>" if meta["secret"] else repr(raw)
                raise SettingsError(f"{meta['env']}={shown} is invalid: {exc}") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field checks that a single parser cannot make."""
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if self.web_timeout <= self.predict_time_budget:
            raise SettingsError(
                f"WEB_TIMEOUT ({self.web_timeout}) must exceed PREDICT_TIME_BUDGET "
                f"({self.predict_time_budget:g}) or gunicorn kills a worker mid-request")
        if self.registry_azure_container and not self.azure_storage_connection_string:
            raise SettingsError("REGISTRY_AZURE_CONTAINER needs AZURE_STORAGE_CONNECTION_STRING")
        if self.train_batch_size < 2:
            raise SettingsError("TRAIN_BATCH_SIZE must be at least 2 (BatchNorm cannot train "
                                "on one image)")
        from backend.core.catalogue import ARCHITECTURES

        if self.model_arch not in ARCHITECTURES:
            raise SettingsError(
                f"MODEL_ARCH={self.model_arch!r} is unknown; choose one of "
                f"{', '.join(sorted(ARCHITECTURES))}")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user)

    def effective_torch_threads(self) -> int:
        if self.torch_threads:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // self.web_workers)


def settings_markdown() -> str:
    """The README table of settings: name, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for spec in fields(Settings):
        meta = spec.metadata
        default = "*required*" if meta["default"] is None else f"`{meta['default']}`"
        if meta["default"] == "":
            default = "(empty)"
        rows.append(f"| `{meta['env']}` | {default} | {meta['doc']} |")
    return "\n".join(rows)
