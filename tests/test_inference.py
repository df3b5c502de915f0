"""The trained model outside training: the engine's own predictions again, and Grad-CAM."""

from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tl_core.analysis.gradcam import heatmap, overlay
from tl_core.analysis.results import load_predictions
from tl_core.data.dataset import import_folder, split_dataset
from tl_core.errors import DataError, RunError
from tl_core.models.catalog import DataConfig, create_model, get_spec
from tl_core.models.device import plan_compute
from tl_core.training.engine import TrainConfig, fit
from tl_core.training.inference import TrainedModel, load_trained
from tl_core.training.inputs import Normalize

CPU = plan_compute("cpu")  # bf16 inference on CPUs with bf16 units, else fp32
COLOURS = {"red": (230, 30, 30), "blue": (30, 30, 230)}


def _squares(root, per_class: int = 16, size: int = 96, side: int = 32):
    """The class is only the colour of a square at a random place, on grey noise."""
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = rng.normal(120, 20, (size, size, 3))
            y, x = rng.integers(8, size - side - 8, 2)  # inside the centre crop
            img[y : y + side, x : x + side] = colour
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def squares_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    manifest = import_folder(_squares(root / "src"), root / "data")
    split = split_dataset(manifest, 0.25, seed=0)
    cfg = TrainConfig(model="efficientnet_lite0", epochs=20, batch_size=8, seed=0)
    result = fit(cfg, split, manifest.root, manifest.classes, root / "run", plan=CPU)
    assert result.val_accuracy == 1.0
    return manifest, root / "run"


def test_a_loaded_run_predicts_what_the_engine_scored(squares_run) -> None:
    manifest, run_dir = squares_run
    preds = load_predictions(run_dir)
    trained = load_trained(run_dir)  # default: fp32, as the engine's final scores
    assert trained.plan.amp_dtype is None
    assert trained.model_key == "efficientnet_lite0" and trained.classes == ["blue", "red"]
    probs = trained.predict([manifest.root / f for f in preds.files])
    assert probs.shape == (len(preds.files), 2)
    assert probs.argmax(1).tolist() == preds.preds
    # Measured 5e-7 (the 6 decimals of predictions.json); bf16 against fp32 differs by up to
    # 0.05, which is why both the engine's final scores and loaded models use fp32.
    assert np.abs(probs - np.array(preds.probs)).max() < 2e-3
    softer = trained.predict([manifest.root / preds.files[0]], temperature=3.0)
    assert softer.max() < probs[0].max()


def _exif_rotated_png(upright: Image.Image) -> bytes:
    """The picture stored lying on its side, with EXIF saying "rotate 90° clockwise"."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, "PNG", exif=exif)
    return buf.getvalue()


def test_pictures_are_read_upright_and_in_rgb_like_imports(squares_run) -> None:
    _, run_dir = squares_run
    trained = load_trained(run_dir, plan=CPU)
    upright = Image.new("RGB", (300, 200), (20, 20, 20))
    upright.paste((240, 240, 240), (0, 0, 150, 200))  # bright left half
    expected = trained.tensor(upright)
    stored = _exif_rotated_png(upright)
    assert torch.equal(trained.tensor(stored), expected)
    assert torch.equal(trained.tensor(Image.open(io.BytesIO(stored))), expected)
    grey = trained.tensor(upright.convert("L"))
    assert grey.shape == expected.shape and torch.equal(grey[0], grey[2])


def test_unreadable_pictures_and_missing_models_are_explained(squares_run, tmp_path) -> None:
    _, run_dir = squares_run
    trained = load_trained(run_dir, plan=CPU)
    with pytest.raises(DataError, match=r"notes\.jpg: not an image"):
        trained.predict([b"just some text"], names=["notes.jpg"])
    with pytest.raises(DataError, match=r"picture 2: empty file"):
        trained.predict([_exif_rotated_png(Image.new("RGB", (9, 9))), b""])
    (tmp_path / "cut.jpg").write_bytes(_exif_rotated_png(Image.new("RGB", (99, 99)))[:60])
    with pytest.raises(DataError, match=r"cut\.jpg: image is damaged or cut off"):
        trained.predict([tmp_path / "cut.jpg"])
    with pytest.raises(DataError, match=r"gone\.png: file not found"):
        trained.predict([tmp_path / "gone.png"])
    with pytest.raises(RunError, match=r"no trained model yet .*best\.pt is missing"):
        load_trained(tmp_path)
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match=r"best\.pt cannot be read"):
        load_trained(tmp_path)


def _square_region(crop: np.ndarray, colour: tuple[int, int, int], margin: int = 16):
    """The coloured square's box in the crop, widened by half a 7x7 feature cell."""
    ys, xs = np.nonzero(np.abs(crop.astype(int) - colour).sum(-1) < 60)
    y0, x0 = max(ys.min() - margin, 0), max(xs.min() - margin, 0)
    region = np.zeros(crop.shape[:2], bool)
    region[y0 : ys.max() + margin + 1, x0 : xs.max() + margin + 1] = True
    return region


def test_grad_cam_looks_at_the_square_that_decides_the_class(squares_run) -> None:
    manifest, run_dir = squares_run
    trained = load_trained(run_dir, plan=CPU)
    ratios, shifted = [], []
    for label, colour in COLOURS.items():
        for item in [i for i in manifest.items if i.label == label][:4]:
            heat = heatmap(trained, manifest.root / item.file)
            assert (
                trained.classes[heat.target_class] == label == trained.classes[heat.predicted_class]
            )
            assert heat.values.shape == (224, 224) and heat.crop.shape == (224, 224, 3)
            assert heat.values.min() >= 0.0 and heat.values.max() == 1.0
            inside = _square_region(heat.crop, colour)
            ratios.append(heat.values[inside].mean() / heat.values[~inside].mean())
            moved = np.roll(heat.values, (112, 112), axis=(0, 1))  # a map in the wrong place
            shifted.append(moved[inside].mean() / moved[~inside].mean())
            assert overlay(heat).size == (224, 224)
    # Mean heat inside / outside the square, measured: 4.3-7.1 on red, 2.3-3.4 on blue. The
    # same maps transposed give a median of 2.0, the other class's maps 0.05, a flat map 1.0.
    assert min(ratios) > 1.5 and float(np.median(ratios)) > 2.5, ratios
    assert float(np.median(shifted)) < 1.0, shifted  # the measure can tell


def _untrained(name: str) -> TrainedModel:
    if name in ("efficientnet_lite0", "mobilenetv3_large_100"):
        net = create_model(get_spec(name), num_classes=3, pretrained=False)
    else:
        net = timm.create_model(name, num_classes=3)
    cfg = DataConfig.of(net)
    return TrainedModel(
        torch.nn.Sequential(Normalize(cfg), net).eval(), list("abc"), cfg, name, CPU
    )


@pytest.mark.parametrize(
    "name",
    [
        "test_efficientnet",
        "test_resnet",
        "test_convnext",
        "test_vit",
        "efficientnet_lite0",
        "mobilenetv3_large_100",
    ],
)
def test_grad_cam_works_for_every_family(name: str) -> None:
    trained = _untrained(name)
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 90, 3), np.uint8))
    heats = [heatmap(trained, picture, target_class=k) for k in range(3)]
    for k, heat in enumerate(heats):
        assert heat.values.shape == tuple(trained.data_config.input_size[-2:])
        assert heat.values.dtype == np.float32
        assert heat.values.min() >= 0.0 and heat.values.max() <= 1.0
        assert heat.target_class == k and 0.0 < heat.probability < 1.0
    # Not a blank map for every class (a ViT read at its output tokens would give that).
    assert max(float(h.values.max()) for h in heats) == 1.0
    assert len({float(h.values.std()) for h in heats}) > 1
    with pytest.raises(ValueError, match="target_class"):
        heatmap(trained, picture, target_class=3)
