"""What an import keeps of each picture besides its stored copy, made while it is decoded.

Every picture is decoded once, at import. From that decoded picture the import also makes,
in the same worker thread:

- its near-duplicate fingerprint (the perceptual hash of :mod:`tl_core.data.neardup`, kept
  in the manifest, and the small grayscale reduction it is cut from, kept in
  ``cache/near-work.u8``), so that confirming near-copies needs no second decode;
- its **squares** for the models the caller names (:class:`Square`: timm's evaluation
  resize and centre crop, :func:`~tl_core.data.imageprep.square_pixels`), kept in
  ``cache/decoded-<side>-<interpolation>.u8``: the decoded-image cache training and the
  frozen features read (:func:`tl_core.training.inputs.decode_all`), so that the first run
  decodes nothing.

Squares are made from exactly the pixels the stored copy decodes to: the picture itself when
the copy is its source's own bytes or a lossless file, the re-encoded copy decoded once more
otherwise. So a run's cache equals what decoding the stored copies would give, and the
exported model's scores on those files equal the app's.

Rows are written as pictures are kept (``os.pwrite``: nothing stays in the importer's
memory) and indexed by the pictures' sha256 when the import completes; the index written
last marks a complete file. No torch here: pages import this module.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tl_core.data.imageprep import Prepared, square_pixels
from tl_core.data.neardup import WORK_SIDE, WORK_STEM, fingerprint, work_row
from tl_core.data.records import ImageItem

__all__ = ["CACHE_FOLDER", "Derived", "ImportCache", "Square", "derive", "kept_names", "row_bytes"]

CACHE_FOLDER = "cache"


@dataclass(frozen=True)
class Square:
    """The square a model's input is cut from: its side (timm's ``input_size / crop_pct``)
    and the resize's interpolation."""

    side: int
    interpolation: str

    @property
    def stem(self) -> str:
        """The cache's file name without its suffix (``decoded-256-bicubic``)."""
        return f"decoded-{self.side}-{self.interpolation}"

    @property
    def row_bytes(self) -> int:
        return 3 * self.side * self.side


@dataclass
class Derived:
    """What one picture's worker made besides its stored copy."""

    phash: str
    work: Image.Image  # the near-duplicate check's grayscale reduction
    squares: list[np.ndarray]  # one uint8 (3, side, side) per Square asked for


def row_bytes(squares: Sequence[Square]) -> int:
    """Bytes the cache keeps per picture: its squares and its reduction."""
    return sum(s.row_bytes for s in squares) + WORK_SIDE * WORK_SIDE


def derive(prepared: Prepared, stored: bytes, squares: Sequence[Square]) -> Derived:
    """The fingerprint and squares of a picture whose stored copy is ``stored`` (runs in
    the import's worker thread)."""
    phash, work = fingerprint(prepared.image)
    if not squares:
        return Derived(phash, work, [])
    if prepared.lossless or prepared.as_stored is not None:
        pixels = prepared.image  # the stored copy decodes to exactly these pixels
    else:  # a re-encoded copy: its own pixels, as every later reading of it sees them
        with Image.open(io.BytesIO(stored)) as img:
            pixels = img.convert("RGB")
    return Derived(phash, work, [square_pixels(pixels, s.side, s.interpolation) for s in squares])


class _Rows:
    """One file of fixed-size rows, written by row with ``os.pwrite``."""

    def __init__(self, path: Path, row: int, capacity: int) -> None:
        self.path, self.row = path, row
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self.fd, row * capacity)

    def write(self, at: int, data: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        offset = at * self.row
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def finish(self, n: int) -> None:
        os.ftruncate(self.fd, n * self.row)
        self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


class ImportCache:
    """The rows of one import's kept pictures, in the order they are kept.

    ``add`` takes each kept picture's :class:`Derived`; ``finish`` writes the indexes (the
    files and sha256s of the rows), which mark the files complete. An import that fails
    leaves files without index, which nothing reads (its folder is removed anyway).
    """

    def __init__(self, dest: Path, squares: Sequence[Square], capacity: int) -> None:
        self.folder = Path(dest) / CACHE_FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        self.squares = list(dict.fromkeys(squares))
        self.n = 0
        self.sizes: list[tuple[int, int]] = []
        self._work = _Rows(self.folder / f"{WORK_STEM}.u8", WORK_SIDE * WORK_SIDE, capacity)
        self._squares = [
            _Rows(self.folder / f"{s.stem}.u8", s.row_bytes, capacity) for s in self.squares
        ]

    def add(self, derived: Derived) -> None:
        self._work.write(self.n, work_row(derived.work))
        self.sizes.append(derived.work.size)
        for rows, square in zip(self._squares, derived.squares, strict=True):
            rows.write(self.n, square)
        self.n += 1

    def finish(self, items: Sequence[ImageItem]) -> None:
        """Complete the files: ``items`` are the kept pictures, in the order they came."""
        if len(items) != self.n:
            raise ValueError(f"{len(items)} pictures kept, {self.n} rows written")
        shas = [i.sha256 for i in items]
        self._work.finish(self.n)
        _write_json(self.folder / f"{WORK_STEM}.json", {"sha256": shas, "sizes": self.sizes})
        files = [i.file for i in items]
        for rows, square in zip(self._squares, self.squares, strict=True):
            rows.finish(self.n)
            index = {"files": files, "sha256": shas, "made": "import"}
            _write_json(self.folder / f"{square.stem}.json", index)

    def close(self) -> None:
        for rows in (self._work, *self._squares):
            rows.close()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


def kept_names(root: Path) -> list[str]:
    """The complete files an import made in the data version ``root`` (each data file with
    its index), as paths relative to it: what a linked copy of the version carries."""
    folder = Path(root) / CACHE_FOLDER
    names = []
    for index in sorted(folder.glob("*.json")):
        made = index.stem == WORK_STEM or index.stem.startswith("decoded-")
        if made and index.with_suffix(".u8").is_file():
            names += [f"{CACHE_FOLDER}/{index.stem}.u8", f"{CACHE_FOLDER}/{index.name}"]
    return names
