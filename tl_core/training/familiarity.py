"""Know what the model does not know: how unlike every training picture a new picture is.

A classifier always names one of its classes, even for a picture of none of them, and its
probabilities say nothing about that. The trained model's pooled features (the classifier's
input) do: pictures of the taught classes lie near training pictures, others far from all
of them. The score of a picture is the cosine distance from its features to the nearest
training picture's (one minus the largest cosine similarity; Sun et al. 2022, "Out-of-
distribution detection with deep nearest neighbors"), measured against a bank of the run's
training pictures (all of them, or :data:`BANK_MAX` drawn per class in proportion), in units
of that picture's class's own spread: the mean distance from each of its training pictures
to the nearest other one (:func:`class_scales`). A varied class (bags of every shape) then
does not have its new pictures flagged far more often than a uniform one (measured on the
Fashion-MNIST demo set: the most-flagged class's share of its validation pictures fell from
30% to 15%, at the same 5% overall).

The threshold is chosen on the validation pictures, which the burst-aware split keeps as far
from the training pictures as new pictures of a known class will be: so that
:data:`ACCEPT` of them are accepted, placed half-way between two validation scores so that
small numeric differences (another machine, the exported ONNX model) do not move a
validation picture across it. A picture above it is *unfamiliar*, apart from "not sure"
(which means between two known classes).

How well that works on the user's own data is measured without any foreign data: each class
is left out in turn (features only), and the share of its pictures flagged against a bank
and threshold that never saw it is counted; and a small set of everyday pictures that belong
to no user's classes (:mod:`tl_core.data.foreign`) is scored by the trained model.

numpy only: the same code scores a picture in the app, in a job and in the model card.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_core import diskspace

__all__ = [
    "ACCEPT",
    "ACCEPT_CHOICES",
    "BANK_MAX",
    "FEATURES_FILE",
    "REPORT_FILE",
    "UNFAMILIAR",
    "ClassLeftOut",
    "Familiarity",
    "FamiliarityReport",
    "auroc",
    "bank_rows",
    "build",
    "class_scales",
    "leave_one_class_out",
    "load",
    "load_report",
    "nearest_distance",
    "report",
    "save",
    "save_report",
    "threshold_for",
    "unit",
]

FEATURES_FILE = "familiarity.npz"  # in the run folder: bank, validation scores, threshold
REPORT_FILE = "familiarity.json"  # in the run folder: what the Evaluate page and card show
FORMAT = 2  # 2: distances in units of each class's spread
ACCEPT = 0.95  # the share of validation pictures the default threshold accepts
ACCEPT_CHOICES = (0.8, 0.9, 0.95, 0.98, 0.99, 1.0)  # the Try page's choices
BANK_MAX = 4000  # training pictures kept to compare with (fp16: 10 MB at 1,280 features)
UNFAMILIAR = "Unfamiliar: this does not look like any of your classes."
_CHUNK = 1024  # query rows per matrix product (bounds the memory of a batch's similarities)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32); a zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def nearest_distance(
    features: np.ndarray, bank: np.ndarray, scale: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The smallest cosine distance from each row of ``features`` to a row of ``bank`` (unit
    rows), each bank row's distance divided by its ``scale`` (default 1), and that row's
    index. One matrix product per chunk: at a few thousand bank rows this is faster than
    any index."""
    q = unit(features)
    b = np.asarray(bank, dtype=np.float32)
    if len(b) == 0:
        return np.full(len(q), np.inf, dtype=np.float32), np.zeros(len(q), dtype=np.int64)
    per = None if scale is None else np.asarray(scale, dtype=np.float32)[None, :]
    dist, where = [], []
    for start in range(0, len(q), _CHUNK):
        d = 1.0 - q[start : start + _CHUNK] @ b.T
        if per is not None:
            d /= per
        k = d.argmin(1)
        where.append(k)
        dist.append(d[np.arange(len(k)), k])
    if not dist:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(dist).astype(np.float32), np.concatenate(where)


SCALE_FLOOR = 0.25  # a class's spread is at least this share of the median class's


def class_scales(bank: np.ndarray, bank_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(classes,): each class's own spread, the mean cosine distance from each of its bank
    rows to the nearest other row of the class. A class with one row takes the median of
    the others; none is below :data:`SCALE_FLOOR` of the median (near-copies, such as camera
    frames of one burst, would otherwise make every new picture of the class look far)."""
    b = np.asarray(bank, dtype=np.float32)
    labels = np.asarray(bank_labels)
    spread = np.full(n_classes, np.nan, dtype=np.float64)
    for c in range(n_classes):
        rows = b[labels == c]
        if len(rows) < 2:
            continue
        nearest = np.empty(len(rows))
        for start in range(0, len(rows), _CHUNK):
            sim = rows[start : start + _CHUNK] @ rows.T
            sim[np.arange(len(sim)), np.arange(start, start + len(sim))] = -np.inf
            nearest[start : start + len(sim)] = 1.0 - sim.max(1)
        spread[c] = nearest.mean()
    known = spread[np.isfinite(spread)]
    middle = float(np.median(known)) if len(known) else 1.0
    middle = middle if middle > 1e-6 else 1.0
    spread[~np.isfinite(spread)] = middle
    return np.maximum(spread, SCALE_FLOOR * middle).astype(np.float32)


SLACK = 0.01  # the threshold may accept this share of the pictures more, for a wider margin


def threshold_for(val_scores: np.ndarray, accept: float = ACCEPT) -> float:
    """The score above which a picture is unfamiliar, accepting ``accept`` of the validation
    scores: in the middle of a gap between two of them, so that no validation picture sits
    near it (another machine, or the exported ONNX model, computes scores that differ in
    the fourth digit). Of the gaps that accept at least ``accept`` and at most :data:`SLACK`
    more (at least one picture more), the widest. With every picture accepted, half the last
    gap above the largest.

    Raises ValueError for an ``accept`` outside (0, 1] or no scores.
    """
    if not 0.0 < accept <= 1.0:
        raise ValueError("accept must be a share in (0, 1]")
    s = np.sort(np.asarray(val_scores, dtype=np.float64))
    s = s[np.isfinite(s)]
    if len(s) == 0:
        raise ValueError("no validation scores to choose a threshold on")
    n = len(s)
    kept = min(n, max(1, math.ceil(accept * n - 1e-9)))
    if kept == n:
        gap = s[-1] - s[-2] if n > 1 else 0.0
        return float(s[-1] + max(gap / 2, 0.01 * max(s[-1], 1e-3)))
    # kept pictures at or below the threshold: candidates kept .. kept + extra (< n)
    extra = max(1, math.floor(SLACK * n))
    candidates = np.arange(kept, min(n - 1, kept + extra) + 1)
    gaps = s[candidates] - s[candidates - 1]
    best = int(candidates[int(np.argmax(gaps))])  # the first of equal gaps: fewest accepted
    return float((s[best - 1] + s[best]) / 2)


def auroc(familiar: np.ndarray, unfamiliar: np.ndarray) -> float | None:
    """Area under the ROC curve of the score telling ``unfamiliar`` from ``familiar`` (ties
    count half); None when either side is empty."""
    a = np.asarray(familiar, dtype=np.float64)
    b = np.asarray(unfamiliar, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return None
    both = np.concatenate([a, b])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both), dtype=np.float64)
    ranks[order] = np.arange(1, len(both) + 1)
    # average ranks over ties
    sorted_vals = both[order]
    start = 0
    for end in range(1, len(both) + 1):
        if end == len(both) or sorted_vals[end] != sorted_vals[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2
            start = end
    u = ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


def bank_rows(labels: np.ndarray, cap: int = BANK_MAX, seed: int = 0) -> np.ndarray:
    """Which training rows to keep in the bank: all of them up to ``cap``, else each class in
    proportion to its size (at least one each), drawn with ``seed``; sorted."""
    labels = np.asarray(labels)
    if len(labels) <= cap:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n = max(1, round(cap * len(rows) / len(labels)))
        keep.append(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


# ----------------------------------------------------------------------------- the detector


@dataclass(frozen=True)
class Familiarity:
    """A run's bank of training features and its threshold: scores new pictures."""

    bank: np.ndarray  # (N, D) float16, unit rows
    bank_labels: np.ndarray  # (N,) class index of each bank row
    scale: np.ndarray  # (classes,) each class's own spread (:func:`class_scales`)
    val_scores: np.ndarray  # (V,) the validation pictures' scores, which set the threshold
    threshold: float
    accept: float = ACCEPT

    @property
    def row_scale(self) -> np.ndarray:
        """(N,) the spread of each bank row's class: what its distances are divided by."""
        return self.scale[self.bank_labels]

    def scores(self, features: np.ndarray) -> np.ndarray:
        """How unlike every training picture each row of features is (0: the same)."""
        return nearest_distance(features, self.bank, self.row_scale)[0]

    def threshold_at(self, accept: float) -> float:
        """The threshold accepting ``accept`` of the validation pictures (1.0 accepts all)."""
        if abs(accept - self.accept) < 1e-9:
            return self.threshold
        return threshold_for(self.val_scores, accept)

    def accepted_share(self, threshold: float) -> float:
        """The share of validation pictures a ``threshold`` accepts."""
        return float((self.val_scores <= threshold).mean()) if len(self.val_scores) else 1.0


def build(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    accept: float = ACCEPT,
    seed: int = 0,
) -> Familiarity:
    """The detector of a run: its bank from the training features, its threshold from the
    validation features. Raises ValueError without training or validation pictures."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    if len(train_features) == 0:
        raise ValueError("no training pictures to compare with")
    rows = bank_rows(train_labels, BANK_MAX, seed)
    bank = unit(np.asarray(train_features)[rows]).astype(np.float16)
    labels = train_labels[rows]
    scale = class_scales(bank, labels, int(train_labels.max()) + 1)
    val_scores = nearest_distance(val_features, bank, scale[labels])[0]
    threshold = threshold_for(val_scores, accept)
    return Familiarity(bank, labels, scale, val_scores, threshold, accept)


def save(run_dir: Path, fam: Familiarity, foreign_scores: np.ndarray | None = None) -> None:
    """Write the detector as ``familiarity.npz`` in ``run_dir`` (atomically)."""
    arrays: dict[str, Any] = {
        "format": np.array(FORMAT),
        "bank": fam.bank,
        "bank_labels": fam.bank_labels,
        "scale": fam.scale.astype(np.float32),
        "val_scores": fam.val_scores.astype(np.float32),
        "threshold": np.array(fam.threshold),
        "accept": np.array(fam.accept),
    }
    if foreign_scores is not None:
        arrays["foreign_scores"] = np.asarray(foreign_scores, dtype=np.float32)
    path = Path(run_dir) / FEATURES_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp.npz")
    with diskspace.guard(path.parent, fam.bank.nbytes + diskspace.MB, cleanup=[tmp]):
        np.savez(tmp, **arrays)
        tmp.replace(path)


def load(run_dir: Path) -> Familiarity | None:
    """The run's detector, or None when it has none (trained before it existed) or the file
    is unreadable."""
    path = Path(run_dir) / FEATURES_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if int(npz["format"]) != FORMAT:
                return None
            return Familiarity(
                bank=npz["bank"],
                bank_labels=npz["bank_labels"].astype(np.int64),
                scale=npz["scale"].astype(np.float32),
                val_scores=npz["val_scores"].astype(np.float32),
                threshold=float(npz["threshold"]),
                accept=float(npz["accept"]),
            )
    except (OSError, ValueError, KeyError):
        return None


# ----------------------------------------------------------------------------- measured


@dataclass(frozen=True)
class ClassLeftOut:
    """One class left out: its pictures scored against the others' bank and threshold."""

    name: str
    images: int
    flagged: float  # share of its pictures flagged unfamiliar
    auroc: float | None  # its pictures against the other classes' validation pictures


@dataclass(frozen=True)
class FamiliarityReport:
    """How well the unfamiliar check works on this run's data (the Evaluate page, the card)."""

    accept: float
    threshold: float
    val_images: int
    val_flagged: float  # validation pictures flagged, cross-fitted (threshold from the other half)
    left_out: list[ClassLeftOut] = field(default_factory=list)
    foreign_images: int = 0
    foreign_flagged: float | None = None  # everyday pictures of no class flagged
    foreign_auroc: float | None = None

    @property
    def left_out_flagged(self) -> float | None:
        """Mean over classes of the share of a left-out class's pictures flagged."""
        if not self.left_out:
            return None
        return float(np.mean([c.flagged for c in self.left_out]))

    @property
    def left_out_auroc(self) -> float | None:
        values = [c.auroc for c in self.left_out if c.auroc is not None]
        return float(np.mean(values)) if values else None

    def sentence(self) -> str:
        """One plain sentence: how often a picture of none of the classes is flagged, and how
        often one of the user's own is flagged by mistake."""
        parts = []
        if self.foreign_flagged is not None and self.foreign_images:
            parts.append(f"everyday ones {_in_ten(self.foreign_flagged)}")
        if self.left_out_flagged is not None:
            parts.append(
                "those of a class the model was never taught (each of yours left out in "
                f"turn) {_in_ten(self.left_out_flagged)}"
            )
        said = (
            "Pictures of none of your classes are flagged unfamiliar: " + ", and ".join(parts)
            if parts
            else "There is nothing to measure the unfamiliar check on yet"
        )
        wrong = round(self.val_flagged * 100)
        return f"{said}. {wrong} in 100 of your own validation pictures are flagged by mistake."

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["left_out_flagged"] = self.left_out_flagged
        out["left_out_auroc"] = self.left_out_auroc
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FamiliarityReport:
        return cls(
            accept=float(raw["accept"]),
            threshold=float(raw["threshold"]),
            val_images=int(raw["val_images"]),
            val_flagged=float(raw["val_flagged"]),
            left_out=[ClassLeftOut(**c) for c in raw.get("left_out", [])],
            foreign_images=int(raw.get("foreign_images", 0)),
            foreign_flagged=raw.get("foreign_flagged"),
            foreign_auroc=raw.get("foreign_auroc"),
        )


def _in_ten(share: float) -> str:
    n = round(share * 10)
    if n >= 10:
        return "nearly every time" if share < 0.995 else "every time"
    if n <= 0:
        return "almost never" if share > 0 else "never"
    return f"{n} times in 10"


def _cross_fitted_flagged(val_scores: np.ndarray, accept: float, seed: int = 0) -> float:
    """Share of validation pictures flagged by a threshold chosen on the *other* half (the
    threshold's own half would be flagged at 1 - accept by construction)."""
    n = len(val_scores)
    if n < 4:
        return float((val_scores > threshold_for(val_scores, accept)).mean()) if n else 0.0
    order = np.random.default_rng(seed).permutation(n)
    halves = order[: n // 2], order[n // 2 :]
    flagged = 0
    for fit_on, score_on in (halves, halves[::-1]):
        flagged += int((val_scores[score_on] > threshold_for(val_scores[fit_on], accept)).sum())
    return flagged / n


def _class_max_similarity(
    queries: np.ndarray, bank: np.ndarray, bank_labels: np.ndarray, n_classes: int
) -> np.ndarray:
    """(Q, classes): each query's largest cosine similarity to a bank row of each class
    (-inf for a class with no row). Chunked, so memory stays bounded at any size."""
    out = np.full((len(queries), n_classes), -np.inf, dtype=np.float32)
    members = [np.flatnonzero(bank_labels == c) for c in range(n_classes)]
    for start in range(0, len(queries), _CHUNK):
        sim = queries[start : start + _CHUNK] @ bank.T
        for c, cols in enumerate(members):
            if len(cols):
                out[start : start + _CHUNK, c] = sim[:, cols].max(1)
    return out


def leave_one_class_out(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    classes: list[str],
    accept: float = ACCEPT,
) -> list[ClassLeftOut]:
    """Each class in turn left out of the bank and the threshold: the share of its pictures
    (training and validation) flagged, and the AUROC of its pictures against the other
    classes' validation pictures. Features only, and one pass of matrix products for all
    classes (the nearest picture of each class is found once): seconds, no training."""
    train = unit(train_features)
    val = unit(val_features)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    val_labels = np.asarray(val_labels, dtype=np.int64)
    n = len(classes)
    if n < 2 or len(train) == 0:
        return []
    best = _class_max_similarity(np.concatenate([val, train]), train, train_labels, n)
    # each class's spread is its own: leaving another class out does not change it
    scaled = (1.0 - best) / class_scales(train, train_labels, n)[None, :]
    labels = np.concatenate([val_labels, train_labels])
    is_val = np.arange(len(labels)) < len(val)
    out = []
    for c, name in enumerate(classes):
        score = np.delete(scaled, c, axis=1).min(1)  # the nearest picture of another class
        known = is_val & (labels != c)
        left = labels == c
        if not known.any() or not left.any() or not (train_labels != c).any():
            continue
        threshold = threshold_for(score[known], accept)
        out.append(
            ClassLeftOut(
                name,
                int(left.sum()),
                float((score[left] > threshold).mean()),
                auroc(score[known], score[left]),
            )
        )
    return out


def report(
    fam: Familiarity,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    classes: list[str],
    foreign_scores: np.ndarray | None,
) -> FamiliarityReport:
    """Everything the Evaluate page says of the check, measured on this run's features."""
    foreign = None if foreign_scores is None else np.asarray(foreign_scores, dtype=np.float32)
    return FamiliarityReport(
        accept=fam.accept,
        threshold=fam.threshold,
        val_images=len(fam.val_scores),
        val_flagged=_cross_fitted_flagged(fam.val_scores, fam.accept),
        left_out=leave_one_class_out(
            train_features, train_labels, val_features, val_labels, classes, fam.accept
        ),
        foreign_images=0 if foreign is None else len(foreign),
        foreign_flagged=None if foreign is None else float((foreign > fam.threshold).mean()),
        foreign_auroc=None if foreign is None else auroc(fam.val_scores, foreign),
    )


def save_report(run_dir: Path, rep: FamiliarityReport) -> None:
    path = Path(run_dir) / REPORT_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    text = json.dumps(rep.to_json(), indent=1)
    with diskspace.guard(path.parent, len(text) + diskspace.MB, cleanup=[tmp]):
        tmp.write_text(text)
        tmp.replace(path)


def load_report(run_dir: Path) -> FamiliarityReport | None:
    """The run's measured report, or None (trained before the check existed, unreadable)."""
    path = Path(run_dir) / REPORT_FILE
    try:
        return FamiliarityReport.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
