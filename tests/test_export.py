"""The export bundle: timm folder, ONNX, predict.py and model card, checked against the app."""

from __future__ import annotations

import ast
import csv
import io
import json
import shutil
import subprocess
import sys
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import train_shapes
from PIL import Image

from tl_core import cli
from tl_core.analysis.evaluation import evaluate_run
from tl_core.analysis.results import load_predictions
from tl_core.data import foreign, standalone_predict
from tl_core.data.dataset import (
    IMAGE_SUFFIXES,
    MAX_SIDE,
    MAX_SOURCE_PIXELS,
)
from tl_core.export.bundle import export_run
from tl_core.export.formats.onnx_model import ONNX_TOLERANCE, OnnxPipeline
from tl_core.export.formats.timm_folder import SAFETENSORS_TOLERANCE
from tl_core.export.parity import check_parity
from tl_core.models.device import ComputePlan
from tl_core.runs.lookup import find_data_root
from tl_core.runs.store import Store
from tl_core.training import familiarity
from tl_core.training.inference import load_trained, upright_rgb
from tl_core.training.inputs import Normalize

BUNDLE_FILES = {
    "README.md",
    "model.onnx",
    "predict.py",
    "requirements.txt",
    "model/config.json",
    "model/model.safetensors",
}
CHECKED_FILES = BUNDLE_FILES | {"familiarity.npz"}  # a run with the unfamiliar check
# Largest allowed |unfamiliarity - the app's| as a share of the run's threshold. The tiny
# untrained model's classes spread over ~1e-4 in cosine distance, so float32 rounding and
# ONNX's one-level pixel differences show: measured 0.07% (safetensors) and 1.9% (ONNX) on
# odd and everyday pictures; EfficientNet-Lite0: 0.0004% and 0.5%.
SAME_COMPUTATION_CLOSE = 5e-3
ONNX_UNFAMILIARITY_CLOSE = 5e-2


def _train(tmp: Path, model: str, per_class: int, size: int, epochs: int) -> tuple[Path, Path]:
    """Import generated shapes into a workspace, train ``model`` there; (workspace, run dir)."""
    shapes = train_shapes(tmp, model, per_class=per_class, size=size, epochs=epochs)
    return shapes.workspace, shapes.run_dir


def _unzip(zip_path: Path, dest: Path, files: set[str] = CHECKED_FILES) -> Path:
    with zipfile.ZipFile(zip_path) as zf:
        assert set(zf.namelist()) == files
        zf.extractall(dest)
    return dest


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict:
    """A tiny model trained on shapes and exported with the ``export`` command."""
    tmp = tmp_path_factory.mktemp("shapes")
    workspace, run_dir = _train(tmp, "test_efficientnet", per_class=12, size=48, epochs=3)
    out = tmp / "shapes.zip"
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        args = ["--workspace", str(workspace), "export", str(run_dir), "--out", str(out)]
        code = cli.main([*args, "--format", "onnx"])  # the others: tests/test_export_*.py
    return {
        "code": code,
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "run_dir": run_dir,
        "zip": out,
        "bundle": _unzip(out, tmp / "bundle") if out.exists() else None,
    }


def _predict_rows(bundle: Path, folder: Path, fmt: str, *options: str) -> dict[str, dict]:
    """Run the bundle's predict.py in a fresh interpreter that cannot import tl_core; its CSV
    rows by file."""
    blocked = ["tl_core"] + (["torch", "torchvision", "timm"] if fmt == "onnx" else [])
    code = (
        "import runpy, sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "runpy.run_path('predict.py', run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder), "--format", fmt, *options],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    reader = csv.DictReader(io.StringIO(proc.stdout))
    assert tuple(reader.fieldnames or ()) == standalone_predict.COLUMNS
    return {r["file"]: r for r in reader}


def _predict_py(bundle: Path, folder: Path, fmt: str) -> dict[str, tuple[str, float]]:
    rows = _predict_rows(bundle, folder, fmt)
    return {f: (r["prediction"], float(r["probability"])) for f, r in rows.items()}


# ------------------------------------------------------------------------------ lite0


def test_lite0_bundle_predicts_like_the_app_in_a_fresh_process(tmp_path):
    # 48-pixel shapes: distinct pictures to the near-duplicate search (at 64 pixels the noisy
    # squares of one class are near-copies of each other and stay on one side of the split)
    workspace, run_dir = _train(tmp_path, "efficientnet_lite0", per_class=10, size=48, epochs=1)
    out = tmp_path / "lite0.zip"
    messages: list[str] = []
    report = export_run(
        run_dir,
        out,
        find_data_root(run_dir, workspace),  # as the command line finds it
        progress=messages.append,
        extra_sections={"Calibration": "Fitted temperature: 1.3."},
        formats=["onnx"],  # the others: tests/test_export_*.py and the browser walk
    )
    preds = load_predictions(run_dir)
    n = len(preds.files)
    assert report.parity_ok and report.bytes == out.stat().st_size
    for fmt, tolerance in (("safetensors", SAFETENSORS_TOLERANCE), ("onnx", ONNX_TOLERANCE)):
        check = report.formats[fmt]
        assert check.status == "ok" and check.images == n == check.top1_agree
        assert check.recorded_top1_agree == n and check.max_prob_diff <= tolerance
    assert report.formats["safetensors"].max_prob_diff <= 1e-5  # the very same computation
    assert any("ONNX" in m for m in messages)
    # The unfamiliar flag: the same on every validation picture and the 70 everyday ones.
    fam, measured = familiarity.load(run_dir), familiarity.load_report(run_dir)
    assert fam is not None and measured is not None
    assert report.unfamiliar_threshold == fam.threshold and report.foreign_images == 70
    for check in report.formats.values():
        assert check.flag_images == n + 70 == check.flag_agree
    for fmt, share in (("safetensors", SAME_COMPUTATION_CLOSE), ("onnx", ONNX_UNFAMILIARITY_CLOSE)):
        assert report.formats[fmt].max_unfamiliarity_diff <= share * fam.threshold

    bundle = _unzip(out, tmp_path / "bundle")
    config = json.loads((bundle / "model" / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0"
    assert config["num_classes"] == 3 and config["label_names"] == preds.classes
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 224, 224] and pcfg["crop_pct"] == 0.875
    assert pcfg["interpolation"] == "bicubic" and pcfg["mean"] == [0.5, 0.5, 0.5]
    card = (bundle / "README.md").read_text()
    assert "## Calibration\n\nFitted temperature: 1.3." in card
    for c in preds.classes:
        assert f"| {c} | 8 | 2 |" in card  # 10 per class: 8 trained on, 2 held back
    assert "| safetensors | 6 | 6 |" in card and "| onnx | 6 | 6 |" in card
    assert card.count(f"| {n + 70} of {n + 70} |") == 2
    assert "## Pictures of none of its classes" in card and measured.sentence() in card
    assert f"Threshold: {fam.threshold:.4f}" in card and "`nearest_class`" in card
    assert "Seed: 0" in card and "0 of" in card and "layer groups" in card
    assert "timm>=" in (bundle / "requirements.txt").read_text()

    # The validation pictures, at their data-set paths, in a folder of their own, and two
    # everyday photos that look like none of the shapes.
    data_root = Path(Store(workspace).runs()[0].data_dir)
    folder = tmp_path / "val"
    for f in preds.files:
        (folder / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_root / f, folder / f)
    (folder / "everyday").mkdir()
    for name, image in foreign.pictures()[::35]:
        image.save(folder / "everyday" / f"{name}.png")
    everyday = sorted(f"everyday/{p.name}" for p in (folder / "everyday").iterdir())
    app = load_trained(run_dir, plan=ComputePlan("cpu", None, False, 2))
    files = [*preds.files, *everyday]
    guessed = app.guess([folder / f for f in files])
    assert guessed.unfamiliarity is not None
    flagged = dict(zip(files, guessed.unfamiliar(fam.threshold), strict=True))
    far = dict(zip(files, guessed.unfamiliarity, strict=True))
    assert all(flagged[f] for f in everyday) and not all(flagged.values())
    for fmt in ("safetensors", "onnx"):
        rows = _predict_rows(bundle, folder, fmt)
        assert sorted(rows) == sorted(files)
        for f, y, p in zip(preds.files, preds.preds, preds.probs, strict=True):
            row = rows[f]
            assert row["nearest_class"] == preds.classes[y], (fmt, f)
            assert row["prediction"] == ("unfamiliar" if flagged[f] else preds.classes[y])
            assert abs(float(row["probability"]) - p[y]) <= ONNX_TOLERANCE + 1e-6
        for f in everyday:  # unfamiliar, with the nearest class in a column of its own
            assert rows[f]["prediction"] == "unfamiliar" and rows[f]["problem"] == ""
            assert rows[f]["nearest_class"] in preds.classes
        for f in files:
            close = ONNX_UNFAMILIARITY_CLOSE * fam.threshold
            assert abs(float(rows[f]["unfamiliarity"]) - far[f]) <= close
    # A higher threshold flags nothing: every picture gets its nearest class.
    rows = _predict_rows(bundle, folder, "onnx", "--unfamiliar-threshold", "1e9")
    assert all(r["prediction"] == r["nearest_class"] != "" for r in rows.values())


# ------------------------------------------------------------------------------ shapes


def test_cli_export_prints_json_and_finds_the_data_through_the_workspace(shapes):
    assert shapes["code"] == 0, shapes["stderr"]
    summary = json.loads(shapes["stdout"].strip().splitlines()[-1])
    assert summary["parity_ok"] is True and summary["out"] == str(shapes["zip"])
    assert summary["ci_low"] <= summary["accuracy"] <= summary["ci_high"] and "ece" in summary
    n = len(load_predictions(shapes["run_dir"]).files)
    fam = familiarity.load(shapes["run_dir"])
    assert fam is not None and summary["unfamiliar_threshold"] == fam.threshold
    assert summary["foreign_images"] == 70
    for fmt in ("safetensors", "onnx"):
        check = summary["formats"][fmt]
        assert check["status"] == "ok"
        assert check["images"] == n == check["top1_agree"]
        assert check["flag_images"] == n + 70 == check["flag_agree"]  # the unfamiliar flag
    assert "Converting the model to ONNX" in shapes["stderr"]
    with zipfile.ZipFile(shapes["zip"]) as zf:  # the card carries the evaluation by default
        card = zf.read("README.md").decode()
    ev = evaluate_run(shapes["run_dir"])
    assert f"95% confidence interval (Wilson) {ev.summary.ci_low:.1%}" in card
    assert "## Calibration" in card and f"T = {ev.calibration.temperature:.2f}" in card


def test_onnx_takes_uint8_pictures_of_any_size_and_nothing_else(shapes):
    import onnxruntime as ort

    session = ort.InferenceSession(str(shapes["bundle"] / "model.onnx"))
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[-1] == 3 and len(inp.shape) == 4
    outputs = ["probabilities", "logits", "unfamiliarity"]  # the run has the unfamiliar check
    assert [o.name for o in session.get_outputs()] == outputs
    app = load_trained(shapes["run_dir"], plan=ComputePlan("cpu", None, False, 2))
    assert app.familiarity is not None
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["unfamiliar_threshold"]) == app.familiarity.threshold
    pipeline = OnnxPipeline(app.net, app.data_config, app.familiarity).eval()
    rng = np.random.default_rng(0)
    # 45x47: the crop offset is round(3.5) = 4; 37x513: round(1080.5) = 1080 (halves to even)
    for h, w, batch in ((300, 200, 1), (64, 90, 2), (45, 47, 1), (37, 513, 1)):
        pixels = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
        probs, logits, far = session.run(None, {inp.name: pixels})
        assert probs.shape == logits.shape == (batch, 3) and far.shape == (batch,)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        with torch.no_grad():
            crops = pipeline.preprocess(torch.from_numpy(pixels))
            eager = [t.numpy() for t in pipeline(torch.from_numpy(pixels))]
        np.testing.assert_allclose(logits, eager[1], atol=1e-4)  # ONNX computes what torch does
        np.testing.assert_allclose(far, eager[2], rtol=1e-4)
        pictures = [Image.fromarray(p) for p in pixels]
        app_crops = torch.stack([app.tensor(p) for p in pictures]).float()
        assert crops.shape == app_crops.shape
        assert (crops - app_crops).abs().max() <= 2  # Pillow rounds in fixed point
        assert (crops - app_crops).abs().mean() <= 0.05
        expected = app.guess(pictures)
        assert (probs.argmax(1) == expected.probs.argmax(1)).all()
        assert np.abs(probs - expected.probs).max() <= ONNX_TOLERANCE
        assert expected.unfamiliarity is not None
        close = ONNX_UNFAMILIARITY_CLOSE * app.familiarity.threshold
        assert np.abs(far - expected.unfamiliarity).max() <= close
    for wrong in (
        rng.random((1, 64, 90, 3), dtype=np.float32) * 255,  # floats
        rng.integers(0, 256, (1, 3, 64, 90), dtype=np.uint8),  # channels first
    ):
        with pytest.raises(Exception, match=r"(?i)invalid|type|dimension"):
            session.run(None, {inp.name: wrong})


def _picture_files(folder: Path) -> list[Path]:
    """Pictures the app must open in a particular way: odd sizes, EXIF, alpha, 16-bit."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    files = []
    for k, (h, w) in enumerate(((300, 200), (64, 90), (37, 513), (750, 1000))):
        path = folder / f"{k}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        files.append(path)
    photo = Image.fromarray(rng.integers(0, 256, (900, 1300, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the app turns it upright
    photo.save(folder / "rotated.jpg", exif=exif, quality=90)
    rgba = rng.integers(0, 256, (120, 80, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    grey16 = Image.fromarray(rng.integers(0, 65535, (50, 70), dtype=np.uint16))
    grey16.save(folder / "grey16.png")
    return [*files, folder / "rotated.jpg", folder / "alpha.png", folder / "grey16.png"]


def test_bundle_preprocessing_equals_the_app(shapes, tmp_path, demo_dir):
    files = _picture_files(tmp_path / "pictures")
    predictor = standalone_predict.SafetensorsPredictor(shapes["bundle"])
    app = load_trained(shapes["run_dir"], plan=ComputePlan("cpu", None, False, 2))
    normalize = Normalize(app.data_config)
    for path in files:
        opened = standalone_predict.open_image(path)
        assert np.array_equal(np.asarray(opened), np.asarray(upright_rgb(path))), path.name
        timm_input = predictor.transform(opened)
        app_input = normalize(app.tensor(path)[None])[0]
        assert timm_input.shape == app_input.shape
        assert torch.allclose(timm_input, app_input, atol=1e-5), path.name
    assert standalone_predict.open_image(files[4]).size == (443, 640)  # upright, long side 640

    # Both formats score how unfamiliar a picture is as the app does (odd pictures, the demo
    # set's clothes, the training shapes).
    data_root = Path(Store(shapes["run_dir"].parent / "ws").runs()[0].data_dir)
    run_files = sorted(data_root.rglob("*.png"))
    pictures = [*files, *sorted(demo_dir.rglob("*.png"))[::25], *run_files[::6]]
    expected = app.guess(pictures)
    assert expected.unfamiliarity is not None
    opened = [standalone_predict.open_image(p) for p in pictures]
    onnx = standalone_predict.OnnxPredictor(shapes["bundle"])
    for fmt, share in ((predictor, SAME_COMPUTATION_CLOSE), (onnx, ONNX_UNFAMILIARITY_CLOSE)):
        probs, far = fmt.scores(opened)
        assert fmt.has_check and fmt.threshold == app.familiarity.threshold
        assert far is not None and far.shape == (len(pictures),)
        close = share * app.familiarity.threshold
        assert np.abs(far - expected.unfamiliarity).max() <= close
        assert (far > fmt.threshold).tolist() == expected.unfamiliar(fmt.threshold).tolist()
        assert np.abs(probs - expected.probs).max() <= ONNX_TOLERANCE


def test_parity_check_reports_mismatches_and_what_it_could_not_check(shapes, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    run_dir, preds = shapes["run_dir"], load_predictions(shapes["run_dir"])
    app = load_trained(run_dir, plan=ComputePlan("cpu", None, False, 2))
    data_root = Path(Store(run_dir.parent / "ws").runs()[0].data_dir)
    n = len(preds.files)
    everyday = foreign.pictures()[::10]  # 7 of the 70 everyday pictures: quicker
    monkeypatch.setattr(foreign, "pictures", lambda: everyday)

    # A changed head in the timm folder: the safetensors check fails, ONNX still passes.
    bundle = shutil.copytree(shapes["bundle"], tmp_path / "bundle")
    weights = load_file(bundle / "model" / "model.safetensors")
    weights["classifier.bias"] = weights["classifier.bias"] + torch.tensor([8.0, 0.0, 0.0])
    save_file(weights, bundle / "model" / "model.safetensors")
    report = check_parity(bundle, run_dir, app, preds, data_root, None)
    assert report.formats["safetensors"].status == "failed" and not report.parity_ok
    assert report.formats["safetensors"].max_prob_diff > SAFETENSORS_TOLERANCE
    assert report.formats["onnx"].status == "ok"

    # A wrong threshold beside the timm model: it flags other pictures unfamiliar than the app.
    bundle = shutil.copytree(shapes["bundle"], tmp_path / "bundle-threshold")
    npz = bundle / "familiarity.npz"
    with np.load(npz) as saved:
        arrays = {k: saved[k] for k in saved.files}
    np.savez(npz, **{**arrays, "threshold": np.array(-1.0)})
    report = check_parity(bundle, run_dir, app, preds, data_root, None)
    check = report.formats["safetensors"]
    assert check.status == "failed" and "different unfamiliar flag" in check.reason
    assert check.top1_agree == n and check.flag_images == n + 7 > check.flag_agree
    assert report.formats["onnx"].status == "ok" and not report.parity_ok

    # Without onnxruntime the ONNX model is "not checked", and that alone is no failure.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    report = check_parity(shapes["bundle"], run_dir, app, preds, data_root, None)
    assert report.formats["onnx"].status == "not checked"
    assert "onnxruntime" in report.formats["onnx"].reason
    assert report.formats["safetensors"].status == "ok" and report.parity_ok

    # Without the data set nothing can be checked: no parity claimed.
    report = check_parity(shapes["bundle"], run_dir, app, preds, None, None)
    assert {f.status for f in report.formats.values()} == {"not checked"}
    assert not report.parity_ok

    # Predictions saved in bfloat16 differ from full precision: said in a note, not a failure.
    bf16_run = shutil.copytree(run_dir, tmp_path / "bf16-run")
    raw = json.loads((bf16_run / "predictions.json").read_text())
    for row in raw["rows"]:
        row["probs"] = [p + (0.004 if i == 0 else -0.002) for i, p in enumerate(row["probs"])]
    (bf16_run / "predictions.json").write_text(json.dumps(raw))
    (bf16_run / "run.log").write_text("Computing on cpu, bfloat16 inference, fp32 training.\n")
    monkeypatch.delitem(sys.modules, "onnxruntime")
    report = check_parity(
        shapes["bundle"], bf16_run, app, load_predictions(bf16_run), data_root, None
    )
    assert report.parity_ok and report.recorded_max_prob_diff > 3e-3
    assert any("bfloat16" in note for note in report.notes)
    assert report.formats["onnx"].images == n


def test_a_run_without_the_unfamiliar_check_exports_as_before(shapes, tmp_path):
    run_dir = shutil.copytree(shapes["run_dir"], tmp_path / "old-run")
    (run_dir / familiarity.FEATURES_FILE).unlink()  # trained before the check existed
    (run_dir / familiarity.REPORT_FILE).unlink()
    data_root = Path(Store(shapes["run_dir"].parent / "ws").runs()[0].data_dir)
    out = tmp_path / "old.zip"
    report = export_run(run_dir, out, data_root, formats=["onnx"])
    n = len(load_predictions(run_dir).files)
    assert report.parity_ok and report.unfamiliar_threshold is None and not report.foreign_images
    for check in report.formats.values():
        assert check.images == n and check.flag_images == 0
        assert check.max_unfamiliarity_diff is None
    bundle = _unzip(out, tmp_path / "bundle", BUNDLE_FILES)  # no familiarity.npz

    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["probabilities", "logits"]
    assert "unfamiliar_threshold" not in session.get_modelmeta().custom_metadata_map
    card = (bundle / "README.md").read_text()
    assert "This model has no unfamiliar check" in card and "Train it again" in card
    assert "familiarity.npz" not in card and f"| onnx | {n} | {n} |" in card

    folder = tmp_path / "pictures"
    folder.mkdir()
    foreign.pictures()[0][1].save(folder / "photo.png")
    for f in load_predictions(run_dir).files[:2]:
        shutil.copyfile(data_root / f, folder / Path(f).name)
    for fmt in ("safetensors", "onnx"):
        predictor = standalone_predict.load_predictor(bundle, fmt)
        assert not predictor.has_check and predictor.threshold is None
        stream = io.StringIO()
        standalone_predict.write_csv(stream, predictor, sorted(folder.iterdir()), folder)
        rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
        assert len(rows) == 3
        for row in rows:  # always a class, no score
            assert row["prediction"] == row["nearest_class"] != ""
            assert row["unfamiliarity"] == "" and row["problem"] == ""


def test_a_new_format_is_one_entry_in_the_bundle_parts(shapes, tmp_path, monkeypatch):
    from tl_core.export.formats import base, registry

    def write(bundle: Path, model: base.ModelToExport) -> None:
        (bundle / "fake.txt").write_text(",".join(model.classes))

    fake = base.BundlePart(
        name="fake",
        write=write,
        writing="Writing the fake format",
        usage=lambda has_check: ["- **Fake**: read `fake.txt`."],
        files=lambda has_check: ["- `fake.txt`: the class names"],
        parity=base.ParityCheck(
            tolerance=0.5,
            checking="Checking: the fake format",
            load=lambda bundle: standalone_predict.OnnxPredictor(bundle),
            unavailable=lambda: "",
        ),
    )
    monkeypatch.setattr(registry, "PARTS", (*registry.PARTS, fake))
    data_root = Path(Store(shapes["run_dir"].parent / "ws").runs()[0].data_dir)
    messages: list[str] = []
    out = tmp_path / "fake.zip"
    report = export_run(
        shapes["run_dir"], out, data_root, progress=messages.append, formats=["onnx"]
    )
    assert list(report.formats) == ["safetensors", "onnx", "fake"] and report.parity_ok
    assert report.formats["fake"].status == "ok" and report.formats["fake"].tolerance == 0.5
    assert messages.index("Writing the fake format") < messages.index("Checking: the fake format")
    bundle = _unzip(out, tmp_path / "bundle", CHECKED_FILES | {"fake.txt"})
    assert (bundle / "fake.txt").read_text() == ",".join(report.classes)
    card = (bundle / "README.md").read_text()
    assert "- **Fake**: read `fake.txt`." in card and "\n| fake | " in card
    assert card.endswith("- `fake.txt`: the class names\n")


def test_predict_py_is_standalone_and_matches_the_app_constants():
    tree = ast.parse(Path(standalone_predict.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert "tl_core" not in imported
    assert imported <= {
        "__future__", "argparse", "csv", "json", "os", "sys", "warnings", "collections", "pathlib",
        "typing", "numpy", "PIL", "pillow_heif", "timm", "torch", "onnxruntime",
    }  # fmt: skip
    assert standalone_predict.MAX_SIDE == MAX_SIDE
    assert standalone_predict.MAX_SOURCE_PIXELS == MAX_SOURCE_PIXELS
    assert standalone_predict.IMAGE_SUFFIXES == IMAGE_SUFFIXES


def test_cli_export_explains_bad_input(tmp_path, capsys):
    out = tmp_path / "x.zip"
    ws = ["--workspace", str(tmp_path / "ws")]
    assert cli.main([*ws, "export", str(tmp_path / "nope"), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "no run folder" in json.loads(captured.out.strip().splitlines()[-1])["error"]
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1
    (tmp_path / "empty-run").mkdir()
    assert cli.main([*ws, "export", str(tmp_path / "empty-run"), "--out", str(out)]) == 2
    assert "best.pt is missing" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("labels", "preds"),
    [
        ([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 0]),
        ([0, 1, 2] * 20, [1, 1, 2] * 20),
        ([0, 1, 2] * 200, [0, 1, 2] * 199 + [1, 1, 2]),
    ],
)
def test_the_model_card_lists_the_weakest_classes_once(labels, preds) -> None:
    from tl_core.analysis import metrics
    from tl_core.analysis.evaluation import card_sections, evaluate_predictions
    from tl_core.analysis.results import Predictions
    from tl_core.export.card import weaknesses

    logits = (np.eye(3)[preds] * 5).tolist()
    probs = metrics.softmax(np.asarray(logits)).tolist()
    p = Predictions(list("abc"), [f"{i}.png" for i in range(len(labels))], labels, preds,
                    [max(r) for r in probs], probs, logits)  # fmt: skip
    assert p.confusion() == metrics.confusion_matrix(labels, preds, 3).tolist()
    sections = card_sections(evaluate_predictions(p))
    text = "\n".join([*sections.values(), *weaknesses(p)])
    assert text.count("most often misses") == 1
    weakest = metrics.weakest_classes(metrics.per_class_report(labels, preds, 3))
    for c in weakest:
        assert f"- {'abc'[c.index]}: found {c.tp} of {c.support}" in text
    s = metrics.accuracy_summary(labels, preds)
    assert ("treat them as rough" in text) is metrics.is_small_sample(s.total, s.ci_low, s.ci_high)
