from __future__ import annotations

import base64
import time

import pytest

from backend.core.errors import ImageError
from backend.labelstudio.client import LabelStudioAuth
from backend.media.images import HostPattern, ImageFetcher, decode_image, redact_url
from tests import media
from tests.httpserver import LoopbackServer

MAX_PIXELS = 100_000_000


def fetcher_for(ls: LoopbackServer, *allowed: str, **limits: float) -> ImageFetcher:
    return ImageFetcher(LabelStudioAuth(ls.base, "legacy-token-123"), tuple(allowed),
                        max_bytes=int(limits.get("max_bytes", 10_000_000)),
                        max_pixels=int(limits.get("max_pixels", MAX_PIXELS)),
                        timeout=limits.get("timeout", 5.0))


# -- decoding ---------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "size"), [
    (media.png(320, 240), (320, 240)),
    (media.jpeg(64, 48), (64, 48)),
    (media.cmyk_jpeg(200, 150), (200, 150)),
    (media.png16(200, 150), (200, 150)),
    (media.rgba_png(200, 150), (200, 150)),
])
def test_decodes_to_rgb(data: bytes, size: tuple[int, int]) -> None:
    loaded = decode_image(data, MAX_PIXELS)
    assert loaded.image.mode == "RGB"
    assert (loaded.width, loaded.height) == size


def test_sixteen_bit_png_keeps_its_range() -> None:
    image = decode_image(media.png16(200, 150), MAX_PIXELS).image
    lo, hi = image.getextrema()[0]
    assert lo == 0 and hi == 255  # rescaled, not clipped to white


def test_exif_orientation_is_applied() -> None:
    # Stored 300x100, EXIF orientation 6: the labeler sees it 100 wide, 300 high.
    loaded = decode_image(media.exif_rotated_jpeg(300, 100), MAX_PIXELS)
    assert (loaded.width, loaded.height) == (100, 300)


@pytest.mark.parametrize(("data", "reason", "words"), [
    (b"", "empty", "0 bytes"),
    (b"%PDF-1.4 not an image", "not_an_image", "not an image format"),
    (media.truncated_jpeg(), "corrupt", "corrupt or truncated"),
])
def test_broken_files_raise_clear_errors(data: bytes, reason: str, words: str) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(data, MAX_PIXELS)
    assert info.value.reason == reason
    assert words in str(info.value)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageError) as info:
        decode_image(media.huge_png(20_000), MAX_PIXELS)
    assert info.value.reason == "too_large"
    assert "20000x20000" in str(info.value) or "decompression" in str(info.value)


# -- where images come from -----------------------------------------------------------

def test_resolves_label_studio_paths_and_cloud_uris(loopback: LoopbackServer) -> None:
    fetcher = fetcher_for(loopback)
    assert fetcher.resolve("/data/upload/3/a.png", 7) == f"{loopback.base}/data/upload/3/a.png"
    assert fetcher.resolve("/data/local-files/?d=x/y.jpg", 7) == \
        f"{loopback.base}/data/local-files/?d=x/y.jpg"
    uri = "azure-blob://images/cats/1.jpg"
    encoded = base64.urlsafe_b64encode(uri.encode()).decode()
    assert fetcher.resolve(uri, 42) == f"{loopback.base}/tasks/42/presign/?fileuri={encoded}"
    with pytest.raises(ImageError, match="need the task id"):
        fetcher.resolve(uri, None)
    with pytest.raises(ImageError, match="unsupported image reference"):
        fetcher.resolve("file:///etc/passwd", 1)
    with pytest.raises(ImageError, match="non-empty string"):
        fetcher.resolve(["x"], 1)


def test_token_goes_to_label_studio_only(loopback: LoopbackServer) -> None:
    with LoopbackServer() as other:
        other.add("/b.png", media.png(10, 10))
        loopback.add("/data/upload/1/a.png", media.png(20, 10))
        fetcher = fetcher_for(loopback, f"127.0.0.1:{other.port}")
        assert fetcher.load("/data/upload/1/a.png", 1).width == 20
        assert fetcher.load(f"{other.base}/b.png", 1).width == 10
        assert loopback.seen["/data/upload/1/a.png"][0]["Authorization"] == \
            "Token legacy-token-123"
        assert "Authorization" not in other.seen["/b.png"][0]


def test_disallowed_hosts_are_not_contacted(loopback: LoopbackServer) -> None:
    with LoopbackServer() as other:
        other.add("/secret", b"internal")
        fetcher = fetcher_for(loopback)  # only Label Studio allowed
        with pytest.raises(ImageError) as info:
            fetcher.fetch(f"{other.base}/secret?sig=abc", 1)
        assert info.value.reason == "host_not_allowed"
        assert "ALLOWED_IMAGE_HOSTS" in str(info.value)
        assert "sig=abc" not in str(info.value)
        assert "/secret" not in other.seen


def test_redirect_to_disallowed_host_is_refused(loopback: LoopbackServer) -> None:
    with LoopbackServer() as other:
        other.add("/meta", b"metadata")
        loopback.add("/tasks/5/presign/", status=303,
                     headers={"Location": f"{other.base}/meta?sig=SECRET"})
        fetcher = fetcher_for(loopback)
        with pytest.raises(ImageError) as info:
            fetcher.fetch("azure-blob://c/k.png", 5)
        assert info.value.reason == "host_not_allowed"
        assert "SECRET" not in str(info.value)
        assert "/meta" not in other.seen


def test_presign_redirect_to_allowed_host_drops_the_token(loopback: LoopbackServer) -> None:
    with LoopbackServer() as storage:
        storage.add("/c/k.png", media.png(30, 20))
        loopback.add("/tasks/5/presign/", status=303,
                     headers={"Location": f"{storage.base}/c/k.png?sig=SECRET"})
        fetcher = fetcher_for(loopback, "127.0.0.1")  # any port
        assert fetcher.load("azure-blob://c/k.png", 5).width == 30
        assert "Authorization" not in storage.seen["/c/k.png"][0]


def test_size_and_time_limits(loopback: LoopbackServer) -> None:
    url = loopback.add("/big.png", media.png(400, 400))
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback, max_bytes=1000).fetch(url, 1)
    assert info.value.reason == "too_large"
    slow = loopback.add("/slow.png", media.png(10, 10), delay=2.0)
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback, timeout=0.5).fetch(slow, 1)
    assert info.value.reason == "timeout"


def test_http_errors_name_the_status_without_query(loopback: LoopbackServer) -> None:
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback).fetch(f"{loopback.base}/gone.png?sv=2024&sig=XYZ", 1)
    assert info.value.reason == "http_404"
    assert "HTTP 404" in str(info.value) and "XYZ" not in str(info.value)


def test_data_uri_images(loopback: LoopbackServer) -> None:
    uri = "data:image/png;base64," + base64.b64encode(media.png(12, 8)).decode()
    assert fetcher_for(loopback).load(uri, 1).width == 12


def test_redact_url_drops_query_and_credentials() -> None:
    assert redact_url("https://user:pw@acct.blob.core.windows.net/c/a.jpg?sig=abc&se=1") == \
        "https://acct.blob.core.windows.net/c/a.jpg"


def test_streamed_body_is_capped_without_content_length(loopback: LoopbackServer) -> None:
    url = loopback.add("/nolength.png", media.png(400, 400), send_length=False)
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback, max_bytes=5000).fetch(url, 1)
    assert info.value.reason == "too_large"
    assert fetcher_for(loopback).load(url, 1).width == 400


def test_dripping_server_cannot_hold_a_fetch_past_the_deadline(
        loopback: LoopbackServer) -> None:
    url = loopback.add("/drip.png", media.png(64, 64), drip=0.1)
    started = time.monotonic()
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback, timeout=1.0).fetch(url, 1)
    assert info.value.reason == "timeout"
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("url", [
    "http://evil.example\\@{ls}/x.png",        # urllib3 would connect to evil.example
    "http://user:pw@{ls}/x.png",
    "http://{ls}/x y.png",
    "http://127.0.0.1:99999/x.png",
    "http://{ls}\t/x.png",
])
def test_ambiguous_urls_are_refused(loopback: LoopbackServer, url: str) -> None:
    host = f"127.0.0.1:{loopback.port}"
    with pytest.raises(ImageError) as info:
        fetcher_for(loopback, host).fetch(url.format(ls=host), 1)
    assert info.value.reason == "bad_reference"
    assert loopback.seen == {}


def test_outside_redirect_into_label_studio_gets_no_key(loopback: LoopbackServer) -> None:
    with LoopbackServer() as outside:
        loopback.add("/api/private.png", media.png(8, 8))
        outside.add("/bounce", status=302,
                    headers={"Location": f"{loopback.base}/api/private.png"})
        fetcher = fetcher_for(loopback, f"127.0.0.1:{outside.port}")
        fetcher.load(f"{outside.base}/bounce", 1)
        assert "Authorization" not in loopback.seen["/api/private.png"][0]


@pytest.mark.parametrize(("entry", "host", "port", "allowed"), [
    ("images.example.com", "images.example.com", 443, True),
    ("images.example.com", "evilimages.example.com", 443, False),
    ("images.example.com:8080", "images.example.com", 80, False),
    ("*.blob.core.windows.net", "acct.blob.core.windows.net", 443, True),
    ("*.blob.core.windows.net", "blob.core.windows.net.evil.com", 443, False),
    ("*.blob.core.windows.net", "evilblob.core.windows.net", 443, False),
    ("[::1]:8080", "::1", 8080, True),
    ("[::1]:8080", "::1", 8081, False),
])
def test_allowed_host_patterns(entry: str, host: str, port: int, allowed: bool) -> None:
    assert HostPattern.parse(entry).matches(host, port) is allowed
