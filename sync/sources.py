"""Where images come from: an Azure Blob container (any endpoint: Azure, Azurite, private).

Browsers and the ML backend open each task through a read-only SAS URL with a TTL; the sync
re-signs a task's URL well before it expires (`SYNC_SAS_TTL_HOURS`, re-signed when less than a
third of it is left), so no task is left with a dead URL while the sync runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from sync.plan import BlobInfo

DEFAULT_PATTERN = r"(?i)\.(jpe?g|png|bmp|gif|tiff?|webp)$"


class AzureBlobSource:
    """Lists a container (under a prefix, recursively or not) and signs read-only URLs."""

    def __init__(self, connection_string: str, container: str, prefix: str = "",
                 recursive: bool = True, pattern: str = DEFAULT_PATTERN,
                 sas_ttl: timedelta = timedelta(days=7)) -> None:
        from azure.storage.blob import BlobServiceClient

        self.service = BlobServiceClient.from_connection_string(connection_string)
        self.container_name = container
        self.container = self.service.get_container_client(container)
        self.prefix = prefix
        self.recursive = recursive
        self.pattern = re.compile(pattern)
        self.sas_ttl = sas_ttl
        self._key = self.service.credential.account_key if self.service.credential else None

    def __repr__(self) -> str:
        return f"AzureBlobSource({self.container_name!r}, prefix={self.prefix!r})"

    def list(self) -> Iterator[BlobInfo]:
        """Every matching blob; names that do not match the filter are passed over."""
        blobs: Iterable[Any]
        if self.recursive:
            blobs = self.container.list_blobs(name_starts_with=self.prefix or None)
        else:
            blobs = (b for b in self.container.walk_blobs(name_starts_with=self.prefix or None,
                                                          delimiter="/")
                     if not b.name.endswith("/"))
        for blob in blobs:
            if self.pattern.search(blob.name):
                yield BlobInfo(self.container_name, blob.name, str(blob.etag).strip('"'),
                               int(blob.size or 0))

    def url_for(self, name: str, now: datetime | None = None) -> tuple[str, float]:
        """A read-only SAS URL for a blob and its expiry (epoch seconds)."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        expiry = (now or datetime.now(UTC)) + self.sas_ttl
        sas = generate_blob_sas(str(self.service.account_name), self.container_name, name,
                                account_key=self._key, permission=BlobSasPermissions(read=True),
                                expiry=expiry)
        base = self.container.url.rstrip("/")
        return f"{base}/{quote(name)}?{sas}", expiry.timestamp()


class LocalDirSource:
    """A directory on disk, with the same behaviour: names are paths relative to `root`, the
    etag is the file's modification time and size, URLs are `url_prefix` + the quoted path
    (for Label Studio's local-files serving: `/data/local-files/?d=<dir under its root>/`)."""

    def __init__(self, root: str, url_prefix: str, recursive: bool = True,
                 pattern: str = DEFAULT_PATTERN) -> None:
        from pathlib import Path

        self.root = Path(root).expanduser()
        self.url_prefix = url_prefix
        self.recursive = recursive
        self.pattern = re.compile(pattern)

    def __repr__(self) -> str:
        return f"LocalDirSource({str(self.root)!r})"

    def list(self) -> Iterator[BlobInfo]:
        paths = self.root.rglob("*") if self.recursive else self.root.glob("*")
        for path in sorted(paths):
            name = path.relative_to(self.root).as_posix()
            if path.is_file() and self.pattern.search(name):
                stat = path.stat()
                yield BlobInfo("local", name, f"{stat.st_mtime_ns:x}-{stat.st_size:x}",
                               stat.st_size)

    def url_for(self, name: str) -> tuple[str, float]:
        return self.url_prefix + quote(name), 0.0
