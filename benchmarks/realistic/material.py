"""What realistic scenes are made of: photographs and emoji artwork that Debian packages ship.

Nothing is downloaded: `scripts/bootstrap.sh` installs the two packages below, and a missing
file raises MissingMaterial naming the package to install. Each source's package, files and
licence are listed in SOURCES (and copied into every generated COCO file's `info`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PHOTO_DIR = Path("/usr/share/backgrounds")
PHOTO_PACKAGE = "lomiri-wallpapers-16.04"
# The package's 15 wallpapers less two that are not photographs (a rendered colour gradient and
# a macro texture); licences as /usr/share/doc/lomiri-wallpapers-16.04/copyright gives them.
PHOTOS: dict[str, str] = {
    "Bridge_by_Sander_Klootwijk.jpg": "CC-BY-SA-4.0",
    "Dragonfly_by_Bolly.jpg": "CC-BY-SA-4.0",
    "Picture_0B_by_freespace.jpg": "CC-BY-4.0",
    "Picture_1A_by_freespace.jpg": "CC-BY-4.0",
    "Wine_by_Jakkub_Mede.jpg": "CC-BY-4.0",
    "aitzgorri_by_Aitzol_Berasategi.jpg": "CC-BY-4.0",
    "free_by_Peter_Nerlich.jpg": "CC-BY-SA-4.0",
    "friends_by_Aitzol_Berasategi.jpg": "CC-BY-4.0",
    "greentock_by_Peter_Nerlich.jpg": "CC-BY-SA-4.0",
    "life_by_Aitzol_Berasategi.jpg": "CC-BY-4.0",
    "picosdeeuropa_by_Aitzol_Berasategi.jpg": "CC-BY-4.0",
    "seeding_by_Clements_Engelhardt.jpg": "CC0-1.0",
    "sunset_by_Aitzol_Berasategi.jpg": "CC-BY-4.0",
}
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_PACKAGE = "fonts-noto-color-emoji"
EMOJI_STRIKE = 109  # the font's one bitmap size (CBDT); other sizes do not render
PHOTO_DECODE_SIZE = (1024, 768)  # photos are decoded at about this size once, then cropped

SOURCES = [
    {"what": "background photographs", "package": f"Debian {PHOTO_PACKAGE}",
     "files": [str(PHOTO_DIR / name) for name in PHOTOS],
     "licence": "per file: " + ", ".join(f"{name} {lic}" for name, lic in PHOTOS.items()),
     "copyright": f"/usr/share/doc/{PHOTO_PACKAGE}/copyright"},
    {"what": "objects and distractors (Noto Color Emoji artwork)",
     "package": f"Debian {EMOJI_PACKAGE}", "files": [str(EMOJI_FONT)],
     "licence": "SIL OFL 1.1 (font), Apache-2.0 (images)",
     "copyright": f"/usr/share/doc/{EMOJI_PACKAGE}/copyright"},
]


class MissingMaterial(RuntimeError):
    """A file the generator needs is not installed; the message names the package."""


@dataclass(frozen=True)
class Sprite:
    """One emoji as an RGBA image cropped to its opaque extent (alpha >= 128)."""

    name: str
    image: Image.Image


def _require(path: Path, package: str) -> None:
    if not path.is_file():
        raise MissingMaterial(
            f"{path} is missing: install Debian's {package} (apt-get install {package}; "
            f"scripts/bootstrap.sh does it when run as root)")


@functools.lru_cache(maxsize=1)
def backgrounds() -> tuple[tuple[str, Image.Image], ...]:
    """The photographs, decoded once at about PHOTO_DECODE_SIZE, as (file name, RGB image)."""
    found = []
    for name in PHOTOS:
        path = PHOTO_DIR / name
        _require(path, PHOTO_PACKAGE)
        with Image.open(path) as image:
            image.draft("RGB", PHOTO_DECODE_SIZE)  # JPEG DCT scaling: fast, deterministic
            found.append((name, image.convert("RGB")))
    return tuple(found)


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    _require(EMOJI_FONT, EMOJI_PACKAGE)
    return ImageFont.truetype(str(EMOJI_FONT), EMOJI_STRIKE)


@functools.lru_cache(maxsize=512)
def sprite(name: str, character: str) -> Sprite:
    """One emoji rendered in colour at the font's native size, cropped to its alpha box."""
    canvas = Image.new("RGBA", (EMOJI_STRIKE * 2, EMOJI_STRIKE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((EMOJI_STRIKE // 4, EMOJI_STRIKE // 4), character,
                                font=_font(), embedded_color=True)
    alpha = np.asarray(canvas.getchannel("A"))
    box = canvas.getchannel("A").point(lambda a: 255 if a >= 128 else 0).getbbox()
    rgb = np.asarray(canvas.convert("RGB"))[alpha >= 128]
    if box is None or len(np.unique(rgb // 32, axis=0)) < 3:
        raise MissingMaterial(f"{EMOJI_FONT} has no colour glyph for {name} ({character!r}): "
                              f"install Debian's {EMOJI_PACKAGE} 2.042 or newer")
    return Sprite(name, canvas.crop(box))
