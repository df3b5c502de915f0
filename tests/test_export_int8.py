"""The 8-bit ONNX model (model_int8.onnx): written beside model.onnx, same input, outputs and
metadata, smaller, close to the full model's answers, run by predict.py; the rule that decides
whether it is offered."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import train_shapes

from tl_core.analysis.results import load_predictions
from tl_core.data import standalone_predict
from tl_core.errors import RunError
from tl_core.export.formats import onnx_int8, onnx_model, predict_script
from tl_core.export.formats.base import ModelToExport
from tl_core.export.report import FormatParity
from tl_core.models.device import ComputePlan
from tl_core.training.inference import load_trained

FP32 = ComputePlan("cpu", None, True, 2)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> dict:
    """model.onnx, model_int8.onnx and predict.py of the tiny model, in one folder."""
    tmp = tmp_path_factory.mktemp("int8")
    shapes = train_shapes(tmp)
    run_dir, root, train = shapes.run_dir, shapes.data_root, shapes.train
    trained = load_trained(run_dir, plan=FP32)
    model = ModelToExport(
        trained.net.eval(),
        trained.data_config,
        trained.classes,
        "the test model",
        trained.familiarity,
        calibration=tuple(train),
    )
    folder = tmp / "bundle"
    folder.mkdir()
    for part in (onnx_model.PART, onnx_int8.PART, predict_script.PART):
        part.write(folder, model)
    preds = load_predictions(run_dir)
    assert preds is not None
    return {"folder": folder, "model": model, "val": [root / f for f in preds.files]}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_int8_file_is_smaller_with_8_bit_convolutions(bundle) -> None:
    folder = bundle["folder"]
    full = (folder / "model.onnx").stat().st_size
    small = (folder / onnx_int8.FILE).stat().st_size
    assert small < 0.7 * full, (small, full)  # the tiny model; EfficientNet-Lite0: 0.33
    proto = onnx.load(str(folder / onnx_int8.FILE))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # standard ONNX operators only (onnxruntime-web runs them)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    # the preprocessing, the softmax and the distance to the training pictures stay float
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    for op in ("Resize", "Softmax", "MatMul", "ReduceMin"):
        node = next(n for n in proto.graph.node if n.op_type == op)
        assert all(producer.get(i) != "DequantizeLinear" for i in node.input), op


def test_same_input_outputs_and_metadata(bundle) -> None:
    folder = bundle["folder"]
    full, small = _session(folder / "model.onnx"), _session(folder / onnx_int8.FILE)
    inputs = [(i.name, i.type, len(i.shape)) for i in small.get_inputs()]
    assert inputs == [(i.name, i.type, len(i.shape)) for i in full.get_inputs()]
    assert inputs == [("image", "tensor(uint8)", 4)]
    assert [o.name for o in small.get_outputs()] == [o.name for o in full.get_outputs()]
    assert "unfamiliarity" in [o.name for o in small.get_outputs()]
    meta = small.get_modelmeta().custom_metadata_map
    assert meta == full.get_modelmeta().custom_metadata_map
    assert {"classes", "preprocessing", "unfamiliar_threshold"} <= set(meta)
    rng = np.random.default_rng(0)
    for shape in ((1, 30, 50, 3), (1, 64, 64, 3), (2, 120, 90, 3)):
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        want = full.run(None, {"image": x})
        got = small.run(None, {"image": x})
        assert [g.shape for g in got] == [w.shape for w in want]
        np.testing.assert_allclose(got[0].sum(1), 1.0, atol=1e-5)


def test_most_validation_answers_agree_with_the_full_model(bundle) -> None:
    folder = bundle["folder"]
    full = standalone_predict.load_predictor(folder, "onnx")
    small = standalone_predict.load_predictor(folder, "int8")
    assert small.classes == full.classes and small.threshold == full.threshold
    pictures = [standalone_predict.open_image(p) for p in bundle["val"]]
    want, want_far = full.scores(pictures)
    got, got_far = small.scores(pictures)
    agree = int((want.argmax(1) == got.argmax(1)).sum())
    assert agree >= 0.8 * len(pictures), (agree, len(pictures))
    assert want_far is not None and got_far is not None
    assert np.isfinite(got_far).all() and np.abs(got_far - want_far).max() > 0  # 8-bit: not equal


def test_predict_py_runs_the_8_bit_model(bundle) -> None:
    folder = bundle["folder"]
    pictures = bundle["val"][0].parent.parent  # images/<class>/...
    blocked = ["tl_core", "torch", "torchvision", "timm"]
    code = (
        "import runpy, sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "runpy.run_path('predict.py', run_name='__main__')\n"
    )
    rows = {}
    for fmt in ("onnx", "int8"):
        proc = subprocess.run(
            [sys.executable, "-c", code, str(pictures), "--format", fmt],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        rows[fmt] = {r["file"]: r for r in csv.DictReader(io.StringIO(proc.stdout))}
    assert rows["int8"].keys() == rows["onnx"].keys() and rows["int8"]
    same = sum(
        r["nearest_class"] == rows["onnx"][f]["nearest_class"] for f, r in rows["int8"].items()
    )
    assert same >= 0.8 * len(rows["int8"])
    assert all(r["unfamiliarity"] for r in rows["int8"].values())


def test_predict_py_without_the_8_bit_model_says_so(bundle, tmp_path) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()
    for name in ("model.onnx", "predict.py"):
        (folder / name).write_bytes((bundle["folder"] / name).read_bytes())
    proc = subprocess.run(
        [sys.executable, "predict.py", str(bundle["val"][0]), "--format", "int8"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no 8-bit model" in proc.stderr and "--format onnx" in proc.stderr


def test_no_calibration_pictures_is_a_plain_error(bundle, tmp_path) -> None:
    model = ModelToExport(**{**bundle["model"].__dict__, "calibration": ()})
    with pytest.raises(RunError, match="training pictures"):
        onnx_int8.PART.write(tmp_path, model)
    assert not (tmp_path / onnx_int8.FILE).exists()


def test_calibration_subset_spreads_over_the_list() -> None:
    paths = [Path(f"{k}.png") for k in range(1000)]
    picked = onnx_int8.calibration_subset(paths, 200)
    assert len(picked) == 200 == len(set(picked))
    assert picked[0] == paths[0] and picked[-1] == paths[-1]
    assert onnx_int8.calibration_subset(paths[:50], 200) == paths[:50]


@pytest.mark.parametrize(
    ("correct", "app_correct", "n", "kept"),
    [
        (48, 48, 48, True),  # no loss
        (47, 48, 48, True),  # 1 of 48: within the noise of 48 pictures
        (45, 48, 48, False),  # 3 of 48 at 100%: more than chance explains
        (160, 167, 200, True),  # 3.5 points at 83.5%: its interval is +-5 points
        (150, 167, 200, False),  # 8.5 points
        (900, 910, 1000, True),  # 1 point, half-width 1.8
        (880, 910, 1000, False),  # 3 points
        (30, 28, 48, True),  # better than the full model
        (0, 0, 0, True),  # nothing to compare
    ],
)
def test_accuracy_kept(correct: int, app_correct: int, n: int, kept: bool) -> None:
    assert onnx_int8.accuracy_kept(correct, app_correct, n) is kept


def _parity(correct: int | None, app_correct: int | None, n: int, agree: int) -> FormatParity:
    return FormatParity(
        "int8", "ok", onnx_int8.INT8_TOLERANCE, images=n, top1_agree=agree,
        correct=correct, app_correct=app_correct,
    )  # fmt: skip


def test_judge_refuses_with_a_plain_reason() -> None:
    assert onnx_int8.judge(_parity(47, 48, 48, 47)) == ""
    reason = onnx_int8.judge(_parity(45, 48, 48, 45))
    assert reason == (
        "the 8-bit model gets 3 more of 48 validation pictures wrong than the full model, "
        "more than chance explains (up to 1 would be)"
    )
    # without labels, every changed answer counts as a loss
    assert onnx_int8.judge(_parity(None, None, 48, 47)) == ""
    assert "4 more of 48" in onnx_int8.judge(_parity(None, None, 48, 44))


@pytest.mark.parametrize(
    ("right", "app_right", "m", "offered"),
    [
        (109, 116, 118, False),  # textures: 7 more validation pictures flagged unfamiliar
        (261, 262, 270, True),  # fashion: one more
        (118, 116, 118, True),  # better than the full model
    ],
)
def test_judge_refuses_a_model_whose_unfamiliar_flag_is_worse(right, app_right, m, offered):
    parity = _parity(48, 48, 48, 48)
    parity.flag_images, parity.flag_right, parity.app_flag_right = m, right, app_right
    reason = onnx_int8.judge(parity)
    assert (reason == "") is offered
    if not offered:
        lost = app_right - right
        assert reason.startswith(
            f"the 8-bit model's unfamiliar flag is wrong on {lost} more of {m}"
        )


def test_the_8_bit_model_gets_its_own_unfamiliar_threshold(bundle, tmp_path) -> None:
    """Set as the app set the run's: accepting the same share of the validation pictures,
    scored by the 8-bit model itself."""
    from tl_core.training.familiarity import threshold_for

    model = bundle["model"]
    fam = model.familiar
    assert fam is not None
    shutil.copyfile(bundle["folder"] / "model.onnx", tmp_path / "model.onnx")
    onnx_int8.PART.write(tmp_path, replace(model, validation=tuple(bundle["val"])))
    small = standalone_predict.OnnxPredictor(tmp_path, file=onnx_int8.FILE)
    scores = np.array(
        [u for _, _, u, _ in standalone_predict.score_files(small, bundle["val"])], dtype=float
    )
    assert small.threshold == pytest.approx(threshold_for(scores, fam.accept))
    assert float((scores <= small.threshold).mean()) == pytest.approx(
        fam.accepted_share(fam.threshold)
    )
    full = standalone_predict.OnnxPredictor(bundle["folder"])
    assert full.threshold == fam.threshold  # model.onnx keeps the run's own
