"""The bad-input corpus's binary and oversized inputs, built deterministically.

Small files are stored beside this script (blobs/, configs/, bodies/) and were written by
`python tests/corpus/generate.py` (it rewrites them; Pillow versions may change a byte or two
of the encoded images, which does not change what they test). Big inputs (over MAX_REQUEST_BYTES,
10^5-level nesting, decompression bombs that expand to 100 MB) are never stored: the manifest
names them as `generated:<name>` and the tests call `build(name, limits)`.
"""

from __future__ import annotations

import io
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def _chunk(kind: bytes, payload: bytes, crc: int | None = None) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", crc if crc is not None
                                                                else zlib.crc32(body))


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_declaring(width: int, height: int, rows: int = 4) -> bytes:
    """An 8-bit RGB PNG whose header declares `width` x `height` and holds a few rows."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (3 * min(width, 1024))
    return (PNG_SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(row * rows, 9)) + _chunk(b"IEND", b""))


def png_bad_crc() -> bytes:
    data = _encode(_noise(32, 32), "PNG")
    ihdr_crc = 8 + 4 + 4 + 13  # signature, length, type, 13-byte IHDR payload
    return data[:ihdr_crc] + bytes(b ^ 0xFF for b in data[ihdr_crc:ihdr_crc + 4]) \
        + data[ihdr_crc + 4:]


def png_truncated_idat() -> bytes:
    data = _encode(_noise(64, 64), "PNG")
    return data[: len(data) // 2]


def png_text_bomb() -> bytes:
    """A 16x16 PNG with a zTXt chunk that inflates to 100 MB (Pillow caps text chunks)."""
    image = _encode(Image.new("RGB", (16, 16), (10, 20, 30)), "PNG")
    bomb = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * 100_000_000, 9))
    return image[:33] + bomb + image[33:]  # after the signature and IHDR


def png_huge_chunk_length() -> bytes:
    """A PNG whose first chunk after IHDR claims to be 2 GB long."""
    image = _encode(Image.new("RGB", (16, 16)), "PNG")
    return image[:33] + struct.pack(">I", 0x7FFFFFF0) + b"tEXt" + b"x" * 64


def jpeg_header_only() -> bytes:
    data = _encode(_noise(320, 240), "JPEG", quality=90)
    start_of_scan = data.index(b"\xff\xda")
    return data[:start_of_scan]


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 header is patched to declare `width` x `height`."""
    data = bytearray(_encode(_noise(16, 16), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            archive.writestr(info, content)
    return buffer.getvalue()


HTML = b"<html><body><script>fetch('http://169.254.169.254/')</script></body></html>"


def jpeg_zip_polyglot() -> bytes:
    """A valid JPEG with a ZIP (holding an HTML page) appended: both readers accept it."""
    return _encode(_noise(64, 48, 3), "JPEG", quality=85) + _zip({"index.html": HTML})


def zip_jpeg_polyglot() -> bytes:
    """A ZIP first, with a JPEG stored inside: an image reader sees a ZIP."""
    return _zip({"photo.jpg": _encode(_noise(32, 32), "JPEG")})


def html_png_polyglot() -> bytes:
    return HTML + _encode(_noise(16, 16), "PNG")


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose screen and image descriptor declare `width` x `height`."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 3 + \
        b"\xff" * 3
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return screen + descriptor + b"\x02\x02\x44\x01\x00;"


def bmp_declaring(width: int, height: int) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 54) + header + b"\x00" * 64


def tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian TIFF with one IFD declaring `width` x `height` 8-bit grey."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8 + 2 + 12 * 8 + 4), (277, 3, 1, 1),
               (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + b"\x00" * 16


def webp_truncated() -> bytes:
    data = _encode(_noise(64, 64), "WEBP", quality=80)
    return data[: len(data) // 2]


def svg_xxe() -> bytes:
    return (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
            b'<text y="20">&xxe;</text></svg>')


def pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


STORED: dict[str, Callable[[], bytes]] = {
    "blobs/png-bad-crc.png": png_bad_crc,
    "blobs/png-truncated-idat.png": png_truncated_idat,
    "blobs/png-bomb-50k.png": lambda: png_declaring(50_000, 50_000),
    "blobs/png-zero-width.png": lambda: png_declaring(0, 16),
    "blobs/png-huge-chunk-length.png": png_huge_chunk_length,
    "blobs/jpeg-header-only.jpg": jpeg_header_only,
    "blobs/jpeg-declares-65500.jpg": lambda: jpeg_declaring(65_500, 65_500),
    "blobs/jpeg-zip-polyglot.jpg": jpeg_zip_polyglot,
    "blobs/zip-jpeg-polyglot.jpg": zip_jpeg_polyglot,
    "blobs/html-png-polyglot.png": html_png_polyglot,
    "blobs/gif-declares-65535.gif": lambda: gif_declaring(65_535, 65_535),
    "blobs/bmp-declares-50k.bmp": lambda: bmp_declaring(50_000, 50_000),
    "blobs/tiff-declares-100k.tif": lambda: tiff_declaring(100_000, 100_000),
    "blobs/webp-truncated.webp": webp_truncated,
    "blobs/svg-xxe.svg": svg_xxe,
    "blobs/document.pdf": pdf,
}


# -- generated at test time -------------------------------------------------------------------

def _deep_json(levels: int) -> bytes:
    return b'{"tasks": ' + b'{"a": ' * levels + b"1" + b"}" * levels + b"}"


def _oversized_json(limit: int) -> bytes:
    task = b'{"id": 1, "data": {"image": "http://127.0.0.1:1/' + b"a" * 200 + b'.png"}}, '
    count = limit // len(task) + 10
    return b'{"label_config": "<View/>", "tasks": [' + task * count + b'{"id": 2}]}'


def _deep_xml(levels: int) -> str:
    return "<a>" * levels + "</a>" * levels


def _oversized_config() -> str:
    label = '<Label value="l{}"/>'
    labels = "".join(label.format(i) for i in range(80_000))
    return ('<View><Image name="image" value="$image"/><RectangleLabels name="label" '
            f'toName="image">{labels}</RectangleLabels></View>')


def _nested_list(levels: int) -> object:
    value: object = "http://169.254.169.254/"
    for _ in range(levels):
        value = [value]
    return value


def build(name: str, max_request_bytes: int, max_image_bytes: int) -> object:
    """The generated input `name`: bytes for bodies and images, str or JSON values otherwise."""
    generated: dict[str, Callable[[], object]] = {
        "json-over-max-request-bytes": lambda: _oversized_json(max_request_bytes),
        "json-nested-1e5-objects": lambda: _deep_json(100_000),
        "json-int-5000-digits": lambda: b'{"tasks": [], "project": ' + b"9" * 5000 + b"}",
        "xml-nested-1e5": lambda: _deep_xml(100_000),
        "xml-over-max-config-chars": _oversized_config,
        "png-ztxt-bomb-100mb": png_text_bomb,
        "image-over-max-image-bytes": lambda: PNG_SIGNATURE + bytes(
            np.random.default_rng(1).integers(0, 256, max_image_bytes + 4096, dtype=np.uint8)),
        "data-uri-over-max-image-bytes": lambda: "data:image/png;base64," + "A" * (
            max_image_bytes * 4 // 3 + 4096),
        "task-data-nested-900-lists": lambda: _nested_list(900),
        "webhook-action-1mb": lambda: b'{"action": "' + b"A" * 1_000_000
        + b'", "project": {"id": 3}}',
    }
    return generated[name]()


def write_stored() -> None:
    for relative, make in STORED.items():
        path = HERE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make())


if __name__ == "__main__":
    write_stored()
    sys.stdout.write(f"wrote {len(STORED)} files under {HERE}\n")
