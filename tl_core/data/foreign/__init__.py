"""Everyday pictures that belong to no user's classes (see LICENSE.md beside this file).

Fourteen public-domain and CC0 photos, each whole and as its four corners (60% of each
side), so 70 pictures: a cat, a coffee cup, an astronaut, coins, a rocket, a retina, text,
textures. A trained model scores them to measure how often a picture of none of the
user's classes is flagged unfamiliar.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

__all__ = ["FOLDER", "pictures"]

FOLDER = Path(__file__).parent
CORNER = 0.6  # each corner crop keeps this share of the picture's width and height


def _corners(image: Image.Image) -> list[Image.Image]:
    w, h = image.size
    cw, ch = round(w * CORNER), round(h * CORNER)
    boxes = [(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]
    return [image.crop((x, y, x + cw, y + ch)) for x, y in boxes]


def pictures() -> list[tuple[str, Image.Image]]:
    """(name, RGB picture) for each photo and each of its four corners, sorted by name."""
    out = []
    for path in sorted(FOLDER.glob("*.jpg")):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        out.append((path.stem, image))
        out += [(f"{path.stem} corner {k + 1}", c) for k, c in enumerate(_corners(image))]
    return out
