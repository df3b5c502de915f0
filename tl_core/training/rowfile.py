"""Files of fixed-size rows (decoded images, cached activations) read and written by row.

Rows go in and out with ``os.pwrite``/``os.preadv``, never through a memory map: the file's
pages then sit in the operating system's page cache, which the kernel frees under pressure,
and not in the worker's resident memory. A file of any size (bounded by the disk only) costs
the process one batch of memory at a time, and reading a batch from the page cache is a
``memcpy`` per run of consecutive rows.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tl_core import diskspace

__all__ = ["RowFile", "RowsDataset", "megabytes"]


def megabytes(n: int) -> str:
    """A size for the run log: "0.4", "12", "3,906" (MB)."""
    value = n / 1024**2
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


class RowFile:
    """``n`` rows of ``shape`` and ``dtype`` (any torch dtype, bf16 too) in one file."""

    def __init__(
        self, path: Path, n: int, shape: Sequence[int], dtype: torch.dtype = torch.uint8
    ) -> None:
        self.path = Path(path)
        self.n = n
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.row_bytes = math.prod(self.shape) * torch.tensor([], dtype=dtype).element_size()
        self._fd: int | None = None
        self._pid = 0

    @property
    def nbytes(self) -> int:
        return self.n * self.row_bytes

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict[str, Any]:  # a copy in another process opens its own
        return {**self.__dict__, "_fd": None, "_pid": 0}

    def __del__(self) -> None:
        self.close()

    def _file(self, flags: int = os.O_RDONLY) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, flags), os.getpid()
        return self._fd

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None and getattr(self, "_pid", 0) == os.getpid():
            with contextlib.suppress(OSError):
                os.close(fd)

    @classmethod
    def create(
        cls, path: Path, n: int, shape: Sequence[int], dtype: torch.dtype = torch.uint8
    ) -> RowFile:
        """A new file with its blocks reserved (a full disk fails here, as ENOSPC)."""
        rows = cls(path, n, shape, dtype)
        fd = os.open(rows.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, rows.nbytes)
            try:
                if rows.nbytes:
                    os.posix_fallocate(fd, 0, rows.nbytes)
            except AttributeError:  # pragma: no cover - not POSIX
                pass
            except OSError as exc:
                if diskspace.is_disk_full(exc):
                    raise
        except BaseException:
            os.close(fd)
            raise
        rows._fd, rows._pid = fd, os.getpid()
        return rows

    def write(self, start: int, block: torch.Tensor | np.ndarray) -> None:
        """Rows ``start, start + 1, ...`` from ``block`` (rows of this file's shape)."""
        if isinstance(block, torch.Tensor):
            block = _bytes_of(block)
        data = memoryview(np.ascontiguousarray(block)).cast("B")
        fd, offset = self._file(os.O_RDWR), start * self.row_bytes
        while data:
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written

    def read(self, rows: Sequence[int]) -> torch.Tensor:
        """Rows ``rows`` as one new tensor [len(rows), *shape]: one read per run of
        consecutive rows."""
        out = torch.empty((len(rows), *self.shape), dtype=self.dtype)
        buf = memoryview(_bytes_of(out)).cast("B")
        fd, size, k = self._file(), self.row_bytes, 0
        rows = [int(r) for r in rows]
        while k < len(rows):
            end = k + 1
            while end < len(rows) and rows[end] == rows[end - 1] + 1:
                end += 1
            view, offset = buf[k * size : end * size], rows[k] * size
            while view:
                got = os.preadv(fd, [view], offset)
                if got <= 0:
                    raise OSError(f"{self.path} is shorter than its {self.n} rows")
                view, offset = view[got:], offset + got
            k = end
        return out

    def copy_rows(self, pairs: Sequence[tuple[int, int]], source: RowFile) -> None:
        """Row ``src`` of ``source`` into row ``dst`` of this file, for each ``(dst, src)``."""
        for dst, src in pairs:
            self.write(dst, source.read([src]))


def _bytes_of(t: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous CPU tensor as a uint8 array (no copy)."""
    t = t.detach().cpu().contiguous()
    return t.view(torch.uint8).numpy() if t.dtype != torch.uint8 else t.numpy()


class RowsDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(row, label) pairs of a :class:`RowFile`: a TensorDataset whose first tensor is on disk.

    A DataLoader asks for whole batches (``__getitems__``): one read per batch.
    """

    def __init__(self, rows: RowFile, labels: torch.Tensor) -> None:
        self.rows = rows
        self.labels = labels.cpu()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows.read([i])[0], self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        block = self.rows.read(indices)
        return [(block[k], self.labels[i]) for k, i in enumerate(indices)]
