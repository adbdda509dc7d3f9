"""torchvision's pretrained weight files into the torch cache: `mlassist weights fetch|import`.

`fetch` downloads the file torchvision itself would (the URL of its weights enum, with
WEIGHTS_BASE_URL in place of download.pytorch.org/models) into torch.hub's checkpoints folder,
where torchvision and MLAssist look for it; `import FILE` copies a file brought in by hand
(machines without internet) there, under torchvision's name. Either way the file is checked
against the hash prefix of that name (what torch.hub's `check_hash` checks: the sha256 hex
digest starts with it) and appears under its final name only complete and checked (a temp
file beside it, then a rename), so a download that breaks off or is killed never leaves a
file that looks valid. Nothing downloads unless one of these commands runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from backend.core.errors import ModelError
from backend.core.files import atomic_file
from backend.core.settings import Settings
from backend.model.architectures import checkpoints_dir, get_architecture

logger = logging.getLogger(__name__)

TORCHVISION_BASE_URL = "https://download.pytorch.org/models/"
# torch.hub's HASH_REGEX: the hash prefix in a weight file's name, `<name>-<hex>.pth`.
HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")
CHUNK_BYTES = 1 << 20
TIMEOUT = (15, 60)  # seconds to connect, and between two pieces of the body
KINDS = ("coco", "imagenet")
# The weights commands never talk to Label Studio, so they run without its settings.
NO_LABEL_STUDIO = {"LABEL_STUDIO_URL": "http://label-studio.invalid",
                   "LABEL_STUDIO_API_KEY": "unused"}


@dataclass(frozen=True)
class WeightFile:
    """One of torchvision's weight files: its name in the cache and its URL."""

    name: str
    url: str

    @property
    def path(self) -> Path:
        return checkpoints_dir() / self.name


def hash_prefix(name: str) -> str:
    """The sha256 prefix in a torchvision file name; ModelError when it has none."""
    found = HASH_PREFIX.search(name)
    if not found or not found.group(1):
        raise ModelError(f"{name} carries no hash prefix (name-<hex>.pth): it cannot be checked")
    return found.group(1)


def _readable(path: Path) -> None:
    # The temp file was created 0600; a cache that a server and workers running as other
    # users share (the compose volume) needs the weights readable by them.
    path.chmod(0o644)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weight_file(arch: str, kind: str) -> WeightFile:
    """The COCO weights of `arch` (kind "coco") or its backbone's ImageNet weights."""
    spec = get_architecture(arch)
    weights = spec.coco_weights() if kind == "coco" else spec.imagenet_weights()
    return WeightFile(weights.url.rsplit("/", 1)[1], weights.url)


def source_url(url: str, base_url: str) -> str:
    """torchvision's `url` with its download.pytorch.org/models/ start replaced by `base_url`."""
    if url.startswith(TORCHVISION_BASE_URL):
        return f"{base_url.rstrip('/')}/{url[len(TORCHVISION_BASE_URL):]}"
    return url


def _host(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1]  # host[:port]; never user:password


def _reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    text = str(exc)
    for needle, reason in (("refused", "connection refused"),
                           ("resolve", "host name not resolved"),
                           ("Name or service not known", "host name not resolved"),
                           ("unreachable", "network unreachable")):
        if needle in text:
            return reason
    return type(exc).__name__


def download(file: WeightFile, url: str) -> Path:
    """Download `url` to `file.path` with a progress bar (stderr), checking the hash prefix.

    Raises ModelError (one line, naming the host, never the whole URL) when the host cannot
    be reached, answers an error, breaks off, or sends a file whose hash does not match;
    nothing is left under the file's name then.
    """
    from tqdm import tqdm

    prefix, host = hash_prefix(file.name), _host(url)
    offline = (f"without internet, fetch {file.url} on a machine that has it and run "
               "`mlassist weights import FILE` here")
    logger.info("downloading %s from %s", file.name, host)
    try:
        response = requests.get(url, stream=True, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise ModelError(f"cannot reach {host} to download {file.name} ({_reason(exc)}); "
                         f"{offline}") from None
    with response:
        if response.status_code != 200:
            raise ModelError(f"{host} answered HTTP {response.status_code} for {file.name} "
                             f"(WEIGHTS_BASE_URL); {offline}")
        total = int(response.headers.get("Content-Length") or 0) or None
        digest = hashlib.sha256()
        try:
            with atomic_file(file.path) as out, tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=file.name, file=sys.stderr) as bar:
                for chunk in response.iter_content(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                if not digest.hexdigest().startswith(prefix):
                    raise ModelError(
                        f"{file.name} from {host} is not torchvision's file: its sha256 starts "
                        f"{digest.hexdigest()[:12]}, its name says {prefix} (truncated or "
                        "replaced on the way); nothing was kept")
        except requests.RequestException as exc:
            raise ModelError(f"the download of {file.name} from {host} broke off "
                             f"({_reason(exc)}); nothing was kept: run it again") from None
    _readable(file.path)
    return file.path


def fetch_weights(arch: str, kind: str, base_url: str) -> dict[str, Any]:
    """Put `arch`'s COCO or ImageNet weights in the torch cache, downloading when needed."""
    if kind not in KINDS:
        raise ModelError(f"MODEL_WEIGHTS={kind} needs no weights file; pass --coco or "
                         "--imagenet")
    file = weight_file(arch, kind)
    if file.path.is_file() and sha256_of(file.path).startswith(hash_prefix(file.name)):
        return {"file": str(file.path), "status": "already in the cache"}
    path = download(file, source_url(file.url, base_url))
    return {"file": str(path), "status": "downloaded", "bytes": path.stat().st_size}


def known_weight_files() -> dict[str, str]:
    """Every weight file of torchvision's models that carries a hash prefix: name -> URL."""
    from torchvision.models import get_model_weights, list_models

    known = {}
    for model in list_models():
        for weights in get_model_weights(model):
            name = weights.url.rsplit("/", 1)[1]
            found = HASH_PREFIX.search(name)
            if found and found.group(1):
                known[name] = weights.url
    return known


def import_weights(source: Path) -> dict[str, Any]:
    """Copy a torchvision weight file into the torch cache under torchvision's name.

    The file is recognised by its sha256 (against the hash prefixes of torchvision's file
    names), whatever it is called; one named like a torchvision file must match that file.
    """
    if not source.is_file():
        raise ModelError(f"{source} is not a file")
    digest = sha256_of(source)
    known = known_weight_files()
    if source.name in known:
        if not digest.startswith(hash_prefix(source.name)):
            raise ModelError(f"{source} is named like torchvision's file but its sha256 starts "
                             f"{digest[:12]}, not {hash_prefix(source.name)}: a truncated or "
                             "different file; nothing was imported")
        name = source.name
    else:
        matches = sorted(n for n in known if digest.startswith(hash_prefix(n)))
        if len(matches) != 1:
            raise ModelError(f"{source} (sha256 {digest[:12]}) is not one of torchvision's "
                             "weight files; import takes a file that `mlassist weights fetch` "
                             "downloads (the URLs it names); nothing was imported")
        name = matches[0]
    dest = checkpoints_dir() / name
    if dest.is_file() and sha256_of(dest) == digest:
        return {"file": str(dest), "status": "already in the cache", "sha256": digest}
    with atomic_file(dest) as out, source.open("rb") as handle:
        shutil.copyfileobj(handle, out, CHUNK_BYTES)
    _readable(dest)
    logger.info("imported %s as %s", source, dest)
    return {"file": str(dest), "status": "imported", "sha256": digest}


def weights_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings, without requiring Label Studio's (the weights commands never use it)."""
    values = dict(os.environ if environ is None else environ)
    for key, placeholder in NO_LABEL_STUDIO.items():
        if not values.get(key, "").strip():
            values[key] = placeholder
    return Settings.from_env(values)
