"""Data versions: the folders ``data-N/`` an import or addition writes, and how one is made
from another.

A data version is a new folder holding ``manifest.json`` (a :class:`DatasetManifest`, saved
and loaded by its own ``save``/``load``) and ``images/<class>/NNNN.png|jpg``. A version is
never written to once made: a re-import of the same folder (:func:`link_import`) and an
addition (:mod:`tl_core.data.grow`) make a new one whose old images are hard-linked, so runs
that used the old one keep their data. An addition is a new batch of images
(``batch_starts``); the split keeps the sides of the earlier batches.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tl_core import diskspace
from tl_core.data.records import DatasetManifest
from tl_core.errors import DataError

__all__ = [
    "CARRIED",
    "batch_count",
    "batches",
    "link_import",
    "link_old",
    "new_dest",
    "undo",
]

# Files beside the images that a new data version takes over (the user's label review and
# the history of the labels given on the Label page).
CARRIED = ("corrections.json", "labels.jsonl")


def new_dest(dest: Path) -> bool:
    """Check that ``dest`` is new or empty; True when it does not exist yet."""
    created = not dest.exists()
    if not created and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} must be a new or empty folder")
    return created


def undo(dest: Path, created: bool, exc: BaseException, need: int) -> None:
    """Remove what a failed import or addition wrote; a full disk becomes DiskFullError."""
    if created:
        shutil.rmtree(dest, ignore_errors=True)
    else:
        for child in dest.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    if diskspace.is_disk_full(exc):  # measured after the clean-up freed the space
        raise diskspace.disk_full_error(dest, need) from None


def link_old(base: DatasetManifest, dest: Path) -> int:
    """Hard-link (copy where the disk cannot) the old images and label review into ``dest``;
    how many were linked."""
    root, linked = Path(base.root), 0
    for item in [*base.items, *base.unlabelled]:
        src, dst = root / item.file, dest / item.file
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
            linked += 1
            continue
        except FileExistsError:
            raise
        except OSError:
            pass
        try:
            shutil.copy2(src, dst)
        except FileNotFoundError:
            raise DataError(
                f"The image '{item.file}' is missing from '{root}', so images cannot be added "
                "to this data set. Import the images again."
            ) from None
    for name in CARRIED:
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)  # a copy: editing one leaves the other
    return linked


def link_import(base: DatasetManifest, dest: Path, carry: Sequence[str] = ()) -> DatasetManifest:
    """A copy of the imported data set ``base`` in the new folder ``dest``: its images and
    the files named in ``carry`` (paths relative to it: e.g. the near-duplicate pairs, the
    squares its import made) hard-linked, copied where the disk cannot; its manifest
    written. Nothing is decoded. (Caches are replaced whole, never written in place, so a
    linked one stays right for every version that holds it.)"""
    created = new_dest(dest)
    try:
        link_old(base, dest)
        for name in carry:
            src = Path(base.root) / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dest / name)
                except OSError:
                    shutil.copy2(src, dest / name)
        manifest = replace(base, root=dest)
        manifest.save()
    except BaseException as exc:
        undo(dest, created, exc, 0)
        raise
    return manifest


def batch_count(manifest: DatasetManifest) -> int:
    """How many batches the data set came in: 1 for an import, +1 for each ``grow``."""
    n = len(manifest.items)
    return 1 + len({b for b in manifest.batch_starts if 0 < b < n})


def batches(manifest: DatasetManifest) -> list[int]:
    """The batch of each item (0: imported, 1: the first addition, ...)."""
    n = len(manifest.items)
    starts = sorted({0, *(b for b in manifest.batch_starts if 0 < b < n)})
    batch_of = [0] * n
    for b, (lo, hi) in enumerate(zip(starts, [*starts[1:], n], strict=True)):
        batch_of[lo:hi] = [b] * (hi - lo)
    return batch_of
