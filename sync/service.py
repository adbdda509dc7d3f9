"""`mlassist sync`: one pass, or `--watch` passes on an interval (SIGHUP: one now) until
SIGTERM/SIGINT, which stop it after the current batch. A watching sync outlives outages of
Label Studio and of the storage: a failed pass is logged and the next one tries again."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from backend.core.errors import LabelStudioAuthError, MLAssistError, SettingsError
from backend.core.settings import Settings
from backend.labelstudio.client import LabelStudioAPI, LabelStudioAuth
from sync.importer import Importer
from sync.sources import AzureBlobSource, LocalDirSource
from sync.state import StateCache

logger = logging.getLogger(__name__)


def build_importer(settings: Settings, project: int) -> Importer:
    """The importer `mlassist sync` runs, its state cached in REDIS_URL's Redis (when that
    Redis cannot be reached the sync reads its state from Label Studio alone)."""
    ttl = timedelta(hours=settings.sync_sas_ttl_hours)
    source: AzureBlobSource | LocalDirSource
    if settings.sync_container and (settings.azure_storage_connection_string
                                    or settings.sync_account_url):
        try:
            source = AzureBlobSource(settings.azure_storage_connection_string,
                                     settings.sync_container, settings.sync_prefix,
                                     settings.sync_recursive == "true", settings.sync_pattern,
                                     ttl, account_url=settings.sync_account_url,
                                     account_key=settings.azure_storage_key,
                                     sas_token=settings.azure_storage_sas)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    elif settings.sync_local_dir and settings.sync_local_url_prefix:
        source = LocalDirSource(settings.sync_local_dir, settings.sync_local_url_prefix,
                                settings.sync_recursive == "true", settings.sync_pattern)
    else:
        raise SettingsError("mlassist sync needs SYNC_CONTAINER with "
                            "AZURE_STORAGE_CONNECTION_STRING or SYNC_ACCOUNT_URL, or "
                            "SYNC_LOCAL_DIR with SYNC_LOCAL_URL_PREFIX")
    api = LabelStudioAPI(LabelStudioAuth(settings.label_studio_url,
                                         settings.label_studio_api_key))
    return Importer(api, project, source, batch=settings.sync_batch,
                    max_bytes=settings.max_image_bytes,
                    resign_before_s=ttl.total_seconds() / 3,
                    state=StateCache.from_url(settings.redis_url, project))


def run_sync(settings: Settings, project: int, watch: bool) -> dict[str, Any]:
    """Run passes; SIGTERM/SIGINT stop after the current batch."""
    from tqdm import tqdm

    stop = threading.Event()
    now = threading.Event()
    def shutdown(*_: object) -> None:
        stop.set()
        now.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, shutdown)
    signal.signal(signal.SIGHUP, lambda *_: now.set())  # on demand: a pass right away
    importer = build_importer(settings, project)
    loaded = False
    last: dict[str, Any] = {}

    def beat() -> None:
        if settings.sync_heartbeat_file:
            Path(settings.sync_heartbeat_file).touch()

    while True:
        beat()
        bar = tqdm(desc=f"project {project} import", unit="task", disable=None,
                   file=sys.stderr)

        def progress(done: int, total: int, bar: Any = bar) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()
            beat()

        try:
            if not loaded:
                known = importer.load_state()
                logger.info("project %s: %d blobs already imported", project, known)
                loaded = True
            report = importer.run_pass(stop.is_set, progress)
        except (SettingsError, LabelStudioAuthError):
            raise  # a human has to fix these: trying again changes nothing
        except Exception as exc:
            if not watch:
                raise
            # Label Studio or the storage is down or failing: keep watching. An import whose
            # answer was lost may still have been committed, so the next pass starts from
            # what Label Studio holds, as a restarted sync would.
            importer, loaded = build_importer(settings, project), False
            logger.error("project %s: sync pass failed, next try in %d s: %s: %s", project,
                         settings.sync_interval, type(exc).__name__, exc,
                         exc_info=not isinstance(exc, MLAssistError))
        else:
            last = report.to_dict()
            logger.info("project %s: listed %d, imported %d, updated %d, flagged missing %d, "
                        "back %d, re-signed %d, skipped %d in %.1f s", project, report.listed,
                        report.imported, report.updated, report.flagged_missing,
                        report.returned, report.resigned, len(report.skipped), report.seconds)
        finally:
            bar.close()
        beat()
        if not watch:
            return last
        now.wait(settings.sync_interval)
        now.clear()
        if stop.is_set():
            return last
