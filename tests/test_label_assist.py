"""Label assist: the space, suggestions, confident pages, what to label next and the accuracy
estimate, on clustered synthetic data and on the demo set's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tl_core.errors import DataError
from tl_core.labeling.assist import (
    MIN_PER_CLASS,
    UNLABELLED,
    Estimate,
    Suggestions,
    confident_pages,
    cv_accuracy,
    next_batch,
    ready,
    reduce,
    suggest,
)

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo" / "fashion_mnist"


def clusters(
    n_classes: int = 4, per_class: int = 60, dims: int = 40, spread: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs, one per class: (vectors, true classes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dims)) * 4
    x = np.concatenate([c + spread * rng.normal(size=(per_class, dims)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(n_classes), per_class)


def some_labels(y: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.full(len(y), UNLABELLED, dtype=np.int64)
    for c in np.unique(y):
        rows = rng.choice(np.flatnonzero(y == c), per_class, replace=False)
        labels[rows] = c
    return labels


# ---------------------------------------------------------------- the space


def test_reduce_gives_unit_float32_rows_and_is_deterministic() -> None:
    x, _ = clusters(per_class=50, dims=200)
    space = reduce(x, dims=32)
    assert space.shape == (200, 32) and space.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(space, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(space, reduce(x, dims=32))


def test_reduce_keeps_fewer_dimensions_with_few_pictures() -> None:
    x, _ = clusters(n_classes=2, per_class=5, dims=300)
    assert reduce(x, dims=128).shape == (10, 9)
    assert reduce(x[:1]).shape[0] == 1
    assert reduce(np.zeros((0, 16), np.float32)).shape[0] == 0


def test_reduce_refuses_bad_features() -> None:
    x, _ = clusters()
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        reduce(x)
    with pytest.raises(ValueError, match="dims"):
        reduce(x, dims=0)
    with pytest.raises(ValueError, match="pictures, dimensions"):
        reduce(x[0])


# ---------------------------------------------------------------- ready


def test_ready_needs_every_class_and_two_classes() -> None:
    labels = np.array([0, 0, 0, 1, 1, -1, -1])
    assert not ready(labels, 2)
    assert ready(np.append(labels, 1), 2)
    assert not ready(np.append(labels, 1), 3)  # class 2 has no label
    assert not ready(np.array([0, 0, 0]), 1)  # one class is not enough
    assert not ready(np.array([], dtype=np.int64), 0)
    assert ready(labels, 2, per_class=2)
    assert MIN_PER_CLASS == 3


# ---------------------------------------------------------------- suggestions


def test_suggest_is_right_on_separable_clusters() -> None:
    x, y = clusters()
    space = reduce(x)
    labels = some_labels(y, 3)
    s = suggest(space, labels, 4)
    assert isinstance(s, Suggestions)
    assert s.label.shape == (len(y),) and s.label.dtype == np.int64
    assert s.confidence.shape == (len(y),) and s.confidence.dtype == np.float32
    assert ((s.confidence >= 0) & (s.confidence <= 1)).all()
    assert (s.label == y).mean() > 0.95
    again = suggest(space, labels, 4)
    np.testing.assert_array_equal(s.confidence, again.confidence)
    assert s.confident_at == again.confident_at


def test_a_class_without_labels_is_never_suggested() -> None:
    x, y = clusters()
    labels = some_labels(y, 5)
    labels[labels == 3] = UNLABELLED
    s = suggest(reduce(x), labels, 4)
    assert not (s.label == 3).any()
    assert s.confident_at is None  # class 3 is not ready: nothing can be called safe


def test_suggest_refuses_wrong_input_in_plain_words() -> None:
    x, y = clusters()
    space = reduce(x)
    with pytest.raises(ValueError, match="labels for"):
        suggest(space, some_labels(y, 3)[:-1], 4)
    with pytest.raises(ValueError, match="not a class index"):
        suggest(space, np.where(y == 3, 7, y), 4)
    with pytest.raises(ValueError, match="whole class indices"):
        suggest(space, y.astype(float), 4)
    only_one = np.where(y == 0, 0, UNLABELLED)
    with pytest.raises(DataError, match="two classes"):
        suggest(space, only_one, 4)


def test_confident_at_waits_for_enough_labels() -> None:
    x, y = clusters(spread=0.5)
    space = reduce(x)
    assert suggest(space, some_labels(y, 3), 4).confident_at is None
    s = suggest(space, some_labels(y, 30), 4)
    assert s.confident_at is not None and 0.5 <= s.confident_at <= 1


def test_confident_pages_hold_only_sure_unlabelled_rows_grouped_by_class() -> None:
    x, y = clusters(spread=1.5)
    space = reduce(x)
    labels = some_labels(y, 30)
    s = suggest(space, labels, 4)
    assert s.confident_at is not None
    pages = confident_pages(s, labels, page_size=7)
    assert pages
    rows = np.concatenate([p for _, p in pages])
    assert len(set(rows.tolist())) == rows.size  # each row on one page only
    assert (labels[rows] == UNLABELLED).all()
    assert (s.confidence[rows] >= s.confident_at).all()
    sure = np.flatnonzero((labels < 0) & (s.confidence >= s.confident_at))
    assert set(rows.tolist()) == set(sure.tolist())
    classes = [c for c, _ in pages]
    assert classes == sorted(classes)  # a class's pages follow each other
    for cls, page in pages:
        assert 1 <= page.size <= 7
        assert (s.label[page] == cls).all()
        assert (np.diff(s.confidence[page]) <= 0).all()  # surest first
    assert (s.label[rows] == y[rows]).mean() > 0.98


def test_no_confident_pages_without_a_threshold() -> None:
    labels = np.array([0, 1, -1, -1])
    s = Suggestions(
        label=np.array([0, 1, 0, 1]),
        confidence=np.ones(4, np.float32),
        confident_at=None,
    )
    assert confident_pages(s, labels) == []
    with pytest.raises(ValueError, match="labels for"):
        confident_pages(s, labels[:3])


# ---------------------------------------------------------------- what to label next


def test_next_batch_gives_distinct_unlabelled_rows_deterministically() -> None:
    x, y = clusters()
    space = reduce(x)
    labels = some_labels(y, 3)
    s = suggest(space, labels, 4)
    batch = next_batch(space, labels, s, k=12)
    assert batch.dtype == np.int64 and batch.size == 12
    assert len(set(batch.tolist())) == 12
    assert (labels[batch] == UNLABELLED).all()
    np.testing.assert_array_equal(batch, next_batch(space, labels, s, k=12))


def test_next_batch_prefers_unsure_rows() -> None:
    x, y = clusters(n_classes=3, spread=3.0)
    space = reduce(x)
    labels = some_labels(y, 5)
    s = suggest(space, labels, 3)
    batch = next_batch(space, labels, s, k=10)
    unlabelled = labels == UNLABELLED
    assert s.margin is not None
    assert np.median(s.margin[batch]) < np.quantile(s.margin[unlabelled], 0.25)


def test_next_batch_skips_copies_and_twins_of_labelled_rows() -> None:
    x, y = clusters(n_classes=3, per_class=20, spread=3.0)
    x, y = np.repeat(x, 3, axis=0), np.repeat(y, 3)  # every picture three times
    space = reduce(x)
    labels = some_labels(y, 3)
    for suggestions in (None, suggest(space, labels, 3)):
        batch = next_batch(space, labels, suggestions, k=15)
        assert batch.size == 15
        pictures = batch // 3
        assert len(set(pictures.tolist())) == 15  # never two copies of one picture
        labelled_pictures = set((np.flatnonzero(labels >= 0) // 3).tolist())
        assert not set(pictures.tolist()) & labelled_pictures


def test_next_batch_asks_one_of_near_copies_even_when_they_are_the_unsurest() -> None:
    rng = np.random.default_rng(0)
    a, b = np.zeros(20), np.zeros(20)
    a[0], b[0] = 4.0, -4.0
    blobs = [a + 0.3 * rng.normal(size=(30, 20)), b + 0.3 * rng.normal(size=(30, 20))]
    middle = 0.5 * rng.normal(size=(3, 20))  # three pictures between the classes ...
    copies = np.repeat(middle, 20, axis=0) + 1e-3 * rng.normal(size=(60, 20))  # ... 20 times
    space = reduce(np.concatenate([*blobs, copies]).astype(np.float32), dims=16)
    labels = np.full(120, UNLABELLED)
    labels[:3], labels[30:33] = 0, 1
    s = suggest(space, labels, 2)
    batch = next_batch(space, labels, s, k=10)
    assert batch.size == 10 and (labels[batch] == UNLABELLED).all()
    in_middle = batch[batch >= 60]
    assert len(set(((in_middle - 60) // 20).tolist())) == in_middle.size == 3


def test_cold_start_spreads_over_the_clusters() -> None:
    x, y = clusters(n_classes=5, per_class=40, spread=0.3)
    space = reduce(x)
    nothing = np.full(len(y), UNLABELLED)
    batch = next_batch(space, nothing, None, k=5)
    assert sorted(y[batch].tolist()) == [0, 1, 2, 3, 4]  # one picture of each cluster
    # with two clusters labelled, the next batch goes to the clusters without labels
    labels = nothing.copy()
    labels[np.flatnonzero(y == 0)[:3]] = 0
    labels[np.flatnonzero(y == 1)[:3]] = 1
    batch = next_batch(space, labels, None, k=3)
    assert sorted(y[batch].tolist()) == [2, 3, 4]


def test_next_batch_ends_and_refuses_wrong_input() -> None:
    x, y = clusters(n_classes=2, per_class=10)
    space = reduce(x)
    labels = y.copy()
    labels[[1, 12]] = UNLABELLED
    assert sorted(next_batch(space, labels, None, k=5).tolist()) == [1, 12]
    assert next_batch(space, y, None, k=5).size == 0
    with pytest.raises(ValueError, match="k must"):
        next_batch(space, labels, None, k=0)
    s = suggest(space, labels, 2)
    with pytest.raises(ValueError, match="another set of pictures"):
        next_batch(space[:-1], labels[:-1], s, k=1)


# ---------------------------------------------------------------- accuracy estimate


def test_cv_accuracy_needs_labels_and_gives_an_interval() -> None:
    x, y = clusters(spread=2.0)
    space = reduce(x)
    assert cv_accuracy(space, np.full(len(y), UNLABELLED)) is None
    assert cv_accuracy(space, some_labels(y, 1)) is None
    est = cv_accuracy(space, some_labels(y, 20))
    assert isinstance(est, Estimate)
    assert est.n_labels == 80
    assert 0 <= est.low <= est.accuracy <= est.high <= 1
    assert est.accuracy > 0.9
    assert est == cv_accuracy(space, some_labels(y, 20))


def test_tiny_classes_do_not_break_the_estimate() -> None:
    x, y = clusters(n_classes=4, per_class=30)
    labels = some_labels(y, 10)
    labels[np.flatnonzero(labels == 2)[1:]] = UNLABELLED  # class 2: one label
    labels[np.flatnonzero(labels == 3)[2:]] = UNLABELLED  # class 3: two labels
    space = reduce(x)
    est = cv_accuracy(space, labels)
    assert est is not None and est.n_labels == 22  # class 2's only label is not scored
    s = suggest(space, labels, 4)
    assert s.confident_at is None
    assert set(np.unique(s.label).tolist()) <= {0, 1, 2, 3}


# ---------------------------------------------------------------- real pictures


def demo_pixels(per_class: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """The demo set's first pictures of each class as grey pixel vectors."""
    classes = sorted(p for p in (DEMO / "train").iterdir() if p.is_dir())
    x, y = [], []
    for c, folder in enumerate(classes):
        for path in sorted(folder.glob("*.png"))[:per_class]:
            x.append(np.asarray(Image.open(path).convert("L"), np.float32).ravel() / 255)
            y.append(c)
    return np.stack(x), np.array(y)


def test_suggestions_on_the_demo_pictures_beat_chance_by_far() -> None:
    x, y = demo_pixels()
    space = reduce(x, dims=32)
    labels = some_labels(y, 4)
    s = suggest(space, labels, 10)
    unlabelled = labels == UNLABELLED
    assert (s.label[unlabelled] == y[unlabelled]).mean() > 0.5  # chance: 0.1
    batch = next_batch(space, labels, s, k=10)
    assert (labels[batch] == UNLABELLED).all() and len(set(batch.tolist())) == 10
