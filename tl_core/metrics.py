"""Evaluation maths on validation predictions: intervals, per-class scores, calibration.

Plain numpy functions of labels, predictions, probabilities or logits; no model needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% for z = 1.96); (0, 1) with no data."""
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    denom = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class AccuracySummary:
    accuracy: float
    correct: int
    total: int
    ci_low: float
    ci_high: float


def accuracy_summary(labels: np.ndarray, preds: np.ndarray) -> AccuracySummary:
    labels, preds = np.asarray(labels), np.asarray(preds)
    total = len(labels)
    correct = int((labels == preds).sum())
    low, high = wilson_interval(correct, total)
    return AccuracySummary(correct / total if total else 0.0, correct, total, low, high)


def small_sample_warning(summary: AccuracySummary, max_width: float = 0.2) -> str | None:
    """A plain warning when the interval is too wide to trust the accuracy; else None."""
    if summary.total >= 30 and summary.ci_high - summary.ci_low <= max_width:
        return None
    return (
        f"With {summary.total} validation images, the true accuracy could be anywhere from "
        f"{summary.ci_low:.0%} to {summary.ci_high:.0%}. Add more validation images (or a "
        "larger validation share) before trusting small differences."
    )


@dataclass(frozen=True)
class ClassReport:
    index: int
    support: int  # images that truly are this class
    predicted: int  # images the model called this class
    tp: int
    precision: float  # 0.0 when the class was never predicted
    recall: float  # 0.0 when the class has no images
    f1: float  # 0.0 when precision + recall is 0


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """matrix[true, predicted] = number of images."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return matrix


def per_class_report(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> list[ClassReport]:
    """Precision, recall and F1 per class, with the counts behind them."""
    cm = confusion_matrix(labels, preds, n_classes)
    out = []
    for c in range(n_classes):
        tp, support, predicted = int(cm[c, c]), int(cm[c].sum()), int(cm[:, c].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(ClassReport(c, support, predicted, tp, precision, recall, f1))
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    labels = np.asarray(labels, dtype=np.int64)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) (temperature scaling).

    A golden-section search over log T: the NLL is smooth and unimodal in it.
    Deterministic; 1.0 for no data.
    """
    if len(labels) == 0:
        return 1.0
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2))


@dataclass(frozen=True)
class Reliability:
    """Per equal-width confidence bin: mean confidence, accuracy and image count."""

    edges: list[float]
    confidence: list[float]  # 0 for empty bins
    accuracy: list[float]  # 0 for empty bins
    count: list[int]


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> Reliability:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    right = probs.argmax(axis=1) == labels if len(probs) else np.zeros(0, dtype=bool)
    # bin b holds confidences in (edges[b], edges[b+1]]; a confidence of 0 joins bin 0
    which = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    confidence, accuracy, count = [], [], []
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        count.append(n)
        confidence.append(float(conf[mask].mean()) if n else 0.0)
        accuracy.append(float(right[mask].mean()) if n else 0.0)
    return Reliability(edges.tolist(), confidence, accuracy, count)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE: sum over bins of (bin share) x |accuracy - mean confidence|."""
    r = reliability_curve(probs, labels, n_bins)
    total = sum(r.count)
    if total == 0:
        return 0.0
    return float(
        sum(
            n / total * abs(a - c)
            for n, a, c in zip(r.count, r.accuracy, r.confidence, strict=True)
        )
    )


def not_sure_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """Default top-probability under which the model should say "not sure".

    The smallest threshold (0.30 to 0.95 in steps of 0.05) at which the answers the model is
    sure about are wrong at most half as often as all its answers, while it stays sure about
    at least half of the images. 0.5 when there are fewer than 20 images or no such threshold.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) < 20:
        return 0.5
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    target_error = (1 - right.mean()) / 2
    for t in np.arange(0.30, 0.951, 0.05):
        sure = conf >= t
        if sure.mean() < 0.5:
            break
        if 1 - right[sure].mean() <= target_error + 1e-12:
            return round(float(t), 2)
    return 0.5


def misclassified_by_loss(probs: np.ndarray, labels: np.ndarray) -> list[int]:
    """Indices of wrong predictions, highest cross-entropy loss (most confidently wrong) first."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return []
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    loss = -np.log(np.clip(probs[wrong, labels[wrong]], 1e-12, None))
    return [int(i) for i in wrong[np.argsort(-loss, kind="stable")]]
