"""Fetching and decoding the images Label Studio tasks point at, with guards.

What `task.data` may hold, and where it is fetched from:

- `http(s)://...`: fetched directly if its host is allowed (the Label Studio host, plus
  `ALLOWED_IMAGE_HOSTS`), so a task cannot make the server reach arbitrary or internal addresses;
- `/data/upload/...`, `/storage-data/...`, `/data/local-files/...` (any absolute path): relative
  to Label Studio, fetched with the Label Studio key;
- `azure-blob://`, `s3://`, `gs://`: through Label Studio's `/tasks/{id}/presign/` endpoint, which
  redirects to a signed URL (its host must be allowed too) or streams the file;
- `data:image/...;base64,...`: decoded inline.

Redirects are followed by hand, each hop checked against the allowed hosts, and the key is sent
only to the Label Studio origin. Downloads are bounded in bytes and time, decoded images in
pixels. Query strings (SAS signatures) never appear in messages.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import time
import warnings
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urljoin, urlsplit, urlunsplit

import numpy as np
import requests
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.errors import ImageError
from backend.labelstudio import LabelStudioAuth, origin

logger = logging.getLogger(__name__)

CLOUD_SCHEMES = ("azure-blob", "s3", "gs", "gcs")
MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024


def redact_url(url: str) -> str:
    """The URL without its query string and credentials, safe for logs and error bodies."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class LoadedImage:
    """A decoded RGB image as the labeler sees it (EXIF orientation applied)."""

    image: Image.Image

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


class ImageFetcher:
    """Downloads task images from Label Studio and allowed hosts, within limits."""

    def __init__(self, auth: LabelStudioAuth, allowed_hosts: tuple[str, ...] = (), *,
                 max_bytes: int, max_pixels: int, timeout: float,
                 session: requests.Session | None = None) -> None:
        self.auth = auth
        self.allowed_hosts = allowed_hosts
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.timeout = timeout
        self.session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=32)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    # -- where --------------------------------------------------------------------------

    def resolve(self, value: object, task_id: int | None) -> str:
        """The URL to download for a `task.data` value (or the `data:` URI itself)."""
        if not isinstance(value, str) or not value.strip():
            raise ImageError(f"image reference must be a non-empty string, got {value!r:.80}",
                             reason="bad_reference")
        value = value.strip()
        scheme = urlsplit(value).scheme.lower()
        if scheme in ("http", "https", "data"):
            return value
        if value.startswith("/"):
            return urljoin(self.auth.base_url + "/", value.lstrip("/"))
        if scheme in CLOUD_SCHEMES:
            if not isinstance(task_id, int):
                raise ImageError(f"{scheme}:// images need the task id to be presigned by "
                                 "Label Studio, and the task has none", reason="bad_reference")
            fileuri = base64.urlsafe_b64encode(value.encode()).decode()
            return f"{self.auth.base_url}/tasks/{task_id}/presign/?fileuri={fileuri}"
        raise ImageError(f"unsupported image reference {redact_url(value)!r}: expected an "
                         "http(s) URL, a Label Studio path or a cloud-storage URI",
                         reason="bad_reference")

    def host_allowed(self, url: str) -> bool:
        """Whether `url` may be fetched: Label Studio's origin or an ALLOWED_IMAGE_HOSTS entry."""
        if self.auth.is_label_studio(url):
            return True
        scheme, host, port = origin(url)
        if scheme not in ("http", "https") or not host:
            return False
        return any(fnmatchcase(host, pattern) or fnmatchcase(f"{host}:{port}", pattern)
                   for pattern in self.allowed_hosts)

    # -- fetch --------------------------------------------------------------------------

    def fetch(self, value: object, task_id: int | None = None) -> bytes:
        """The bytes of a task image; raises ImageError saying what went wrong."""
        url = self.resolve(value, task_id)
        if url.startswith("data:"):
            return self._decode_data_uri(url)
        deadline = time.monotonic() + self.timeout
        for _ in range(MAX_REDIRECTS + 1):
            if not self.host_allowed(url):
                raise ImageError(
                    f"host of {redact_url(url)} is not allowed; add it to ALLOWED_IMAGE_HOSTS "
                    "if the backend should fetch images from there", reason="host_not_allowed")
            response = self._get(url, deadline)
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                url = urljoin(url, location)
                continue
            with response:
                return self._read_body(response, url, deadline)
        raise ImageError(f"more than {MAX_REDIRECTS} redirects fetching image",
                         reason="fetch_failed")

    def _get(self, url: str, deadline: float) -> requests.Response:
        headers = {"Accept": "image/*,*/*;q=0.5"}
        if self.auth.is_label_studio(url):
            headers.update(self.auth.headers())
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ImageError(f"timed out after {self.timeout:g} s fetching {redact_url(url)}",
                             reason="timeout")
        try:
            response = self.session.get(url, headers=headers, stream=True,
                                        allow_redirects=False,
                                        timeout=(min(remaining, 5.0), remaining))
        except requests.Timeout:
            raise ImageError(f"timed out fetching {redact_url(url)}", reason="timeout") from None
        except requests.RequestException as exc:
            raise ImageError(f"could not fetch {redact_url(url)}: {type(exc).__name__}",
                             reason="fetch_failed") from None
        if response.status_code == 401 and self.auth.is_label_studio(url) \
                and self.auth.is_personal_access_token:
            response.close()
            headers.update(self.auth.headers(force_refresh=True))
            response = self.session.get(url, headers=headers, stream=True,
                                        allow_redirects=False, timeout=(5.0, remaining))
        return response

    def _read_body(self, response: requests.Response, url: str, deadline: float) -> bytes:
        if response.status_code != 200:
            raise ImageError(f"fetching {redact_url(url)} answered HTTP {response.status_code}",
                             reason=f"http_{response.status_code}")
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise ImageError(f"image is {int(declared)} bytes, over MAX_IMAGE_BYTES "
                             f"({self.max_bytes})", reason="too_large")
        body = bytearray()
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                body.extend(chunk)
                if len(body) > self.max_bytes:
                    raise ImageError(f"image is over MAX_IMAGE_BYTES ({self.max_bytes})",
                                     reason="too_large")
                if time.monotonic() > deadline:
                    raise ImageError(f"timed out after {self.timeout:g} s downloading "
                                     f"{redact_url(url)}", reason="timeout")
        except requests.RequestException as exc:
            raise ImageError(f"download of {redact_url(url)} broke off: {type(exc).__name__}",
                             reason="fetch_failed") from None
        return bytes(body)

    def _decode_data_uri(self, uri: str) -> bytes:
        header, _, payload = uri.partition(",")
        if not header.endswith(";base64"):
            raise ImageError("data: image URIs must be base64-encoded", reason="bad_reference")
        if len(payload) * 3 // 4 > self.max_bytes:
            raise ImageError(f"inline image is over MAX_IMAGE_BYTES ({self.max_bytes})",
                             reason="too_large")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("data: image URI is not valid base64",
                             reason="bad_reference") from None

    # -- decode -------------------------------------------------------------------------

    def load(self, value: object, task_id: int | None = None) -> LoadedImage:
        """Fetch and decode a task image."""
        return decode_image(self.fetch(value, task_id), self.max_pixels)


def decode_image(data: bytes, max_pixels: int) -> LoadedImage:
    """Decode image bytes into RGB with EXIF orientation applied; raises ImageError."""
    if not data:
        raise ImageError("image file is empty (0 bytes)", reason="empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise ImageError(f"image is {image.width}x{image.height} = {pixels} pixels, "
                                 f"over MAX_IMAGE_PIXELS ({max_pixels})", reason="too_large")
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image is over the decompression-bomb limit (MAX_IMAGE_PIXELS "
                         f"{max_pixels})", reason="too_large") from None
    except UnidentifiedImageError:
        raise ImageError("file is not an image format Pillow can read", reason="not_an_image") \
            from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"image is corrupt or truncated: {exc}", reason="corrupt") from None
    upright: Image.Image = image
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not lose the image
        logger.debug("EXIF orientation ignored: %s", exc)
    return LoadedImage(to_rgb(upright))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode: 16-bit and float are rescaled, alpha dropped on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        scaled = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P"
                                              and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
