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


def blob_service(connection_string: str = "", account_url: str = "", account_key: str = "",
                 sas_token: str = "") -> Any:
    """A BlobServiceClient from a connection string, or an account URL with a key, a SAS
    token, or (when azure-identity is installed) DefaultAzureCredential."""
    from azure.storage.blob import BlobServiceClient

    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string)
    if not account_url:
        raise ValueError("give a connection string or an account URL")
    if account_key:
        from urllib.parse import urlsplit

        parts = urlsplit(account_url)
        # https://<account>.blob.core.windows.net, or http://host:port/<account> (Azurite)
        name = parts.path.strip("/").split("/")[0] or (parts.hostname or "").split(".")[0]
        return BlobServiceClient(account_url,
                                 credential={"account_name": name, "account_key": account_key})
    if sas_token:
        return BlobServiceClient(account_url, credential=sas_token.lstrip("?"))
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise ValueError("an account URL alone needs azure-identity (pip install "
                         "'mlassist[azure]'), or give AZURE_STORAGE_KEY / AZURE_STORAGE_SAS") \
            from None
    return BlobServiceClient(account_url, credential=DefaultAzureCredential())


class AzureBlobSource:
    """Lists a container (under a prefix, recursively or not) and signs read-only URLs."""

    def __init__(self, connection_string: str, container: str, prefix: str = "",
                 recursive: bool = True, pattern: str = DEFAULT_PATTERN,
                 sas_ttl: timedelta = timedelta(days=7), *, account_url: str = "",
                 account_key: str = "", sas_token: str = "") -> None:
        self.service = blob_service(connection_string, account_url, account_key, sas_token)
        self.sas_token = sas_token.lstrip("?")
        self._delegation: tuple[Any, datetime] | None = None
        self.container_name = container
        self.container = self.service.get_container_client(container)
        self.prefix = prefix
        self.recursive = recursive
        self.pattern = re.compile(pattern)
        self.sas_ttl = sas_ttl
        self._key = getattr(self.service.credential, "account_key", None)

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
        """A read-only SAS URL for a blob and its expiry (epoch seconds).

        Signed with the account key, or with a user delegation key when logged in through
        DefaultAzureCredential; with a configured SAS token, that token is used as it is (give
        it read and list only) and never expires from our side.
        """
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        base = self.container.url.split("?", 1)[0].rstrip("/")
        if self.sas_token:
            return f"{base}/{quote(name)}?{self.sas_token}", 0.0
        now = now or datetime.now(UTC)
        expiry = now + self.sas_ttl
        signing: dict[str, Any] = {"account_key": self._key}
        if not self._key:
            signing = {"user_delegation_key": self._delegation_key(now, expiry)}
        sas = generate_blob_sas(str(self.service.account_name), self.container_name, name,
                                permission=BlobSasPermissions(read=True), expiry=expiry,
                                **signing)
        return f"{base}/{quote(name)}?{sas}", expiry.timestamp()

    def _delegation_key(self, now: datetime, expiry: datetime) -> Any:
        if self._delegation is None or self._delegation[1] < expiry:
            valid_until = now + max(self.sas_ttl * 2, timedelta(days=1))
            key = self.service.get_user_delegation_key(now - timedelta(minutes=5), valid_until)
            self._delegation = (key, valid_until)
        return self._delegation[0]


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
