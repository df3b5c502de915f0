"""Each alarm fires on a constructed case and stays quiet on a healthy one."""

from __future__ import annotations

import shutil

from tl_core.analysis import alarms
from tl_core.config import EpochRow
from tl_core.data.dataset import import_folder, split_dataset
from tl_core.models.device import plan_compute
from tl_core.models.facts import model_info
from tl_core.training.engine import EpochMetrics, QuietCallbacks, TrainConfig, fit


def _epochs(train_acc, val_acc, train_loss, val_loss) -> list[EpochRow]:
    return [
        EpochRow(i + 1, 10 * (i + 1), lo, a, vl, va, float(i + 1))
        for i, (a, va, lo, vl) in enumerate(
            zip(train_acc, val_acc, train_loss, val_loss, strict=True)
        )
    ]


def test_overfitting_by_accuracy_gap_or_rising_validation_loss() -> None:
    healthy = _epochs([0.5, 0.7, 0.8], [0.55, 0.7, 0.78], [1.2, 0.8, 0.6], [1.1, 0.8, 0.65])
    assert alarms.overfitting(healthy) is None
    gap = _epochs([0.6, 0.9, 1.0], [0.55, 0.6, 0.62], [1.0, 0.4, 0.1], [1.0, 0.9, 0.9])
    alarm = alarms.overfitting(gap)
    assert alarm is not None and "100%" in alarm.explanation and "62%" in alarm.explanation
    rising = _epochs(
        [0.6, 0.7, 0.75, 0.8, 0.82],
        [0.6, 0.7, 0.7, 0.7, 0.7],
        [1.0, 0.7, 0.5, 0.4, 0.3],
        [1.0, 0.6, 0.7, 0.8, 0.9],
    )
    alarm = alarms.overfitting(rising)
    assert alarm is not None and "since epoch 2" in alarm.explanation
    assert alarms.overfitting(rising[:3]) is None  # one epoch of rise is not a trend yet


def test_negative_transfer_only_beyond_the_noise() -> None:
    assert alarms.negative_transfer(0.80, 200, scratch_accuracy=0.70) is None
    assert alarms.negative_transfer(0.80, 200, scratch_accuracy=0.82) is None  # within noise
    alarm = alarms.negative_transfer(0.60, 200, scratch_accuracy=0.85)
    assert alarm is not None and "from scratch reached 85%" in alarm.explanation
    alarm = alarms.negative_transfer(0.60, 200, frozen_accuracy=0.80)
    assert alarm is not None and "frozen pretrained features" in alarm.explanation


def test_too_little_data_and_domain_mismatch() -> None:
    assert alarms.too_little_data(1000, 0.8) is None
    alarm = alarms.too_little_data(12, 0.75)
    assert alarm is not None and "With 12 validation images" in alarm.explanation
    alarm = alarms.too_little_data(200, 0.8, differences=[0.02])
    assert alarm is not None
    assert "2% between the results shown are within that noise" in alarm.explanation
    alarm = alarms.too_little_data(200, 0.84, differences=[0.005])
    assert alarm is not None and "0.5% between the results" in alarm.explanation
    assert alarms.domain_mismatch("close", 0.3) is None
    assert alarms.domain_mismatch("far", 0.9) is not None


class _Epochs(QuietCallbacks):
    def __init__(self) -> None:
        self.rows: list[EpochRow] = []

    def on_epoch(self, m: EpochMetrics) -> None:
        self.rows.append(m)  # the engine's epoch event is a stored row (and is_best)


def test_a_real_overfit_fires_and_a_healthy_run_does_not(demo_dir, tmp_path) -> None:
    """All layers for many epochs on four images per class overfits; the default head-only
    run on the whole demo set does not."""
    few = tmp_path / "few"
    for split in ("train", "val"):
        for cls in sorted((demo_dir / split).iterdir())[:4]:
            dest = few / split / cls.name
            dest.mkdir(parents=True)
            for f in sorted(cls.iterdir())[: 4 if split == "train" else 10]:
                shutil.copy(f, dest / f.name)
    cpu = plan_compute("cpu")
    results = {}
    for name, folder, groups, epochs in (("few", few, None, 10), ("healthy", demo_dir, 0, 3)):
        manifest = import_folder(folder, tmp_path / f"data-{name}")
        split = split_dataset(manifest)
        if groups is None:  # everything learns
            groups = model_info("efficientnet_lite0", len(manifest.classes)).n_backbone
        cfg = TrainConfig(
            model="efficientnet_lite0",
            trainable_groups=groups,
            epochs=epochs,
            batch_size=8 if name == "few" else 32,
        )
        log = _Epochs()
        fit(cfg, split, manifest.root, manifest.classes, tmp_path / name, log, plan=cpu)
        results[name] = log.rows
    assert alarms.overfitting(results["few"]) is not None, results["few"][-1]
    assert alarms.overfitting(results["healthy"]) is None, results["healthy"][-1]
