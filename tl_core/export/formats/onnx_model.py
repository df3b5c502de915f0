"""``model.onnx``: uint8 RGB pictures (batch, height, width, 3) of any size in;
"probabilities" and "logits" out, and "unfamiliarity" when the run has the unfamiliar check.
Resizing, cropping and normalising happen inside, so onnxruntime alone predicts as the app."""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tl_core.data import standalone_predict
from tl_core.errors import RunError
from tl_core.export.formats.base import (
    BundlePart,
    FormatOption,
    ModelToExport,
    ParityCheck,
    error_line,
)
from tl_core.models.catalog import DataConfig
from tl_core.training.familiar_pass import NearestDistance, WithFeatures
from tl_core.training.familiarity import Familiarity
from tl_core.training.inputs import Normalize, cache_side

__all__ = [
    "INPUT_NAME",
    "ONNX_OPSET",
    "ONNX_TOLERANCE",
    "OUTPUT_NAMES",
    "PART",
    "UNFAMILIARITY_NAME",
    "OnnxPipeline",
    "export_onnx",
    "usage_example",
]

INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "logits")  # and UNFAMILIARITY_NAME with the unfamiliar check
UNFAMILIARITY_NAME = "unfamiliarity"
ONNX_OPSET = 18  # the first opset whose Resize has antialias
# The ONNX model resizes in float32 (rounded to whole pixel values after each pass, as Pillow
# does), Pillow in fixed-point integers: pixels may differ by one level. Measured with
# EfficientNet-Lite0: at most 4.2e-4 (200 Fashion-MNIST validation pictures, 60 photo crops).
ONNX_TOLERANCE = 1e-2
FILE = "model.onnx"

_INTERPOLATION = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest-exact"}


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
    _describe(proto, cfg, classes, familiar)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _describe(
    proto: Any, cfg: DataConfig, classes: list[str], familiar: Familiarity | None
) -> None:
    """The model's doc strings and metadata: classes, preprocessing, the unfamiliar check."""
    import onnx

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


def _write(bundle: Path, model: ModelToExport) -> None:
    """model.onnx in ``bundle``; RunError, naming the model, when it cannot be converted."""
    try:
        export_onnx(model.net, model.data_config, model.classes, bundle / FILE, model.familiar)
    except RunError:
        raise
    except Exception as exc:
        raise RunError(
            f"{model.title} could not be converted to ONNX ({error_line(exc)})."
        ) from exc


def _usage(has_check: bool) -> list[str]:
    if has_check:
        outputs = (
            "`probabilities` and `logits`, shaped (batch, classes), in the class order above, "
            "and `unfamiliarity`, shaped (batch,): above the metadata's "
            "`unfamiliar_threshold` a picture looks like none of the classes."
        )
    else:
        outputs = "`probabilities` and `logits`, shaped (batch, classes), in the class order above."
    return [
        f"- **ONNX**: input `{INPUT_NAME}` takes RGB pictures as uint8, shaped (batch, height, "
        "width, 3), of any size; the model resizes, crops and normalises them itself. Outputs: "
        + outputs
    ]


def _files(has_check: bool) -> list[str]:
    return ["- `model.onnx`: the same model with its preprocessing, for onnxruntime"]


def _unavailable() -> str:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed here"
    return ""


def usage_example(file: str) -> str:
    """Three lines that run the ONNX model ``file`` (model.onnx or its 8-bit copy) on a photo."""
    return (
        "import numpy as np, onnxruntime as ort; from PIL import Image\n"
        f'session = ort.InferenceSession("{file}")\n'
        f'probs = session.run(["probabilities"], {{"{INPUT_NAME}": np.asarray('
        'Image.open("photo.jpg").convert("RGB"))[None]})[0]'
    )


def _example(has_check: bool) -> str:
    return usage_example(FILE)


PART = BundlePart(
    name="onnx",
    write=_write,
    writing="Converting the model to ONNX",
    usage=_usage,
    files=_files,
    parity=ParityCheck(
        tolerance=ONNX_TOLERANCE,
        checking="Checking: the ONNX model with onnxruntime",
        load=partial(standalone_predict.load_predictor, fmt="onnx"),
        unavailable=_unavailable,
    ),
    option=FormatOption(
        key="onnx",
        title="ONNX (full precision)",
        paths=lambda bundle: [bundle / FILE],
        example=_example,
    ),
)
