"""Likely wrong labels: confident learning (cleanlab) on out-of-sample probabilities of a
classifier on the frozen-feature space of :mod:`tl_core.labeling.assist`. Torch-free."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from tl_core.labeling.assist import check_labels, cv_probabilities

__all__ = ["LabelIssue", "find_issues", "label_quality"]


@dataclass(frozen=True)
class LabelIssue:
    row: int  # row of the space
    label: int  # the given class index
    suggested: int  # the class the features say
    confidence: float  # out-of-sample probability of ``suggested``
    quality: float  # cleanlab's label quality of the given label (low: likely wrong)


def _scored(
    space: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels, scored rows, their out-of-sample probabilities), None when too few labels.
    Rows of a class with a single label are never scored (they cannot be held out)."""
    space = np.asarray(space)
    if space.ndim != 2:
        raise ValueError(f"the space must be a (pictures, dimensions) array, got {space.shape}")
    labels = check_labels(space, labels)
    cv = cv_probabilities(space, labels, seed)
    if cv is None:
        return None
    return labels, cv[0], cv[1]


def _quality(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    import cleanlab.rank

    return cleanlab.rank.get_label_quality_scores(labels, proba, method="self_confidence")


def label_quality(space: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n,) label quality score of every row (all rows labelled); low = likely wrong.

    Cleanlab's self-confidence: the out-of-sample (5-fold) probability of the given label.
    Unlabelled rows (-1) and rows that cannot be held out (a class with a single label) get
    NaN; with fewer than two classes of two labels every row is NaN.
    """
    out = np.full(len(labels), np.nan, dtype=np.float64)
    scored = _scored(space, labels, seed)
    if scored is not None:
        labels, rows, proba = scored
        out[rows] = _quality(labels[rows], proba)
    return out


def find_issues(space: np.ndarray, labels: np.ndarray, seed: int = 0) -> list[LabelIssue]:
    """The rows cleanlab finds likely mislabelled, worst first (all rows labelled).

    Confident learning (cleanlab.filter.find_label_issues) on out-of-sample probabilities,
    ranked by self-confidence. Unlabelled rows and a class's only label are never flagged.
    """
    import cleanlab.filter

    scored = _scored(space, labels, seed)
    if scored is None:
        return []
    labels, rows, proba = scored
    given = labels[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small classes: cleanlab warns it may miss some
        ranked = cleanlab.filter.find_label_issues(
            given, proba, return_indices_ranked_by="self_confidence", n_jobs=1
        )
    quality = _quality(given, proba)
    suggested = proba.argmax(axis=1)
    return [
        LabelIssue(
            row=int(rows[i]),
            label=int(given[i]),
            suggested=int(suggested[i]),
            confidence=float(proba[i, suggested[i]]),
            quality=float(quality[i]),
        )
        for i in ranked
    ]
