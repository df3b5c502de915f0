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
    StepRow,
    TrainConfig,
    fit,
    phases,
)

CPU = plan_compute("cpu")


class Recorder(QuietCallbacks):
    def __init__(self, stop_after_steps: int | None = None) -> None:
        self.steps: list[StepRow] = []
        self.epochs: list[EpochMetrics] = []
        self.stop_after = stop_after_steps

    def on_step(self, metrics: StepRow) -> None:
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


# ------------------------------------------------------------- TrainState and checkpoints


def _tiny_cfg(**kw) -> TrainConfig:
    base = dict(
        model="test_efficientnet",
        trainable_groups=2,
        epochs=3,
        batch_size=8,
        augment="light",
        pretrained=False,
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


def test_train_state_round_trips_through_last_and_best(shapes, tmp_path) -> None:
    from tl_core.training import checkpoint
    from tl_core.training.checkpoint import TrainState

    manifest, split = shapes
    result = fit(_tiny_cfg(), split, manifest.root, manifest.classes, tmp_path, plan=CPU)
    for name in (checkpoint.BEST, checkpoint.LAST):
        state = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        assert tuple(state) == checkpoint.KEYS[name]  # the schema old runs were written in
    best = checkpoint.load(tmp_path / checkpoint.BEST)
    assert best["meta"]["epoch"] == result.best_epoch
    assert best["meta"]["classes"] == manifest.classes
    import timm

    model = timm.create_model("test_efficientnet", num_classes=len(manifest.classes))
    gen = torch.Generator()
    state = TrainState.resume(tmp_path / checkpoint.LAST, model, gen, best["meta"])
    assert (state.epoch, state.best_epoch) == (3, result.best_epoch)
    assert state.phase_start == 1 and state.step > 0  # the schedule's second phase
    torch.testing.assert_close(
        model.state_dict(), checkpoint.load(tmp_path / checkpoint.LAST)["model"]
    )


@pytest.mark.parametrize("drop", ["rng", "optimizer", "best_epoch", "meta"])
def test_a_last_checkpoint_missing_a_key_is_refused_in_one_sentence(shapes, tmp_path, drop) -> None:
    from tl_core.errors import CheckpointError
    from tl_core.training import checkpoint

    manifest, split = shapes
    cfg = _tiny_cfg(epochs=1, trainable_groups=0)
    fit(cfg, split, manifest.root, manifest.classes, tmp_path, plan=CPU)
    last = tmp_path / checkpoint.LAST
    state = torch.load(last, map_location="cpu", weights_only=True)
    del state[drop]
    torch.save(state, last)
    with pytest.raises(CheckpointError, match="cannot be read") as err:
        fit(cfg, split, manifest.root, manifest.classes, tmp_path, resume=True, plan=CPU)
    assert "resuming" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("trainable", "cache"), [(0, True), (2, True), (2, False)])
def test_layer_groups_are_computed_once_per_run(shapes, tmp_path, monkeypatch, trainable, cache):
    from tl_core.models import freezing, stages
    from tl_core.training import engine

    calls = []
    real = freezing.layer_groups

    def counted(model):
        calls.append(1)
        return real(model)

    for module in (freezing, stages, engine):
        monkeypatch.setattr(module, "layer_groups", counted)
    manifest, split = shapes
    cfg = _tiny_cfg(trainable_groups=trainable, cache=cache)
    result = fit(cfg, split, manifest.root, manifest.classes, tmp_path, plan=CPU)
    assert result.status == "finished"
    assert len(calls) == 1


def test_saving_the_best_is_a_callback_beside_the_users(shapes, tmp_path) -> None:
    """The engine's checkpoint callback runs before the user's: at the end of a phase the
    user's on_epoch finds best.pt and last.pt already written for that epoch."""
    from tl_core.training import checkpoint

    manifest, split = shapes
    seen = []

    class Watch(Recorder):
        def on_epoch(self, metrics: EpochMetrics) -> None:
            super().on_epoch(metrics)
            if metrics.epoch in (1, 3):  # the ends of the two phases
                best = checkpoint.load(tmp_path / checkpoint.BEST)["meta"]["epoch"]
                last = checkpoint.load(tmp_path / checkpoint.LAST)["epoch"]
                expected = max(m.epoch for m in self.epochs if m.is_best)
                seen.append((best, last) == (expected, metrics.epoch))

    fit(_tiny_cfg(), split, manifest.root, manifest.classes, tmp_path, Watch(), plan=CPU)
    assert seen == [True, True]
