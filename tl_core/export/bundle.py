"""Take a trained run home: one zip that predicts exactly as the app does, anywhere.

The zip holds::

    model/config.json          timm's local-dir layout: timm.create_model("local-dir:model")
    model/model.safetensors
    model.onnx                 uint8 RGB pictures (batch, height, width, 3) of any size in;
                               "probabilities" and "logits" out, and "unfamiliarity" when
                               the run has the unfamiliar check; resizing, cropping and
                               normalising happen inside
    familiarity.npz            the unfamiliar check for the timm model: the training
                               pictures' pooled features (bank), each one's class spread
                               (row_scale) and the threshold (only with the check)
    predict.py                 python predict.py FOLDER [--format safetensors|onnx]
    requirements.txt           what predict.py needs
    README.md                  the model card, with the parity result

Before the zip is written, every validation picture of the run goes through each exported
format, loaded from the files just written, and through the app's own prediction path in
full precision; the answers must agree (see :class:`ExportReport`). With the unfamiliar
check, so do the 70 shipped everyday pictures (:mod:`tl_core.data.foreign`): each format
must flag the same pictures unfamiliar as the app, on them and on the validation pictures.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tl_core.analysis import metrics
from tl_core.analysis.results import Predictions, load_predictions
from tl_core.data import standalone_predict
from tl_core.data.dataset import MAX_SIDE, DatasetManifest, split_dataset
from tl_core.errors import DataError, RunError
from tl_core.models.catalog import DataConfig, get_spec
from tl_core.models.device import ComputePlan
from tl_core.models.facts import freeze_sentence
from tl_core.models.freezing import max_trainable_groups
from tl_core.training import checkpoint
from tl_core.training.engine import TrainConfig
from tl_core.training.familiar_pass import NearestDistance, WithFeatures
from tl_core.training.familiarity import Familiarity, FamiliarityReport, load_report
from tl_core.training.inference import TrainedModel, load_trained
from tl_core.training.inputs import Normalize, cache_side

__all__ = [
    "INPUT_NAME",
    "ONNX_OPSET",
    "ONNX_TOLERANCE",
    "OUTPUT_NAMES",
    "RECORDED_TOLERANCE",
    "SAFETENSORS_TOLERANCE",
    "UNFAMILIARITY_NAME",
    "ExportReport",
    "FormatParity",
    "OnnxPipeline",
    "Progress",
    "export_onnx",
    "export_run",
    "model_card",
    "write_timm_folder",
]

Progress = Callable[[str], None]

INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "logits")  # and UNFAMILIARITY_NAME with the unfamiliar check
UNFAMILIARITY_NAME = "unfamiliarity"
ONNX_OPSET = 18  # the first opset whose Resize has antialias
SAFETENSORS_TOLERANCE = 1e-3  # largest allowed probability difference to the app
# The ONNX model resizes in float32 (rounded to whole pixel values after each pass, as Pillow
# does), Pillow in fixed-point integers: pixels may differ by one level. Measured with
# EfficientNet-Lite0: at most 4.2e-4 (200 Fashion-MNIST validation pictures, 60 photo crops).
ONNX_TOLERANCE = 1e-2
RECORDED_TOLERANCE = 1e-3  # predictions.json vs. a full-precision rescoring

_INTERPOLATION = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest-exact"}


# ------------------------------------------------------------------------------- report


@dataclass
class FormatParity:
    """How one exported format agrees with the app on the run's validation pictures (and,
    for the unfamiliar flag, on the everyday pictures too)."""

    format: str  # "safetensors" | "onnx"
    status: str  # "ok" | "failed" | "not checked"
    tolerance: float
    images: int = 0
    top1_agree: int = 0  # same top class as the app (full precision)
    max_prob_diff: float | None = None  # largest |probability - app's probability|
    recorded_top1_agree: int | None = None  # same top class as predictions.json
    recorded_max_prob_diff: float | None = None  # vs. the probabilities in predictions.json
    reason: str = ""  # why it was not checked or failed
    flag_images: int = 0  # validation + everyday pictures whose unfamiliar flag was compared
    flag_agree: int = 0  # flagged unfamiliar (or not) as the app flags them
    max_unfamiliarity_diff: float | None = None  # largest |unfamiliarity - app's|

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class ExportReport:
    """What an export wrote and how well each format matched the app."""

    out_zip: Path
    bytes: int
    model: str  # catalog key
    timm_name: str
    classes: list[str]
    formats: dict[str, FormatParity]
    reference: str  # what the formats were compared with
    recorded_top1_agree: int | None = None  # predictions.json vs. the full-precision app
    recorded_max_prob_diff: float | None = None
    notes: list[str] = field(default_factory=list)
    unfamiliar_threshold: float | None = None  # the run's; None: it has no unfamiliar check
    foreign_images: int = 0  # everyday pictures whose unfamiliar flag was compared

    @property
    def parity_ok(self) -> bool:
        """True when at least one format was checked and every checked format agreed."""
        checked = [f for f in self.formats.values() if f.status != "not checked"]
        return bool(checked) and all(f.ok for f in checked)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what the ``export`` command prints)."""
        return {
            "out": str(self.out_zip),
            "bytes": self.bytes,
            "model": self.model,
            "timm_name": self.timm_name,
            "classes": self.classes,
            "parity_ok": self.parity_ok,
            "formats": {k: {**asdict(v), "ok": v.ok} for k, v in self.formats.items()},
            "reference": self.reference,
            "recorded_top1_agree": self.recorded_top1_agree,
            "recorded_max_prob_diff": self.recorded_max_prob_diff,
            "unfamiliar_threshold": self.unfamiliar_threshold,
            "foreign_images": self.foreign_images,
            "notes": self.notes,
        }


# ------------------------------------------------------------------------------- ONNX


def _crop_start(excess: int | torch.SymInt) -> int | torch.SymInt:
    """torchvision's centre-crop offset ``int(round(excess / 2))`` in integer arithmetic.

    Python rounds halves to even; written with // and % it also works on symbolic sizes.
    """
    half = excess // 2
    return half + (excess % 2) * (half % 2)


class OnnxPipeline(nn.Module):
    """uint8 RGB pictures (batch, height, width, 3) of any size -> (probabilities, logits),
    and unfamiliarity (batch,) when given the run's unfamiliar check (``familiar``).

    The app's evaluation steps inside the model: shorter side resized to
    ``floor(input / crop_pct)`` with antialiasing (width first, then height, each pass rounded
    to whole pixel values as Pillow does), centre crop to a square, centre crop to the input
    size, mean/std normalisation, the network, softmax. The network and the unfamiliarity are
    the app's own modules (:class:`WithFeatures`, :class:`NearestDistance`).
    """

    def __init__(
        self, model: nn.Module, cfg: DataConfig, familiar: Familiarity | None = None
    ) -> None:
        super().__init__()
        self.side = cache_side(cfg)
        self.crop = (int(cfg.input_size[-2]), int(cfg.input_size[-1]))
        self.mode = _INTERPOLATION.get(cfg.interpolation, "bicubic")
        self.normalize = Normalize(cfg)
        self.with_features = WithFeatures(self.normalize, model)
        # The bank goes into the ONNX file as float32 (the float16 rows widened exactly):
        # 4 bytes x rows x features, at most 4,000 x 1,280 x 4 = 20 MB for EfficientNet.
        self.distance = None if familiar is None else NearestDistance.of(familiar)

    def _resize(self, x: torch.Tensor, size: tuple[Any, Any]) -> torch.Tensor:
        if self.mode == "nearest-exact":
            return F.interpolate(x, size=size, mode=self.mode)
        x = F.interpolate(x, size=size, mode=self.mode, align_corners=False, antialias=True)
        return x.round().clamp(0, 255)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> the float (N, 3, h, w) crop, in whole pixel values 0-255."""
        x = images.permute(0, 3, 1, 2).float()
        height, width = x.shape[-2], x.shape[-1]
        short = torch.sym_min(height, width)
        new_h, new_w = self.side * height // short, self.side * width // short
        x = self._resize(x, (height, new_w))
        x = self._resize(x, (new_h, new_w))
        x = x.narrow(2, _crop_start(new_h - self.side), self.side)
        x = x.narrow(3, _crop_start(new_w - self.side), self.side)
        ch, cw = self.crop
        x = x.narrow(2, _crop_start(self.side - ch), ch)
        return x.narrow(3, _crop_start(self.side - cw), cw)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, features = self.with_features(self.preprocess(images))
        if self.distance is None:
            return logits.softmax(-1), logits
        return logits.softmax(-1), logits, self.distance(features)


def export_onnx(
    model: nn.Module,
    cfg: DataConfig,
    classes: list[str],
    path: Path,
    familiar: Familiarity | None = None,
) -> None:
    """Write ``model`` with its preprocessing as a single-file ONNX model at ``path``; with
    ``familiar`` (the run's unfamiliar check) it also outputs each picture's unfamiliarity.

    Uses torch's dynamo-based exporter: the legacy TorchScript exporter cannot trace the
    symbolic size arithmetic that makes height and width dynamic, and the dynamo exporter's
    Resize for antialiased bicubic uses PyTorch's (and Pillow's) kernel (a = -0.5, samples
    outside the picture left out).
    """
    import onnx

    pipeline = OnnxPipeline(model, cfg, familiar).eval()
    outputs = list(OUTPUT_NAMES) + ([] if familiar is None else [UNFAMILIARITY_NAME])
    # A batch of 1 in the example would fix the batch size at 1; 2 keeps it free.
    example = torch.zeros((2, 300, 200, 3), dtype=torch.uint8)
    dims = {
        0: torch.export.Dim("batch", min=1),
        1: torch.export.Dim("height", min=1),
        2: torch.export.Dim("width", min=1),
    }
    with torch.no_grad():
        program = torch.onnx.export(
            pipeline,
            (example,),
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes=(dims,),
            verbose=False,
        )
    if program is None:
        raise RunError("The model could not be converted to ONNX.")
    program.save(str(path), external_data=False)
    proto = onnx.load(str(path))
    proto.doc_string = (
        f"Image classifier for {len(classes)} classes, exported by Transfer Learning Studio. "
        f"Input '{INPUT_NAME}': RGB pictures as uint8 (batch, height, width, 3), any size; "
        "resizing, cropping and normalisation happen inside. Outputs 'probabilities' and "
        "'logits' (batch, classes), in the order of the 'classes' metadata."
    )
    props = {
        "classes": json.dumps(classes),
        "preprocessing": json.dumps(asdict(cfg)),
        "input_layout": "NHWC uint8 RGB",
    }
    if familiar is not None:
        proto.doc_string += (
            f" Output '{UNFAMILIARITY_NAME}' (batch,): how unlike the picture's features are "
            f"to the nearest of {len(familiar.bank)} training pictures' (cosine distance in "
            "units of that picture's class's spread); above the 'unfamiliar_threshold' "
            "metadata the picture looks like none of the classes."
        )
        props["unfamiliar_threshold"] = json.dumps(familiar.threshold)  # exact: repr
        props["unfamiliar_accept"] = json.dumps(familiar.accept)
    proto.graph.input[0].doc_string = "RGB pixels 0-255, uint8, (batch, height, width, 3)"
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


# ------------------------------------------------------------------------------- timm folder


def write_timm_folder(model: nn.Module, cfg: DataConfig, classes: list[str], folder: Path) -> None:
    """``config.json`` + ``model.safetensors``, as ``timm.create_model("local-dir:...")`` reads."""
    from timm.models import save_for_hf

    save_for_hf(
        model,
        str(folder),
        model_config={"label_names": list(classes)},
        safe_serialization=True,
        data_config={
            "input_size": tuple(cfg.input_size),
            "interpolation": cfg.interpolation,
            "mean": tuple(cfg.mean),
            "std": tuple(cfg.std),
            "crop_pct": cfg.crop_pct,
            "crop_mode": cfg.crop_mode,
        },
    )


# ------------------------------------------------------------------------------- data


@dataclass
class _DataFacts:
    train: dict[str, int] | None  # images per class; None when the data set is not at hand
    val: dict[str, int]
    explicit_val: bool | None
    note: str = ""


def _data_facts(
    classes: list[str],
    preds: Predictions | None,
    data_root: Path | None,
    cfg: TrainConfig,
    corrections: dict[str, Any] | None,
) -> _DataFacts:
    val = dict.fromkeys(classes, 0)
    if preds is not None:
        for y in preds.labels:
            val[classes[y]] += 1
    if data_root is None:
        return _DataFacts(None, val, None)
    try:
        manifest = DatasetManifest.load(data_root)
        split = split_dataset(manifest, cfg.val_fraction, cfg.seed)
    except DataError:
        return _DataFacts(None, val, None)
    from tl_core.data import review

    fixes = review.Corrections.from_dict(corrections)
    if fixes:
        split = review.apply(split, fixes, manifest.classes)
    train = dict.fromkeys(classes, 0)
    for item in split.train:
        if item.label in train:
            train[item.label] += 1
    note = ""
    if preds is not None and sorted(i.file for i in split.val) != sorted(preds.files):
        note = "The training counts are from the data set as it is now; it may have changed."
    return _DataFacts(train, val, manifest.has_explicit_val, note)


# ------------------------------------------------------------------------------- parity


def _compare(
    probs: np.ndarray, reference: np.ndarray, preds: Predictions
) -> tuple[int, float, int, float]:
    recorded = np.asarray(preds.probs, dtype=np.float64)
    top = probs.argmax(1)
    return (
        int((top == reference.argmax(1)).sum()),
        float(np.abs(probs - reference).max()) if probs.size else 0.0,
        int((top == np.asarray(preds.preds)).sum()),
        float(np.abs(probs - recorded).max()) if probs.size else 0.0,
    )


@dataclass
class _Flags:
    """The app's unfamiliar check on the pictures of a parity check: validation pictures
    first, then the everyday ones."""

    foreign: list[Path]  # the everyday pictures, as PNG files
    scores: np.ndarray  # the app's unfamiliarity of every validation and everyday picture
    threshold: float  # the run's

    @property
    def flagged(self) -> np.ndarray:
        return self.scores > self.threshold


def _format_parity(
    name: str,
    tolerance: float,
    bundle: Path,
    files: list[Path],
    reference: np.ndarray,
    preds: Predictions,
    flags: _Flags | None = None,
) -> FormatParity:
    """One format's answers on ``files`` (and ``flags.foreign``) against the app's."""
    predictor = standalone_predict.load_predictor(bundle, name)
    if predictor.classes != preds.classes:
        return FormatParity(name, "failed", tolerance, reason="the class names differ")
    if flags is not None and not predictor.has_check:
        return FormatParity(name, "failed", tolerance, reason="it has no unfamiliar check")
    everything = files + (flags.foreign if flags is not None else [])
    probs = [np.zeros((0, len(preds.classes)), dtype=np.float32)]
    far: list[float] = []
    for path, p, u, problem in standalone_predict.score_files(predictor, everything):
        if p is None:
            return FormatParity(name, "failed", tolerance, reason=f"{path.name}: {problem}")
        probs.append(p[None])
        far.append(np.nan if u is None else u)
    n = len(files)
    top1, diff, rec_top1, rec_diff = _compare(np.concatenate(probs)[:n], reference, preds)
    parity = FormatParity(name, "ok", tolerance, n, top1, diff, rec_top1, rec_diff)
    if flags is not None:
        scores = np.asarray(far, dtype=np.float64)
        threshold = np.inf if predictor.threshold is None else predictor.threshold
        parity.flag_images = len(scores)
        parity.flag_agree = int(((scores > threshold) == flags.flagged).sum())
        parity.max_unfamiliarity_diff = float(np.abs(scores - flags.scores).max())
    m = parity.flag_images
    if top1 != n:
        parity.reason = f"{n - top1} of {n} pictures got a different top class"
    elif parity.flag_agree != m:
        parity.reason = f"{m - parity.flag_agree} of {m} pictures got a different unfamiliar flag"
    elif diff > tolerance:
        parity.reason = f"probabilities differ by up to {diff:.2g} (allowed {tolerance:g})"
    parity.status = "failed" if parity.reason else "ok"
    return parity


def _write_foreign(folder: Path) -> list[Path]:
    """The shipped everyday pictures as PNG files in ``folder`` (read by every format)."""
    from tl_core.data import foreign

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, (_, image) in enumerate(foreign.pictures()):
        path = folder / f"everyday-{k:02d}.png"
        image.save(path, compress_level=1)
        files.append(path)
    return files


def _recorded_precision(run_dir: Path) -> str | None:
    """'bfloat16' / 'float16' when the run's log says validation ran in reduced precision."""
    log = run_dir / "run.log"
    if not log.is_file():
        return None
    text = log.read_text(encoding="utf-8", errors="replace")
    for dtype in ("bfloat16", "float16"):
        if f"{dtype} inference" in text:
            return dtype
    return None


# ------------------------------------------------------------------------------- model card


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fmt_diff(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def model_card(
    *,
    title: str,
    spec_title: str,
    timm_name: str,
    cfg: TrainConfig,
    data_config: DataConfig,
    classes: list[str],
    data: _DataFacts,
    n_backbone: int,
    best_epoch: int | None,
    val_accuracy: float | None,
    preds: Predictions | None,
    report: ExportReport,
    familiar: FamiliarityReport | None = None,
    extra_sections: dict[str, str] | None = None,
) -> str:
    """The bundle's README.md: what the model is, how well it did and how to run it.

    ``familiar``: the run's measured unfamiliar check (its threshold is
    ``report.unfamiliar_threshold``; None there: the run has no check). ``extra_sections``
    (heading -> Markdown body) are added after "How well it did": the place for more
    evaluation (accuracy intervals, per-class scores, calibration).
    """
    has_check = report.unfamiliar_threshold is not None
    lines = [
        f"# {title}",
        "",
        *_card_use(classes, has_check),
        "## The data",
        "",
        *_card_data(cfg, classes, data),
    ]
    lines += _card_model(spec_title, timm_name, cfg, data_config, n_backbone, best_epoch)
    lines += ["## How well it did", "", _card_accuracy(val_accuracy, preds), ""]
    # Extra sections (e.g. accuracy intervals, per-class scores, calibration) go here.
    for heading, body in (extra_sections or {}).items():
        lines += [f"## {heading}", "", body.strip(), ""]
    lines += ["## Known weaknesses", ""]
    if preds is not None and preds.labels:
        lines += _weaknesses(preds)
    else:
        lines.append("Not measured: the run has no validation predictions.")
    lines += _card_unfamiliar(report, familiar)
    lines += _card_limits_and_parity(report)
    return "\n".join(lines)


def _card_use(classes: list[str], has_check: bool = False) -> list[str]:
    """The model card's opening and "How to use it"."""
    if has_check:
        rows = (
            "`predict.py` writes one row per picture: file, prediction (the class, or "
            "`unfamiliar` for a picture that looks like none of them), the nearest class's "
            "probability, problem (a file it could not read), `nearest_class` (the class it "
            'is closest to, always filled) and `unfamiliarity` (see "Pictures of none of its '
            'classes"). '
        )
        outputs = (
            "`probabilities` and `logits`, shaped (batch, classes), in the class order above, "
            "and `unfamiliarity`, shaped (batch,): above the metadata's "
            "`unfamiliar_threshold` a picture looks like none of the classes."
        )
    else:
        rows = (
            "`predict.py` writes one row per picture: file, predicted class, its probability, "
            "problem (a file it could not read), the same class again as `nearest_class`, and "
            "an empty `unfamiliarity` (this model has no unfamiliar check). "
        )
        outputs = "`probabilities` and `logits`, shaped (batch, classes), in the class order above."
    return [
        f"An image classifier trained with Transfer Learning Studio. It sorts a picture into "
        f"one of {len(classes)} classes: {', '.join(classes)}.",
        "",
        "## How to use it",
        "",
        "```",
        "python -m pip install -r requirements.txt",
        "python predict.py FOLDER_OF_PICTURES --out predictions.csv",
        "```",
        "",
        rows + "`--format onnx` runs `model.onnx` with onnxruntime, numpy and Pillow only "
        "(no PyTorch).",
        "",
        "- **timm / PyTorch**: `timm.create_model('local-dir:model', pretrained=True)` loads "
        "`model/`; `timm.data.create_transform(**timm.data.resolve_model_data_config(model))` "
        "prepares a picture exactly as the app does.",
        f"- **ONNX**: input `{INPUT_NAME}` takes RGB pictures as uint8, shaped (batch, height, "
        "width, 3), of any size; the model resizes, crops and normalises them itself. Outputs: "
        + outputs,
        f"- The app first turns each picture upright (EXIF), makes it RGB (transparent parts "
        f"white) and shrinks it to at most {MAX_SIDE} pixels a side; `predict.py` does the "
        "same (`open_image`). Feed other code's pictures through the same steps to get the "
        "app's exact answers.",
        "",
    ]


def _card_data(cfg: TrainConfig, classes: list[str], data: _DataFacts) -> list[str]:
    """The model card's "The data": pictures per class and how validation was held back."""
    lines: list[str] = []
    if data.train is not None:
        lines += ["| class | training pictures | validation pictures |", "| --- | ---: | ---: |"]
        lines += [f"| {c} | {data.train[c]} | {data.val[c]} |" for c in classes]
        lines += [
            f"| **all** | {sum(data.train.values())} | {sum(data.val.values())} |",
            "",
        ]
    else:
        lines += ["| class | validation pictures |", "| --- | ---: |"]
        lines += [f"| {c} | {data.val[c]} |" for c in classes]
        lines += ["", "(The training pictures were not at hand when this was exported.)", ""]
    if data.explicit_val:
        lines.append(
            "The validation pictures came from a separate folder and were never trained on."
        )
    else:
        lines.append(
            f"{_pct(cfg.val_fraction)} of each class was held back at random (seed {cfg.seed}) "
            "for validation and never trained on."
        )
    if data.note:
        lines.append(data.note)
    return lines


def _card_model(
    spec_title: str,
    timm_name: str,
    cfg: TrainConfig,
    data_config: DataConfig,
    n_backbone: int,
    best_epoch: int | None,
) -> list[str]:
    """The model card's "The model" and "Settings"."""
    return [
        "",
        "## The model",
        "",
        f"- Base: {spec_title} (timm `{timm_name}`), "
        + ("started from ImageNet weights." if cfg.pretrained else "started from random weights."),
        f"- Layers that learned: {cfg.trainable_groups} of {n_backbone} layer groups plus the "
        f"new last layer. {freeze_sentence(cfg.trainable_groups, n_backbone)}",
        f"- Input: {data_config.input_size[-1]}x{data_config.input_size[-2]} pixels, cut from "
        f"the picture's centre after resizing its shorter side to "
        f"{cache_side(data_config)} pixels ({data_config.interpolation}); "
        f"mean {list(data_config.mean)}, std {list(data_config.std)}.",
        "",
        "## Settings",
        "",
        f"- Epochs: {cfg.epochs} (the best was epoch {best_epoch}); head-only epochs first: "
        f"{cfg.head_epochs}",
        f"- Learning rate: {cfg.lr:g}, batch size: {cfg.batch_size}, weight decay: "
        f"{cfg.weight_decay:g}",
        f"- Augmentation: {cfg.augment}",
        f"- Seed: {cfg.seed}",
        "",
    ]


def _card_accuracy(val_accuracy: float | None, preds: Predictions | None) -> str:
    """The model card's validation accuracy line."""
    if preds is not None and preds.labels:
        return (
            f"Validation accuracy: **{_pct(preds.accuracy)}** ({preds.correct} of "
            f"{len(preds.labels)} pictures right)."
        )
    if val_accuracy is not None:
        return f"Validation accuracy: **{_pct(val_accuracy)}**."
    return "This run has no validation score."


def _share(part: float, whole: int) -> str:
    """'64 of 70 (91.4%)' from a share of ``whole``."""
    return f"{round(part * whole)} of {whole} ({_pct(part)})"


def _card_unfamiliar(report: ExportReport, familiar: FamiliarityReport | None) -> list[str]:
    """The model card's "Pictures of none of its classes": the unfamiliar check, measured."""
    lines = ["", "## Pictures of none of its classes", ""]
    threshold = report.unfamiliar_threshold
    if threshold is None:
        return [
            *lines,
            "This model has no unfamiliar check: it was trained before the check existed, so "
            "it names one of its classes for any picture, even one of none of them. Train it "
            "again to get one.",
        ]
    if familiar is not None:
        lines += [familiar.sentence(), ""]
        if familiar.foreign_flagged is not None and familiar.foreign_images:
            lines.append(
                "- Everyday pictures of none of these classes (photos shipped with the app) "
                f"flagged unfamiliar: {_share(familiar.foreign_flagged, familiar.foreign_images)}."
            )
        if familiar.left_out_flagged is not None:
            auroc = familiar.left_out_auroc
            lines.append(
                "- Each class left out of the check in turn, as if never taught: "
                f"{_pct(familiar.left_out_flagged)} of its pictures flagged on average"
                + ("." if auroc is None else f" (mean AUROC {auroc:.2f}).")
            )
        lines.append(
            "- Its own validation pictures flagged by mistake: "
            f"{_share(familiar.val_flagged, familiar.val_images)}."
        )
        accepts = f"; it accepts {_pct(familiar.accept)} of the validation pictures"
    else:
        lines += ["(The check's measurements were not found with the run.)", ""]
        accepts = ""
    lines += [
        f"- Threshold: {threshold:.4f} (a picture whose unfamiliarity is above it is flagged"
        f"{accepts}).",
        "",
        "A picture's unfamiliarity is the cosine distance from its features (what the last "
        "layer sees) to those of the nearest training picture kept with the model, in units "
        "of that picture's class's own spread (how far its training pictures lie from each "
        "other): 0 for a copy of a training picture, larger the less it looks like any of "
        "them.",
        "",
        "`predict.py` answers `unfamiliar` in the `prediction` column for a picture above the "
        "threshold, with the class it is closest to in `nearest_class` and the score in "
        "`unfamiliarity`. `--unfamiliar-threshold X` moves the threshold (higher flags fewer "
        "pictures); `--no-unfamiliar` always names the nearest class. The ONNX model gives the "
        f"score as its output `{UNFAMILIARITY_NAME}` and the threshold as its metadata "
        "`unfamiliar_threshold`; `familiarity.npz` holds the training pictures' features for "
        "the timm model.",
    ]
    return lines


def _card_limits_and_parity(report: ExportReport) -> list[str]:
    """The model card's "What it must not be used for", parity table and file list."""
    has_check = report.unfamiliar_threshold is not None
    lines = [
        "",
        "## What it must not be used for",
        "",
        "- Pictures of anything but these classes: it flags many of them `unfamiliar` (see "
        "above) but not all, and answers with one of its classes for the rest."
        if has_check
        else "- Pictures of anything but these classes: it always answers with one of them, "
        "even for a picture of something else.",
        "- Pictures unlike the ones it learned from (other cameras, lighting, backgrounds, "
        "sizes): check it on such pictures first.",
        "- Decisions about people's health, safety, money, rights or jobs: it was not built "
        "or tested for that.",
        "",
        "## Same answers elsewhere (parity check)",
        "",
        f"At export, each format below was loaded from the files in this folder and run on "
        f"the validation pictures, then compared with {report.reference}."
        + (
            f" The unfamiliar flag was compared on the validation pictures and on "
            f"{report.foreign_images} everyday pictures of none of the classes."
            if report.foreign_images
            else ""
        ),
        "",
        "| format | pictures | same top class | largest probability difference | allowed | "
        "same unfamiliar flag | largest unfamiliarity difference | result |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for f in report.formats.values():
        result = f.status + (f" ({f.reason})" if f.reason else "")
        flag = f"{f.flag_agree} of {f.flag_images}" if f.flag_images else "-"
        lines.append(
            f"| {f.format} | {f.images} | {f.top1_agree} | {_fmt_diff(f.max_prob_diff)} | "
            f"{f.tolerance:g} | {flag} | {_fmt_diff(f.max_unfamiliarity_diff)} | {result} |"
        )
    lines += [""]
    lines += [f"- {note}" for note in report.notes]
    lines += [
        "",
        "## Files",
        "",
        "- `model/`: the model for timm/PyTorch (config.json, model.safetensors)",
        "- `model.onnx`: the same model with its preprocessing, for onnxruntime",
        *(
            [
                "- `familiarity.npz`: the unfamiliar check for the timm model (training pictures' "
                "features and the threshold)"
            ]
            if has_check
            else []
        ),
        "- `predict.py`, `requirements.txt`: run the model on a folder of pictures",
        "",
    ]
    return lines


def _weaknesses(preds: Predictions) -> list[str]:
    """The worst classes by recall and the most common mix-up, as Markdown lines."""
    classes, n = preds.classes, len(preds.labels)
    matrix = metrics.confusion_matrix(preds.labels, preds.preds, len(classes))
    worst = metrics.weakest_classes(
        metrics.per_class_report(preds.labels, preds.preds, len(classes))
    )
    lines: list[str] = []
    if not worst:
        lines.append(
            "It got every validation picture right. It will still make mistakes on new "
            "pictures, most likely on ones unlike those it learned from."
        )
    else:
        lines += ["The classes it most often misses (on the validation pictures):", ""]
        lines += [
            f"- {classes[c.index]}: found {c.tp} of {c.support} ({_pct(c.recall)})" for c in worst
        ]
        off = matrix - np.diag(np.diag(matrix))
        true, pred = np.unravel_index(int(off.argmax()), off.shape)
        lines += [
            "",
            f"The most common mix-up: {classes[true]} taken for {classes[pred]} "
            f"({off[true, pred]} times).",
        ]
    summary = metrics.accuracy_summary(preds.labels, preds.preds)
    if metrics.is_small_sample(summary.total, summary.ci_low, summary.ci_high):
        lines += ["", f"These numbers come from only {n} validation pictures: treat them as rough."]
    return lines


def _requirements() -> str:
    def version(name: str) -> str:
        try:
            return metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            return ""

    def line(name: str, lower: str | None = None) -> str:
        v = lower or version(name)
        return f"{name}>={v}" if v else name

    return "\n".join(
        [
            "# python predict.py needs Python 3.10 or newer and these packages.",
            "# The lower bounds are the versions this model was exported and checked with.",
            "# --format onnx needs only numpy, pillow and onnxruntime.",
            line("numpy"),
            line("pillow"),
            line("pillow-heif"),  # HEIC/HEIF photos (predict.py runs without it otherwise)
            line("onnxruntime"),
            "# --format safetensors (timm/PyTorch):",
            line("torch"),
            line("torchvision"),
            line("timm"),
            line("safetensors"),
            "",
        ]
    )


# ------------------------------------------------------------------------------- export


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _read_meta(run_dir: Path) -> dict[str, Any]:
    return dict(checkpoint.load(run_dir / checkpoint.BEST)["meta"])  # weights only: no code


def _evaluation_sections(run_dir: Path) -> dict[str, str]:
    """Interval, per-class scores and calibration for the model card (from predictions.json)."""
    from tl_core.analysis.evaluation import card_sections, evaluate_run

    return card_sections(evaluate_run(run_dir))


def export_run(
    run_dir: Path,
    out_zip: Path,
    data_root: Path | None = None,
    progress: Progress | None = None,
    *,
    corrections: dict[str, object] | None = None,
    extra_sections: dict[str, str] | None = None,
) -> ExportReport:
    """Write the run's best model as a zip bundle at ``out_zip`` and check it against the app.

    ``data_root`` is the imported data set the run trained on; without it the parity check
    is skipped. ``corrections``: the label review the run was trained with (its dict form).
    ``progress`` receives plain status lines. ``extra_sections`` go into the model card.
    Raises RunError when the run folder or its best.pt is missing or unreadable.
    """
    run_dir, out_zip = Path(run_dir), Path(out_zip)
    _check_export_paths(run_dir, out_zip, data_root)
    _say(progress, "Loading the trained model")
    meta = _read_meta(run_dir)
    cfg = TrainConfig.from_dict(meta.get("config", {}))
    plan = ComputePlan("cpu", None, False, torch.get_num_threads())  # fp32: the reference
    trained: TrainedModel = load_trained(run_dir, plan=plan)
    classes, data_config = trained.classes, trained.data_config
    spec = get_spec(trained.model_key)
    net = trained.net.eval()
    preds = load_predictions(run_dir)

    with tempfile.TemporaryDirectory(prefix="tl-export-") as tmp:
        bundle = Path(tmp) / "bundle"
        bundle.mkdir()
        _write_model_files(
            bundle, net, data_config, classes, spec.title, progress, trained.familiarity
        )

        report = _check_parity(bundle, run_dir, trained, preds, data_root, progress)
        report.out_zip, report.model, report.timm_name = out_zip, spec.key, spec.timm_name

        data = _data_facts(
            classes,
            preds,
            data_root,
            cfg,
            corrections,
        )
        card = model_card(
            title=f"{spec.title} for {len(classes)} classes",
            spec_title=spec.title,
            timm_name=spec.timm_name,
            cfg=cfg,
            data_config=data_config,
            classes=classes,
            data=data,
            n_backbone=max_trainable_groups(net),
            best_epoch=meta.get("epoch"),
            val_accuracy=meta.get("val_accuracy"),
            preds=preds,
            report=report,
            familiar=load_report(run_dir) if trained.familiarity is not None else None,
            extra_sections=extra_sections
            if extra_sections is not None
            else _evaluation_sections(run_dir),
        )
        (bundle / "README.md").write_text(card, encoding="utf-8")

        _say(progress, "Writing the zip")
        _write_zip(bundle, out_zip)
    report.bytes = out_zip.stat().st_size
    return report


def _check_export_paths(run_dir: Path, out_zip: Path, data_root: Path | None) -> None:
    """RunError unless the run has a best.pt, ``out_zip`` is no folder and ``data_root`` is."""
    if not run_dir.is_dir():
        raise RunError(f"There is no run folder at {run_dir}.")
    if not (run_dir / "best.pt").is_file():
        raise RunError(f"The run in {run_dir} has no trained model yet (best.pt is missing).")
    if out_zip.is_dir():
        raise RunError(f"{out_zip} is a folder; give a file name ending in .zip.")
    if data_root is not None and not Path(data_root).is_dir():
        raise RunError(f"There is no data set folder at {data_root}.")


def _write_model_files(
    bundle: Path,
    net: nn.Module,
    data_config: DataConfig,
    classes: list[str],
    title: str,
    progress: Progress | None,
    familiar: Familiarity | None = None,
) -> None:
    """The timm folder, model.onnx, predict.py and requirements.txt in ``bundle``; with the
    run's unfamiliar check (``familiar``) also familiarity.npz, and model.onnx scores it."""
    _say(progress, "Writing the model for timm (safetensors)")
    write_timm_folder(net, data_config, classes, bundle / "model")
    if familiar is not None:
        np.savez(
            bundle / standalone_predict.FAMILIARITY_FILE,
            bank=np.asarray(familiar.bank, dtype=np.float16),  # unit rows: 2 bytes each number
            row_scale=np.asarray(familiar.row_scale, dtype=np.float32),
            threshold=np.array(familiar.threshold, dtype=np.float64),
            accept=np.array(familiar.accept, dtype=np.float64),
        )
    _say(progress, "Converting the model to ONNX")
    try:
        export_onnx(net, data_config, classes, bundle / "model.onnx", familiar)
    except RunError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RunError(
            f"{title} could not be converted to ONNX ({type(exc).__name__}: {first})."
        ) from exc
    shutil.copyfile(Path(standalone_predict.__file__), bundle / "predict.py")
    (bundle / "requirements.txt").write_text(_requirements(), encoding="utf-8")


def _write_zip(bundle: Path, out_zip: Path) -> None:
    """Zip ``bundle`` into ``out_zip``, which appears only once complete."""
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    partial = out_zip.with_name(out_zip.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                path.chmod(0o644)  # safetensors writes 0600: readable for all once unzipped
                zf.write(path, path.relative_to(bundle).as_posix())
    partial.replace(out_zip)


def _note_recorded(
    report: ExportReport, reference: np.ndarray, preds: Predictions, run_dir: Path
) -> None:
    """How the app's full-precision answers compare with predictions.json, in the notes."""
    n = len(preds.files)
    recorded = np.asarray(preds.probs, dtype=np.float64)
    report.recorded_top1_agree = int((reference.argmax(1) == np.asarray(preds.preds)).sum())
    report.recorded_max_prob_diff = float(np.abs(reference - recorded).max())
    if report.recorded_max_prob_diff > RECORDED_TOLERANCE or report.recorded_top1_agree != n:
        precision = _recorded_precision(run_dir)
        why = (
            f"the run scored them in {precision} mixed precision, which is faster but rounds"
            if precision
            else "the data set or the scoring changed since training"
        )
        report.notes.append(
            f"The validation predictions saved with the run differ from a full-precision "
            f"rescoring by up to {report.recorded_max_prob_diff:.1e} in probability "
            f"({n - report.recorded_top1_agree} of {n} top classes differ): {why}. The "
            "exported model computes in full precision, like the rescoring."
        )
    else:
        report.notes.append(
            f"The app's full-precision answers equal the validation predictions saved with the "
            f"run (largest difference {report.recorded_max_prob_diff:.1e})."
        )


def _check_parity(
    bundle: Path,
    run_dir: Path,
    trained: TrainedModel,
    preds: Predictions | None,
    data_root: Path | None,
    progress: Progress | None,
) -> ExportReport:
    """Run the validation pictures through the app (fp32) and each exported format."""
    formats = {
        "safetensors": FormatParity("safetensors", "not checked", SAFETENSORS_TOLERANCE),
        "onnx": FormatParity("onnx", "not checked", ONNX_TOLERANCE),
    }
    fam = trained.familiarity
    report = ExportReport(
        out_zip=Path(),
        bytes=0,
        model="",
        timm_name="",
        classes=trained.classes,
        formats=formats,
        reference="the app's own predictions in full precision (float32)",
        unfamiliar_threshold=None if fam is None else fam.threshold,
    )

    def skip(reason: str) -> ExportReport:
        for f in formats.values():
            f.reason = reason
        return report

    if preds is None or not preds.files:
        return skip("the run has no validation predictions (predictions.json)")
    if preds.classes != trained.classes:
        return skip("predictions.json belongs to other classes than best.pt")
    if data_root is None:
        return skip("the run's data set was not found (pass its folder)")
    files = [Path(data_root) / f for f in preds.files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        return skip(f"{len(missing)} validation pictures are missing from {data_root}")

    n = len(files)
    _say(progress, f"Checking: the app's predictions on {n} validation pictures")
    guesses = trained.guess(files)
    reference = guesses.probs.astype(np.float64)
    _note_recorded(report, reference, preds, run_dir)

    with tempfile.TemporaryDirectory(prefix="tl-everyday-") as tmp:
        flags = None
        if fam is not None and guesses.unfamiliarity is not None:
            foreign = _write_foreign(Path(tmp))
            _say(
                progress, f"Checking: the app's unfamiliar flag on {len(foreign)} everyday pictures"
            )
            far = trained.guess(foreign).unfamiliarity
            if far is not None:  # always: the same model, with its check
                scores = np.concatenate([guesses.unfamiliarity, far]).astype(np.float64)
                flags = _Flags(foreign, scores, fam.threshold)
                report.foreign_images = len(foreign)
        _say(progress, "Checking: the safetensors model with timm")
        formats["safetensors"] = _format_parity(
            "safetensors", SAFETENSORS_TOLERANCE, bundle, files, reference, preds, flags
        )
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            formats["onnx"].reason = "onnxruntime is not installed here"
        else:
            _say(progress, "Checking: the ONNX model with onnxruntime")
            formats["onnx"] = _format_parity(
                "onnx", ONNX_TOLERANCE, bundle, files, reference, preds, flags
            )
    return report
