"""Reading a finished run's results: validation predictions, accuracy, confusion matrix.

``predictions.json`` is checked once, as it is read (:func:`check_predictions`): a truncated,
foreign or inconsistent file raises :class:`PredictionsError` with one plain sentence instead
of giving a wrong score further on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tl_core.errors import StudioError

__all__ = [
    "PREDICTIONS_FILE",
    "Predictions",
    "PredictionsError",
    "check_predictions",
    "load_predictions",
]

PREDICTIONS_FILE = "predictions.json"
_ROUNDING = 2e-3  # probabilities are stored with 6 decimals, logits with 5
_CONSISTENCY = 1e-2  # between fields: probabilities scored in bfloat16 round to ~4e-3


class PredictionsError(StudioError):
    """A run's predictions.json cannot be used: damaged, foreign or inconsistent."""


@dataclass(frozen=True)
class Predictions:
    """The best checkpoint's predictions on the validation images."""

    classes: list[str]
    files: list[str]
    labels: list[int]
    preds: list[int]
    confidences: list[float]
    probs: list[list[float]]
    logits: list[list[float]]  # log-probabilities for runs saved before logits were kept

    @property
    def correct(self) -> int:
        return sum(p == y for p, y in zip(self.preds, self.labels, strict=True))

    @property
    def accuracy(self) -> float:
        return self.correct / len(self.labels) if self.labels else 0.0

    def confusion(self) -> list[list[int]]:
        """matrix[true][predicted] = number of images
        (:func:`~tl_core.analysis.metrics.confusion_matrix`)."""
        from tl_core.analysis.metrics import confusion_matrix

        return confusion_matrix(self.labels, self.preds, len(self.classes)).tolist()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(_is_number(v) for v in value)


def _safe_file(value: Any) -> bool:
    """A relative path inside the data set (no absolute path, no ``..``)."""
    if not isinstance(value, str) or not value or "\\" in value or "\x00" in value:
        return False
    path = PurePosixPath(value)
    return not path.is_absolute() and ".." not in path.parts


def _row_problem(row: Any, n: int) -> str | None:
    """What is wrong with one row, in a few words; None when it is sound."""
    if not isinstance(row, dict):
        return "is not an object"
    missing = [k for k in ("file", "label", "pred", "probs") if k not in row]
    if missing:
        return f"lacks {', '.join(repr(k) for k in missing)}"
    if not _safe_file(row["file"]):
        return "names no image file inside the data set"
    for key in ("label", "pred"):
        if not _is_int(row[key]) or not 0 <= row[key] < n:
            return f"has {key} {row[key]!r}, which is not a class number from 0 to {n - 1}"
    probs = row["probs"]
    if not _numbers(probs, n):
        return f"does not give {n} probabilities as numbers (one per class)"
    outside = min(probs) < -_ROUNDING or max(probs) > 1 + _ROUNDING
    if outside or abs(sum(probs) - 1) > _CONSISTENCY + n * 1e-5:
        return "has probabilities that are not between 0 and 1 or do not add up to 1"
    if probs[row["pred"]] < max(probs) - _CONSISTENCY:
        return "names a predicted class that is not its most probable one"
    if "confidence" in row and not (
        _is_number(row["confidence"]) and abs(row["confidence"] - max(probs)) <= _CONSISTENCY
    ):
        return "has a confidence that is not its top probability"
    logits = row.get("logits")
    if logits is not None:
        if not _numbers(logits, n):
            return f"does not give {n} logits as numbers (one per class)"
        top = max(logits)
        exp = [math.exp(z - top) for z in logits]
        total = sum(exp)
        if max(abs(e / total - p) for e, p in zip(exp, probs, strict=True)) > _CONSISTENCY:
            return "has logits that do not give its probabilities"
    return None


def check_predictions(raw: Any, where: str = PREDICTIONS_FILE) -> Predictions:
    """The predictions in ``raw`` (a parsed predictions.json); PredictionsError when unusable.

    Checked: an object with ``classes`` (distinct names) and a non-empty list of ``rows``;
    each row names a file inside the data set, a true and a predicted class number in range,
    one finite probability per class adding up to 1 (the predicted class the most probable),
    and, when present, a matching confidence and logits.
    """

    def bad(what: str) -> PredictionsError:
        return PredictionsError(
            f"The run's saved predictions ({where}) cannot be used: {what}. Train the run "
            "again to write them anew."
        )

    if not isinstance(raw, dict):
        raise bad("the file does not hold a predictions object")
    classes, rows = raw.get("classes"), raw.get("rows")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise bad("it has no list of class names")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise bad(f"its class list ({len(classes)} names) is not two or more distinct names")
    if not isinstance(rows, list):
        raise bad("it has no list of prediction rows")
    if not rows:
        raise bad("it holds no validation images")
    n = len(classes)
    for k, row in enumerate(rows):
        problem = _row_problem(row, n)
        if problem:
            raise bad(f"row {k + 1} of {len(rows)} {problem}")
    return Predictions(
        classes=list(classes),
        files=[r["file"] for r in rows],
        labels=[r["label"] for r in rows],
        preds=[r["pred"] for r in rows],
        confidences=[float(r.get("confidence", max(r["probs"]))) for r in rows],
        probs=[[float(p) for p in r["probs"]] for r in rows],
        logits=[
            [float(z) for z in r["logits"]]
            if r.get("logits") is not None
            else [math.log(max(p, 1e-12)) for p in r["probs"]]
            for r in rows
        ],
    )


def load_predictions(run_dir: Path) -> Predictions | None:
    """The run's predictions.json, or None when the run has none (yet).

    Raises PredictionsError when the file is unreadable, truncated or inconsistent.
    """
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = "it is not text" if isinstance(exc, UnicodeDecodeError) else "it cannot be read"
        raise PredictionsError(
            f"The run's saved predictions ({path}) cannot be used: {why}. Train the run again "
            "to write them anew."
        ) from None
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise PredictionsError(
            f"The run's saved predictions ({path}) cannot be used: the file is damaged or cut "
            "short (not valid JSON). Train the run again to write them anew."
        ) from None
    return check_predictions(raw, str(path))
