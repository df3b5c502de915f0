"""The engine on generated images and on the bundled demo set with real weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import make_shapes

from tl_core.data.dataset import import_folder, split_dataset
from tl_core.models.device import plan_compute
from tl_core.training.engine import (
    EpochMetrics,
    QuietCallbacks,
    StepMetrics,
    TrainConfig,
    fit,
    phases,
)

CPU = plan_compute("cpu")


class Recorder(QuietCallbacks):
    def __init__(self, stop_after_steps: int | None = None) -> None:
        self.steps: list[StepMetrics] = []
        self.epochs: list[EpochMetrics] = []
        self.stop_after = stop_after_steps

    def on_step(self, metrics: StepMetrics) -> None:
        self.steps.append(metrics)

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.epochs.append(metrics)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    manifest = import_folder(make_shapes(root / "src"), root / "data")
    return manifest, split_dataset(manifest, 0.25, seed=0)


def test_fine_tune_schedule_trains_the_head_first() -> None:
    assert phases(TrainConfig(trainable_groups=0, epochs=4)) == [(0, 4)]
    assert phases(TrainConfig(trainable_groups=2, epochs=4)) == [(0, 1), (2, 3)]
    assert phases(TrainConfig(trainable_groups=2, epochs=1)) == [(2, 1)]


def test_fit_learns_reports_every_step_and_keeps_the_best(shapes, tmp_path) -> None:
    manifest, split = shapes
    cfg = TrainConfig(
        model="test_efficientnet",
        trainable_groups=6,
        epochs=6,
        lr=5e-3,
        batch_size=8,
        augment="none",
        pretrained=False,
    )
    rec = Recorder()
    result = fit(cfg, split, manifest.root, manifest.classes, tmp_path, rec, plan=CPU)
    assert result.status == "finished" and result.epochs_done == 6
    steps_per_epoch = len(split.train) // 8  # the last, partial batch is dropped
    assert len(rec.steps) == 6 * steps_per_epoch
    assert [m.step for m in rec.steps] == list(range(1, len(rec.steps) + 1))
    assert len(rec.epochs) == 6
    best = max(rec.epochs, key=lambda m: (m.val_accuracy, -m.val_loss))
    assert result.best_epoch == best.epoch and result.val_accuracy == best.val_accuracy
    assert result.val_accuracy > 0.6  # chance is 1/3
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ckpt["meta"]["epoch"] == best.epoch and ckpt["meta"]["classes"] == manifest.classes
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert len(preds["rows"]) == len(split.val)
    acc = np.mean([r["pred"] == r["label"] for r in preds["rows"]])
    assert acc == pytest.approx(result.val_accuracy)


@pytest.mark.parametrize(("epochs", "batch"), [(1, 64), (2, 64), (4, 64), (3, 16)])
def test_very_few_steps_still_train(shapes, tmp_path, epochs, batch) -> None:
    """One batch per epoch and a handful of epochs: no learning-rate schedule breaks."""
    manifest, split = shapes
    cfg = TrainConfig(model="test_efficientnet", epochs=epochs, batch_size=batch, pretrained=False)
    result = fit(cfg, split, manifest.root, manifest.classes, tmp_path, plan=CPU)
    assert result.status == "finished" and result.epochs_done == epochs


def test_stop_ends_within_a_step_and_keeps_the_best_epoch(shapes, tmp_path) -> None:
    manifest, split = shapes
    cfg = TrainConfig(
        model="test_efficientnet", epochs=5, batch_size=4, augment="none", pretrained=False
    )
    per_epoch = len(split.train) // 4
    rec = Recorder(stop_after_steps=per_epoch + 2)
    result = fit(cfg, split, manifest.root, manifest.classes, tmp_path, rec, plan=CPU)
    assert result.status == "stopped"
    assert len(rec.steps) == per_epoch + 2
    assert result.best_epoch == 1 and (tmp_path / "best.pt").exists()


def test_resume_continues_from_the_last_epoch_and_matches_an_uninterrupted_run(
    shapes, tmp_path
) -> None:
    manifest, split = shapes
    cfg = TrainConfig(
        model="test_efficientnet",
        trainable_groups=2,
        epochs=3,
        batch_size=8,
        augment="light",
        pretrained=False,
        seed=3,
    )
    full = Recorder()
    fit(cfg, split, manifest.root, manifest.classes, tmp_path / "full", full, plan=CPU)
    per_epoch = len(full.steps) // 3
    cut = Recorder(stop_after_steps=2 * per_epoch + 1)
    fit(cfg, split, manifest.root, manifest.classes, tmp_path / "cut", cut, plan=CPU)
    rest = Recorder()
    result = fit(
        cfg, split, manifest.root, manifest.classes, tmp_path / "cut", rest, resume=True, plan=CPU
    )
    assert result.status == "finished" and result.epochs_done == 3
    assert [m.epoch for m in rest.epochs] == [3]
    assert rest.epochs[0].val_loss == pytest.approx(full.epochs[2].val_loss, rel=1e-4)


def test_pretrained_features_are_real_a_random_backbone_is_not(demo_dir, tmp_path) -> None:
    """Linear-probe check on the bundled demo set: frozen ImageNet backbone + trained head is
    far above chance (10 classes: 10%); the same with a randomly initialised backbone is not."""
    manifest = import_folder(demo_dir, tmp_path / "demo")
    split = split_dataset(manifest)
    accuracy = {}
    for pretrained in (True, False):
        cfg = TrainConfig(
            model="efficientnet_lite0",
            trainable_groups=0,
            epochs=2,
            lr=1e-2,
            augment="none",
            pretrained=pretrained,
        )
        result = fit(
            cfg, split, manifest.root, manifest.classes, tmp_path / str(pretrained), plan=CPU
        )
        accuracy[pretrained] = result.val_accuracy
    assert accuracy[True] > 0.6, accuracy
    assert accuracy[False] < 0.3, accuracy
    assert accuracy[True] - accuracy[False] > 0.35, accuracy
