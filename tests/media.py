"""Image files for tests, made on the fly: normal, odd-format and hostile ones."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def noise_image(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    return encode(noise_image(width, height, seed))


def jpeg(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    return encode(noise_image(width, height, seed), "JPEG", quality=90)


def truncated_jpeg() -> bytes:
    data = jpeg(640, 480)
    return data[: len(data) // 3]


def cmyk_jpeg(width: int = 200, height: int = 150) -> bytes:
    return encode(noise_image(width, height).convert("CMYK"), "JPEG")


def png16(width: int = 200, height: int = 150) -> bytes:
    ramp = np.linspace(0, 65535, width * height, dtype=np.uint32).reshape(height, width)
    return encode(Image.fromarray(ramp.astype(np.uint16)), "PNG")


def rgba_png(width: int = 200, height: int = 150) -> bytes:
    image = noise_image(width, height).convert("RGBA")
    image.putalpha(128)
    return encode(image, "PNG")


def exif_rotated_jpeg(width: int = 300, height: int = 100, orientation: int = 6) -> bytes:
    """A JPEG stored `width` x `height` whose EXIF says: display rotated (6 = 90 deg CW)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(noise_image(width, height), "JPEG", exif=exif.tobytes())


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def huge_png(side: int = 20_000) -> bytes:
    """A real, valid side x side 1-bit PNG (all black): tiny on disk, 400 Mpx decoded."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(side)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b""))
