"""The trained model outside training: same predictions as the engine's, and Grad-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tl_core.catalog import DataConfig
from tl_core.data import import_folder, split_dataset
from tl_core.device import plan_compute
from tl_core.engine import TrainConfig, fit
from tl_core.errors import DataError, RunError
from tl_core.gradcam import heatmap, overlay
from tl_core.inference import TrainedModel, load_trained
from tl_core.inputs import Normalize
from tl_core.results import load_predictions

CPU = plan_compute("cpu")


def _patches(root, per_class: int = 16, size: int = 96):
    """Class decided only by the colour of a square at a random place: red or blue."""
    rng = np.random.default_rng(0)
    for label, colour in (("red", (230, 30, 30)), ("blue", (30, 30, 230))):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = rng.normal(120, 20, (size, size, 3))
            y, x = rng.integers(0, size - 32, 2)
            img[y : y + 32, x : x + 32] = colour
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def patches_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    manifest = import_folder(_patches(root / "src"), root / "data")
    split = split_dataset(manifest, 0.25, seed=0)
    cfg = TrainConfig(model="efficientnet_lite0", epochs=20, batch_size=8, seed=0)
    result = fit(cfg, split, manifest.root, manifest.classes, root / "run", plan=CPU)
    assert result.val_accuracy >= 0.85
    return manifest, root / "run"


def test_a_loaded_run_predicts_what_the_engine_scored(patches_run) -> None:
    manifest, run_dir = patches_run
    preds = load_predictions(run_dir)
    trained = load_trained(run_dir, plan=CPU)
    probs = trained.predict([manifest.root / f for f in preds.files])
    assert probs.argmax(1).tolist() == preds.preds
    assert np.abs(probs - np.array(preds.probs)).max() < 5e-3  # bf16 inference both ways
    softer = trained.predict([manifest.root / preds.files[0]], temperature=3.0)
    assert softer.max() < probs[0].max()


def test_unreadable_pictures_and_missing_models_are_explained(patches_run, tmp_path) -> None:
    _, run_dir = patches_run
    trained = load_trained(run_dir, plan=CPU)
    with pytest.raises(DataError, match=r"notes\.jpg: not an image"):
        trained.predict([b"just some text"], names=["notes.jpg"])
    with pytest.raises(RunError, match="no trained model"):
        load_trained(tmp_path)


def test_grad_cam_looks_at_the_square_that_decides_the_class(patches_run) -> None:
    manifest, run_dir = patches_run
    trained = load_trained(run_dir, plan=CPU)
    ratios = []
    for item in [i for i in manifest.items if i.label == "red"][:3] + [
        i for i in manifest.items if i.label == "blue"
    ][:3]:
        heat = heatmap(trained, manifest.root / item.file)
        assert trained.classes[heat.target_class] == item.label
        crop = heat.crop.astype(int)
        square = np.abs(crop[..., 0] - crop[..., 2]) > 120  # where the coloured square is
        ratios.append(heat.values[square].mean() / max(heat.values.mean(), 1e-6))
        assert overlay(heat).size == heat.values.shape[::-1]
    # A map blind to the square gives about 1.0 (measured: about 3.3 on red, 1.2-1.7 on blue).
    assert min(ratios) > 1.0 and float(np.median(ratios)) > 1.5, ratios


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "test_convnext", "test_vit"])
def test_grad_cam_works_for_every_family(name: str) -> None:
    net = timm.create_model(name, num_classes=3).eval()
    cfg = DataConfig.of(net)
    trained = TrainedModel(
        torch.nn.Sequential(Normalize(cfg), net).eval(), ["a", "b", "c"], cfg, name, CPU
    )
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 90, 3), np.uint8))
    heat = heatmap(trained, picture, target_class=2)
    assert heat.values.shape == tuple(cfg.input_size[-2:])
    assert heat.values.min() >= 0.0 and heat.values.max() <= 1.0
    assert heat.target_class == 2 and 0.0 < heat.probability < 1.0
