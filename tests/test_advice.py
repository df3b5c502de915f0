"""Freeze advice: the rule of thumb, its reasons, and the sweep that measures it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tl_core import service
from tl_core.analysis.advice import (
    SWEEP_EPOCHS,
    depth_label,
    freeze_advice,
    sweep_configs,
    sweep_depths,
    sweep_reading,
)
from tl_core.runs.store import Store
from tl_core.training.engine import TrainConfig


def test_few_everyday_photos_train_only_the_head() -> None:
    advice = freeze_advice(60, 3, 8, head_start_accuracy=0.95, chance=1 / 3, domain_level="close")
    assert advice.trainable_groups == 0
    assert advice.reason.startswith("Few images (20 per class)")
    assert "train only the new last layer" in advice.reason
    assert "95% sorted right before any training; domain gauge: close" in advice.reason


def test_many_images_unlike_photos_train_everything() -> None:
    advice = freeze_advice(5000, 10, 8, head_start_accuracy=0.3, chance=0.1, domain_level="far")
    assert advice.trainable_groups == 8
    assert "let the whole network learn" in advice.reason


@pytest.mark.parametrize("level", ["close", "some distance", "far", None])
def test_more_images_never_freeze_more(level) -> None:
    depths = [
        freeze_advice(n, 10, 8, 0.6, 0.1, level).trainable_groups for n in (50, 400, 1000, 4000)
    ]
    assert depths == sorted(depths)


@pytest.mark.parametrize("n_train", [100, 800, 5000])
def test_images_farther_from_photos_never_freeze_more(n_train) -> None:
    by_fit = [
        freeze_advice(n_train, 10, 8, acc, 0.1, level).trainable_groups
        for acc, level in ((0.95, "close"), (0.6, "some distance"), (0.2, "far"))
    ]
    assert by_fit == sorted(by_fit) and by_fit[0] < by_fit[-1]


def test_without_the_head_start_the_data_size_still_speaks() -> None:
    advice = freeze_advice(2000, 4, 5)  # a model not downloaded yet: nothing measured
    assert 0 < advice.trainable_groups <= 5
    assert "sorted right" not in advice.reason


@pytest.mark.parametrize("n_backbone", [1, 2, 5, 8, 13])
def test_sweep_depths_hold_the_floor_the_suggestion_and_a_deeper_one(n_backbone) -> None:
    for suggested in range(n_backbone + 1):
        depths = sweep_depths(suggested, n_backbone)
        assert depths == tuple(sorted(set(depths)))
        assert 0 in depths and suggested in depths
        assert all(0 <= d <= n_backbone for d in depths)
        assert 2 <= len(depths) <= 3


def test_sweep_configs_are_short_runs_with_one_id() -> None:
    cfg = TrainConfig(epochs=20, lr=0.005, augment="light")
    raws = sweep_configs(cfg, (0, 2, 4))
    assert [r["trainable_groups"] for r in raws] == [0, 2, 4]
    assert {r["epochs"] for r in raws} == {SWEEP_EPOCHS}
    assert len({r["sweep"] for r in raws}) == 1
    assert all(r["lr"] == 0.005 and r["augment"] == "light" for r in raws)
    assert sweep_configs(TrainConfig(epochs=2), (0, 1))[0]["epochs"] == 2


def _finish(store: Store, run_id: str, accuracy: float, n_val: int) -> None:
    run = store.job(run_id)
    assert run is not None
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    rows = [{"file": f"{i}.png"} for i in range(n_val)]
    (Path(run.run_dir) / "predictions.json").write_text(json.dumps({"classes": [], "rows": rows}))
    store.update_job(run_id, status="finished", result={"val_accuracy": accuracy, "seconds": 3.0})


def test_the_newest_sweep_is_read_back_and_judged_against_the_noise(tmp_path) -> None:
    store = Store(tmp_path)
    project = store.create_project()
    old = sweep_configs(TrainConfig(), (0, 1))
    new = sweep_configs(TrainConfig(), (0, 1, 3))
    ids = [store.create_job(project.id, raw, tmp_path).id for raw in (*old, *new)]
    points = service.latest_sweep(store.runs(project.id))
    assert [p.trainable_groups for p in points] == [0, 1, 3]
    assert sweep_reading(points, 8) is None  # nothing finished yet
    for run_id, acc in zip(ids[2:], (0.60, 0.85, 0.83), strict=True):
        _finish(store, run_id, acc, 400)
    points = service.latest_sweep(store.runs(project.id))
    assert [p.n_val for p in points] == [400, 400, 400]
    reading = sweep_reading(points, 8)
    assert reading is not None
    assert reading.startswith("Best in this sweep: last 1 group (85%)")
    assert "last 3 groups (83%) next" in reading and "within the validation set's noise" in reading
    _finish(store, ids[4], 0.70, 400)
    reading = sweep_reading(service.latest_sweep(store.runs(project.id)), 8)
    assert reading is not None and "larger than the validation set's noise" in reading


def test_depth_labels_match_the_slider() -> None:
    assert [depth_label(k, 4) for k in range(5)] == [
        "only the new head",
        "last 1 group",
        "last 2 groups",
        "last 3 groups",
        "everything",
    ]


@pytest.mark.parametrize(
    ("k", "label"), [(0, "only the new head"), (1, "last 1 group"), (7, "last 7 groups")]
)
def test_the_depth_wording_works_without_the_group_count(k, label) -> None:
    assert depth_label(k) == label  # a run's label knows the depth but not the model's groups
