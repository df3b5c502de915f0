"""The mobile formats: LiteRT (``model.tflite`` + ``labels.txt``), run in the LiteRT interpreter
against the app, and Core ML (``model.mlpackage``), whose description is read back (its
answers cannot be computed off Apple devices)."""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict, replace

import numpy as np
import pytest
from helpers import train_shapes
from torch import nn

from tl_core.analysis.results import load_predictions
from tl_core.data import standalone_predict
from tl_core.errors import RunError
from tl_core.export.formats import coreml_model, familiarity_npz, litert_model, timm_folder
from tl_core.export.formats.base import ModelToExport
from tl_core.models.catalog import DataConfig
from tl_core.models.device import ComputePlan
from tl_core.training.inference import TrainedModel, load_trained

EXPORT = ComputePlan("cpu", None, False, 2)  # as the export loads a run: fp32, plain layout
# Largest allowed |unfamiliarity - the app's| as a share of the run's threshold: the tiny
# untrained model's classes spread over ~1e-4 in cosine distance, so float32 rounding shows.
UNFAMILIARITY_CLOSE = 5e-2


@pytest.fixture(scope="module")
def mobile(tmp_path_factory) -> dict:
    """A trained run with the unfamiliar check, its timm folder, familiarity.npz, model.tflite
    and model.mlpackage written into one bundle folder."""
    tmp = tmp_path_factory.mktemp("mobile")
    shapes = train_shapes(tmp)
    run_dir, root = shapes.run_dir, shapes.data_root
    trained = load_trained(run_dir, plan=EXPORT)
    assert trained.familiarity is not None  # the run has the unfamiliar check
    model = ModelToExport(
        trained.net.eval(), trained.data_config, trained.classes, "Test model", trained.familiarity
    )
    bundle = tmp / "bundle"
    bundle.mkdir()
    for part in (timm_folder.PART, familiarity_npz.PART, litert_model.PART, coreml_model.PART):
        part.write(bundle, model)
    preds = load_predictions(run_dir)
    assert preds is not None
    files = [root / f for f in preds.files]
    return {"trained": trained, "model": model, "bundle": bundle, "files": files, "tmp": tmp}


def test_tflite_answers_as_the_app(mobile) -> None:
    trained: TrainedModel = mobile["trained"]
    files = mobile["files"]
    app = trained.guess(files)
    predictor = litert_model.PART.parity.load(mobile["bundle"])
    assert predictor.classes == trained.classes
    assert predictor.has_check and predictor.threshold == trained.familiarity.threshold
    # The parity check's path: each picture opened as the app opens one, then the format.
    rows = list(standalone_predict.score_files(predictor, files))
    assert [problem for *_, problem in rows] == [""] * len(files)
    probs = np.stack([p for _, p, _, _ in rows])
    far = np.array([u for _, _, u, _ in rows])
    assert (probs.argmax(1) == app.probs.argmax(1)).all()
    assert np.abs(probs - app.probs).max() <= litert_model.LITERT_TOLERANCE
    threshold = trained.familiarity.threshold
    assert np.abs(far - app.unfamiliarity).max() <= UNFAMILIARITY_CLOSE * threshold
    assert ((far > threshold) == (app.unfamiliarity > threshold)).all()


def test_tflite_signature_and_labels(mobile) -> None:
    bundle, model = mobile["bundle"], mobile["model"]
    predictor = litert_model.LiteRTPredictor(bundle, threads=1)
    (arg,) = predictor.runner.get_input_details().values()
    height, width = model.data_config.input_size[-2:]
    assert list(predictor.runner.get_input_details()) == ["image"]
    assert arg["dtype"] == np.uint8 and list(arg["shape"]) == [1, height, width, 3]
    outputs = predictor.runner.get_output_details()
    assert set(outputs) == {"probabilities", "logits", "unfamiliarity"}
    assert list(outputs["probabilities"]["shape"]) == [1, len(model.classes)]
    lines = (bundle / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert lines == model.classes
    got = predictor.run(np.zeros((1, height, width, 3), np.uint8))
    assert got["probabilities"].sum() == pytest.approx(1.0, abs=1e-5)
    sizes = [p.stat().st_size for p in litert_model.PART.option.paths(bundle)]
    assert all(size > 0 for size in sizes)


def test_tflite_without_the_check(mobile) -> None:
    """A run without the unfamiliar check: no unfamiliarity output, no threshold."""
    model = replace(mobile["model"], familiar=None)
    bundle = mobile["tmp"] / "no-check"
    bundle.mkdir()
    timm_folder.PART.write(bundle, model)
    litert_model.PART.write(bundle, model)
    predictor = litert_model.LiteRTPredictor(bundle)
    assert set(predictor.runner.get_output_details()) == {"probabilities", "logits"}
    assert not predictor.has_check and predictor.threshold is None
    probs, far = predictor.scores([standalone_predict.open_image(mobile["files"][0])])
    assert probs.shape == (1, len(model.classes)) and far is None


def test_coreml_package_reads_back(mobile) -> None:
    bundle, model = mobile["bundle"], mobile["model"]
    height, width = model.data_config.input_size[-2:]
    got = coreml_model.describe_package(bundle / "model.mlpackage")
    assert got["kind"] == "mlProgram"
    assert got["inputs"] == ["image"] and got["input_type"] == "imageType"
    assert (got["width"], got["height"], got["colours"]) == (width, height, "RGB")
    assert got["labels"] == model.classes
    assert got["outputs"] == ["classLabel", "classLabel_probs", "unfamiliarity"]
    assert got["program_outputs"] == got["outputs"]
    assert float(got["metadata"]["unfamiliar_threshold"]) == model.familiar.threshold
    assert coreml_model.offline_check(bundle, model) == ""
    assert coreml_model.PART.option.cannot_run.startswith("Core ML models run only on Apple")


def test_coreml_offline_check_catches_a_wrong_package(mobile) -> None:
    bundle, model = mobile["bundle"], mobile["model"]
    swapped = replace(model, classes=list(reversed(model.classes)))
    assert "class labels" in coreml_model.offline_check(bundle, swapped)
    bigger = DataConfig(**{**asdict(model.data_config), "input_size": (3, 64, 64)})
    assert "not 64x64" in coreml_model.offline_check(bundle, replace(model, data_config=bigger))
    assert "outputs" in coreml_model.offline_check(bundle, replace(model, familiar=None))
    empty = mobile["tmp"] / "empty"
    empty.mkdir()
    assert "was not written" in coreml_model.offline_check(empty, model)
    broken = mobile["tmp"] / "broken"
    shutil.copytree(bundle / "model.mlpackage", broken / "model.mlpackage")
    for manifest in (broken / "model.mlpackage").glob("Manifest.json"):
        manifest.write_text("{", encoding="utf-8")
    assert "could not be read back" in coreml_model.offline_check(broken, model)


class _NotTimm(nn.Module):
    """A module the converters cannot trace (no timm head)."""

    def forward(self, x):
        return x


def test_a_failed_conversion_names_the_model(mobile, tmp_path) -> None:
    model = replace(mobile["model"], net=_NotTimm(), title="Odd model")
    for part, name in ((litert_model.PART, "LiteRT"), (coreml_model.PART, "Core ML")):
        with pytest.raises(RunError, match=f"Odd model could not be converted to {name}"):
            part.write(tmp_path, model)
    assert not (tmp_path / "model.tflite").exists()
    assert not (tmp_path / "model.mlpackage").exists()


def test_missing_converters_say_how_to_install(monkeypatch) -> None:
    assert litert_model.missing() == "" and coreml_model.missing() == ""
    for name in ("litert_torch", "ai_edge_litert"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, name, None)
            litert = litert_model.missing()
            assert litert.startswith("LiteRT needs the optional converters")
            assert coreml_model.missing() == ""
    monkeypatch.setitem(sys.modules, "coremltools", None)
    coreml = coreml_model.missing()
    assert coreml.startswith("Core ML needs the optional converters")
    for sentence in (litert, coreml):
        assert "uv sync --extra export" in sentence and "tl-studio[export]" in sentence
