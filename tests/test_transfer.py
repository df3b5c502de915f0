"""What frozen features already know: head start, LogME, learning curve, ranking, domain gauge."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tl_core.analysis import transfer
from tl_core.analysis.transfer import (
    Features,
    LearningCurve,
    domain_gauge,
    frozen_features,
    head_start,
    learning_curve,
    logme,
    offline_models,
    recommend,
)
from tl_core.data.dataset import DatasetManifest, Split, import_folder, split_dataset
from tl_core.models.catalog import get_spec

BUNDLED = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _demo_subset(demo_dir: Path, dest: Path, train: int, val: int) -> DatasetManifest:
    """The first ``train`` training and ``val`` validation images of each demo class."""
    src = dest.with_name(dest.name + "-src")
    for subset, n in (("train", train), ("val", val)):
        for folder in sorted((demo_dir / subset).iterdir()):
            (src / subset / folder.name).mkdir(parents=True)
            for f in sorted(folder.iterdir())[:n]:
                shutil.copy(f, src / subset / folder.name / f.name)
    return import_folder(src, dest)


@pytest.fixture(scope="module")
def demo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DatasetManifest:
    """12 training and 5 validation images per demo class (170 images, 10 classes)."""
    return _demo_subset(demo_dir, tmp_path_factory.mktemp("transfer") / "demo", 12, 5)


@pytest.fixture(scope="module")
def demo_features(demo: DatasetManifest) -> Features:
    return frozen_features(demo, split_dataset(demo), "efficientnet_lite0")


def _synthetic(n_train: int, n_val: int, classes: int, dim: int, seed: int = 0) -> Features:
    """Features of ``classes`` well-separated clusters, balanced, training rows first."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(n_train) % classes, np.arange(n_val) % classes])
    centres = rng.normal(size=(classes, dim)) * 3
    vectors = (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32)
    return Features(
        model_key="synthetic",
        pretrained=True,
        classes=[f"c{i}" for i in range(classes)],
        files=[f"{i}.png" for i in range(len(labels))],
        vectors=vectors,
        labels=labels.astype(np.int64),
        n_train=n_train,
        entropy=None,
        imagenet_top=None,
        seconds=0.0,
        from_cache=False,
    )


def test_pretrained_features_know_the_demo_classes_random_ones_much_less(
    demo: DatasetManifest, demo_features: Features
) -> None:
    split = split_dataset(demo)
    pretrained = head_start(demo_features)
    random = head_start(frozen_features(demo, split, "efficientnet_lite0", pretrained=False))
    print("head start pretrained", pretrained, "random", random)
    assert not pretrained.cross_validated and pretrained.images == 50
    assert pretrained.chance == pytest.approx(0.1) and pretrained.majority == pytest.approx(0.1)
    assert pretrained.ncm_accuracy > 0.5 and pretrained.knn_accuracy > 0.5
    # Random convolutions keep some pixel structure (Fashion-MNIST is easy at pixel level), so
    # they stay above chance, but far below the pretrained features.
    assert random.ncm_accuracy < pretrained.ncm_accuracy - 0.15
    low, high = pretrained.ncm_ci
    assert low < pretrained.ncm_accuracy < high
    assert f"{pretrained.ncm_accuracy:.0%}" in pretrained.sentence
    assert "chance: 10%" in pretrained.sentence and "validation images" in pretrained.sentence
    assert "untrained" in random.sentence


def test_features_are_cached_per_image_and_reused(
    demo: DatasetManifest, demo_features: Features, monkeypatch: pytest.MonkeyPatch
) -> None:
    split = split_dataset(demo)
    assert demo_features.vectors.dtype == np.float32
    assert demo_features.vectors.shape == (170, 1280) and demo_features.n_train == 120
    assert demo_features.entropy is not None and demo_features.entropy.shape == (170,)
    assert ((demo_features.entropy > 0) & (demo_features.entropy < 1)).all()
    cached = list((demo.root / "cache").glob("features-efficientnet_lite0-pretrained-*.npz"))
    assert len(cached) == 1

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran again")

    monkeypatch.setattr(transfer, "create_model", no_model)
    again = frozen_features(demo, split, "efficientnet_lite0")
    assert again.from_cache and np.array_equal(again.vectors, demo_features.vectors)
    swapped = frozen_features(demo, Split(train=split.val, val=split.train), "efficientnet_lite0")
    assert swapped.n_train == 50
    assert np.array_equal(swapped.val_x, demo_features.train_x)
    assert swapped.files[:50] == demo_features.files[120:]


def test_few_validation_images_are_cross_validated() -> None:
    tiny = head_start(_synthetic(n_train=24, n_val=6, classes=3, dim=16))
    assert tiny.cross_validated and tiny.folds == 5 and tiny.images == 30
    assert "each scored while left out" in tiny.sentence
    assert tiny.ncm_accuracy > 0.9  # separable clusters
    enough = head_start(_synthetic(n_train=60, n_val=30, classes=3, dim=16))
    assert not enough.cross_validated and enough.folds == 0 and enough.images == 30


def test_logme_ranks_separable_features_above_random_ones_in_any_order() -> None:
    separable = _synthetic(n_train=200, n_val=0, classes=4, dim=64)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=separable.vectors.shape)
    good, bad = logme(separable.vectors, separable.labels), logme(noise, separable.labels)
    assert good > bad + 0.2
    order = rng.permutation(len(separable.labels))
    assert logme(separable.vectors[order], separable.labels[order]) == pytest.approx(good, 1e-6)
    wide = _synthetic(n_train=40, n_val=0, classes=4, dim=128)  # fewer images than dimensions
    assert logme(wide.vectors, wide.labels) > logme(rng.normal(size=(40, 128)), wide.labels)


def test_learning_curve_rises_on_the_demo_and_reads_plainly(demo_features: Features) -> None:
    curve = learning_curve(demo_features)
    print("learning curve", curve, curve.reading())
    assert curve.fractions == [0.25, 0.5, 0.75, 1.0]
    assert curve.train_images == [30, 60, 90, 120]  # 3, 6, 9 and 12 per class
    assert curve.accuracies[-1] > curve.accuracies[0]
    assert all(np.diff(curve.accuracies) >= -0.05)
    assert "of your images" in curve.reading()
    rising = LearningCurve([0.25, 0.5, 0.75, 1.0], [0.5, 0.6, 0.66, 0.72], [0.0] * 4, [1] * 4, 9)
    flat = LearningCurve([0.25, 0.5, 0.75, 1.0], [0.5, 0.8, 0.81, 0.8], [0.0] * 4, [1] * 4, 9)
    assert rising.reading().startswith("Accuracy still rises by 6 points from 75% to 100%")
    assert "will help little" in flat.reading()


def test_recommend_ranks_the_bundled_models(demo_dir: Path, tmp_path: Path) -> None:
    assert set(BUNDLED) <= set(offline_models())
    small = _demo_subset(demo_dir, tmp_path / "demo", 4, 3)
    seen: set[str] = set()
    ranking = recommend(
        small, split_dataset(small), keys=BUNDLED, progress=lambda key, d, t: seen.add(key)
    )
    print("recommend", ranking)
    assert [r.rank for r in ranking] == [1, 2, 3] and {r.key for r in ranking} == set(BUNDLED)
    assert seen == set(BUNDLED)
    scores = [(r.probe_accuracy, r.logme) for r in ranking]
    assert scores == sorted(scores, reverse=True)
    for r in ranking:
        spec = get_spec(r.key)
        assert (r.title, r.params_m) == (spec.title, spec.params_m)
        assert r.images_per_s == spec.images_per_s
        assert r.probe_accuracy > 0.3 and r.ncm_accuracy > 0.3  # chance is 0.1
        assert np.isfinite(r.logme) and r.seconds > 0 and r.weights == "ready"
        assert not r.cross_validated


def test_domain_gauge_puts_generated_noise_farther_than_the_demo(
    demo: DatasetManifest, demo_features: Features, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "src" / f"noise{c}").mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "src" / f"noise{c}" / f"{i}.png")
    noise = import_folder(tmp_path / "src", tmp_path / "noise")
    far = domain_gauge(frozen_features(noise, split_dataset(noise), "efficientnet_lite0"))
    fashion = domain_gauge(demo_features)
    print("domain gauge demo", fashion, "noise", far)
    assert far.mean_entropy > fashion.mean_entropy + 0.1
    assert far.level == "far" and fashion.level != "far"
    most, least = fashion.most_like_imagenet, fashion.least_like_imagenet
    assert len(most) == len(least) == 3
    assert most[-1].entropy <= fashion.mean_entropy <= least[-1].entropy
    assert {e.file for e in most + least} <= set(demo_features.files)
    assert all(e.imagenet_class for e in most)
    random = frozen_features(demo, split_dataset(demo), "efficientnet_lite0", pretrained=False)
    with pytest.raises(ValueError, match="ImageNet"):
        domain_gauge(random)


def test_domain_gauge_gives_no_verdict_where_its_cut_offs_were_not_measured(
    demo_features: Features,
) -> None:
    from dataclasses import replace

    from tl_core.analysis.alarms import domain_mismatch

    # The same entropies, as if from ResNet-50 (a BCE-trained model whose scale differs).
    other = domain_gauge(replace(demo_features, model_key="resnet50"))
    assert other.level is None and "no verdict" in other.sentence
    assert other.mean_entropy == domain_gauge(demo_features).mean_entropy
    assert domain_mismatch(other.level, 0.99) is None
