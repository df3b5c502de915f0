"""The bundle's parts, in order: the one list an export reads.

An export writes the parts in this order, lists them in this order in the model card, and
compares every part that has a parity check with the app. A new format is one module in this
package (its writer, its card lines, its :class:`~tl_core.export.formats.base.ParityCheck`)
and one entry here.
"""

from __future__ import annotations

from pathlib import Path

from tl_core.export.formats import (
    coreml_model,
    familiarity_npz,
    litert_model,
    onnx_int8,
    onnx_model,
    predict_script,
    timm_folder,
    web_page,
)
from tl_core.export.formats.base import BundlePart, FormatOption, ParityCheck

__all__ = ["ALWAYS", "PARTS", "checked_formats", "format_keys", "option_of", "title_of"]

ALWAYS = ("safetensors",)  # formats every bundle has, whatever is chosen

PARTS: tuple[BundlePart, ...] = (
    timm_folder.PART,
    onnx_model.PART,
    onnx_int8.PART,  # made from model.onnx, judged by its accuracy
    familiarity_npz.PART,  # beside the timm folder; listed after model.onnx in the card
    predict_script.PART,
    web_page.PART,  # after the 8-bit model: the page carries it too when it is offered
    litert_model.PART,
    coreml_model.PART,
)


def checked_formats(bundle: Path | None = None) -> list[tuple[str, ParityCheck]]:
    """(name, parity check) of each part that predicts, in order: the formats the parity
    check compares with the app; with ``bundle``, only the formats whose files it holds."""
    return [
        (part.name, part.parity)
        for part in PARTS
        if part.parity is not None
        and (
            bundle is None
            or part.option is None
            or any(path.exists() for path in part.option.paths(bundle))
        )
    ]


def format_keys() -> list[str]:
    """The formats a user chooses among (``export --format``), in the bundle's order."""
    return [p.option.key for p in PARTS if p.option is not None and p.option.key not in ALWAYS]


def option_of(key: str) -> FormatOption | None:
    """The format ``key``'s description, or None for a part that is no format."""
    for part in PARTS:
        if part.option is not None and part.option.key == key:
            return part.option
    return None


def title_of(key: str) -> str:
    """The format ``key``'s name in tables and sentences."""
    option = option_of(key)
    return option.title if option is not None else key
