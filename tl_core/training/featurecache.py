"""Pooled features of the whole frozen backbone, cached per image beside the data set.

Written by the features job (head start, gauge, learning curve, recommendation: see
:func:`tl_core.analysis.transfer.frozen_features`) and read back by a head-only training run
without augmentation, which trains on exactly these outputs: so pressing Train after the
Model page's head start runs no image through the network again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tl_core.data.dataset import ImageItem

__all__ = ["FORMAT", "earlier_rows", "features_path", "pooled_rows", "read_cache", "write_cache"]

FORMAT = 1  # bump when the cached features' content changes


def _digest(items: Sequence[ImageItem]) -> str:
    text = json.dumps([FORMAT, *([i.file, i.sha256] for i in items)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def features_path(root: Path, items: Sequence[ImageItem], model_key: str, pretrained: bool) -> Path:
    """Where the features of ``items`` (sorted by file) are cached."""
    kind = "pretrained" if pretrained else "random"
    return Path(root) / "cache" / f"features-{model_key}-{kind}-{_digest(items)}.npz"


def _load(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # unreadable: computed again and rewritten


def read_cache(path: Path, files: list[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays when the file is there, readable and holds exactly ``files``."""
    if not path.exists():
        return None
    data = _load(path)
    if data is None or "files" not in data or data["files"].tolist() != files:
        return None
    return data


def earlier_rows(
    root: Path, model_key: str, pretrained: bool
) -> dict[str, tuple[dict[str, np.ndarray], int]]:
    """sha256 -> (arrays, row) of images whose features the other data versions beside
    ``root`` (``root.parent/data-*``) cached for the same model and weights: a grown data
    set passes only its new images through the network."""
    kind = "pretrained" if pretrained else "random"
    here = Path(root).resolve()
    found: dict[str, tuple[dict[str, np.ndarray], int]] = {}
    pattern = f"data-*/cache/features-{model_key}-{kind}-*.npz"
    for path in sorted(Path(root).parent.glob(pattern), key=lambda p: -p.stat().st_mtime):
        if path.parent.parent.resolve() == here:
            continue
        data = _load(path)
        if data is None or "sha256" not in data or "vectors" not in data:
            continue
        if len(data["sha256"]) != len(data["vectors"]):
            continue
        for row, sha in enumerate(data["sha256"].tolist()):
            found.setdefault(str(sha), (data, row))
    return found


def write_cache(path: Path, data: dict[str, np.ndarray]) -> None:
    """Write atomically: a temporary file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def pooled_rows(
    root: Path,
    train: Sequence[ImageItem],
    val: Sequence[ImageItem],
    model_key: str,
    pretrained: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """The cached pooled features of ``train`` and ``val`` in their order, and the fp32
    features of ``val`` when they were kept; None when the features job has not computed
    them for exactly these images."""
    items = sorted([*train, *val], key=lambda i: i.file)
    files = [i.file for i in items]
    data = read_cache(features_path(root, items, model_key, pretrained), files)
    if data is None or "vectors" not in data:
        return None
    row = {f: r for r, f in enumerate(files)}
    vectors = data["vectors"]
    exact = None
    if "exact_files" in data and data["exact_files"].tolist() == [i.file for i in val]:
        exact = data["exact_vectors"]
    return vectors[[row[i.file] for i in train]], vectors[[row[i.file] for i in val]], exact
