"""Where images come from: an Azure Blob container (any endpoint: Azure, Azurite, private).

Browsers and the ML backend open each task through a SAS URL with a TTL; the sync re-signs a
task's URL well before it expires (`SYNC_SAS_TTL_HOURS`, re-signed when less than a third of it
is left), so no task is left with a dead URL while the sync runs.

Least privilege: each URL is a *blob* SAS (`sr=b`) for that one blob, read only (`sp=r`), HTTPS
only when the endpoint is HTTPS (`spr=https`). The sync itself lists and reads through the
service client's own credential; it never needs write, delete or list on a signed URL. The TTL
(default 7 days) weighs a leaked URL (one image, readable until it expires; anyone who can see
the task can already see the image) against two costs of a short one: every task is PATCHed in
Label Studio once per two thirds of the TTL (118,000 tasks at 24 h would be about 2 PATCHes a
second, for ever), and when the sync stops the first URLs die a third of a TTL later (2.3 days
at 7 days: a weekend). 7 days is also the most a user delegation SAS may live. With
AZURE_STORAGE_SAS the configured token itself goes into every task URL, so it must grant read
and list only: anything more (write, delete, ...) is refused at start.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote

from sync.plan import BlobInfo

DEFAULT_PATTERN = r"(?i)\.(jpe?g|png|bmp|gif|tiff?|webp)$"
DELEGATION_KEY_LIFETIME = timedelta(days=7) - timedelta(minutes=10)  # Azure's limit: 7 days
CLOCK_SKEW = timedelta(minutes=5)
TASK_SAS_PERMISSIONS = frozenset("rl")  # what a configured token in task URLs may grant


def check_task_sas(sas_token: str) -> None:
    """Refuse a configured SAS token that grants more than read and list: it is put in every
    task URL, where anyone who can open a task could use it."""
    permissions = parse_qs(sas_token.lstrip("?")).get("sp", [""])[0]
    extra = sorted(set(permissions) - TASK_SAS_PERMISSIONS)
    if extra:
        raise ValueError(f"AZURE_STORAGE_SAS grants {''.join(extra)!r} besides read and list "
                         f"(sp={permissions}); it goes into every task URL, so give a token "
                         "with read and list only (sp=rl)")


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
        check_task_sas(sas_token)
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
        """A read-only SAS URL for one blob and its expiry (epoch seconds).

        Signed with the account key, or with a user delegation key when logged in through
        DefaultAzureCredential (then it expires with the key, at most 7 days on); with a
        configured SAS token, that token is used as it is and never expires from our side.
        """
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        base = self.container.url.split("?", 1)[0].rstrip("/")
        if self.sas_token:
            return f"{base}/{quote(name)}?{self.sas_token}", 0.0
        now = now or datetime.now(UTC)
        expiry = now + self.sas_ttl
        signing: dict[str, Any] = {"account_key": self._key}
        if not self._key:
            key, key_expiry = self._delegation_key(now)
            signing = {"user_delegation_key": key}
            expiry = min(expiry, key_expiry)
        sas = generate_blob_sas(str(self.service.account_name), self.container_name, name,
                                permission=BlobSasPermissions(read=True), expiry=expiry,
                                protocol="https" if base.startswith("https:") else None,
                                **signing)
        return f"{base}/{quote(name)}?{sas}", expiry.timestamp()

    def _delegation_key(self, now: datetime) -> tuple[Any, datetime]:
        """A user delegation key and its expiry; a new one once URLs signed with the current
        one would live less than two thirds of the TTL (they would be re-signed early)."""
        wanted = now + min(self.sas_ttl, DELEGATION_KEY_LIFETIME) * 2 / 3
        if self._delegation is None or self._delegation[1] < wanted:
            valid_until = now + DELEGATION_KEY_LIFETIME
            key = self.service.get_user_delegation_key(now - CLOCK_SKEW, valid_until)
            self._delegation = (key, valid_until)
        return self._delegation


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
