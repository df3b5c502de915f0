"""The 2D map of the pictures (tl_core.labeling.projection): shape, range, determinism, tiny
and degenerate inputs, and that classes apart in the features stay apart on the map."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from tl_core.labeling import projection


def blobs(per_class: int = 30, classes: int = 3, dims: int = 64, seed: int = 0):
    """Non-negative clustered rows (like pooled features) and their class labels."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 4, (classes, dims))
    labels = np.repeat(np.arange(classes), per_class)
    rows = centres[labels] + rng.normal(0, 0.5, (len(labels), dims))
    return np.maximum(rows, 0).astype(np.float32), labels


def check_map(xy: np.ndarray, n: int) -> None:
    assert xy.shape == (n, 2)
    assert xy.dtype == np.float32
    assert np.isfinite(xy).all()
    assert n == 0 or (xy.min() >= 0.0 and xy.max() <= 1.0)


def test_map_shape_range_and_aspect_ratio():
    rows, _ = blobs()
    xy = projection.project(rows)
    check_map(xy, len(rows))
    span = np.ptp(xy, axis=0)
    assert span.max() == pytest.approx(1.0, abs=1e-6)  # the longer side fills the square
    assert (xy.min(axis=0) + xy.max(axis=0)) / 2 == pytest.approx([0.5, 0.5], abs=1e-6)


def test_same_seed_same_map():
    rows, _ = blobs(per_class=20)
    assert np.array_equal(projection.project(rows, seed=3), projection.project(rows, seed=3))


def test_separate_classes_stay_apart():
    rows, labels = blobs(per_class=40, classes=4)
    xy = projection.project(rows)
    accuracy = cross_val_score(KNeighborsClassifier(5), xy, labels, cv=5).mean()
    assert accuracy >= 0.95
    centres = np.array([xy[labels == c].mean(axis=0) for c in range(4)])
    spread = max(np.linalg.norm(xy[labels == c] - centres[c], axis=1).mean() for c in range(4))
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1 :]]
    assert min(gaps) > 2 * spread


def test_progress_from_start_to_end():
    rows, _ = blobs(per_class=15)
    calls: list[tuple[int, int]] = []
    projection.project(rows, progress=lambda done, total: calls.append((done, total)))
    total = calls[0][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert len(calls) > 3  # reports during the optimisation, not only at both ends
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(t == total for _, t in calls)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 9, 10, 12])
def test_tiny_inputs(n):
    rows, _ = blobs(per_class=4, classes=3)
    rows = rows[:n]
    calls: list[tuple[int, int]] = []
    xy = projection.project(rows, progress=lambda done, total: calls.append((done, total)))
    check_map(xy, n)
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1]
    if n == 1:
        assert xy.tolist() == [[0.5, 0.5]]
    if n >= 2:
        assert np.ptp(xy, axis=0).max() == pytest.approx(1.0, abs=1e-6)  # not all on one spot


def test_duplicate_rows_land_together():
    rows, labels = blobs(per_class=15)
    doubled = np.concatenate([rows, rows])
    xy = projection.project(doubled)
    check_map(xy, len(doubled))
    copies = np.linalg.norm(xy[: len(rows)] - xy[len(rows) :], axis=1)
    assert copies.max() < 0.02
    accuracy = cross_val_score(KNeighborsClassifier(5), xy, np.tile(labels, 2), cv=5).mean()
    assert accuracy >= 0.95


def test_identical_rows_and_constant_features():
    same = np.ones((20, 16), dtype=np.float32)
    assert np.array_equal(projection.project(same), np.full((20, 2), 0.5, dtype=np.float32))
    few = np.repeat(np.eye(3, 16, dtype=np.float32), 5, axis=0)  # 15 rows, 3 distinct
    xy = projection.project(few)
    check_map(xy, 15)
    assert len(np.unique(xy.round(5), axis=0)) == 3
    rows, labels = blobs(per_class=20)
    padded = np.hstack([rows, np.full((len(rows), 40), 7.0, dtype=np.float32)])
    xy = projection.project(padded)
    check_map(xy, len(rows))
    assert cross_val_score(KNeighborsClassifier(5), xy, labels, cv=5).mean() >= 0.95


def test_bad_input_is_refused_with_a_message():
    rows, _ = blobs(per_class=5)
    rows[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        projection.project(rows)
    with pytest.raises(ValueError, match="array"):
        projection.project(np.zeros(5, dtype=np.float32))


def test_fit_scale_keeps_aspect_ratio():
    xy = projection.fit_scale(np.array([[0.0, 0.0], [4.0, 1.0], [2.0, 0.5]]))
    np.testing.assert_allclose(xy, [[0.0, 0.375], [1.0, 0.625], [0.5, 0.5]], atol=1e-6)
    assert projection.fit_scale(np.zeros((0, 2))).shape == (0, 2)
