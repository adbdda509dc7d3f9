"""The model registry: versions per project, a champion pointer, promotion and rollback.

Layout in a store (a local directory, or an Azure Blob container shared by several machines):

    <project>/registry.json       {"champion", "next", "versions": [record, ...], "history"}
    <project>/<version>.pt        one checkpoint per kept version

A checkpoint is uploaded before the record that names it, and every registry.json write is a
whole-object replace under the store's lock (a file lock, or a blob lease that expires), so an
interrupted save leaves either the old registry or the new one, never a record without its file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from backend.core.errors import MLAssistError
from backend.core.files import atomic_file

if TYPE_CHECKING:
    from backend.core.settings import Settings

logger = logging.getLogger(__name__)

LEASE_SECONDS = 60
LEASE_WAIT_SECONDS = 120


class RegistryError(MLAssistError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to)."""

    status = 404


def promotion_decision(candidate: dict[str, Any], champion: dict[str, Any] | None,
                       margin: float, min_first: float, min_first_assist: float = 0.0,
                       assist: float | None = None) -> tuple[bool, str]:
    """Whether a candidate beats the champion; both measured on the same validation set.

    Compares AP50 (what pre-labels live by), then AP to break ties within the margin. A first
    model passes with AP50 >= `min_first`, or (when `min_first_assist` > 0) when `assist`,
    the share of validation boxes its calibrated pre-labels get right, reaches it: what is
    shown is gated by measured precision anyway, so a weak model that shows a few right boxes
    already saves work.
    """
    ap50 = float(candidate.get("ap50") or 0.0)
    if champion is None:
        if ap50 >= min_first:
            return True, f"first model: AP50 {ap50:.3f} >= minimum {min_first:.3f}"
        if min_first_assist > 0 and assist is not None and assist >= min_first_assist:
            return True, (f"first model: AP50 {ap50:.3f} < minimum {min_first:.3f}, but its "
                          f"calibrated pre-labels get {assist:.0%} of the validation boxes "
                          f"right (>= {min_first_assist:.0%})")
        return False, f"first model: AP50 {ap50:.3f} < minimum {min_first:.3f}" + (
            f" and its calibrated pre-labels get {assist or 0:.0%} of the validation boxes "
            f"right (< {min_first_assist:.0%})" if min_first_assist > 0 else "")
    best = float(champion.get("ap50") or 0.0)
    if ap50 >= best + margin:
        return True, f"AP50 {ap50:.3f} beats champion {best:.3f} by >= {margin:.3f}"
    return False, f"AP50 {ap50:.3f} does not beat champion {best:.3f} by {margin:.3f}"


class Store(Protocol):
    """Where registry files live."""

    def read(self, name: str) -> bytes | None: ...
    def write(self, name: str, data: bytes) -> None: ...
    def upload(self, name: str, path: Path) -> None: ...
    def download(self, name: str, path: Path) -> None: ...
    def delete(self, name: str) -> None: ...
    def local_path(self, name: str) -> Path | None: ...
    def locked(self, name: str) -> contextlib.AbstractContextManager[None]: ...


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


class LocalStore:
    """A directory; locks are flock()s, released by the kernel if the holder dies."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.exists() else None

    def write(self, name: str, data: bytes) -> None:
        _atomic_write(self.root / name, data)

    def upload(self, name: str, path: Path) -> None:
        if Path(path).resolve() != (self.root / name).resolve():
            _atomic_write(self.root / name, Path(path).read_bytes())

    def download(self, name: str, path: Path) -> None:
        _atomic_write(Path(path), (self.root / name).read_bytes())

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def local_path(self, name: str) -> Path | None:
        return self.root / name

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        path = self.root / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class AzureBlobStore:
    """An Azure Blob container (or Azurite); locks are blob leases that expire on their own."""

    def __init__(self, connection_string: str, container: str) -> None:
        from azure.storage.blob import BlobServiceClient

        # No network here: the container is created on the first write.
        self.container = BlobServiceClient.from_connection_string(
            connection_string).get_container_client(container)
        self._created = False

    def _ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        if not self._created:
            with contextlib.suppress(ResourceExistsError):
                self.container.create_container()
            self._created = True

    def __repr__(self) -> str:
        return f"AzureBlobStore({self.container.container_name!r})"

    def read(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return bytes(self.container.download_blob(name).readall())
        except ResourceNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        # A single-shot upload replaces the blob whole: readers see old or new, never half.
        self._ensure_container()
        self.container.upload_blob(name, data, overwrite=True)

    def upload(self, name: str, path: Path) -> None:
        from azure.core.exceptions import ResourceExistsError

        self._ensure_container()
        with open(path, "rb") as handle:
            try:  # version names are never reused: an existing blob is someone else's
                self.container.upload_blob(name, handle, overwrite=False)
            except ResourceExistsError:
                raise RegistryError(f"{name} already exists in the registry; refusing to "
                                    "overwrite another version's checkpoint") from None

    def download(self, name: str, path: Path) -> None:
        with atomic_file(Path(path)) as handle:
            self.container.download_blob(name).readinto(handle)

    def delete(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self.container.delete_blob(name)

    def local_path(self, name: str) -> Path | None:
        return None

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        self._ensure_container()
        blob = self.container.get_blob_client(f"{name}.lock")
        with contextlib.suppress(ResourceExistsError):
            blob.upload_blob(b"", overwrite=False)
        deadline = time.monotonic() + LEASE_WAIT_SECONDS
        while True:
            try:
                lease = blob.acquire_lease(lease_duration=LEASE_SECONDS)
                break
            except HttpResponseError as exc:
                if time.monotonic() > deadline:
                    raise RegistryError(f"registry lock {name} held for over "
                                        f"{LEASE_WAIT_SECONDS} s") from exc
                time.sleep(0.2)
        try:
            yield
        finally:
            with contextlib.suppress(HttpResponseError):
                lease.release()


class Registry:
    """Model versions of each project, in a store, with a local cache of checkpoints."""

    def __init__(self, store: Store, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = Path(cache_dir).expanduser()

    # -- reading ------------------------------------------------------------------------

    def _state(self, project: int) -> dict[str, Any]:
        raw = self.store.read(f"{project}/registry.json")
        if raw is None:
            return {"champion": None, "next": 1, "versions": [], "history": []}
        return dict(json.loads(raw))

    def versions(self, project: int) -> list[dict[str, Any]]:
        return list(self._state(project)["versions"])

    def champion(self, project: int) -> dict[str, Any] | None:
        state = self._state(project)
        return self._find(state, state["champion"]) if state["champion"] else None

    def record(self, project: int, version: str) -> dict[str, Any]:
        found = self._find(self._state(project), version)
        if found is None:
            raise RegistryError(f"project {project} has no model version {version!r}")
        return found

    @staticmethod
    def _find(state: dict[str, Any], version: str) -> dict[str, Any] | None:
        return next((v for v in state["versions"] if v["version"] == version), None)

    def checkpoint_path(self, project: int, version: str) -> Path:
        """A local path of the version's checkpoint (downloaded once; versions never change)."""
        record = self.record(project, version)
        name = record.get("checkpoint")
        if not name:
            raise RegistryError(f"{version} was pruned (KEEP_VERSIONS); its checkpoint is gone")
        local = self.store.local_path(name)
        if local is not None:
            return local
        cached = self.cache_dir / name
        if not cached.exists():
            self.store.download(name, cached)
        return cached

    # -- writing ------------------------------------------------------------------------

    def reserve_version(self, project: int, arch: str) -> str:
        """The next version name, `<arch>-v<n>`; numbers are never reused."""
        with self.store.locked(f"{project}/registry"):
            state = self._state(project)
            number = int(state["next"])
            state["next"] = number + 1
            self._save(project, state)
        return f"{arch}-v{number}"

    def add(self, project: int, record: dict[str, Any], checkpoint: Path, promote: bool,
            keep: int, expected_champion: str | None | bool = False) -> dict[str, Any]:
        """Upload a version's checkpoint, then record it (and make it champion if promoted).

        With `expected_champion` (a version or None), promotion happens only if the champion
        is still the one the candidate was compared with (not changed by a rollback or another
        machine meanwhile); otherwise the version is kept as rejected, saying so.
        """
        version = record["version"]
        name = f"{project}/{version}.pt"
        self.store.upload(name, checkpoint)
        with self.store.locked(f"{project}/registry"):
            state = self._state(project)
            if promote and expected_champion is not False \
                    and state["champion"] != expected_champion:
                promote = False
                record = {**record, "reason": f"champion changed to {state['champion']} while "
                                              f"this version was measured against "
                                              f"{expected_champion}; promote it by hand"}
            entry = {**record, "checkpoint": name,
                     "status": "champion" if promote else "rejected",
                     "created_at": record.get("created_at", time.time())}
            state["versions"] = [v for v in state["versions"] if v["version"] != version]
            state["versions"].append(entry)
            if promote:
                self._set_champion(state, version, entry.get("reason", "promoted"))
            pruned = self._prune(state, keep)
            self._save(project, state)
        for old in pruned:  # after the registry stops naming them
            self.store.delete(old)
        return entry

    def promote(self, project: int, version: str, reason: str = "promoted by hand") -> None:
        with self.store.locked(f"{project}/registry"):
            state = self._state(project)
            entry = self._find(state, version)
            if entry is None or not entry.get("checkpoint"):
                raise RegistryError(f"project {project} has no kept version {version!r}")
            self._set_champion(state, version, reason)
            self._save(project, state)

    def rollback(self, project: int, version: str | None = None) -> str:
        """Make `version` (default: the champion before the current one) the champion."""
        with self.store.locked(f"{project}/registry"):
            state = self._state(project)
            if version is None:
                earlier = [v for v in reversed(state["history"][:-1])
                           if (self._find(state, v) or {}).get("checkpoint")
                           and v != state["champion"]]
                if not earlier:
                    raise RegistryError(f"project {project} has no earlier champion to roll "
                                        "back to")
                version = earlier[0]
            entry = self._find(state, version)
            if entry is None or not entry.get("checkpoint"):
                raise RegistryError(f"project {project} has no kept version {version!r}")
            self._set_champion(state, version, "rollback")
            self._save(project, state)
        return version

    def _set_champion(self, state: dict[str, Any], version: str, reason: str) -> None:
        for entry in state["versions"]:
            if entry["version"] == state["champion"]:
                entry["status"] = "retired"
        for entry in state["versions"]:
            if entry["version"] == version:
                entry["status"] = "champion"
                entry["promoted_reason"] = reason
                entry["promoted_at"] = time.time()
        state["champion"] = version
        state["history"].append(version)

    @staticmethod
    def _prune(state: dict[str, Any], keep: int) -> list[str]:
        """Drop checkpoints beyond the newest `keep` (never the champion's); records stay,
        as the learning curve of the project."""
        kept = [v for v in state["versions"] if v.get("checkpoint")]
        pruned = []
        for entry in kept[:-keep] if keep > 0 else []:
            if entry["version"] == state["champion"]:
                continue
            pruned.append(entry["checkpoint"])
            entry["checkpoint"] = None
            entry["pruned"] = True
        return pruned

    def review(self, project: int) -> dict[str, Any] | None:
        """The project's last suspected-label-error review (tools/review.py), if any."""
        raw = self.store.read(f"{project}/review.json")
        return dict(json.loads(raw)) if raw else None

    def save_review(self, project: int, report: dict[str, Any]) -> None:
        self.store.write(f"{project}/review.json", json.dumps(report, indent=1).encode())

    def _save(self, project: int, state: dict[str, Any]) -> None:
        self.store.write(f"{project}/registry.json",
                         json.dumps(state, indent=1, sort_keys=True).encode())


def open_registry(settings: Settings) -> Registry:
    """The registry the settings point at: Azure Blob when configured, else MODEL_DIR."""
    store: Store
    if settings.registry_azure_container:
        store = AzureBlobStore(settings.azure_storage_connection_string,
                               settings.registry_azure_container)
    else:
        store = LocalStore(settings.model_dir / "registry")
    return Registry(store, settings.model_dir / "cache")
