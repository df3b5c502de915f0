"""Model inputs, decoded once: uint8 images at the model's scale, and transforms on tensors.

Each image of a data set is decoded, resized (shorter side to ``input / crop_pct``, as timm's
eval transform does) and centre-cropped to a square once, then kept as uint8 in a
memory-mapped file beside the data set. Later epochs and later runs do no JPEG work. Crops,
flips and colour changes then run on those small tensors; normalisation runs per batch.
"""

from __future__ import annotations

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
from torchvision.transforms import functional as tvf

from tl_core import diskspace
from tl_core.data.dataset import ImageItem
from tl_core.data.imageprep import decode_workers
from tl_core.models.catalog import DataConfig

Transform = Callable[[torch.Tensor], torch.Tensor]
_INTERP = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def cache_budget_bytes() -> int:
    """Memory the decoded images and cached activations may use: ``TL_STUDIO_CACHE_MB``."""
    try:
        return int(float(os.environ.get("TL_STUDIO_CACHE_MB", "1024")) * 1024**2)
    except ValueError:
        return 1024**3


def cache_side(cfg: DataConfig) -> int:
    """The square side images are kept at: timm's eval resize (input / crop_pct)."""
    return math.floor(cfg.input_size[-1] / cfg.crop_pct)


def square_of(img: Image.Image, side: int, interpolation: str) -> torch.Tensor:
    """Resize an RGB image's shorter side to ``side`` and centre-crop it: uint8 CHW."""
    img = tvf.resize(img, side, interpolation=_INTERP.get(interpolation, InterpolationMode.BICUBIC))
    img = tvf.center_crop(img, [side, side])
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_square(path: Path, side: int, interpolation: str) -> torch.Tensor:
    """Decode one imported image and make it a square of ``side`` (see :func:`square_of`)."""
    with Image.open(path) as img:
        return square_of(img.convert("RGB"), side, interpolation)


def decode_all(
    root: Path,
    items: Sequence[ImageItem],
    side: int,
    interpolation: str,
    budget_bytes: int,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor | None:
    """All ``items`` as one uint8 tensor [N, 3, side, side], memory-mapped under ``root/cache``.

    Built once per data set and size; returns None when it would not fit ``budget_bytes``.
    """
    n = len(items)
    nbytes = n * 3 * side * side
    if nbytes > budget_bytes:
        return None
    folder = root / "cache"
    folder.mkdir(exist_ok=True)
    stem = f"decoded-{side}-{interpolation}"
    data, index = folder / f"{stem}.u8", folder / f"{stem}.json"
    files = [i.file for i in items]
    if index.exists() and json.loads(index.read_text()) == files:
        arr = np.memmap(data, dtype=np.uint8, mode="c", shape=(n, 3, side, side))
        return torch.from_numpy(np.asarray(arr))
    tmp = data.with_suffix(".tmp")
    index.unlink(missing_ok=True)  # from here on the cache is incomplete
    with diskspace.guard(folder, nbytes + diskspace.MB, cleanup=[tmp, data]):
        _fill(tmp, root, items, side, interpolation, progress)
        tmp.replace(data)
        index.write_text(json.dumps(files))  # written last: its presence means "complete"
    arr = np.memmap(data, dtype=np.uint8, mode="c", shape=(n, 3, side, side))
    return torch.from_numpy(np.asarray(arr))


def _fill(
    tmp: Path,
    root: Path,
    items: Sequence[ImageItem],
    side: int,
    interpolation: str,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Decode every item into the new memory-mapped file ``tmp``."""
    n = len(items)
    with open(tmp, "wb") as f:
        # Reserve the blocks first: writing a sparse memory map on a full disk is a SIGBUS
        # crash; running out here is an OSError (ENOSPC) that can be reported.
        f.truncate(n * 3 * side * side)
        try:
            os.posix_fallocate(f.fileno(), 0, n * 3 * side * side)
        except AttributeError:  # pragma: no cover - not POSIX
            pass
        except OSError as exc:
            if diskspace.is_disk_full(exc):
                raise
    arr = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(n, 3, side, side))

    def fill(i: int) -> None:
        arr[i] = load_square(root / items[i].file, side, interpolation).numpy()

    # Pillow decodes and resizes outside the GIL: one thread per core fills distinct rows.
    with ThreadPoolExecutor(decode_workers()) as pool:
        for done, _ in enumerate(pool.map(fill, range(n)), 1):
            if progress is not None:
                progress(done, n)
    arr.flush()  # the memory map closes when ``arr`` goes


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
    """uint8 crops with class indices: from the decoded tensor, or decoding on the fly."""

    def __init__(
        self,
        decoded: torch.Tensor | None,
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
        if self.decoded is None and len(rows) > 1:
            with ThreadPoolExecutor(min(decode_workers(), len(rows))) as pool:
                squares = list(pool.map(self._square, rows))
        else:
            squares = [self._square(row) for row in rows]
        return [
            (self.transform(square), self.labels[i])
            for square, i in zip(squares, indices, strict=True)
        ]
