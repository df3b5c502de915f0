"""Evaluation maths against hand-computed cases (and scikit-learn where it has the same)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import precision_recall_fscore_support

from tl_core.analysis import metrics
from tl_core.analysis.evaluation import evaluate_logits


def _summary(correct: int, total: int) -> metrics.AccuracySummary:
    return metrics.accuracy_summary(
        np.zeros(total), np.r_[np.zeros(correct), np.ones(total - correct)]
    )


def test_wilson_interval_matches_the_textbook_value() -> None:
    # 8/10, z² = 3.8416: denom = 1 + 3.8416/10 = 1.38416
    # centre = (0.8 + 3.8416/20) / 1.38416 = 0.99208 / 1.38416 = 0.71674
    # half = 1.96 * sqrt(0.8*0.2/10 + 3.8416/400) / 1.38416 = 1.96 * 0.15925 / 1.38416 = 0.22550
    low, high = metrics.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3)
    assert high == pytest.approx(0.9433, abs=1e-3)
    # 0/10: low 0, high = z² / (n + z²) = 3.8416 / 13.8416 = 0.27754
    assert metrics.wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-4)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)
    assert metrics.wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_accuracy_summary_counts() -> None:
    s = metrics.accuracy_summary(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert (s.accuracy, s.correct, s.total) == (0.75, 3, 4)
    assert (s.ci_low, s.ci_high) == pytest.approx(metrics.wilson_interval(3, 4))
    assert metrics.accuracy_summary(np.zeros(0), np.zeros(0)).accuracy == 0.0
    with pytest.raises(ValueError):
        metrics.accuracy_summary(np.zeros(3), np.zeros(4))


def test_small_validation_sets_are_flagged_in_plain_words() -> None:
    # 10/12: denom = 1 + 3.8416/12 = 1.32013; centre = (0.83333 + 0.16007) / 1.32013 = 0.75250
    # half = 1.96 * sqrt(0.83333*0.16667/12 + 3.8416/576) / 1.32013
    #      = 1.96 * sqrt(0.011574 + 0.006669) / 1.32013 = 0.20054  ->  (0.552, 0.953)
    warning = metrics.small_sample_warning(_summary(10, 12))
    assert warning is not None
    assert warning.startswith(
        "With 12 validation images, the true accuracy could be anywhere from 55% to 95%."
    )
    assert "more validation images" in warning
    # 29/29: low = 29 / (29 + 3.8416) = 0.883, width 0.117 is narrow, but under 30 images
    assert metrics.small_sample_warning(_summary(29, 29)) is not None
    # 30/60: half = 1.96 * sqrt(0.25/60 + 3.8416/14400) / 1.06403 = 0.1227, width 0.245 > 0.2
    assert "from 38% to 62%" in (metrics.small_sample_warning(_summary(30, 60)) or "")
    # 50/100: half = 1.96 * sqrt(0.0025 + 3.8416/40000) / 1.038416 = 0.0962, width 0.192
    assert metrics.small_sample_warning(_summary(50, 100)) is None
    assert "1 validation image," in (metrics.small_sample_warning(_summary(1, 1)) or "")
    assert metrics.small_sample_warning(_summary(0, 0)) is not None


def test_per_class_scores_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 0, 0])
    # class 0: tp 2, predicted 4 (idx 0,1,4,5), support 3 -> P 0.5, R 2/3, F1 = 2·(1/3)/(7/6) = 4/7
    # class 1: tp 1, predicted 2, support 2 -> P 0.5, R 0.5, F1 0.5
    # class 2: tp 0, predicted 0, support 1 -> P 0 (never predicted), R 0, F1 0
    r = metrics.per_class_report(labels, preds, 3)
    assert [(c.index, c.support, c.predicted, c.tp) for c in r] == [
        (0, 3, 4, 2),
        (1, 2, 2, 1),
        (2, 1, 0, 0),
    ]
    assert (r[0].precision, r[0].recall, r[0].f1) == pytest.approx((0.5, 2 / 3, 4 / 7))
    assert (r[1].precision, r[1].recall, r[1].f1) == pytest.approx((0.5, 0.5, 0.5))
    assert (r[2].precision, r[2].recall, r[2].f1) == (0.0, 0.0, 0.0)
    # rows are the truth: class 0 -> two 0s, one 1; class 1 -> one 0, one 1; class 2 -> one 0
    assert metrics.confusion_matrix(labels, preds, 3).tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    # macro: P (0.5 + 0.5 + 0)/3 = 1/3, R (2/3 + 1/2 + 0)/3 = 7/18, F1 (4/7 + 1/2 + 0)/3 = 5/14
    macro = metrics.macro_average(r)
    assert (macro.precision, macro.recall, macro.f1, macro.classes) == pytest.approx(
        (1 / 3, 7 / 18, 5 / 14, 3)
    )
    # a fourth class with no images and no predictions is left out of the average
    assert metrics.macro_average(metrics.per_class_report(labels, preds, 4)) == macro
    assert metrics.macro_average([]).classes == 0


def test_confusion_matrix_rejects_out_of_range_classes() -> None:
    with pytest.raises(ValueError):
        metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError):
        metrics.confusion_matrix(np.array([0, 1]), np.array([-1, 1]), 3)
    assert metrics.confusion_matrix(np.zeros(0), np.zeros(0), 2).tolist() == [[0, 0], [0, 0]]


def test_per_class_scores_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    labels, preds = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    preds[preds == 4] = 3  # class 4 is never predicted: exercises the 0/0 precision
    r = metrics.per_class_report(labels, preds, 5)
    p, rec, f1, support = precision_recall_fscore_support(
        labels, preds, labels=range(5), zero_division=0
    )
    np.testing.assert_allclose([c.precision for c in r], p)
    np.testing.assert_allclose([c.recall for c in r], rec)
    np.testing.assert_allclose([c.f1 for c in r], f1)
    assert [c.support for c in r] == support.tolist()
    cm = metrics.confusion_matrix(labels, preds, 5)
    np.testing.assert_array_equal(cm, sk_confusion(labels, preds, labels=range(5)))
    # macro over the classes that occur, with class 5 of 6 absent everywhere
    macro = metrics.macro_average(metrics.per_class_report(labels, preds, 6))
    sk_p, sk_r, sk_f1, _ = precision_recall_fscore_support(
        labels, preds, average="macro", zero_division=0
    )
    assert (macro.precision, macro.recall, macro.f1) == pytest.approx((sk_p, sk_r, sk_f1))


def test_reliability_and_ece_by_hand() -> None:
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.35, 0.65], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 0])
    # bins (lo, hi] of width 0.1: 0.95 -> bin 9, 0.9 -> bin 8, 0.65 -> bin 6, 0.6 -> bin 5
    # bin 9: conf .95 acc 1 -> gap .05; bin 8: conf .9 acc 0 -> gap .9
    # bin 6: conf .65 acc 1 -> .35; bin 5: conf .6 acc 0 -> .6
    # ECE = (0.05 + 0.9 + 0.35 + 0.6) / 4 = 0.475
    r = metrics.reliability_curve(probs, labels)
    assert r.count == [0, 0, 0, 0, 0, 1, 1, 0, 1, 1]
    assert r.accuracy[8] == 0.0 and r.accuracy[9] == 1.0
    assert r.confidence[5:] == pytest.approx([0.6, 0.65, 0.0, 0.9, 0.95])
    assert r.edges == pytest.approx([i / 10 for i in range(11)])
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.475)


def test_ece_with_shared_bins_by_hand() -> None:
    probs = np.array(
        [
            [0.72, 0.18, 0.10],  # label 0: top .72 right   -> bin 7 (0.7, 0.8]
            [0.78, 0.12, 0.10],  # label 1: top .78 wrong   -> bin 7
            [0.10, 0.75, 0.15],  # label 1: top .75 right   -> bin 7
            [0.30, 0.30, 0.40],  # label 2: top .40 right   -> bin 3 (0.3, 0.4], edge included
            [0.20, 0.30, 0.50],  # label 0: top .50 wrong   -> bin 4 (0.4, 0.5]
        ]
    )
    labels = np.array([0, 1, 1, 2, 0])
    # bin 7: conf (0.72 + 0.78 + 0.75)/3 = 0.75, acc 2/3 -> gap 1/12; weight 3/5 -> 0.05
    # bin 3: conf 0.4, acc 1 -> gap 0.6, weight 1/5 -> 0.12
    # bin 4: conf 0.5, acc 0 -> gap 0.5, weight 1/5 -> 0.10;  ECE = 0.05 + 0.12 + 0.10 = 0.27
    r = metrics.reliability_curve(probs, labels)
    assert r.count == [0, 0, 0, 1, 1, 0, 0, 3, 0, 0]
    assert (r.confidence[7], r.accuracy[7]) == pytest.approx((0.75, 2 / 3))
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.27)
    assert metrics.expected_calibration_error(np.zeros((0, 3)), np.zeros(0)) == 0.0


def test_softmax_and_nll_by_hand() -> None:
    # [1, 2, 3]: e^-2, e^-1, 1 over their sum 1.50321 -> 0.09003, 0.24473, 0.66524
    assert metrics.softmax(np.array([[1.0, 2.0, 3.0]]))[0] == pytest.approx(
        [0.09003, 0.24473, 0.66524], abs=1e-5
    )
    # [0, 2 ln 3] / T=2 = [0, ln 3] -> [1/4, 3/4]
    logits = np.array([[0.0, 2 * math.log(3)]])
    assert metrics.softmax(logits, 2.0)[0] == pytest.approx([0.25, 0.75])
    big = metrics.softmax(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(big).all() and big[0] == pytest.approx([1.0, 0.0, 0.0])
    assert metrics.nll(np.array([[0.0, 0.0]]), np.array([0])) == pytest.approx(math.log(2))
    assert metrics.nll(logits, np.array([1]), 2.0) == pytest.approx(-math.log(0.75))
    assert metrics.nll(np.array([[1000.0, 0.0]]), np.array([1])) == pytest.approx(1000.0)
    with pytest.raises(ValueError):
        metrics.softmax(logits, 0.0)


def test_temperature_has_the_closed_form_optimum_on_two_classes() -> None:
    # ten images with logits [4, 0]: 6 are class 0, 4 class 1. p0 = sigmoid(4/T) and the NLL
    # -(6 ln p0 + 4 ln(1 - p0))/10 is smallest at p0 = 0.6, so 4/T = ln 1.5, T = 9.8652.
    logits = np.tile([4.0, 0.0], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)
    t = metrics.fit_temperature(logits, labels)
    assert t == pytest.approx(4 / math.log(1.5), rel=1e-4)
    # NLL at the optimum: -(0.6 ln 0.6 + 0.4 ln 0.4) = 0.67301; at T=1: p0 = 0.98201,
    # -(0.6 ln 0.98201 + 0.4 ln 0.01799) = 0.01089 + 1.60726 = 1.61815
    assert metrics.nll(logits, labels, t) == pytest.approx(0.67301, abs=1e-5)
    assert metrics.nll(logits, labels, 1.0) == pytest.approx(1.61815, abs=1e-5)
    # under-confident: logits [0.1, 0], 8 of 10 right -> 0.1/T = ln 4, T = 0.072135 < 1
    under = np.tile([0.1, 0.0], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert metrics.fit_temperature(under, labels) == pytest.approx(0.1 / math.log(4), rel=1e-4)
    # always right: the NLL keeps falling as T -> 0, so T stops at the lower bound
    assert metrics.fit_temperature(under, np.zeros(10)) == pytest.approx(0.05, rel=1e-6)
    assert metrics.fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


def _sampled(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): perfectly calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, 4))
    cumulative = metrics.softmax(z).cumsum(axis=1)
    labels = np.minimum((cumulative < rng.random((n, 1))).sum(axis=1), 3)
    return z, labels


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    z, labels = _sampled(6000)
    assert metrics.fit_temperature(z, labels) == pytest.approx(1.0, rel=0.1)
    t = metrics.fit_temperature(3 * z, labels)  # over-confident by 3x
    assert t == pytest.approx(3.0, rel=0.1)
    assert metrics.fit_temperature(3 * z, labels) == t  # deterministic
    assert metrics.fit_temperature(z / 2, labels) == pytest.approx(0.5, rel=0.1)
    assert metrics.nll(3 * z, labels, t) < metrics.nll(3 * z, labels, 1.0)
    before = metrics.expected_calibration_error(metrics.softmax(3 * z), labels)
    after = metrics.expected_calibration_error(metrics.softmax(3 * z, t), labels)
    assert after < before / 2


def test_mistakes_come_most_confidently_wrong_first() -> None:
    probs = np.array([[0.6, 0.4], [0.1, 0.9], [0.9, 0.1], [0.45, 0.55], [0.4, 0.6]])
    labels = np.array([1, 0, 0, 0, 0])
    # wrong: 0 (p_true .4), 1 (p_true .1), 3 (p_true .45), 4 (p_true .4)
    # loss -ln p: 1 -> 2.30, 0 and 4 -> 0.92 (tie keeps image order), 3 -> 0.80
    assert metrics.misclassified_by_loss(probs, labels) == [1, 0, 4, 3]
    assert metrics.misclassified_by_loss(probs[2:3], labels[2:3]) == []
    assert metrics.misclassified_by_loss(np.zeros((0, 2)), np.zeros(0)) == []


def test_not_sure_threshold_separates_confident_right_from_unsure_wrong() -> None:
    # 40 right answers at top 0.9, 10 wrong ones at top 0.55: error 0.2, target 0.1.
    # t <= 0.55 keeps every answer (error 0.2); t = 0.6 keeps the 40 right ones (80%, error 0).
    probs = np.array([[0.9, 0.1]] * 40 + [[0.45, 0.55]] * 10)
    labels = np.zeros(50, dtype=int)
    assert metrics.not_sure_threshold(probs, labels) == 0.6
    probs[40:] = [[0.3, 0.7]]  # the wrong answers now come at 0.7: threshold must pass it
    assert metrics.not_sure_threshold(probs, labels) == 0.75
    assert metrics.not_sure_threshold(probs[:5], labels[:5]) == 0.5  # too few to choose
    assert metrics.not_sure_threshold(probs[:40], labels[:40]) == 0.5  # no mistakes


def test_not_sure_threshold_keeps_at_least_half_the_answers() -> None:
    # 12 right at top 0.9; 18 at top 0.6 of which 8 wrong: error 8/30 = 0.267, target 0.133.
    # t <= 0.6 keeps everything (error 0.267); t = 0.65 would be error-free but keeps 12/30 = 40%.
    probs = np.array([[0.9, 0.1]] * 12 + [[0.6, 0.4]] * 18)
    labels = np.array([0] * 12 + [0] * 10 + [1] * 8)
    assert metrics.not_sure_threshold(probs, labels) == 0.5
    # confidently wrong: 30 right at 0.6, 10 wrong at 0.9 -> no threshold helps
    probs = np.array([[0.6, 0.4]] * 30 + [[0.9, 0.1]] * 10)
    labels = np.array([0] * 30 + [1] * 10)
    assert metrics.not_sure_threshold(probs, labels) == 0.5


def test_evaluation_keeps_accuracy_and_scores_calibration_honestly() -> None:
    z, labels = _sampled(800, seed=1)
    ev = evaluate_logits(["a", "b", "c", "d"], [f"{i}.png" for i in range(800)], 4 * z, labels)
    assert ev.summary.accuracy == pytest.approx((z.argmax(1) == labels).mean())
    assert ev.calibration.temperature == pytest.approx(4.0, rel=0.2)
    assert ev.calibration.ece_after < ev.calibration.ece_before
    worst = ev.wrong_by_loss[0]
    assert worst in ev.cell(int(ev.labels[worst]), int(ev.preds[worst]))


# ------------------------------------------------------------ one definition each, used by all


@pytest.mark.parametrize(("accuracy", "n_val"), [(0.8, 12), (0.5, 100), (0.95, 400), (1.0, 30)])
def test_the_validation_noise_is_one_rule_for_alarms_comparison_and_sweeps(accuracy, n_val) -> None:
    from tl_core.analysis import alarms, comparison
    from tl_core.config import EpochRow

    noise = metrics.validation_noise(accuracy, n_val)
    low, high = metrics.wilson_interval(round(accuracy * n_val), n_val)
    assert noise == max((high - low) / 2, 1 / n_val)
    above, within = accuracy + noise + 1e-9, accuracy + noise * 0.99
    rivals = (above, within)
    found = [alarms.negative_transfer(accuracy, n_val, scratch_accuracy=r) for r in rivals]
    assert found[0] is not None and found[1] is None

    def row(val_accuracy: float) -> EpochRow:
        return EpochRow(1, 10, 1.0, 0.5, 1.0, val_accuracy, 1.0)

    for rival, holds in ((above, False), (within, None)):
        gains = comparison.gains([row(accuracy)], [row(rival)], n_val)
        assert gains[0].holds is holds


@pytest.mark.parametrize(
    ("correct", "total", "small"),
    [
        (0, 0, True),
        (29, 29, True),
        (20, 20, True),
        (30, 60, True),
        (50, 100, False),
        (990, 1000, False),
    ],
)
def test_the_small_sample_rule_is_one_rule_for_the_warning_and_the_alarm(
    correct, total, small
) -> None:
    from tl_core.analysis import alarms

    s = _summary(correct, total)
    assert metrics.is_small_sample(s.total, s.ci_low, s.ci_high) is small
    assert (metrics.small_sample_warning(s) is not None) is small
    if total:
        assert (alarms.too_little_data(total, correct / total) is not None) is small


@pytest.mark.parametrize(
    ("labels", "preds", "names"),
    [
        ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], []),  # nothing missed
        ([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 0], [2, 0]),
        ([0, 1, 1, 1, 1, 2], [1, 0, 0, 1, 1, 2], [0, 1]),
        ([0, 0, 0, 1, 2, 3, 3], [1, 1, 2, 0, 2, 0, 1], [0, 3, 1]),  # ties: more images first
    ],
)
def test_the_weakest_classes_are_one_rule(labels, preds, names) -> None:
    reports = metrics.per_class_report(np.array(labels), np.array(preds), 4)
    assert [c.index for c in metrics.weakest_classes(reports)] == names
    logits = np.eye(4)[preds] * 5
    ev = evaluate_logits(list("abcd"), [f"{i}.png" for i in labels], logits, np.array(labels))
    assert [c.index for c in ev.worst_classes()] == names
