"""Decode one untrusted image and normalise it: upright, RGB, long side capped, hashed.

Used by :mod:`tl_core.data.dataset`; only Pillow, numpy, the standard library and the
stand-alone :mod:`tl_core.data.standalone_predict` (which shares its colour conversion).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from tl_core.data.layout import os_reason

# The bundle's stand-alone predict.py opens pictures exactly as imports do: one definition
# (it also registers the HEIC/HEIF reader of pillow-heif; Pillow reads AVIF itself).
from tl_core.data.standalone_predict import cap_side, to_rgb, upright_rgb

__all__ = [
    "LOSSLESS_FORMATS",
    "MAX_PROFILE_BYTES",
    "ImageSkip",
    "Prepared",
    "decode_workers",
    "jpeg_without_metadata",
    "keeps_source",
    "prepare",
    "square_pixels",
    "to_rgb",
]

LOSSLESS_FORMATS = frozenset({"PNG", "BMP", "GIF", "TIFF"})
# Pillow refuses PNG text and colour-profile (iCCP) chunks that unpack to over 1 MB; print and
# camera profiles can be larger. Raised to 32 MB (total text stays capped by MAX_TEXT_MEMORY).
# The profile itself is then ignored: pixels are used as stored (see docs/ARCHITECTURE.md).
MAX_PROFILE_BYTES = 32 * 1024 * 1024
PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, MAX_PROFILE_BYTES)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
# Decoding threads at most: past this, memory bandwidth, not cores, limits a host.
MAX_DECODE_WORKERS = 32


def decode_workers() -> int:
    """Threads that decode images at once: one per core this process may use (Pillow decodes
    and resizes outside the GIL), at least 1 and at most ``MAX_DECODE_WORKERS``."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    return max(1, min(MAX_DECODE_WORKERS, cores))


class ImageSkip(Exception):
    """The file cannot be used; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Prepared:
    """A normalised RGB image, whether its source was lossless, and its pixel hash.

    ``as_stored``: the source's own bytes without their metadata, when they decode to exactly
    ``image`` (a JPEG already upright, RGB or gray, within the size cap: see
    :func:`keeps_source`), so an import stores them as they are instead of encoding again.
    """

    image: Image.Image
    lossless: bool
    sha256: str
    as_stored: bytes | None = None


def _too_large(width: int, height: int, max_pixels: int) -> ImageSkip:
    return ImageSkip(
        f"image too large ({width}x{height} pixels); the limit is {max_pixels // 1_000_000} "
        "megapixels"
    )


def prepare(src: Path | BinaryIO, max_side: int, max_pixels: int) -> Prepared:
    """Open, fully decode, rotate upright, convert to RGB and downscale one image.

    Raises :class:`ImageSkip` with a plain reason for anything that is not a usable image.
    The header's size is checked before any pixel is decoded.
    """
    if isinstance(src, Path):
        try:
            fh = open(src, "rb")  # noqa: SIM115
        except OSError as exc:
            raise ImageSkip(os_reason(exc)) from None
        with fh:
            return _prepare(fh, max_side, max_pixels)
    return _prepare(src, max_side, max_pixels)


_OPEN_LOCK = threading.Lock()


def _open(src: BinaryIO) -> Image.Image:
    """``Image.open`` without Pillow's bomb warning (above ~89 megapixels): our own limit,
    max_pixels, is the one enforced. ``warnings.catch_warnings`` changes process-wide state,
    so imports decoding on several threads take turns here (opening reads only the header)."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(src)


def _prepare(src: BinaryIO, max_side: int, max_pixels: int) -> Prepared:
    try:
        img = _open(src)
    except Image.DecompressionBombError as exc:
        found = _BOMB_PIXELS.search(str(exc))
        size = f"{int(found.group(1)) // 1_000_000} megapixels" if found else "far too many"
        raise ImageSkip(
            f"image too large ({size}); the limit is {max_pixels // 1_000_000} megapixels"
        ) from None
    except UnidentifiedImageError:
        raise ImageSkip("not an image (the file's contents are not a picture)") from None
    except ValueError as exc:
        if "MAX_TEXT_CHUNK" in str(exc):
            raise ImageSkip(
                "its embedded colour profile or text is too large (over "
                f"{MAX_PROFILE_BYTES // 1024**2} MB); save the picture again without it"
            ) from None
        raise ImageSkip("image is damaged or cut off") from None
    except Exception:
        raise ImageSkip("image is damaged or cut off") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise _too_large(width, height, max_pixels)
        lossless = img.format in LOSSLESS_FORMATS
        try:
            if img.format == "JPEG":
                img.draft("RGB", (max_side, max_side))
            img.load()
        except Image.DecompressionBombError:
            raise _too_large(width, height, max_pixels) from None
        except Exception:
            raise ImageSkip("image is damaged or cut off") from None
        if img.size[0] * img.size[1] > max_pixels:  # e.g. a GIF frame bigger than its header
            raise _too_large(*img.size, max_pixels)
        try:  # a new image: never the source, which is closed below
            rgb = upright_rgb(img)
        except ValueError as exc:
            raise ImageSkip(str(exc)) from None
        keep = keeps_source(img, (width, height), max_side)
    rgb.info = {}  # no EXIF, ICC or transparency carried into the saved file
    cap_side(rgb, max_side)
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return Prepared(rgb, lossless, digest.hexdigest(), _source_bytes(src) if keep else None)


def keeps_source(img: Image.Image, header_size: tuple[int, int], max_side: int) -> bool:
    """Whether a loaded picture's file, stripped of its metadata, decodes to exactly what
    :func:`prepare` makes of it: a baseline or progressive JPEG in RGB or gray (no CMYK),
    decoded at full size (no draft reduction), no side over ``max_side`` (no shrink), and
    upright as stored (no EXIF or XMP orientation other than 1)."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.size != header_size:
        return False
    if max(header_size) > max_side:
        return False
    try:
        return img.getexif().get(_ORIENTATION, 1) == 1
    except Exception:  # unreadable EXIF: stored again, as before
        return False


_ORIENTATION = 0x0112
# JPEG segments that hold only metadata: APP1-APP13 and APP15 (EXIF, XMP, ICC, IPTC, ...) and
# comments. APP0 (JFIF) and APP14 (Adobe: the colour transform) stay, as every other segment.
_METADATA_MARKERS = frozenset({*range(0xE1, 0xEE), 0xEF, 0xFE})


def _source_bytes(src: BinaryIO) -> bytes | None:
    """The source file's bytes without metadata (:func:`jpeg_without_metadata`), or None."""
    try:
        if not src.seekable():
            return None
        src.seek(0)
        return jpeg_without_metadata(src.read())
    except (OSError, ValueError):
        return None


def jpeg_without_metadata(data: bytes) -> bytes | None:
    """The same JPEG without its metadata segments (location, camera, colour profile,
    comments) and without anything after its end marker; its pixels decode identically.

    None when the file is not laid out as this reads it (the caller then encodes the
    picture again).
    """
    if data[:2] != b"\xff\xd8":
        return None
    out, i, n = [data[:2]], 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte before a marker
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the coded pixels follow, up to the end marker
            end = data.find(b"\xff\xd9", i)
            if end < 0:
                return None
            out.append(data[i : end + 2])
            return b"".join(out)
        if marker in (0xD8, 0xD9, 0x01) or 0xD0 <= marker <= 0xD7:
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2 or i + 2 + length > n:
            return None
        if marker not in _METADATA_MARKERS:
            out.append(data[i : i + 2 + length])
        i += 2 + length
    return None


def square_pixels(img: Image.Image, side: int, interpolation: str) -> np.ndarray:
    """An RGB picture's shorter side resized to ``side`` and centre-cropped to a square, as
    uint8 (3, side, side): timm's evaluation resize and crop, the squares training and every
    prediction start from (as torchvision does it for Pillow images, pixel for pixel)."""
    width, height = img.size
    if width <= height:
        size = (side, int(side * height / width))
    else:
        size = (int(side * width / height), side)
    if size != img.size:
        img = img.resize(size, _RESAMPLE.get(interpolation, Image.Resampling.BICUBIC))
    left = round((size[0] - side) / 2.0)
    top = round((size[1] - side) / 2.0)
    square = img.crop((left, top, left + side, top + side))
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1).copy()


_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
