"""What a part of the bundle is: the files it writes, its lines in the model card, and, for a
format that predicts, how the parity check loads and checks it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from tl_core.data.standalone_predict import Predictor
from tl_core.models.catalog import DataConfig
from tl_core.training.familiarity import Familiarity

__all__ = ["BundlePart", "ModelToExport", "ParityCheck", "no_lines"]


@dataclass(frozen=True)
class ModelToExport:
    """What every part is written from: the run's best network in full precision, with the
    preprocessing, classes and unfamiliar check it was trained with."""

    net: nn.Module
    data_config: DataConfig
    classes: list[str]
    title: str  # the catalog's name of the model, for messages
    familiar: Familiarity | None  # the run's unfamiliar check; None: the run has none


@dataclass(frozen=True)
class ParityCheck:
    """How the parity check runs one format on pictures, loaded from the files just written."""

    tolerance: float  # largest allowed probability difference to the app
    checking: str  # the status line said before the check
    load: Callable[[Path], Predictor]  # the bundle folder -> the format's predictor
    unavailable: Callable[[], str]  # why it cannot run on this machine; "" when it can


def no_lines(has_check: bool) -> list[str]:
    """No lines in the model card, with or without the unfamiliar check."""
    return []


@dataclass(frozen=True)
class BundlePart:
    """One part of the bundle: a model format, or a file that goes with them.

    ``write`` puts its files in the bundle folder. ``usage`` gives its bullets under the
    model card's "How to use it" and ``files`` its lines under "Files", each given whether
    the run has the unfamiliar check. ``parity`` is set for a format that predicts.
    """

    name: str  # the format's key in the parity table (and predict.py's --format)
    write: Callable[[Path, ModelToExport], None]
    writing: str = ""  # the status line said before writing; "" says nothing
    usage: Callable[[bool], list[str]] = no_lines
    files: Callable[[bool], list[str]] = no_lines
    parity: ParityCheck | None = None
