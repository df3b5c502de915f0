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
    assert cal.used and cal.calibrated
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
            page = runpy.run_path(f"{root}/pages/evaluate.py")
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
