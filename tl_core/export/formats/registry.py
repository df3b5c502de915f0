"""The bundle's parts, in order: the one list an export reads.

An export writes the parts in this order, lists them in this order in the model card, and
compares every part that has a parity check with the app. A new format is one module in this
package (its writer, its card lines, its :class:`~tl_core.export.formats.base.ParityCheck`)
and one entry here.
"""

from __future__ import annotations

from tl_core.export.formats import familiarity_npz, onnx_model, predict_script, timm_folder
from tl_core.export.formats.base import BundlePart, ParityCheck

__all__ = ["PARTS", "checked_formats"]

PARTS: tuple[BundlePart, ...] = (
    timm_folder.PART,
    onnx_model.PART,
    familiarity_npz.PART,  # beside the timm folder; listed after model.onnx in the card
    predict_script.PART,
)


def checked_formats() -> list[tuple[str, ParityCheck]]:
    """(name, parity check) of each part that predicts, in order: the formats the parity
    check compares with the app."""
    return [(part.name, part.parity) for part in PARTS if part.parity is not None]
