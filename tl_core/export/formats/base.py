"""What a part of the bundle is: the files it writes, its lines in the model card, and, for a
format that predicts, how the parity check loads and checks it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from tl_core.data.standalone_predict import Predictor
from tl_core.export.report import FormatParity
from tl_core.models.catalog import DataConfig
from tl_core.training.familiarity import Familiarity

__all__ = [
    "BundlePart",
    "FormatOption",
    "ModelToExport",
    "ParityCheck",
    "always_available",
    "error_line",
    "no_lines",
    "quiet_output",
]

# Loggers of the converters that talk on the console while they work.
_NOISY_LOGGERS = ("coremltools", "absl", "tensorflow", "jax", "litert_torch", "torch._export")


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Keep a converter's own console output (native logs, progress bars, version warnings)
    off the console while it works; its errors still reach the caller as exceptions.

    The process's standard output and error (file descriptors 1 and 2, which native code
    writes to) go to a temporary file for the block, and the converters' loggers and Python
    warnings are silenced; everything is restored afterwards."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [log.level for log in loggers]
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for log in loggers:
            log.setLevel(logging.ERROR)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for log, level in zip(loggers, levels, strict=True):
                log.setLevel(level)


@dataclass(frozen=True)
class ModelToExport:
    """What every part is written from: the run's best network in full precision, with the
    preprocessing, classes and unfamiliar check it was trained with."""

    net: nn.Module
    data_config: DataConfig
    classes: list[str]
    title: str  # the catalog's name of the model, for messages
    familiar: Familiarity | None  # the run's unfamiliar check; None: the run has none
    # Training pictures to calibrate a quantized model on (spread over the classes); empty
    # when the run's data set is not at hand.
    calibration: tuple[Path, ...] = ()
    # The run's validation pictures (those its unfamiliar threshold was set on); empty when
    # the data set is not at hand.
    validation: tuple[Path, ...] = ()
    # How the Try page turns the logits into an answer: probabilities are softmax(logits /
    # temperature); below a top probability of ``not_sure_below`` the answer is "not sure".
    temperature: float = 1.0
    not_sure_below: float = 0.0


@dataclass(frozen=True)
class ParityCheck:
    """How the parity check runs one format on pictures, loaded from the files just written."""

    tolerance: float  # largest allowed probability difference to the app
    checking: str  # the status line said before the check
    load: Callable[[Path], Predictor]  # the bundle folder -> the format's predictor
    unavailable: Callable[[], str]  # why it cannot run on this machine; "" when it can
    # Why the format's answers are not good enough (its FormatParity filled in: agreement,
    # accuracy, probability differences), "" when they are; None: the usual rule (every top
    # class and unfamiliar flag as the app's, probabilities within ``tolerance``).
    judge: Callable[[FormatParity], str] | None = None


def error_line(exc: BaseException) -> str:
    """An error in one line for a sentence: its kind and the first line of its message (a
    converter's messages run over many lines)."""
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def always_available() -> str:
    """Nothing is missing on this machine to write the format."""
    return ""


@dataclass(frozen=True)
class FormatOption:
    """A model format the user chooses (``export --format``) and the Export page's table lists.

    A format is written only when chosen, when ``missing()`` says nothing (its converter is
    installed) and when every format in ``needs`` was written. When its writer raises, the
    format is left out of the bundle and the table says why. ``offline_check`` is for a
    format that cannot be run on this machine (Core ML on Linux, the web page outside a
    browser): it checks what can be checked in the files written and returns the problem
    ("" when none); ``cannot_run`` says plainly what was not checked.
    """

    key: str  # "onnx", "int8", "web", "tflite", "coreml": the --format name
    title: str  # the table's name, e.g. "ONNX, 8-bit (small, fast)"
    paths: Callable[[Path], list[Path]]  # the bundle folder -> the format's files (for its size)
    example: Callable[[bool], str]  # how to use it (given the unfamiliar check): <= 3 lines
    needs: tuple[str, ...] = ()  # formats it is made from, written before it
    missing: Callable[[], str] = always_available  # why it cannot be written here; "" if it can
    offline_check: Callable[[Path, ModelToExport], str] | None = None
    cannot_run: str = ""  # why its answers cannot be checked on this machine


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
    option: FormatOption | None = None  # set for a format the user chooses; None: always written
