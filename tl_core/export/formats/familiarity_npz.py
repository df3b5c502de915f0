"""``familiarity.npz``: the unfamiliar check for the timm model (the training pictures' pooled
features, each one's class spread and the threshold); only for a run with the check."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tl_core.data import standalone_predict
from tl_core.export.formats.base import BundlePart, ModelToExport

__all__ = ["PART"]


def _write(bundle: Path, model: ModelToExport) -> None:
    familiar = model.familiar
    if familiar is None:
        return
    np.savez(
        bundle / standalone_predict.FAMILIARITY_FILE,
        bank=np.asarray(familiar.bank, dtype=np.float16),  # unit rows: 2 bytes each number
        row_scale=np.asarray(familiar.row_scale, dtype=np.float32),
        threshold=np.array(familiar.threshold, dtype=np.float64),
        accept=np.array(familiar.accept, dtype=np.float64),
    )


def _files(has_check: bool) -> list[str]:
    if not has_check:
        return []
    return [
        "- `familiarity.npz`: the unfamiliar check for the timm model (training pictures' "
        "features and the threshold)"
    ]


PART = BundlePart(name="familiarity", write=_write, files=_files)
