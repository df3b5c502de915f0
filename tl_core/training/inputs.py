"""Model inputs, decoded once: uint8 images at the model's scale, and transforms on tensors.

Each image of a data set is decoded, resized (shorter side to ``input / crop_pct``, as timm's
eval transform does) and centre-cropped to a square once, then kept as uint8 in a file
beside the data set (its size bounded by the disk, not the memory: see :class:`DecodedImages`).
Later epochs and later runs do no JPEG work; a new data version copies the squares of the
images it shares with an earlier one. Crops, flips and colour changes then run on those
small tensors; normalisation runs per batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from tl_core import diskspace
from tl_core.data.dataset import ImageItem
from tl_core.data.imageprep import decode_workers, square_pixels
from tl_core.data.pixelcache import Square
from tl_core.models.catalog import DataConfig
from tl_core.training.rowfile import RowFile

Transform = Callable[[torch.Tensor], torch.Tensor]
_INTERP = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


# A worker fine-tuning a model takes about 2 GB besides its caches, and one job is planned at
# 2.5 GB (tl_core.runs.jobs.JOB_MEMORY_GB): the caches keep the other half gigabyte resident.
CACHE_MB = 512


def cache_budget_bytes() -> int:
    """Memory the decoded images and cached activations may keep resident:
    ``TL_STUDIO_CACHE_MB`` (default :data:`CACHE_MB`). Beyond it they stay on disk and are
    read per batch."""
    try:
        return int(float(os.environ.get("TL_STUDIO_CACHE_MB", str(CACHE_MB))) * 1024**2)
    except ValueError:
        return CACHE_MB * 1024**2


def cache_side(cfg: DataConfig) -> int:
    """The square side images are kept at: timm's eval resize (input / crop_pct)."""
    return math.floor(cfg.input_size[-1] / cfg.crop_pct)


def square_of(img: Image.Image, side: int, interpolation: str) -> torch.Tensor:
    """Resize an RGB image's shorter side to ``side`` and centre-crop it: uint8 CHW
    (:func:`~tl_core.data.imageprep.square_pixels`, the one definition imports use too)."""
    return torch.from_numpy(square_pixels(img, side, interpolation))


def load_square(path: Path, side: int, interpolation: str) -> torch.Tensor:
    """Decode one imported image and make it a square of ``side`` (see :func:`square_of`)."""
    with Image.open(path) as img:
        return square_of(img.convert("RGB"), side, interpolation)


class DecodedImages:
    """A data set's decoded cache: uint8 squares [N, 3, side, side] in one file on disk.

    When the whole file fits the memory budget it is memory-mapped (rows are views, as fast
    as memory); otherwise rows are read per batch (:class:`RowFile`), so the worker's resident
    memory stays one batch, whatever the number of images. ``order``: the file's row of each
    image asked for, when the file holds them in another order (the cache an import made).
    """

    def __init__(
        self, path: Path, n: int, side: int, resident: bool, order: Sequence[int] | None = None
    ) -> None:
        self.file = RowFile(path, n, (3, side, side))
        self.side = side
        self.resident = resident
        self.order = None if order is None else list(order)
        self.decoded_now = 0  # images decoded by the call that built it
        self.reused = 0  # rows copied from an earlier data version's cache
        self.from_import = order is not None  # made while the images were imported
        self._mapped: torch.Tensor | None = None
        if resident and n:
            arr = np.memmap(path, dtype=np.uint8, mode="c", shape=(n, 3, side, side))
            self._mapped = torch.from_numpy(np.asarray(arr))

    def __len__(self) -> int:
        return self.file.n if self.order is None else len(self.order)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.side, self.side)

    @property
    def nbytes(self) -> int:
        """Its size on disk."""
        return self.file.nbytes

    @property
    def resident_bytes(self) -> int:
        """What it may take of the worker's memory: all of it when mapped, else nothing."""
        return self.nbytes if self._mapped is not None else 0

    def __getitem__(self, row: int) -> torch.Tensor:
        if self.order is not None:
            row = self.order[row]
        if self._mapped is not None:
            return self._mapped[row]
        return self.file.read([row])[0]

    def rows(self, rows: Sequence[int]) -> list[torch.Tensor]:
        """Rows ``rows``, one tensor each: one read per run of consecutive rows."""
        if self.order is not None:
            rows = [self.order[r] for r in rows]
        if self._mapped is not None:
            return [self._mapped[r] for r in rows]
        return list(self.file.read(rows).unbind(0))


_Index = tuple[list[str], list[str] | None, bool]


def _index_files(index: Path) -> _Index | None:
    """(files, sha256s or None, made by the import) of a complete cache's index; None when
    it is unreadable."""
    try:
        raw = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(raw, list):  # the first format: the files alone
        return [str(f) for f in raw], None, False
    if isinstance(raw, dict) and isinstance(raw.get("files"), list):
        sha = raw.get("sha256")
        files = [str(f) for f in raw["files"]]
        return files, sha if isinstance(sha, list) else None, raw.get("made") == "import"
    return None


def _earlier_rows(root: Path, stem: str, row_bytes: int) -> dict[str, tuple[Path, int]]:
    """sha256 -> (cache file, row) of complete decoded caches of the same size and
    interpolation: ``root``'s own (made by its import) and the other data versions' beside
    it (``root.parent/data-*``)."""
    found: dict[str, tuple[Path, int]] = {}
    own = Path(root) / "cache" / f"{stem}.json"
    for index in [own, *sorted(Path(root).parent.glob(f"data-*/cache/{stem}.json"))]:
        known = _index_files(index)
        data = index.with_suffix(".u8")
        if known is None or known[1] is None or not data.is_file():
            continue
        files, shas, _ = known
        if len(shas) != len(files) or data.stat().st_size != len(files) * row_bytes:
            continue
        for row, sha in enumerate(shas):
            found.setdefault(str(sha), (data, row))
    return found


def decode_all(
    root: Path,
    items: Sequence[ImageItem],
    side: int,
    interpolation: str,
    budget_bytes: int,
    progress: Callable[[int, int], None] | None = None,
) -> DecodedImages:
    """All ``items`` decoded once into ``root/cache/decoded-<side>-<interpolation>.u8``.

    Built once per data set and size, bounded by the free disk only (DiskFullError when it
    does not fit); ``budget_bytes`` decides only whether it is mapped into memory
    (:class:`DecodedImages`). Images whose sha256 a complete cache of another data version
    beside ``root`` holds are copied from it, not decoded again.
    """
    n = len(items)
    nbytes = n * 3 * side * side
    folder = root / "cache"
    stem = Square(side, interpolation).stem  # the name an import gives the same cache
    data, index = folder / f"{stem}.u8", folder / f"{stem}.json"
    files = [i.file for i in items]
    known = _index_files(index) if index.exists() else None
    if known is not None and known[0] == files and data.is_file():
        if known[1] is None:  # an index of the first format: add the sha256s for reuse
            with contextlib.suppress(OSError):  # atomically: other jobs may be reading it
                _write_index(index.with_suffix(".json.tmp"), items)
                index.with_suffix(".json.tmp").replace(index)
        images = DecodedImages(data, n, side, nbytes <= budget_bytes)
        images.from_import = known[2]
        return images
    covering = _covering(known, data, items, side)
    if covering is not None:  # e.g. the cache the import made, in the import's order
        rows, order = covering
        return DecodedImages(data, rows, side, rows * 3 * side * side <= budget_bytes, order)
    diskspace.check_free(folder, nbytes + diskspace.MB)  # before anything is written
    with diskspace.guard(folder, diskspace.MB):
        folder.mkdir(exist_ok=True)
    tmp = data.with_suffix(".tmp")
    earlier = _earlier_rows(root, stem, 3 * side * side)  # its own rows too, read before
    index.unlink(missing_ok=True)  # from here on the cache is incomplete
    with diskspace.guard(folder, nbytes + diskspace.MB, cleanup=[tmp, data]):
        decoded, reused = _fill(tmp, root, items, (side, interpolation), progress, earlier)
        tmp.replace(data)
        _write_index(index, items)  # written last: its presence means "complete"
    images = DecodedImages(data, n, side, nbytes <= budget_bytes)
    images.decoded_now, images.reused = decoded, reused
    return images


def _covering(
    known: _Index | None,
    data: Path,
    items: Sequence[ImageItem],
    side: int,
) -> tuple[int, list[int]] | None:
    """(rows of the file, the row of each item) when a complete cache holds every item
    (by sha256), in whatever order; None otherwise."""
    if known is None or known[1] is None or not data.is_file():
        return None
    shas = known[1]
    if data.stat().st_size != len(shas) * 3 * side * side:
        return None
    where = {str(sha): row for row, sha in enumerate(shas)}
    order = [where.get(i.sha256, -1) for i in items]
    return None if -1 in order else (len(shas), order)


def _write_index(index: Path, items: Sequence[ImageItem]) -> None:
    """The files and sha256s of a complete cache (one that cannot be read is rebuilt)."""
    index.write_text(
        json.dumps({"files": [i.file for i in items], "sha256": [i.sha256 for i in items]})
    )


def _fill(
    tmp: Path,
    root: Path,
    items: Sequence[ImageItem],
    square: tuple[int, str],
    progress: Callable[[int, int], None] | None,
    earlier: dict[str, tuple[Path, int]],
) -> tuple[int, int]:
    """Write every item's square into the new file ``tmp``: (decoded, copied) counts. Rows
    ``earlier`` holds (sha256 -> cache file, row) are copied, the others decoded.

    Rows go in with ``pwrite`` (no memory map: nothing of the file stays resident, and its
    blocks are reserved first, so a full disk is an error, not a crash).
    """
    n = len(items)
    side, interpolation = square
    out = RowFile.create(tmp, n, (3, side, side))
    sources: dict[Path, RowFile] = {}
    copy = [(i, earlier[it.sha256]) for i, it in enumerate(items) if it.sha256 in earlier]
    for dst, (path, src) in copy:
        if path not in sources:
            sources[path] = RowFile(path, path.stat().st_size // out.row_bytes, (3, side, side))
        out.write(dst, sources[path].read([src]))
    for source in sources.values():
        source.close()
    todo = [i for i in range(n) if items[i].sha256 not in earlier]
    done = len(copy)
    if progress is not None and done:
        progress(done, n)

    def fill(i: int) -> None:
        out.write(i, load_square(root / items[i].file, side, interpolation))

    # Pillow decodes and resizes outside the GIL: one thread per core fills distinct rows.
    try:
        with ThreadPoolExecutor(decode_workers()) as pool:
            for _ in pool.map(fill, todo):
                done += 1
                if progress is not None:
                    progress(done, n)
    finally:
        out.close()
    return len(todo), len(copy)


def make_transforms(cfg: DataConfig, augment: str) -> tuple[Transform, Transform]:
    """(train, eval) transforms from a uint8 square to a uint8 crop of the input size."""
    size = list(cfg.input_size[-2:])
    interp = _INTERP.get(cfg.interpolation, InterpolationMode.BICUBIC)
    eval_tf = v2.CenterCrop(size)
    if augment == "none":
        return eval_tf, eval_tf
    scale, jitter, rand_aug = {
        "light": ((0.6, 1.0), 0.0, False),
        "medium": ((0.3, 1.0), 0.2, False),
        "strong": ((0.08, 1.0), 0.3, True),
    }[augment]
    steps: list[torch.nn.Module] = [
        v2.RandomResizedCrop(size, scale=scale, interpolation=interp, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if jitter:
        steps.append(v2.ColorJitter(jitter, jitter, jitter))
    if rand_aug:
        steps.append(v2.RandAugment(num_ops=2, magnitude=9))
    return v2.Compose(steps), eval_tf


class Normalize(torch.nn.Module):
    """uint8 batch -> float batch with the model's mean/std (timm's data config)."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class ImageTensors(Dataset[tuple[torch.Tensor, int]]):
    """uint8 crops with class indices: from the decoded cache, or decoding on the fly."""

    def __init__(
        self,
        decoded: DecodedImages | torch.Tensor | None,
        rows: Sequence[int],
        root: Path,
        items: Sequence[ImageItem],
        labels: Sequence[int],
        transform: Transform,
        side: int,
        interpolation: str,
    ) -> None:
        self.decoded = decoded
        self.rows = list(rows)
        self.root = root
        self.items = list(items)
        self.labels = list(labels)
        self.transform = transform
        self.side = side
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.rows)

    def _square(self, row: int) -> torch.Tensor:
        if self.decoded is not None:
            return self.decoded[row]
        return load_square(self.root / self.items[row].file, self.side, self.interpolation)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self._square(self.rows[i])), self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole batch (the DataLoader asks for it so). Without the decoded tensor, the
        images are decoded on every core at once; the transforms (random ones draw from the
        global generator) then run in order, so results do not depend on the threads."""
        rows = [self.rows[i] for i in indices]
        if isinstance(self.decoded, DecodedImages):
            squares = self.decoded.rows(rows)
        elif self.decoded is not None:  # squares already in a tensor
            squares = [self.decoded[row] for row in rows]
        elif len(rows) > 1:
            with ThreadPoolExecutor(min(decode_workers(), len(rows))) as pool:
                squares = list(pool.map(self._square, rows))
        else:
            squares = [self._square(row) for row in rows]
        return [
            (self.transform(square), self.labels[i])
            for square, i in zip(squares, indices, strict=True)
        ]
