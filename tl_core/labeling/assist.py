"""Suggestions, what to label next and how good a model would be now: a classifier on frozen
features, fast enough to refresh after every batch of labels.

Everything works on the *space*: the pictures' pooled features reduced by :func:`reduce`
(one row per picture). ``labels`` holds a class index per row, or :data:`UNLABELLED`.
Torch-free (numpy + scikit-learn). The choices (classifier, batch strategy, thresholds) were
measured with bench/label_assist.py; docs/CHOICES.md explains them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

from tl_core.analysis.metrics import wilson_interval
from tl_core.errors import DataError

__all__ = [
    "MIN_PER_CLASS",
    "UNLABELLED",
    "Estimate",
    "Suggestions",
    "check_labels",
    "confident_pages",
    "cv_accuracy",
    "cv_probabilities",
    "make_classifier",
    "next_batch",
    "ready",
    "reduce",
    "small_blas",
    "suggest",
]

UNLABELLED = -1
MIN_PER_CLASS = 3  # labels per class before suggestions are offered

C = 10.0  # inverse regularisation of the logistic regression on L2-normalised rows
FOLDS = 5  # cross-validation folds (fewer pictures per class: see cv_probabilities)
MIN_CV_LABELS = 8  # fewer labels than this: no accuracy estimate
CONFIDENT_ACCURACY = 0.99  # cross-validated accuracy wanted above confident_at
CONFIDENT_MIN_ROWS = 40  # labelled pictures that must lie above confident_at
CONFIDENT_FLOOR = 0.5  # confident_at is never below this
CANDIDATES_PER_PICK = 4  # next_batch: uncertain candidates considered per row picked
# next_batch never picks two rows (nor a labelled row's twin) nearer than this in the space:
# a picture and its copy resized 2x measured 0.14 (median) on the bench's sets, the nearest
# two distinct pictures 0.31
NEAR_COPY = 0.2


@dataclass(frozen=True)
class Estimate:
    """Cross-validated accuracy of a classifier trained on the labels so far."""

    accuracy: float
    low: float  # 95% interval
    high: float
    n_labels: int  # the labelled pictures the accuracy was measured on


@dataclass(frozen=True)
class Suggestions:
    """A suggested class and a confidence for every row (labelled rows too)."""

    label: np.ndarray  # (n,) int64 class index
    # (n,) float32 in [0, 1]: the lowest probability of ``label`` among the cross-validation
    # models (each trained without a fifth of the labels), the scale confident_at is chosen
    # on; the classifier's own probability while the labels are too few to cross-validate
    confidence: np.ndarray
    # Suggestions at or above this confidence are offered as confident pages; None while the
    # labels are too few to say which are safe.
    confident_at: float | None
    # (n,) float32 probability of the best class minus the second best (low: unsure)
    margin: np.ndarray | None = None
    # the cross-validated accuracy of the labels now (as cv_accuracy), None with too few
    estimate: Estimate | None = None


def check_labels(space: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """``labels`` as an int64 array, checked against ``space`` (one per row) and the classes."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one class index per picture, got shape {labels.shape}")
    if len(labels) != len(space):
        raise ValueError(f"{len(labels)} labels for {len(space)} pictures: one label per row")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("labels must be whole class indices (or -1 for unlabelled)")
    labels = labels.astype(np.int64)
    top = n_classes if n_classes is not None else np.iinfo(np.int64).max
    bad = (labels < UNLABELLED) | (labels >= top)
    if bad.any():
        raise ValueError(
            f"label {labels[bad][0]} is not a class index (0..{top - 1}) nor -1 (unlabelled)"
        )
    return labels


def small_blas() -> threadpool_limits:
    """Within it, BLAS runs on one thread: these problems are small, and several threads
    fighting over a busy machine's cores made a refresh 10-30x slower (bench/label_assist.py)."""
    return threadpool_limits(limits=1, user_api="blas")


def _check_space(space: np.ndarray) -> np.ndarray:
    space = np.asarray(space)
    if space.ndim != 2:
        raise ValueError(f"the space must be a (pictures, dimensions) array, got {space.shape}")
    return space


def reduce(vectors: np.ndarray, dims: int = 128, seed: int = 0) -> np.ndarray:
    """The space: ``vectors`` (n, d) reduced to at most ``dims`` dimensions, float32.

    PCA to ``min(dims, n - 1, d)`` dimensions, then every row scaled to length 1 (cosine
    geometry, the same for any feature model). Deterministic for a seed.
    """
    x = _check_space(vectors).astype(np.float32)
    if dims < 1:
        raise ValueError("dims must be at least 1")
    if not np.isfinite(x).all():
        raise ValueError("the features hold NaN or infinite values")
    n, d = x.shape
    keep = min(dims, n - 1, d)
    if keep >= 1:
        x = PCA(n_components=keep, random_state=seed).fit_transform(x)
    else:  # one picture (or none): nothing to learn a projection from
        x = x[:, : min(dims, d)]
    if n == 0:
        return np.zeros((0, x.shape[1]), dtype=np.float32)
    return normalize(x).astype(np.float32)


def ready(labels: np.ndarray, n_classes: int, per_class: int = MIN_PER_CLASS) -> bool:
    """Whether every one of ``n_classes`` classes (at least two) has ``per_class`` labels."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if n_classes < 2:
        return False
    counts = np.bincount(labels[(labels >= 0) & (labels < n_classes)], minlength=n_classes)
    return bool(counts.min() >= per_class)


def make_classifier(seed: int = 0) -> LogisticRegression:
    """The classifier behind suggestions and estimates (unfitted)."""
    return LogisticRegression(C=C, max_iter=1000, random_state=seed, class_weight="balanced")


@dataclass(frozen=True)
class _CrossFit:
    rows: np.ndarray  # the labelled rows scored out of sample
    proba: np.ndarray  # (len(rows), classes) out-of-sample probabilities
    models: list[LogisticRegression]  # one per fold, each trained without its fold


def _cross_fit(space: np.ndarray, labels: np.ndarray, seed: int) -> _CrossFit | None:
    lab = np.flatnonzero(labels >= 0)
    if lab.size == 0:
        return None
    n_cols = int(labels.max()) + 1
    counts = np.bincount(labels[lab], minlength=n_cols)
    if np.count_nonzero(counts >= 2) < 2:
        return None
    testable = lab[counts[labels[lab]] >= 2]
    always = lab[counts[labels[lab]] == 1]
    k = int(min(FOLDS, counts[counts >= 2].max()))
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    proba = np.zeros((testable.size, n_cols), dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes smaller than k: fine here
        splits = list(folds.split(testable, labels[testable]))
    models = []
    with small_blas():
        for train, test in splits:
            rows = np.concatenate([testable[train], always])
            clf = make_classifier(seed).fit(space[rows], labels[rows])
            proba[np.ix_(test, clf.classes_)] = clf.predict_proba(space[testable[test]])
            models.append(clf)
    return _CrossFit(testable, proba, models)


def cv_probabilities(
    space: np.ndarray, labels: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray] | None:
    """Out-of-sample class probabilities of the labelled rows: (rows, (len(rows), classes)).

    Stratified k-fold (k <= 5) over the classes with at least two labels; a class with a
    single label is kept in every training part and not scored. Columns are class indices
    0..max label. None when fewer than two classes have two labels.
    """
    fit = _cross_fit(_check_space(space), check_labels(space, labels), seed)
    return None if fit is None else (fit.rows, fit.proba)


def _estimate(labels: np.ndarray, proba: np.ndarray) -> Estimate:
    correct = int(np.count_nonzero(proba.argmax(axis=1) == labels))
    total = len(labels)
    low, high = wilson_interval(correct, total)
    return Estimate(correct / total, low, high, total)


def _confident_at(labels: np.ndarray, proba: np.ndarray) -> float | None:
    """The lowest confidence above which the cross-validated suggestions are at least 99%
    right, with at least CONFIDENT_MIN_ROWS labelled pictures above it; never below the
    floor. None when no such threshold exists."""
    conf = proba.max(axis=1)
    right = proba.argmax(axis=1) == labels
    order = np.argsort(-conf, kind="stable")
    hits = np.cumsum(right[order])
    seen = np.arange(1, len(order) + 1)
    ok = (hits >= CONFIDENT_ACCURACY * seen) & (seen >= CONFIDENT_MIN_ROWS)
    # the threshold must sit between distinct confidences: only the last row of a tie counts
    last_of_tie = np.r_[conf[order][1:] < conf[order][:-1], True]
    ok &= last_of_tie
    if not ok.any():
        return None
    at = float(conf[order][np.flatnonzero(ok)[-1]])
    return max(at, CONFIDENT_FLOOR)


def suggest(space: np.ndarray, labels: np.ndarray, n_classes: int, seed: int = 0) -> Suggestions:
    """Fit on the labelled rows and suggest a class for every row (0.1-0.3 s on 5,000 rows
    with 300 labels on two cores).

    Needs labels of at least two classes; a class without labels is never suggested.
    ``confident_at`` is set only once :func:`ready` and the cross-validated suggestions show a
    confidence above which they are at least 99% right.
    """
    space = _check_space(space)
    labels = check_labels(space, labels, n_classes)
    lab = np.flatnonzero(labels >= 0)
    if np.unique(labels[lab]).size < 2:
        raise DataError("Label pictures of at least two classes before asking for suggestions.")
    proba = np.zeros((len(space), n_classes), dtype=np.float32)
    with small_blas():
        clf = make_classifier(seed).fit(space[lab], labels[lab])
        proba[:, clf.classes_] = clf.predict_proba(space)
    top2 = np.sort(proba, axis=1)[:, -2:]
    suggested = proba.argmax(axis=1).astype(np.int64)
    confidence = top2[:, 1]
    fit = _cross_fit(space, labels, seed)
    estimate = confident_at = None
    if fit is not None and fit.rows.size >= MIN_CV_LABELS:
        estimate = _estimate(labels[fit.rows], fit.proba)
        confidence = _cautious(space, suggested, fit.models)
        if ready(labels, n_classes):
            confident_at = _confident_at(labels[fit.rows], fit.proba)
    return Suggestions(
        label=suggested,
        confidence=confidence.astype(np.float32),
        confident_at=confident_at,
        margin=(top2[:, 1] - top2[:, 0]).astype(np.float32),
        estimate=estimate,
    )


def _cautious(
    space: np.ndarray, suggested: np.ndarray, models: list[LogisticRegression]
) -> np.ndarray:
    """The lowest probability of the suggested class among the cross-validation models: on
    the scale of the out-of-sample probabilities that confident_at is chosen from, and high
    only where every model agrees."""
    low = np.ones(len(space), dtype=np.float64)
    with small_blas():
        for clf in models:
            proba = np.zeros((len(space), int(suggested.max()) + 1))
            known = clf.classes_ < proba.shape[1]
            proba[:, clf.classes_[known]] = clf.predict_proba(space)[:, known]
            low = np.minimum(low, proba[np.arange(len(space)), suggested])
    return low


def _kmeans(points: np.ndarray, k: int, seed: int) -> KMeans:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct points than clusters: handled below
        with small_blas():
            return KMeans(n_clusters=k, n_init=1, random_state=seed).fit(points)


def _far_from(space: np.ndarray, rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Which of ``rows`` lie at least NEAR_COPY from every row of ``others``."""
    if others.size == 0:
        return np.ones(rows.size, dtype=bool)
    a, b = space[rows].astype(np.float64), space[others].astype(np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return d2.min(axis=1) >= NEAR_COPY**2


def _distinct(space: np.ndarray, order: np.ndarray, k: int, taken: np.ndarray) -> np.ndarray:
    """``k`` rows of ``order`` (best first), none nearer than NEAR_COPY to another of them or
    to a row of ``taken``: near-copies of a picture are asked once (unless nothing else is
    left)."""
    picked: list[int] = []
    chunk = max(64, 4 * k)
    with small_blas():
        for start in range(0, order.size, chunk):
            part = order[start : start + chunk]
            for i in part[_far_from(space, part, taken)]:
                if _far_from(space, np.array([i]), np.asarray(picked, dtype=np.int64))[0]:
                    picked.append(int(i))
                    if len(picked) == k:
                        return np.asarray(picked, dtype=np.int64)
    # fewer distinct rows than k are left: the others still need labels, best first
    rest = order[~np.isin(order, picked)][: k - len(picked)]
    return np.concatenate([np.asarray(picked, dtype=np.int64), rest])


def _representative(space: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cold start: k-means into (labelled + k) groups (at most 5k); the row nearest the
    centre of each of the largest groups that hold no label yet (then of the others), so the
    batch covers the space and skips what is already labelled."""
    unl = np.flatnonzero(labels < 0)
    n_clusters = min(unl.size, k + len(labels) - unl.size, 5 * k)
    km = _kmeans(space, n_clusters, seed)
    groups = km.labels_
    sizes = np.bincount(groups, minlength=n_clusters)
    has_label = np.bincount(groups[labels >= 0], minlength=n_clusters) > 0
    dist = np.linalg.norm(space[unl] - km.cluster_centers_[groups[unl]], axis=1)
    rank = np.empty(n_clusters, dtype=np.int64)
    rank[np.lexsort((-sizes, has_label))] = np.arange(n_clusters)  # unlabelled, large first
    within = np.lexsort((dist, rank[groups[unl]]))  # by group, nearest the centre first
    first = np.r_[True, np.diff(groups[unl][within]) != 0]
    order = np.concatenate([within[first], within[~first]])
    return _distinct(space, unl[order], k, np.flatnonzero(labels >= 0))


def _uncertain(
    space: np.ndarray, labels: np.ndarray, margin: np.ndarray, k: int, seed: int
) -> np.ndarray:
    """Uncertain and diverse: the CANDIDATES_PER_PICK * k unlabelled rows with the smallest
    margin, k-means into k groups, the least sure row of each group."""
    unl = np.flatnonzero(labels < 0)
    n_cand = min(unl.size, CANDIDATES_PER_PICK * k)
    cand = unl[np.argsort(margin[unl], kind="stable")[:n_cand]]
    groups = _kmeans(space[cand], k, seed).labels_
    order = np.lexsort((margin[cand], groups))  # by group, least sure first
    firsts = order[np.r_[True, np.diff(groups[order]) != 0]]
    firsts = firsts[np.argsort(margin[cand][firsts], kind="stable")]
    rest = unl[np.argsort(margin[unl], kind="stable")]  # then the next least sure rows
    order = np.concatenate([cand[firsts], rest[~np.isin(rest, cand[firsts])]])
    return _distinct(space, order, k, np.flatnonzero(labels >= 0))


def next_batch(
    space: np.ndarray,
    labels: np.ndarray,
    suggestions: Suggestions | None,
    k: int = 20,
    seed: int = 0,
) -> np.ndarray:
    """Indices of ``k`` unlabelled rows that would teach the classifier most: uncertain and
    diverse (no two near-copies). Without suggestions (too few labels): representative rows
    spread over the space."""
    space = _check_space(space)
    labels = check_labels(space, labels)
    if k < 1:
        raise ValueError("k must be at least 1")
    unl = np.flatnonzero(labels < 0)
    if unl.size <= k:
        return unl
    if suggestions is None:
        return _representative(space, labels, k, seed)
    if len(suggestions.confidence) != len(space):
        raise ValueError("the suggestions are for another set of pictures: refresh them")
    margin = suggestions.margin
    if margin is None:
        margin = 2 * suggestions.confidence - 1  # a lower bound of the margin
    return _uncertain(space, labels, np.asarray(margin, dtype=np.float64), k, seed)


def confident_pages(
    suggestions: Suggestions, labels: np.ndarray, page_size: int = 24
) -> list[tuple[int, np.ndarray]]:
    """Unlabelled rows at or above ``confident_at``: (class, indices) pages, each of one
    suggested class, surest first; empty while ``confident_at`` is None. The pages of a class
    follow each other, classes in index order."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(suggestions.label):
        raise ValueError(f"{len(labels)} labels for {len(suggestions.label)} suggestions")
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    if suggestions.confident_at is None:
        return []
    sure = np.flatnonzero((labels < 0) & (suggestions.confidence >= suggestions.confident_at))
    pages: list[tuple[int, np.ndarray]] = []
    for cls in np.unique(suggestions.label[sure]):
        rows = sure[suggestions.label[sure] == cls]
        rows = rows[np.argsort(-suggestions.confidence[rows], kind="stable")]
        pages += [(int(cls), rows[i : i + page_size]) for i in range(0, rows.size, page_size)]
    return pages


def cv_accuracy(space: np.ndarray, labels: np.ndarray, seed: int = 0) -> Estimate | None:
    """The accuracy a classifier trained on the labels now would reach, cross-validated on
    the labelled rows; None with too few labels."""
    space = _check_space(space)
    cv = cv_probabilities(space, check_labels(space, labels), seed)
    if cv is None or cv[0].size < MIN_CV_LABELS:
        return None
    rows, proba = cv
    return _estimate(np.asarray(labels, dtype=np.int64)[rows], proba)
