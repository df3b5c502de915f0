"""Free disk space: estimates of what an import or a run will write, checks, and one message.

Every write that can fill the disk goes through :func:`guard`, which turns "no space left"
(an ``OSError`` with ENOSPC/EDQUOT, SQLite's "database or disk is full", torch's C++ write
failure on a full disk) into :class:`DiskFullError` with the same plain sentence, after
removing the temporary files it was given. No torch here: pages and the store import this.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tl_core.errors import DiskFullError

MB = 1024**2
MARGIN_BYTES = 4 * MB  # room for the database, logs and file-system overhead
IMAGE_CAP_BYTES = 640 * 640 * 3  # a normalised image is at most MAX_SIDE² RGB pixels
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return 0


def _mb(n: int) -> str:
    value = n / MB
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def disk_full_error(path: Path, needed: int = 0) -> DiskFullError:
    """The one message for a full disk, with the free space measured now."""
    free = free_bytes(path)
    needed = max(int(needed), free + MB, MB)
    return DiskFullError(
        f"The disk is full: {_mb(free)} MB free, about {_mb(needed)} MB needed. Free some "
        f"space on the disk that holds {Path(path).absolute()} and try again."
    )


def is_disk_full(exc: BaseException) -> bool:
    """Does ``exc`` say the disk (or the user's quota) is full?"""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        return "disk is full" in str(exc) or "database or disk is full" in str(exc)
    text = str(exc)
    # torch writing to a path reports a short write from C++ without an errno.
    return isinstance(exc, RuntimeError) and (
        "No space left" in text or "file write failed" in text or "unexpected pos" in text
    )


def _io_error(exc: BaseException) -> bool:
    """SQLite says "disk I/O error" when it cannot grow its shared-memory file on a full disk."""
    return isinstance(exc, sqlite3.OperationalError) and "disk I/O error" in str(exc)


def check_free(path: Path, needed: int) -> None:
    """Raise DiskFullError when the disk holding ``path`` has less than ``needed`` bytes free."""
    if free_bytes(path) < needed:
        raise disk_full_error(path, needed)


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        except OSError:
            pass


@contextmanager
def guard(path: Path, needed: int = 0, cleanup: Iterable[Path] = ()) -> Iterator[None]:
    """Turn a full-disk failure inside the block into DiskFullError (``cleanup`` removed first).

    ``path`` names where the block writes (for the free-space figure); ``needed`` is what it
    was expected to need. Other errors pass unchanged, also after ``cleanup``.
    """
    try:
        yield
    except DiskFullError:
        _remove(cleanup)
        raise
    except BaseException as exc:
        _remove(cleanup)
        if is_disk_full(exc) or (_io_error(exc) and free_bytes(path) < MB):
            raise disk_full_error(path, needed) from None
        raise


def remove_temporary(folder: Path) -> None:
    """Delete ``*.tmp`` files left in ``folder`` (not recursive): frees space after a failure."""
    with suppress(OSError):
        _remove(Path(folder).glob("*.tmp"))


# ---------------------------------------------------------------------------- estimates


def files_bytes(paths: Iterable[Path]) -> int:
    """Total size of the files that exist among ``paths``."""
    total = 0
    for p in paths:
        with suppress(OSError):
            total += Path(p).stat().st_size
    return total


def import_need(n_images: int, source_bytes: int, kept_per_image: int = 0) -> int:
    """Bytes an import writes: the normalised copies (no larger than the sources, capped)
    and ``kept_per_image`` bytes of each image's squares and thumbnails."""
    copies = min(max(source_bytes, 0), n_images * IMAGE_CAP_BYTES)
    return copies + n_images * kept_per_image + MARGIN_BYTES


def run_need(
    n_images: int,
    n_val: int,
    n_classes: int,
    side: int,
    param_count: int,
    trainable_count: int,
    steps: int,
    cached_bytes: int = 0,
) -> int:
    """Bytes a run writes: decoded cache, two checkpoints, predictions, metrics.

    ``cached_bytes`` is the part of the decoded cache already on disk (0 when none is).
    The decoded cache holds each image once as ``side``² RGB bytes; best.pt holds the weights
    (4 bytes a parameter), last.pt the weights and AdamW's two moments of the trainable ones,
    and while last.pt is replaced its temporary copy stands beside it.
    """
    decoded = max(n_images * 3 * side * side - cached_bytes, 0)
    last = 4 * (param_count + 2 * trainable_count)
    checkpoints = 4 * param_count + 2 * last
    predictions = n_val * (200 + 25 * n_classes)
    metrics = 200 * steps
    return decoded + checkpoints + predictions + metrics + MARGIN_BYTES
