"""``model.tflite`` (LiteRT, formerly TensorFlow Lite) and ``labels.txt``, for Android and small
devices: one picture already resized and centre-cropped to the model's input size, uint8 RGB
(1, height, width, 3), in; normalisation, the network and softmax inside; "probabilities" and
"logits" out, and "unfamiliarity" when the run has the unfamiliar check.

Converted with litert-torch and checked with the LiteRT interpreter (``ai-edge-litert``), both
in the optional ``export`` extra and imported only when used (they load parts of TensorFlow).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from tl_core.data import standalone_predict
from tl_core.errors import RunError
from tl_core.export.extras import LITERT_MODULES, missing_sentence
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
from tl_core.training.inputs import Normalize, cache_side, make_transforms, square_of

__all__ = [
    "FILE",
    "INPUT_NAME",
    "LABELS_FILE",
    "LITERT_TOLERANCE",
    "PART",
    "LiteRTPipeline",
    "LiteRTPredictor",
    "export_litert",
    "missing",
    "read_data_config",
]

FILE = "model.tflite"
LABELS_FILE = "labels.txt"  # one class a line, in the order of the outputs
INPUT_NAME = "image"
PROBABILITIES, LOGITS, UNFAMILIARITY = "probabilities", "logits", "unfamiliarity"
# The same crops as the app and the same float32 network, computed by XNNPACK in another
# order: measured at most 1.0e-6 in probability (EfficientNet-Lite0, 48 texture pictures).
LITERT_TOLERANCE = 1e-3
MODULES = LITERT_MODULES


class LiteRTPipeline(nn.Module):
    """uint8 RGB crops (1, height, width, 3) -> {"probabilities", "logits"} (1, classes), and
    "unfamiliarity" (1,) with the run's unfamiliar check (``familiar``): the app's own modules
    (:class:`Normalize`, :class:`WithFeatures`, :class:`NearestDistance`) in a channels-last
    wrapper, so a phone's camera bytes go in as they are."""

    def __init__(
        self, model: nn.Module, cfg: DataConfig, familiar: Familiarity | None = None
    ) -> None:
        super().__init__()
        self.with_features = WithFeatures(Normalize(cfg), model)
        self.distance = None if familiar is None else NearestDistance.of(familiar)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, features = self.with_features(image.permute(0, 3, 1, 2))
        out = {PROBABILITIES: logits.softmax(-1), LOGITS: logits}
        if self.distance is not None:
            out[UNFAMILIARITY] = self.distance(features)
        return out


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """litert-torch without its progress lines on the console (restored afterwards)."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    before = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def export_litert(
    model: nn.Module, cfg: DataConfig, path: Path, familiar: Familiarity | None = None
) -> None:
    """Write ``model`` as a LiteRT flatbuffer at ``path``: signature "serving_default", input
    ``image`` uint8 (1, height, width, 3) at the model's input size, outputs as
    :class:`LiteRTPipeline` gives them."""
    import litert_torch

    pipeline = LiteRTPipeline(model, cfg, familiar).eval()
    height, width = int(cfg.input_size[-2]), int(cfg.input_size[-1])
    example = torch.zeros((1, height, width, 3), dtype=torch.uint8)
    with _quiet_converter(), torch.no_grad():
        edge = litert_torch.convert(pipeline, sample_kwargs={INPUT_NAME: example})
        edge.export(str(path))


def _write(bundle: Path, model: ModelToExport) -> None:
    """model.tflite and labels.txt in ``bundle``; RunError, naming the model, when the model
    cannot be converted."""
    try:
        export_litert(model.net, model.data_config, bundle / FILE, model.familiar)
    except Exception as exc:
        (bundle / FILE).unlink(missing_ok=True)
        raise RunError(
            f"{model.title} could not be converted to LiteRT ({error_line(exc)})."
        ) from exc
    text = "".join(f"{name}\n" for name in model.classes)
    (bundle / LABELS_FILE).write_text(text, encoding="utf-8")


def read_data_config(bundle: Path) -> DataConfig:
    """The model's preprocessing, from the bundle's ``model/config.json`` (timm's
    ``pretrained_cfg``)."""
    raw = standalone_predict.read_config(bundle)["pretrained_cfg"]
    return DataConfig(
        input_size=tuple(int(v) for v in raw["input_size"]),  # type: ignore[arg-type]
        interpolation=str(raw["interpolation"]),
        mean=tuple(float(v) for v in raw["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in raw["std"]),  # type: ignore[arg-type]
        crop_pct=float(raw["crop_pct"]),
        crop_mode=str(raw.get("crop_mode", "center")),
    )


class LiteRTPredictor:
    """``model.tflite`` in the LiteRT interpreter. Each picture is made into the crop the app
    makes (shorter side resized to ``floor(input / crop_pct)``, centre square, centre crop to
    the input size: the app's own functions) before it goes in; the class names come from
    ``labels.txt``, the unfamiliar threshold from ``familiarity.npz``."""

    def __init__(self, bundle: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(
            model_path=str(bundle / FILE), num_threads=threads or min(4, os.cpu_count() or 1)
        )
        self.runner = self.interpreter.get_signature_runner()
        self.classes = (bundle / LABELS_FILE).read_text(encoding="utf-8").splitlines()
        self.data_config = read_data_config(bundle)
        self._crop = make_transforms(self.data_config, "none")[1]
        check = standalone_predict.read_familiarity(bundle)
        self.has_check = UNFAMILIARITY in self.runner.get_output_details() and check is not None
        self.threshold: float | None = check[2] if self.has_check and check else None

    def crop(self, image: Image.Image) -> np.ndarray:
        """An RGB picture as the model's input: uint8 (1, height, width, 3)."""
        cfg = self.data_config
        square = square_of(image.convert("RGB"), cache_side(cfg), cfg.interpolation)
        return np.ascontiguousarray(self._crop(square).permute(1, 2, 0).numpy()[None])

    def run(self, crop: np.ndarray) -> dict[str, Any]:
        """The model's outputs for one crop made by :meth:`crop`."""
        return self.runner(**{INPUT_NAME: crop})

    def scores(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (N, classes) and unfamiliarity (N,; None without the check) as
        float32, one picture per call."""
        probs = [np.zeros((0, len(self.classes)), dtype=np.float32)]
        far = [np.zeros(0, dtype=np.float32)]
        for image in images:
            got = self.run(self.crop(image))
            probs.append(np.asarray(got[PROBABILITIES], dtype=np.float32))
            if self.has_check:
                far.append(np.asarray(got[UNFAMILIARITY], dtype=np.float32).reshape(-1))
        return np.concatenate(probs), np.concatenate(far) if self.has_check else None

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Class probabilities (N, classes) as float32."""
        return self.scores(images)[0]


def _load(bundle: Path) -> LiteRTPredictor:
    return LiteRTPredictor(bundle)


def missing() -> str:
    """The install sentence when litert-torch or the LiteRT interpreter is not installed."""
    return missing_sentence("LiteRT", MODULES)


def _unavailable() -> str:
    if importlib.util.find_spec("ai_edge_litert") is None:
        return "the LiteRT interpreter (ai-edge-litert) is not installed here"
    return ""


def _input_line() -> str:
    return (
        f"input `{INPUT_NAME}` takes one picture as uint8 RGB, shaped (1, height, width, 3) at "
        'the model\'s input size, made as "Input" under "The model" says (shorter side '
        "resized, then the centre cut out); normalisation happens inside"
    )


def _usage(has_check: bool) -> list[str]:
    outputs = f"`{PROBABILITIES}` and `{LOGITS}` (1, classes), in the order of `{LABELS_FILE}`"
    if has_check:
        outputs += (
            f', and `{UNFAMILIARITY}` (1,): above the threshold (see "Pictures of none of '
            'its classes") a picture looks like none of the classes'
        )
    return [
        f"- **LiteRT / TFLite** (`{FILE}`, Android and small devices): {_input_line()}. "
        f"Outputs: {outputs}. Class names: `{LABELS_FILE}`, one a line."
    ]


def _files(has_check: bool) -> list[str]:
    return [
        f"- `{FILE}`: the model for LiteRT (TensorFlow Lite), Android and small devices",
        f"- `{LABELS_FILE}`: the class names, one a line, in the order of the model's outputs",
    ]


def _example(has_check: bool) -> str:
    line = (
        "from ai_edge_litert.interpreter import Interpreter\n"
        f"run = Interpreter(model_path='{FILE}').get_signature_runner()\n"
        f"out = run({INPUT_NAME}=crop)  # crop: uint8 (1, h, w, 3); out['{PROBABILITIES}']"
    )
    return line + (f", out['{UNFAMILIARITY}']" if has_check else "")


def _paths(bundle: Path) -> list[Path]:
    return [bundle / FILE, bundle / LABELS_FILE]


PART = BundlePart(
    name="tflite",
    write=_write,
    writing="Converting the model to LiteRT (TFLite)",
    usage=_usage,
    files=_files,
    parity=ParityCheck(
        tolerance=LITERT_TOLERANCE,
        checking="Checking: the LiteRT model with the LiteRT interpreter",
        load=_load,
        unavailable=_unavailable,
    ),
    option=FormatOption(
        key="tflite",
        title="LiteRT / TFLite (Android, small devices)",
        paths=_paths,
        example=_example,
        missing=missing,
    ),
)
