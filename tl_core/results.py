"""Reading a finished run's results: validation predictions, accuracy, confusion matrix."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


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
        """matrix[true][predicted] = number of images."""
        n = len(self.classes)
        matrix = [[0] * n for _ in range(n)]
        for y, p in zip(self.labels, self.preds, strict=True):
            matrix[y][p] += 1
        return matrix


def load_predictions(run_dir: Path) -> Predictions | None:
    """The run's predictions.json, or None when the run has none (yet)."""
    path = Path(run_dir) / "predictions.json"
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    rows = raw["rows"]
    return Predictions(
        classes=list(raw["classes"]),
        files=[r["file"] for r in rows],
        labels=[r["label"] for r in rows],
        preds=[r["pred"] for r in rows],
        confidences=[r["confidence"] for r in rows],
        probs=[r["probs"] for r in rows],
        logits=[r.get("logits") or [math.log(max(p, 1e-12)) for p in r["probs"]] for r in rows],
    )
