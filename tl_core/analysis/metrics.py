"""Evaluation maths on validation predictions: intervals, per-class scores, calibration.

Plain numpy functions of labels, predictions, probabilities or logits; no model needed.
Labels and predictions are class indices; ``probs`` and ``logits`` are (images, classes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SMALL_SAMPLE_IMAGES",
    "SMALL_SAMPLE_WIDTH",
    "AccuracySummary",
    "ClassReport",
    "ConfusedPair",
    "EceComparison",
    "MacroAverage",
    "Reliability",
    "accuracy_summary",
    "compare_ece",
    "confusion_matrix",
    "expected_calibration_error",
    "fit_temperature",
    "is_small_sample",
    "macro_average",
    "mcnemar_p",
    "misclassified_by_loss",
    "most_confused",
    "nll",
    "not_sure_threshold",
    "per_class_report",
    "reliability_curve",
    "small_sample_warning",
    "softmax",
    "validation_noise",
    "weakest_classes",
    "wilson_interval",
]


def _pair(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as 1-D int64, checked to be the same length."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    preds = np.asarray(preds, dtype=np.int64).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    return labels, preds


def _scored(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities as a float64 (images, classes) array and labels as int64, checked."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"expected ({len(labels)}, classes) scores, got shape {probs.shape}")
    return probs, labels


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% for z = 1.96); (0, 1) with no data."""
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    denom = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denom
    low = 0.0 if correct <= 0 else max(0.0, centre - half)  # exact ends, not rounding error
    high = 1.0 if correct >= total else min(1.0, centre + half)
    return min(low, p), max(high, p)


@dataclass(frozen=True)
class AccuracySummary:
    """Accuracy with its 95% Wilson interval."""

    accuracy: float  # 0.0 with no images
    correct: int
    total: int
    ci_low: float
    ci_high: float


def accuracy_summary(labels: np.ndarray, preds: np.ndarray) -> AccuracySummary:
    """Share of correct predictions, the counts behind it, and its 95% interval."""
    labels, preds = _pair(labels, preds)
    total = len(labels)
    correct = int((labels == preds).sum())
    low, high = wilson_interval(correct, total)
    return AccuracySummary(correct / total if total else 0.0, correct, total, low, high)


SMALL_SAMPLE_IMAGES = 30  # fewer validation images than this: a small sample
SMALL_SAMPLE_WIDTH = 0.2  # or a 95% interval wider than this (20 percentage points)


def validation_noise(accuracy: float, n_val: int) -> float:
    """How far apart two accuracies on ``n_val`` images must be to count as different.

    Half the 95% Wilson interval around ``accuracy``, and at least one image's worth.
    """
    low, high = wilson_interval(round(accuracy * n_val), n_val)
    return max((high - low) / 2, 1 / max(n_val, 1))


def is_small_sample(total: int, ci_low: float, ci_high: float) -> bool:
    """Too few images to trust one accuracy: under SMALL_SAMPLE_IMAGES, or an interval wider
    than SMALL_SAMPLE_WIDTH."""
    return total < SMALL_SAMPLE_IMAGES or ci_high - ci_low > SMALL_SAMPLE_WIDTH


def small_sample_warning(summary: AccuracySummary) -> str | None:
    """A plain warning when the accuracy is too uncertain to trust (:func:`is_small_sample`);
    else None."""
    if not is_small_sample(summary.total, summary.ci_low, summary.ci_high):
        return None
    if summary.total == 0:
        return "There are no validation images, so the accuracy cannot be measured yet."
    images = "image" if summary.total == 1 else "images"
    return (
        f"With {summary.total} validation {images}, the true accuracy could be anywhere from "
        f"{summary.ci_low:.0%} to {summary.ci_high:.0%}. Add more validation images to "
        "narrow this down before trusting small differences."
    )


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """matrix[true, predicted] = number of images, shape (n_classes, n_classes)."""
    labels, preds = _pair(labels, preds)
    for name, values in (("label", labels), ("prediction", preds)):
        if len(values) and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"a {name} is outside 0..{n_classes - 1}")
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, preds), 1)
    return matrix


@dataclass(frozen=True)
class ConfusedPair:
    """One off-diagonal cell of a confusion matrix: images of class ``true`` taken for
    ``pred``."""

    true: int
    pred: int
    count: int
    share: float  # count / images of the true class


def most_confused(matrix: np.ndarray, n: int | None = None) -> list[ConfusedPair]:
    """The off-diagonal cells with images, most images first (a larger share of the true
    class first on a tie, then class order); the first ``n`` of them, or all."""
    cm = np.asarray(matrix, dtype=np.int64)
    support = cm.sum(1)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    true, pred = np.nonzero(off)
    counts = off[true, pred]
    shares = counts / np.maximum(support[true], 1)
    order = np.lexsort((pred, true, -shares, -counts))
    if n is not None:
        order = order[:n]
    return [
        ConfusedPair(int(true[k]), int(pred[k]), int(counts[k]), float(shares[k])) for k in order
    ]


@dataclass(frozen=True)
class ClassReport:
    """Scores of one class, with the counts behind them."""

    index: int
    support: int  # images that truly are this class
    predicted: int  # images the model called this class
    tp: int  # images of this class the model got right
    precision: float  # tp / predicted; 0.0 when the class was never predicted
    recall: float  # tp / support; 0.0 when the class has no images
    f1: float  # harmonic mean of the two; 0.0 when both are 0


def per_class_report(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> list[ClassReport]:
    """Precision, recall and F1 per class; a 0/0 score counts as 0.0 (as scikit-learn's
    ``zero_division=0``)."""
    cm = confusion_matrix(labels, preds, n_classes)
    out = []
    for c in range(n_classes):
        tp, support, predicted = int(cm[c, c]), int(cm[c].sum()), int(cm[:, c].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(ClassReport(c, support, predicted, tp, precision, recall, f1))
    return out


def weakest_classes(reports: Sequence[ClassReport], n: int = 3) -> list[ClassReport]:
    """The ``n`` classes the model most often misses: lowest recall first (more images first
    on a tie); classes with no images or none missed are left out."""
    missed = [c for c in reports if c.support > 0 and c.tp < c.support]
    return sorted(missed, key=lambda c: (c.recall, -c.support))[:n]


@dataclass(frozen=True)
class MacroAverage:
    """Unweighted means over classes: every class counts the same, however many images."""

    precision: float
    recall: float
    f1: float
    classes: int  # how many classes were averaged


def macro_average(reports: list[ClassReport]) -> MacroAverage:
    """Macro precision, recall and F1 over the classes that occur (as a label or a prediction).

    Classes with no images that were never predicted are left out, as scikit-learn does when
    it is not given the label list. All 0.0 when no class occurs.
    """
    seen = [r for r in reports if r.support or r.predicted]
    if not seen:
        return MacroAverage(0.0, 0.0, 0.0, 0)
    return MacroAverage(
        float(np.mean([r.precision for r in seen])),
        float(np.mean([r.recall for r in seen])),
        float(np.mean([r.f1 for r in seen])),
        len(seen),
    )


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities softmax(logits / T) over the last axis, without overflow."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (cross-entropy) of the true labels under
    softmax(logits / T); 0.0 with no images."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z, labels = _scored(logits, labels)
    if len(labels) == 0:
        return 0.0
    z = z / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """The T in ``bounds`` that minimises the NLL of softmax(logits / T) (temperature scaling).

    A golden-section search over log T (the NLL has a single minimum along it), so the result
    is deterministic. T > 1 softens over-confident logits, T < 1 sharpens under-confident ones.
    1.0 with no images.
    """
    logits, labels = _scored(logits, labels)
    if len(labels) == 0:
        return 1.0
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(60):  # the bracket shrinks by 0.618 each step: 60 steps is ~1e-12 in log T
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
    """Per equal-width confidence bin: mean confidence, accuracy and image count.

    Bin b holds top probabilities in (edges[b], edges[b + 1]]; empty bins have count 0 and
    0.0 for confidence and accuracy.
    """

    edges: list[float]
    confidence: list[float]
    accuracy: list[float]
    count: list[int]


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> Reliability:
    """How often the top prediction was right, per bin of its probability (reliability diagram)."""
    probs, labels = _scored(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    right = probs.argmax(axis=1) == labels if len(probs) else np.zeros(0, dtype=bool)
    # edges[b] < conf <= edges[b + 1]; a confidence of exactly 0 joins bin 0
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=conf, minlength=n_bins)
    right_sum = np.bincount(which, weights=right.astype(np.float64), minlength=n_bins)
    safe = np.maximum(count, 1)
    return Reliability(
        edges.tolist(),
        (conf_sum / safe).tolist(),
        (right_sum / safe).tolist(),
        [int(n) for n in count],
    )


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE: sum over bins of (share of images) x |accuracy - mean confidence|.

    0.0 with no images.
    """
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
    """Default top probability under which the model should say "not sure".

    The smallest threshold on the grid 0.30, 0.35, ..., 0.95 at which the answers the model is
    sure about (top probability >= threshold) are wrong at most half as often as all its
    answers, while it stays sure about at least half of the images. 0.5 when there are fewer
    than 20 images, no mistakes to learn from, or no threshold on the grid qualifies.
    """
    probs, labels = _scored(probs, labels)
    if len(labels) < 20:
        return 0.5
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    target_error = (1 - right.mean()) / 2
    if target_error == 0:
        return 0.5
    for percent in range(30, 100, 5):
        t = percent / 100
        sure = conf >= t
        if sure.mean() < 0.5:
            break  # higher thresholds keep even fewer answers
        if 1 - right[sure].mean() <= target_error + 1e-12:
            return t
    return 0.5


def misclassified_by_loss(probs: np.ndarray, labels: np.ndarray) -> list[int]:
    """Indices of wrong predictions, highest cross-entropy loss (most confidently wrong) first.

    The loss of an image is -log(probability given to its true class); ties keep image order.
    """
    probs, labels = _scored(probs, labels)
    if len(labels) == 0:
        return []
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    loss = -np.log(np.clip(probs[wrong, labels[wrong]], 1e-300, None))
    return [int(i) for i in wrong[np.argsort(-loss, kind="stable")]]


def mcnemar_p(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """Two-sided p-value of McNemar's test: do two models, scored on the same images, differ?

    Only the images where exactly one of them is right count. Exact (binomial, p = 1/2) up
    to 1,000 such images, the normal approximation with continuity correction above. 1.0
    when they are right on the same images.
    """
    a = np.asarray(a_correct, dtype=bool).reshape(-1)
    b = np.asarray(b_correct, dtype=bool).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{len(a)} and {len(b)} images: the models must be scored on the same")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    if n <= 1000:
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        return float(min(1.0, 2 * tail))
    z = max(abs(only_a - only_b) - 1, 0) / math.sqrt(n)
    return float(math.erfc(z / math.sqrt(2)))


def _top_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """(bin, confidence, right) per image, binned exactly as :func:`reliability_curve`."""
    probs, labels = _scored(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = probs.max(axis=1)
    right = (probs.argmax(axis=1) == labels).astype(np.float64)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    return which, conf, right


@dataclass(frozen=True)
class EceComparison:
    """The ECE of two sets of probabilities for the same images, with bootstrap intervals."""

    ece_a: float
    ece_b: float
    a_interval: tuple[float, float]  # 95% bootstrap interval of ece_a (bias-shifted)
    b_interval: tuple[float, float]
    difference_interval: tuple[float, float]  # of ece_a - ece_b, paired (the same resamples)


def compare_ece(
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    labels: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
) -> EceComparison:
    """ECE of ``probs_a`` and ``probs_b`` on the same images, and how sure the gap is.

    Paired percentile bootstrap: each of ``n_boot`` resamples (with replacement, seeded)
    draws the same images for both, so the interval of the difference reflects only how the
    two disagree. Each interval is the 2.5-97.5 percentiles of the resampled values, shifted
    by their mean's distance from the estimate (the bootstrap's bias) and always holding the
    estimate. Intervals are (0, 1) and (-1, 1) with no images.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    ece_a = expected_calibration_error(probs_a, labels, n_bins)
    ece_b = expected_calibration_error(probs_b, labels, n_bins)
    n = len(labels)
    if n == 0:
        return EceComparison(ece_a, ece_b, (0.0, 1.0), (0.0, 1.0), (-1.0, 1.0))
    bins_a, conf_a, right_a = _top_bins(probs_a, labels, n_bins)
    bins_b, conf_b, right_b = _top_bins(probs_b, labels, n_bins)
    gap_a, gap_b = right_a - conf_a, right_b - conf_b
    rng = np.random.default_rng(seed)
    samples = np.empty((n_boot, 2))
    chunk = max(1, min(n_boot, 2_000_000 // n))  # resamples drawn at once (memory-bound)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        idx = rng.integers(0, n, (rows, n))
        offset = (np.arange(rows) * n_bins)[:, None]
        for col, (bins, gap) in enumerate(((bins_a, gap_a), (bins_b, gap_b))):
            sums = np.bincount((offset + bins[idx]).ravel(), gap[idx].ravel(), rows * n_bins)
            samples[start : start + rows, col] = np.abs(sums.reshape(rows, n_bins)).sum(1) / n

    def interval(values: np.ndarray, estimate: float, lo: float) -> tuple[float, float]:
        # The ECE of a resample is biased upwards (repeated images fill bins unevenly), so
        # the percentiles are shifted back by the bootstrap's bias, then clipped to [lo, 1].
        shift = float(values.mean()) - estimate
        low, high = np.quantile(values, [0.025, 0.975]) - shift
        low, high = max(lo, min(float(low), estimate)), min(1.0, max(float(high), estimate))
        return low, high

    return EceComparison(
        ece_a,
        ece_b,
        interval(samples[:, 0], ece_a, 0.0),
        interval(samples[:, 1], ece_b, 0.0),
        interval(samples[:, 0] - samples[:, 1], ece_a - ece_b, -1.0),
    )
