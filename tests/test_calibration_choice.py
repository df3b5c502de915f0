"""Calibration is used only where it helps beyond noise; otherwise the probabilities stay as
trained, and the page, the Try page, the summary and the model card say which are used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tl_core.analysis import metrics
from tl_core.analysis.evaluation import (
    CALIBRATION_FILE,
    KEPT_FEW_MISTAKES,
    KEPT_NOISE,
    KEPT_SHARPENING,
    MIN_SCALING_MISTAKES,
    Calibration,
    card_sections,
    choose_calibration,
    evaluate_logits,
    evaluate_run,
    load_calibration,
)

ROOT = Path(__file__).resolve().parent.parent


def _sampled(n: int, seed: int, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): perfectly calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, k))
    cumulative = metrics.softmax(z).cumsum(axis=1)
    labels = np.minimum((cumulative < rng.random((n, 1))).sum(axis=1), k - 1)
    return z, labels


@pytest.mark.parametrize(
    ("n", "seed", "scale"), [(150, 0, 3), (800, 1, 3), (800, 2, 4), (3000, 3, 2)]
)
def test_an_over_confident_model_is_calibrated(n, seed, scale) -> None:
    z, labels = _sampled(n, seed)
    cal, probs = choose_calibration(scale * z, labels)
    assert cal.used and cal.calibrated and cal.kept_because is None
    assert cal.mistakes >= MIN_SCALING_MISTAKES  # plenty to fit on
    assert cal.temperature == cal.fitted_temperature == pytest.approx(scale, rel=0.25)
    assert cal.gain_ci[0] > 0  # the rule: the whole interval of the gain above 0
    assert cal.ece_after < cal.ece_before
    assert np.allclose(probs, metrics.softmax(scale * z, cal.temperature))
    assert "calibrated" in cal.reason()


@pytest.mark.parametrize(("n", "seed"), [(150, 1), (800, 0), (800, 3), (3000, 0), (3000, 5)])
def test_a_well_calibrated_model_keeps_its_probabilities(n, seed) -> None:
    z, labels = _sampled(n, seed)
    cal, probs = choose_calibration(z, labels)
    assert cal.used is False and not cal.calibrated
    assert cal.temperature == 1.0 and cal.fitted_temperature == pytest.approx(1.0, abs=0.25)
    assert cal.gain_ci[0] <= 0
    assert np.allclose(probs, metrics.softmax(z))
    assert "kept as trained" in cal.reason()


@pytest.mark.parametrize(("n", "seed"), [(800, 3), (3000, 0)])
def test_scaling_that_raises_the_held_out_error_is_not_used(n, seed) -> None:
    # As on the held-out photo run: the scaled (cross-fitted) error is higher than as trained.
    z, labels = _sampled(n, seed)
    cal, _ = choose_calibration(z, labels)
    assert cal.ece_after > cal.ece_before
    assert not cal.calibrated and cal.temperature == 1.0


@pytest.mark.parametrize(
    ("scale", "seed"), [(1.0, s) for s in range(5)] + [(1.5, s) for s in (1, 3, 5, 7)]
)
def test_a_small_noisy_set_is_kept_as_trained_with_the_interval(scale, seed) -> None:
    z, labels = _sampled(30, seed)
    cal, _ = choose_calibration(scale * z, labels)  # 30 images cannot show a small effect
    assert not cal.calibrated and cal.temperature == 1.0 and cal.images == 30
    for value, (low, high) in (
        (cal.ece_before, cal.ece_before_ci),
        (cal.ece_after, cal.ece_after_ci),
    ):
        assert low <= value <= high and high - low > 0.05  # wide: few images
    assert cal.gain_ci[0] <= 0 < cal.gain_ci[1]


@pytest.mark.parametrize("n", [1, 5, 9])
def test_too_few_images_to_cross_fit_are_kept_as_trained(n) -> None:
    z, labels = _sampled(n, 0)
    cal, _ = choose_calibration(5 * z, labels)
    assert not cal.calibrated and cal.temperature == 1.0
    assert "too few" in cal.reason()


def test_no_images() -> None:
    cal, probs = choose_calibration(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    assert not cal.calibrated and cal.temperature == 1.0 and probs.shape == (0, 3)


def test_the_bootstrap_is_seeded() -> None:
    z, labels = _sampled(200, 4)
    assert choose_calibration(z, labels)[0] == choose_calibration(z, labels)[0]


def test_the_paired_bootstrap_matches_a_plain_loop() -> None:
    z, labels = _sampled(120, 6)
    a, b = metrics.softmax(z), metrics.softmax(z, 1.7)
    cmp = metrics.compare_ece(a, b, labels, n_boot=300, seed=3)
    assert cmp.ece_a == pytest.approx(metrics.expected_calibration_error(a, labels))
    rng = np.random.default_rng(3)
    diffs = []
    for _ in range(300):
        idx = rng.integers(0, 120, 120)
        diffs.append(
            metrics.expected_calibration_error(a[idx], labels[idx])
            - metrics.expected_calibration_error(b[idx], labels[idx])
        )
    estimate = cmp.ece_a - cmp.ece_b
    low, high = np.quantile(diffs, [0.025, 0.975]) - (np.mean(diffs) - estimate)
    assert cmp.difference_interval == pytest.approx((min(low, estimate), max(high, estimate)))


# ------------------------------------------- nothing to fit on, or surer than the accuracy allows


def _all_right(n: int, margin: float, seed: int, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose top class is the true one on every image, ahead by about ``margin``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    z = rng.normal(0, 1.0, (n, k))
    others = np.where(np.arange(k) == labels[:, None], -np.inf, z).max(axis=1)
    z[np.arange(n), labels] = others + np.abs(rng.normal(margin, margin / 4, n)) + 1e-3
    return z, labels


def _mean_top(probs: np.ndarray) -> float:
    return float(probs.max(axis=1).mean())


@pytest.mark.parametrize("margin", [6.0, 1.0])  # confident; under-confident (~55% sure)
@pytest.mark.parametrize("n", [5, 10, 50, 200, 500])
def test_a_validation_set_without_mistakes_keeps_its_probabilities(n, margin) -> None:
    # With no mistakes, the loss only falls as T falls: the fit runs to its lower bound
    # (~0.05 to 0.1, every probability ~100%), and every bootstrap resample agrees, so the old rule
    # took it for a gain beyond noise. There is nothing to fit on: T stays 1.
    z, labels = _all_right(n, margin, seed=n)
    cal, probs = choose_calibration(z, labels)
    assert cal.mistakes == 0 and cal.fitted_temperature < 0.2  # the fit sharpens hard
    assert not cal.calibrated and cal.used is False and cal.temperature == 1.0
    assert cal.kept_because == KEPT_FEW_MISTAKES
    assert f"hold only 0 mistakes, too few (under {MIN_SCALING_MISTAKES})" in cal.reason()
    assert "kept as trained" in cal.reason() and "noise" not in cal.reason()
    assert np.allclose(probs, metrics.softmax(z))


def test_the_old_rule_would_have_sharpened_a_perfect_set() -> None:
    # What the bug report saw: the bootstrap alone calls the sharpening a gain.
    z, labels = _all_right(200, 3.0, seed=7)
    cal, _ = choose_calibration(z, labels)
    assert cal.gain_ci[0] > 0 and cal.fitted_temperature < 0.1
    assert cal.temperature == 1.0 and cal.kept_because == KEPT_FEW_MISTAKES


@pytest.mark.parametrize("margin", [6.0, 1.0])
@pytest.mark.parametrize("mistakes", [1, 2, 3, 4])
def test_a_few_mistakes_are_too_few_to_fit_on(mistakes, margin) -> None:
    z, labels = _all_right(200, margin, seed=mistakes)
    labels[:mistakes] = (labels[:mistakes] + 1) % 4  # now wrong, and as sure as the others
    cal, probs = choose_calibration(z, labels)
    assert cal.mistakes == mistakes and cal.fitted_temperature != 1.0
    assert not cal.calibrated and cal.temperature == 1.0
    assert cal.kept_because == KEPT_FEW_MISTAKES
    plural = "" if mistakes == 1 else "s"
    assert f"only {mistakes} mistake{plural}, too few" in cal.reason()
    assert np.allclose(probs, metrics.softmax(z))


@pytest.mark.parametrize(("n", "seed"), [(16, 0), (16, 1), (20, 2), (12, 3)])
def test_a_few_camera_frames_all_right_keep_their_probabilities(n, seed) -> None:
    # The report: two classes, ~80 webcam frames, ~16 of them for validation, none wrong.
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    z = np.zeros((n, 2))
    z[np.arange(n), labels] = rng.normal(3.0, 0.5, n)  # margins ~3: ~95% sure
    cal, probs = choose_calibration(z, labels)
    assert cal.mistakes == 0 and cal.temperature == 1.0 and not cal.calibrated
    assert f"The {n} validation images hold only 0 mistakes" in cal.reason()
    assert _mean_top(probs) == pytest.approx(_mean_top(metrics.softmax(z)))
    assert _mean_top(probs) < 0.99  # not ~100% for everything


@pytest.mark.parametrize(
    ("n", "seed", "scale"), [(300, 1, 0.5), (800, 1, 0.4), (800, 2, 0.6), (3000, 3, 0.5)]
)
def test_an_under_confident_model_is_sharpened_no_further_than_its_accuracy(n, seed, scale) -> None:
    z, labels = _sampled(n, seed)  # calibrated at T = 1, so `scale` < 1 is under-confident
    cal, probs = choose_calibration(scale * z, labels)
    low, high = metrics.wilson_interval(n - cal.mistakes, n)
    assert cal.confidence < low  # measurably less sure than right
    assert cal.calibrated and cal.kept_because is None
    assert cal.fitted_temperature <= cal.temperature < 1.0
    assert cal.temperature == pytest.approx(scale, rel=0.25)
    assert _mean_top(probs) <= high + 1e-9
    assert np.allclose(probs, metrics.softmax(scale * z, cal.temperature))


def _near_tie_mistakes(n: int, seed: int, right_margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, a fifth wrong by a hair: the loss fit sharpens far (T ~ 0.2), since the
    near-ties cost little at any T and the right ones gain."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    wrong = rng.random(n) < 0.2
    margin = np.where(wrong, -rng.uniform(0.0, 0.05, n), rng.normal(right_margin, 0.1, n))
    z = np.zeros((n, 2))
    z[np.arange(n), labels] = margin
    return z, labels


@pytest.mark.parametrize(("n", "seed"), [(100, 0), (100, 1), (400, 0), (400, 3)])
def test_sharpening_is_held_back_to_the_upper_end_of_the_accuracy(n, seed) -> None:
    z, labels = _near_tie_mistakes(n, seed, right_margin=1.0)  # right ones ~73% sure
    cal, probs = choose_calibration(z, labels)
    low, high = metrics.wilson_interval(n - cal.mistakes, n)
    assert cal.confidence < low and cal.calibrated
    assert _mean_top(metrics.softmax(z, cal.fitted_temperature)) > high  # the fit overshoots
    assert cal.fitted_temperature < cal.temperature < 1.0
    assert _mean_top(probs) == pytest.approx(high, abs=1e-6) and _mean_top(probs) <= high
    assert "held back from the fitted" in cal.reason()


@pytest.mark.parametrize(("n", "seed"), [(200, 0), (200, 1), (500, 2)])
def test_sharpening_a_model_as_sure_as_it_is_right_is_refused(n, seed) -> None:
    # The right ones ~95% sure, the wrong ones near-ties: as sure on average as it is right,
    # yet the fit sharpens (T ~ 0.3) and the bootstrap calls that a gain.
    z, labels = _near_tie_mistakes(n, seed, right_margin=3.0)
    cal, probs = choose_calibration(z, labels)
    low, _ = metrics.wilson_interval(n - cal.mistakes, n)
    assert cal.mistakes >= MIN_SCALING_MISTAKES and cal.confidence >= low
    assert cal.fitted_temperature < 0.5 and cal.gain_ci[0] > 0
    assert not cal.calibrated and cal.temperature == 1.0 and cal.kept_because == KEPT_SHARPENING
    reason = cal.reason()
    assert reason.startswith("Temperature scaling would make the model surer than its")
    assert f"right on {n - cal.mistakes} of {n} images, 95% interval" in reason
    assert np.allclose(probs, metrics.softmax(z))


def test_a_gain_within_noise_says_so() -> None:
    z, labels = _sampled(150, 0)
    cal, _ = choose_calibration(0.5 * z, labels)
    assert cal.mistakes >= MIN_SCALING_MISTAKES and cal.kept_because == KEPT_NOISE
    assert "does not lower the calibration error beyond its noise" in cal.reason()


def test_the_new_fields_load_and_old_files_still_do(tmp_path) -> None:
    from dataclasses import asdict

    z, labels = _all_right(50, 3.0, seed=1)
    cal, _ = choose_calibration(z, labels)
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(asdict(cal)))
    assert load_calibration(tmp_path) == cal  # no predictions: read as it is
    old = {"temperature": 1.0, "threshold": 0.5, "used": False, "images": 50}
    old |= {"ece_before": 0.02, "ece_after": 0.03}
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(old))
    loaded = load_calibration(tmp_path)
    assert loaded.kept_because is None and loaded.mistakes is None
    assert "does not lower the calibration error" in loaded.reason()


# ------------------------------------------------------------------ what the outputs say


def _evaluation(scale: float, n: int = 800, seed: int = 1):
    z, labels = _sampled(n, seed)
    return evaluate_logits(["a", "b", "c", "d"], [f"{i}.png" for i in range(n)], scale * z, labels)


def test_the_summary_says_which_probabilities_are_used() -> None:
    kept, scaled = _evaluation(1.0).summary_json(), _evaluation(3.0).summary_json()
    assert kept["probabilities"] == "as trained" and kept["temperature"] == 1.0
    assert scaled["probabilities"] == "calibrated" and scaled["temperature"] > 2
    for summary in (kept, scaled):
        low, high = summary["ece_interval"]
        assert low <= summary["ece"] <= high
        assert {"ece_calibrated", "fitted_temperature", "not_sure_threshold"} <= set(summary)
    json.dumps(kept)  # plain JSON


def test_the_model_card_says_which_probabilities_are_used() -> None:
    kept = card_sections(_evaluation(1.0))["Calibration"]
    assert "kept as trained" in kept and "T = 1.00" in kept and "95% interval" in kept
    assert "the same probabilities as the exported files give" in kept
    scaled = card_sections(_evaluation(3.0))["Calibration"]
    assert "are calibrated" in scaled and "divide the logits by T" in scaled


def _write_predictions(run_dir: Path, logits: np.ndarray, labels: np.ndarray) -> None:
    probs = metrics.softmax(logits)
    rows = [
        {
            "file": f"{['a', 'b', 'c', 'd'][y]}/{i}.png",
            "label": int(y),
            "pred": int(p.argmax()),
            "confidence": float(p.max()),
            "probs": p.tolist(),
            "logits": z.tolist(),
        }
        for i, (z, p, y) in enumerate(zip(logits, probs, labels, strict=True))
    ]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "predictions.json").write_text(
        json.dumps({"classes": ["a", "b", "c", "d"], "rows": rows})
    )


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_the_choice_is_computed_again_the_same_way(tmp_path, scale) -> None:
    z, labels = _sampled(400, 2)
    _write_predictions(tmp_path / "run", scale * z, labels)
    ev = evaluate_run(tmp_path / "run")
    assert ev is not None and ev.calibration.used is (scale > 1)
    assert load_calibration(tmp_path / "run") == ev.calibration
    assert not (tmp_path / "run" / CALIBRATION_FILE).exists()


def test_an_old_calibration_file_is_decided_again_from_the_predictions(tmp_path) -> None:
    z, labels = _sampled(400, 2)
    _write_predictions(tmp_path / "run", z, labels)  # well calibrated
    old = {"temperature": 1.08, "threshold": 0.5, "ece_before": 0.02, "ece_after": 0.03}
    (tmp_path / "run" / CALIBRATION_FILE).write_text(json.dumps(old))
    cal = load_calibration(tmp_path / "run")
    assert cal.used is False and cal.temperature == 1.0
    assert json.loads((tmp_path / "run" / CALIBRATION_FILE).read_text()) == old  # left alone


def _folder_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("scale", "old_file"),
    [
        (1.0, None),
        (3.0, None),
        (1.0, {"temperature": 1.08, "threshold": 0.5}),  # written before "used" was decided
        (3.0, {"temperature": 2.5, "threshold": 0.6, "used": True}),
        (1.0, "[1, 2"),  # damaged
    ],
)
def test_reading_an_evaluation_writes_nothing(tmp_path, scale, old_file) -> None:
    run_dir = tmp_path / "run"
    z, labels = _sampled(200, 4)
    _write_predictions(run_dir, scale * z, labels)
    if old_file is not None:
        text = old_file if isinstance(old_file, str) else json.dumps(old_file)
        (run_dir / CALIBRATION_FILE).write_text(text)
    before = _folder_state(run_dir)
    dir_mtime = run_dir.stat().st_mtime_ns
    for _ in range(2):
        ev = evaluate_run(run_dir)
        card_sections(ev)
        load_calibration(run_dir)
        assert _folder_state(run_dir) == before
    assert run_dir.stat().st_mtime_ns == dir_mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    ("old", "calibrated"),
    [
        ({"temperature": 1.5, "threshold": 0.6, "ece_before": 0.1, "ece_after": 0.03}, True),
        ({"temperature": 1.0, "threshold": 0.5}, False),
        ({"temperature": 1.5, "threshold": 0.6, "a_later_field": 3}, True),
    ],
)
def test_an_old_calibration_file_without_predictions_is_read_as_it_is(
    tmp_path, old, calibrated
) -> None:
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(old))
    cal = load_calibration(tmp_path)
    assert cal.temperature == old["temperature"] and cal.threshold == old["threshold"]
    assert cal.calibrated is calibrated


def test_a_damaged_calibration_file_gives_the_defaults(tmp_path) -> None:
    (tmp_path / CALIBRATION_FILE).write_text("[1, 2")
    assert load_calibration(tmp_path) == Calibration()


# --------------------------------------------------------------------------------- the page


def _calibration_tab(scale: float, n: int, seed: int) -> AppTest:
    def script(scale: float, n: int, seed: int, root: str) -> None:
        import runpy

        import numpy as np

        from tl_core.analysis import metrics
        from tl_core.analysis.evaluation import evaluate_logits

        rng = np.random.default_rng(seed)
        z = rng.normal(0, 2.0, (n, 4))
        cumulative = metrics.softmax(z).cumsum(axis=1)
        labels = np.minimum((cumulative < rng.random((n, 1))).sum(axis=1), 3)
        ev = evaluate_logits(list("abcd"), [f"{i}.png" for i in range(n)], scale * z, labels)
        import tl_ui.runs

        real = tl_ui.runs.pick_run
        tl_ui.runs.pick_run = lambda what: None  # the page's own body draws nothing
        try:
            page = runpy.run_path(f"{root}/app_pages/evaluate.py")
        finally:
            tl_ui.runs.pick_run = real  # the same process runs the other tests
        page["_calibration"](ev)

    at = AppTest.from_function(script, args=(scale, n, seed, str(ROOT)), default_timeout=120)
    return at.run()


@pytest.mark.parametrize(
    ("scale", "n", "seed", "used"), [(3.0, 800, 1, True), (1.0, 800, 3, False), (1.5, 30, 1, False)]
)
def test_the_calibration_tab_says_which_probabilities_the_try_page_uses(
    tmp_path, monkeypatch, scale, n, seed, used
) -> None:
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    at = _calibration_tab(scale, n, seed)
    assert not at.exception
    metrics_ = {m.label: m for m in at.metric}
    assert metrics_["Temperature"].delta == ("used" if used else "not used")
    assert "95% interval" in metrics_["Calibration error as trained"].delta
    assert "95% interval" in metrics_["After calibration"].delta
    captions = " ".join(c.value for c in at.caption)
    if used:
        assert "uses the calibrated probabilities" in captions
        assert at.success and "calibrated" in at.success[0].value
    else:
        assert "uses the probabilities as trained" in captions
        assert any("kept as trained" in i.value for i in at.info)
    assert ("the calibration error itself is uncertain" in captions) is (n < 100)


def test_the_page_helper_leaves_the_run_picker_as_it_was() -> None:
    import tl_ui.runs

    before = tl_ui.runs.pick_run
    _calibration_tab(1.0, 50, 0)
    assert tl_ui.runs.pick_run is before


def _perfect_run_pages() -> AppTest:
    """The Evaluate page's calibration tab and the Try page's note, for a run like the camera
    report's: 16 validation frames of two classes, none wrong."""

    def script(root: str) -> None:
        import runpy

        import numpy as np
        import streamlit as st

        from tl_core.analysis.evaluation import evaluate_logits

        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, 16)
        z = np.zeros((16, 2))
        z[np.arange(16), labels] = rng.normal(3.0, 0.5, 16)
        ev = evaluate_logits(["cup", "pen"], [f"{i}.png" for i in range(16)], z, labels)
        import tl_ui.runs

        real = tl_ui.runs.pick_run
        tl_ui.runs.pick_run = lambda what: None  # the pages' own bodies draw nothing
        try:
            evaluate = runpy.run_path(f"{root}/app_pages/evaluate.py")
            try_it = runpy.run_path(f"{root}/app_pages/try_it.py")
        finally:
            tl_ui.runs.pick_run = real
        evaluate["_calibration"](ev)
        st.caption(try_it["_probabilities_note"](ev.calibration))

    return AppTest.from_function(script, args=(str(ROOT),), default_timeout=120).run()


def test_the_pages_say_a_set_without_mistakes_is_kept_as_trained(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    at = _perfect_run_pages()
    assert not at.exception
    assert {m.label: m for m in at.metric}["Temperature"].delta == "not used"
    why = "The 16 validation images hold only 0 mistakes, too few"
    assert any(why in i.value for i in at.info) and not at.success
    captions = [c.value for c in at.caption]
    note = next(c for c in captions if c.startswith("Probabilities are as trained"))
    assert why in note and "did not lower" not in note and "noise" not in note
    assert any("uses the probabilities as trained" in c for c in captions)
