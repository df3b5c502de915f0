"""Evaluation maths against hand-computed cases (and scikit-learn where it has the same)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import precision_recall_fscore_support

from tl_core import metrics
from tl_core.evaluation import evaluate_logits


def test_wilson_interval_matches_the_textbook_value() -> None:
    # 8/10: centre = (0.8 + 1.96²/20) / (1 + 1.96²/10) = 0.99208 / 1.38416 = 0.71674
    # half = 1.96 * sqrt(0.016 + 1.96²/400) / 1.38416 = 1.96 * 0.15925 / 1.38416 = 0.22550
    low, high = metrics.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3)
    assert high == pytest.approx(0.9433, abs=1e-3)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)
    assert metrics.wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_small_validation_sets_are_flagged_in_plain_words() -> None:
    s = metrics.accuracy_summary(np.array([0] * 12), np.array([0] * 10 + [1] * 2))
    warning = metrics.small_sample_warning(s)
    assert warning is not None and warning.startswith("With 12 validation images")
    assert f"{s.ci_low:.0%}" in warning and f"{s.ci_high:.0%}" in warning
    big = metrics.accuracy_summary(np.zeros(2000), np.zeros(2000))
    assert metrics.small_sample_warning(big) is None


def test_per_class_scores_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 0, 0])
    # class 0: tp 2, predicted 4 (idx 0,1,4,5), support 3 -> P 0.5, R 2/3, F1 4/7
    # class 1: tp 1, predicted 2, support 2 -> P 0.5, R 0.5, F1 0.5
    # class 2: tp 0, predicted 0, support 1 -> P 0 (never predicted), R 0, F1 0
    r = metrics.per_class_report(labels, preds, 3)
    assert (r[0].precision, r[0].recall, r[0].f1) == pytest.approx((0.5, 2 / 3, 4 / 7))
    assert (r[1].precision, r[1].recall, r[1].f1) == pytest.approx((0.5, 0.5, 0.5))
    assert (r[2].precision, r[2].recall, r[2].f1, r[2].predicted) == (0.0, 0.0, 0.0, 0)
    assert metrics.confusion_matrix(labels, preds, 3).tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]


def test_per_class_scores_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    labels, preds = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    r = metrics.per_class_report(labels, preds, 5)
    p, rec, f1, support = precision_recall_fscore_support(
        labels, preds, labels=range(5), zero_division=0
    )
    np.testing.assert_allclose([c.precision for c in r], p)
    np.testing.assert_allclose([c.recall for c in r], rec)
    np.testing.assert_allclose([c.f1 for c in r], f1)
    assert [c.support for c in r] == support.tolist()
    assert (metrics.confusion_matrix(labels, preds, 5) == sk_confusion(labels, preds)).all()


def test_reliability_and_ece_by_hand() -> None:
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.35, 0.65], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 0])
    # bins of 0.1: conf 0.95, 0.9 -> bin 8 (0.8, 0.9] holds 0.9, bin 9 holds 0.95;
    # 0.65 -> bin 6, 0.6 -> bin 5.
    # bin 9: conf .95 acc 1 -> gap .05; bin 8: conf .9 acc 0 -> gap .9
    # bin 6: conf .65 acc 1 -> .35; bin 5: conf .6 acc 0 -> .6
    # ECE = (0.05 + 0.9 + 0.35 + 0.6) / 4 = 0.475
    r = metrics.reliability_curve(probs, labels)
    assert r.count == [0, 0, 0, 0, 0, 1, 1, 0, 1, 1]
    assert r.accuracy[8] == 0.0 and r.accuracy[9] == 1.0
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.475)


def _sampled(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): perfectly calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, 4))
    p = metrics.softmax(z)
    labels = np.array([rng.choice(4, p=row) for row in p])
    return z, labels


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    z, labels = _sampled(6000)
    assert metrics.fit_temperature(3 * z, labels) == pytest.approx(3.0, rel=0.1)
    assert metrics.fit_temperature(z / 2, labels) == pytest.approx(0.5, rel=0.1)
    t = metrics.fit_temperature(3 * z, labels)
    assert metrics.nll(3 * z, labels, t) < metrics.nll(3 * z, labels, 1.0)
    over = metrics.softmax(3 * z)
    assert metrics.expected_calibration_error(
        metrics.softmax(3 * z, t), labels
    ) < metrics.expected_calibration_error(over, labels)
    assert metrics.fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


def test_mistakes_come_most_confidently_wrong_first() -> None:
    probs = np.array([[0.6, 0.4], [0.1, 0.9], [0.9, 0.1], [0.45, 0.55]])
    labels = np.array([1, 0, 0, 0])
    # wrong: 0 (p_true .4), 1 (p_true .1), 3 (p_true .45) -> by loss: 1, 0, 3
    assert metrics.misclassified_by_loss(probs, labels) == [1, 0, 3]


def test_not_sure_threshold_separates_confident_right_from_unsure_wrong() -> None:
    # 40 confident right answers (top 0.9), 10 wrong ones whose top class has 0.55: any
    # threshold in (0.55, 0.9] removes every error; the rule picks the smallest on its grid.
    probs = np.array([[0.9, 0.1]] * 40 + [[0.45, 0.55]] * 10)
    labels = np.array([0] * 40 + [0] * 10)
    assert metrics.not_sure_threshold(probs, labels) == pytest.approx(0.6)
    probs[40:] = [[0.3, 0.7]]  # the wrong answers now come at 0.7: threshold must pass it
    assert metrics.not_sure_threshold(probs, labels) == pytest.approx(0.75)
    assert metrics.not_sure_threshold(probs[:5], labels[:5]) == 0.5  # too few to choose


def test_evaluation_keeps_accuracy_and_scores_calibration_honestly() -> None:
    z, labels = _sampled(800, seed=1)
    ev = evaluate_logits(["a", "b", "c", "d"], [f"{i}.png" for i in range(800)], 4 * z, labels)
    assert ev.summary.accuracy == pytest.approx((z.argmax(1) == labels).mean())
    assert ev.calibration.temperature == pytest.approx(4.0, rel=0.2)
    assert ev.calibration.ece_after < ev.calibration.ece_before
    t, p = ev.wrong_by_loss[0] and (ev.labels[ev.wrong_by_loss[0]], ev.preds[ev.wrong_by_loss[0]])
    assert ev.wrong_by_loss[0] in ev.cell(int(t), int(p))
