"""Likely wrong labels (cleanlab on out-of-sample probabilities): swapped labels rank first,
tiny classes and unlabelled rows are handled, wrong input is refused."""

from __future__ import annotations

import numpy as np
import pytest
from test_label_assist import clusters, demo_pixels

from tl_core.labeling.assist import UNLABELLED, reduce
from tl_core.labeling.issues import LabelIssue, find_issues, label_quality


def swapped(y: np.ndarray, n: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``y`` with ``n`` labels moved to another class: (labels, the moved rows)."""
    rng = np.random.default_rng(seed)
    moved = rng.choice(len(y), n, replace=False)
    labels = y.copy()
    labels[moved] = (y[moved] + rng.integers(1, n_classes, n)) % n_classes
    return labels, moved


def test_swapped_labels_have_the_lowest_quality() -> None:
    x, y = clusters(n_classes=4, per_class=50, spread=1.5)
    space = reduce(x)
    labels, moved = swapped(y, 10, 4)
    quality = label_quality(space, labels)
    assert quality.shape == (len(y),) and np.isfinite(quality).all()
    assert ((quality >= 0) & (quality <= 1)).all()
    lowest = np.argsort(quality)[:10]
    assert np.isin(lowest, moved).mean() >= 0.8
    np.testing.assert_array_equal(quality, label_quality(space, labels))


def test_find_issues_flags_swapped_labels_worst_first_with_the_right_class() -> None:
    x, y = clusters(n_classes=4, per_class=50, spread=1.5)
    space = reduce(x)
    labels, moved = swapped(y, 10, 4)
    issues = find_issues(space, labels)
    assert issues and all(isinstance(i, LabelIssue) for i in issues)
    rows = [i.row for i in issues]
    assert len(set(rows)) == len(rows)
    assert np.isin(rows, moved).mean() >= 0.8  # few false alarms
    assert np.isin(moved, rows).mean() >= 0.8  # most swaps found
    quality = [i.quality for i in issues]
    assert quality == sorted(quality)  # worst first
    for issue in issues:
        assert issue.label == labels[issue.row]
        assert 0 < issue.confidence <= 1
        if issue.row in moved:
            assert issue.suggested == y[issue.row]


def test_tiny_classes_and_unlabelled_rows_are_not_flagged() -> None:
    x, y = clusters(n_classes=5, per_class=30, spread=1.5)
    labels, _ = swapped(y[:90], 6, 3)  # swaps among classes 0-2 only
    labels = np.concatenate([labels, y[90:]])
    tiny_one, tiny_two = np.flatnonzero(y == 3), np.flatnonzero(y == 4)
    labels[tiny_one[1:]] = UNLABELLED  # a class with one picture
    labels[tiny_two[2:]] = UNLABELLED  # a class with two pictures
    space = reduce(x)
    quality = label_quality(space, labels)
    assert np.isnan(quality[labels == UNLABELLED]).all()
    assert np.isnan(quality[tiny_one[0]])  # a class's only label cannot be held out
    assert np.isfinite(quality[tiny_two[:2]]).all()
    flagged = {i.row for i in find_issues(space, labels)}
    assert not flagged & set(np.flatnonzero(labels == UNLABELLED).tolist())
    assert tiny_one[0] not in flagged


def test_too_few_labels_give_no_scores_and_wrong_input_is_refused() -> None:
    x, y = clusters(n_classes=2, per_class=10)
    space = reduce(x)
    one_class = np.where(y == 0, 0, UNLABELLED)
    assert np.isnan(label_quality(space, one_class)).all()
    assert find_issues(space, one_class) == []
    with pytest.raises(ValueError, match="labels for"):
        label_quality(space, y[:-1])
    with pytest.raises(ValueError, match="not a class index"):
        find_issues(space, y - 2)


def test_swapped_demo_pictures_rank_near_the_top() -> None:
    x, y = demo_pixels(per_class=15)
    space = reduce(x, dims=32)
    labels, moved = swapped(y, 8, 10, seed=1)
    quality = label_quality(space, labels)
    lowest = np.argsort(quality)[:30]  # the lowest fifth
    assert np.isin(moved, lowest).mean() >= 0.6
