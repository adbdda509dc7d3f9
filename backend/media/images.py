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
only to the Label Studio origin. Every connection, on every hop, goes through
`backend/media/addresses.py`: whatever an allowed name resolves to, link-local and cloud metadata
addresses are never connected to (checked on the address connected to, so DNS rebinding cannot
slip past). Downloads are bounded in bytes and time, decoded images in pixels. Query strings
(SAS signatures) never appear in messages.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import logging
import socket
import time
import warnings
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import numpy as np
import requests
import urllib3
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.core.errors import ImageError, LabelStudioAuthError
from backend.core.settings import Settings
from backend.labelstudio.client import LabelStudioAuth, origin
from backend.media.addresses import CheckedAdapter

logger = logging.getLogger(__name__)

CLOUD_SCHEMES = ("azure-blob", "s3", "gs", "gcs")
MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024


def redact_url(url: str) -> str:
    """The URL without its query string and credentials, safe for logs and error bodies."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[::1": nothing in it can be trusted to be safe to show
        return "<malformed URL>"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def check_url(url: str) -> None:
    """Refuse URLs that parsers disagree on, so the host we check is the host we contact.

    `urlsplit` and urllib3 (what requests connects with) read `http://a\\@b/` differently;
    credentials in URLs, control characters and bad ports are refused outright.
    """
    if "\\" in url or any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        raise ImageError("image URL contains a backslash, whitespace or control character",
                         reason="bad_reference")
    try:
        parts = urlsplit(url)
        if "@" in parts.netloc:
            raise ImageError("image URLs with user:password@ are not fetched",
                             reason="bad_reference")
        port = parts.port
        parsed = urllib3.util.parse_url(url)
    except ValueError:
        raise ImageError(f"image URL {redact_url(url)!r} is malformed",
                         reason="bad_reference") from None
    host = (parsed.host or "").strip("[]").lower()
    if host != (parts.hostname or "") or parsed.port != port:
        raise ImageError("image URL is ambiguous", reason="bad_reference")
    if _is_odd_ipv4(host):
        raise ImageError(f"image URL host {host!r} is an IPv4 address in decimal, octal or hex "
                         "form; write it as a.b.c.d", reason="bad_reference")


def _is_odd_ipv4(host: str) -> bool:
    """Whether the C resolver reads `host` as an IPv4 address (`2852039166`, `0251.0.0.1`,
    `0x7f.1`) that is not written in the canonical dotted form the allowlist compares."""
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return False
    return host != str(ipaddress.IPv4Address(packed))


@dataclass(frozen=True)
class HostPattern:
    """One ALLOWED_IMAGE_HOSTS entry: `host`, `host:port`, `*.domain[:port]`, `[v6][:port]`."""

    host: str
    port: int | None
    wildcard: bool

    @classmethod
    def parse(cls, entry: str) -> HostPattern:
        entry = entry.strip().lower()
        port: int | None = None
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            if rest.startswith(":") and rest[1:].isdecimal():
                port = int(rest[1:])
        else:
            host, sep, tail = entry.rpartition(":")
            if sep and tail.isdecimal():
                port = int(tail)
            else:
                host = entry
        wildcard = host.startswith("*.")
        return cls(host[2:] if wildcard else host, port, wildcard)

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


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
        self._patterns = [HostPattern.parse(entry) for entry in allowed_hosts]
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.trust_env = False  # no .netrc credentials or proxies from the environment
        adapter = CheckedAdapter(pool_connections=8, pool_maxsize=32)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageFetcher:
        """The fetcher the settings describe (Label Studio's key, allowed hosts, limits)."""
        return cls(LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key),
                   settings.allowed_image_hosts, max_bytes=settings.max_image_bytes,
                   max_pixels=settings.max_image_pixels, timeout=settings.image_fetch_timeout)

    # -- where --------------------------------------------------------------------------

    def resolve(self, value: object, task_id: int | None) -> str:
        """The URL to download for a `task.data` value (or the `data:` URI itself)."""
        if not isinstance(value, str) or not value.strip():
            # The type only: a value echoed back could carry a signed URL.
            raise ImageError("image reference must be a non-empty string, got "
                             f"{type(value).__name__}", reason="bad_reference")
        value = value.strip()
        try:  # urlsplit refuses e.g. "http://[::1"; a lone surrogate cannot be encoded
            scheme = urlsplit(value).scheme.lower()
            if scheme in ("http", "https", "data"):
                return value
            if value.startswith("/"):
                return urljoin(self.auth.base_url + "/", value.lstrip("/"))
            if scheme in CLOUD_SCHEMES:
                if not isinstance(task_id, int):
                    raise ImageError(f"{scheme}:// images need the task id to be presigned by "
                                     "Label Studio, and the task has none",
                                     reason="bad_reference")
                fileuri = base64.urlsafe_b64encode(value.encode()).decode()
                return f"{self.auth.base_url}/tasks/{task_id}/presign/?fileuri={fileuri}"
        except ValueError as exc:  # its message names the bad part, never the query string
            raise ImageError(f"image reference is not a valid URL: {exc}",
                             reason="bad_reference") from None
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
        return any(pattern.matches(host, port) for pattern in self._patterns)

    # -- fetch --------------------------------------------------------------------------

    def fetch(self, value: object, task_id: int | None = None) -> bytes:
        """The bytes of a task image; raises ImageError saying what went wrong."""
        url = self.resolve(value, task_id)
        if url.startswith("data:"):
            return self._decode_data_uri(url)
        deadline = time.monotonic() + self.timeout
        # The key goes only to Label Studio, and only while the chain never left it: an
        # outside host must not be able to redirect us into authenticated Label Studio calls.
        on_label_studio = True
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url)
            if not self.host_allowed(url):
                raise ImageError(
                    f"host of {redact_url(url)} is not allowed; add it to ALLOWED_IMAGE_HOSTS "
                    "if the backend should fetch images from there", reason="host_not_allowed")
            on_label_studio = on_label_studio and self.auth.is_label_studio(url)
            response = self._get(url, deadline, with_key=on_label_studio)
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                try:
                    url = urljoin(url, location)
                except ValueError:
                    raise ImageError(f"{redact_url(url)} redirected to a malformed URL",
                                     reason="bad_reference") from None
                continue
            with response:
                return self._read_body(response, url, deadline)
        raise ImageError(f"more than {MAX_REDIRECTS} redirects fetching image",
                         reason="fetch_failed")

    def _auth_headers(self, force_refresh: bool = False) -> dict[str, str]:
        try:
            return self.auth.headers(force_refresh)
        except LabelStudioAuthError as exc:
            raise ImageError(str(exc), reason="label_studio_auth") from None

    def _get(self, url: str, deadline: float, with_key: bool) -> requests.Response:
        headers = {"Accept": "image/*,*/*;q=0.5"}
        if with_key:
            headers.update(self._auth_headers())
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
        except (requests.RequestException, ValueError) as exc:
            # ValueError: a host the IDNA codec refuses ("a..example.com"), met on connect.
            raise ImageError(f"could not fetch {redact_url(url)}: {type(exc).__name__}",
                             reason="fetch_failed") from None
        if response.status_code == 401 and with_key and self.auth.is_personal_access_token:
            response.close()
            headers.update(self._auth_headers(force_refresh=True))
            try:
                response = self.session.get(url, headers=headers, stream=True,
                                            allow_redirects=False, timeout=(5.0, remaining))
            except requests.RequestException as exc:
                raise ImageError(f"could not fetch {redact_url(url)}: {type(exc).__name__}",
                                 reason="fetch_failed") from None
        return response

    def _read_body(self, response: requests.Response, url: str, deadline: float) -> bytes:
        if response.status_code != 200:
            raise ImageError(f"fetching {redact_url(url)} answered HTTP {response.status_code}",
                             reason=f"http_{response.status_code}")
        declared = response.headers.get("Content-Length", "")
        if declared.isdecimal() and int(declared) > self.max_bytes:
            raise ImageError(f"image is {int(declared)} bytes, over MAX_IMAGE_BYTES "
                             f"({self.max_bytes})", reason="too_large")
        body = bytearray()
        try:
            while True:
                # read1 returns what one socket read brings, so a server that drips bytes
                # cannot hold us past the deadline (iter_content waits for whole chunks).
                chunk = response.raw.read1(CHUNK_BYTES, decode_content=True)
                if not chunk:
                    break
                body.extend(chunk)
                if len(body) > self.max_bytes:
                    raise ImageError(f"image is over MAX_IMAGE_BYTES ({self.max_bytes})",
                                     reason="too_large")
                if time.monotonic() > deadline:
                    raise ImageError(f"timed out after {self.timeout:g} s downloading "
                                     f"{redact_url(url)}", reason="timeout")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
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
