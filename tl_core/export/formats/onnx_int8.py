"""``model_int8.onnx``: ``model.onnx`` with the network's weights and activations in 8 bits.

Made with onnxruntime's static quantization, calibrated on training pictures read as the app
reads them. Only the network between the preprocessing and the logits is quantized (its
convolutions, ReLU6 clips and residual additions); the resizing, the softmax and the
unfamiliarity (the distance to the training pictures' features) stay in float32. The input,
outputs and metadata are those of ``model.onnx``.

The file holds standard ONNX operators only (QuantizeLinear / DequantizeLinear around the
float ones, "QDQ" format): onnxruntime fuses them into 8-bit kernels when it loads the model,
in Python and in the browser (onnxruntime-web).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from tl_core.analysis.metrics import wilson_interval
from tl_core.data import standalone_predict
from tl_core.errors import RunError
from tl_core.export.formats.base import (
    BundlePart,
    FormatOption,
    ModelToExport,
    ParityCheck,
    error_line,
)
from tl_core.export.formats.onnx_model import FILE as ONNX_FILE
from tl_core.export.formats.onnx_model import OUTPUT_NAMES, usage_example
from tl_core.export.report import FormatParity

__all__ = [
    "CALIBRATION_PICTURES",
    "CHOSEN",
    "FILE",
    "INT8_TOLERANCE",
    "PART",
    "Quantization",
    "accuracy_kept",
    "calibration_subset",
    "judge",
    "network_nodes",
    "quantize_model",
]

FILE = "model_int8.onnx"
CALIBRATION_PICTURES = 200  # at most this many training pictures, spread over the classes
# 8-bit rounding moves the probabilities: the parity check judges the 8-bit model by its
# accuracy (:func:`judge`), and this is only the largest difference it reports against.
INT8_TOLERANCE = 0.25


@dataclass(frozen=True)
class Quantization:
    """How the model is quantized (the choices onnxruntime.quantization offers)."""

    quant_format: str = "QDQ"  # "QDQ" (standard ONNX) or "QOperator" (QLinear* operators)
    per_channel: bool = True  # one scale per output channel of each convolution
    method: str = "MinMax"  # calibration: "MinMax", "Entropy" or "Percentile"
    activations: str = "QUInt8"  # activation type: "QUInt8" or "QInt8"
    weights: str = "QInt8"
    op_types: tuple[str, ...] = ("Conv", "Clip", "Add")  # the network ops in 8 bits
    pictures: int = CALIBRATION_PICTURES
    float_head: bool = False  # keep the last convolution (it makes the features) in float


CHOSEN = Quantization()


def calibration_subset(paths: Sequence[Path], n: int) -> list[Path]:
    """At most ``n`` of ``paths``, evenly spaced through the list (which is spread over the
    classes), in their order."""
    if len(paths) <= n:
        return list(paths)
    picks = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[int(k)] for k in picks]


class _Pictures:
    """The calibration pictures, one uint8 (1, H, W, 3) batch at a time, read as the app
    reads them; files that cannot be read are left out."""

    def __init__(self, paths: Sequence[Path], input_name: str) -> None:
        self.paths = list(paths)
        self.input_name = input_name
        self.used = 0
        self._batches: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def _read(self) -> Iterator[dict[str, np.ndarray]]:
        self.used = 0
        for path in self.paths:
            try:
                img = standalone_predict.open_image(path)
            except ValueError:
                continue
            self.used += 1
            yield {self.input_name: np.asarray(img, dtype=np.uint8)[None]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._read()


def network_nodes(proto: Any, output: str = OUTPUT_NAMES[1]) -> list[str]:
    """Names of the nodes between the preprocessing and ``output`` (the logits): what feeds
    the logits, less what feeds the first convolution (resizing, cropping, normalising)."""
    producer = {o: node for node in proto.graph.node for o in node.output}

    def feeding(tensor: str) -> set[str]:
        found: set[str] = set()
        stack = [tensor]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in found:
                found.add(node.name)
                stack.extend(node.input)
        return found

    first = next((n for n in proto.graph.node if n.op_type == "Conv"), None)
    before = feeding(first.input[0]) if first is not None else set()
    logits = feeding(output)
    return [n.name for n in proto.graph.node if n.name in logits and n.name not in before]


def _quantized_nodes(proto: Any, how: Quantization) -> list[str]:
    """The network's nodes, less those from its last convolution on with ``float_head``."""
    nodes = network_nodes(proto)
    if not how.float_head:
        return nodes
    order = {n.name: k for k, n in enumerate(proto.graph.node)}
    convs = [order[n.name] for n in proto.graph.node if n.op_type == "Conv" and n.name in nodes]
    return [n for n in nodes if not convs or order[n] < max(convs)]


def _metadata(source: Any, target: Path) -> None:
    """Give ``target`` the doc strings and metadata of ``source`` (classes, preprocessing,
    threshold), saying that it is the 8-bit copy."""
    import onnx

    proto = onnx.load(str(target))
    proto.doc_string = (
        source.doc_string + " Weights and activations of the network are 8-bit integers "
        "(onnxruntime static quantization); the preprocessing, softmax and unfamiliarity "
        "stay in float32."
    )
    del proto.metadata_props[:]
    proto.metadata_props.extend(source.metadata_props)
    proto.graph.input[0].doc_string = source.graph.input[0].doc_string
    onnx.checker.check_model(proto)
    onnx.save(proto, str(target))


def quantize_model(
    source: Path, target: Path, pictures: Sequence[Path], how: Quantization = CHOSEN
) -> int:
    """Write the 8-bit copy of the ONNX model ``source`` at ``target``, calibrated on
    ``pictures`` (at most ``how.pictures`` of them); returns how many were used."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = onnx.load(str(source))
    reader = _Pictures(calibration_subset(pictures, how.pictures), proto.graph.input[0].name)
    quantize_static(
        proto,
        str(target),
        reader,
        quant_format=QuantFormat[how.quant_format],
        op_types_to_quantize=list(how.op_types),
        nodes_to_quantize=_quantized_nodes(proto, how),
        per_channel=how.per_channel,
        activation_type=QuantType[how.activations],
        weight_type=QuantType[how.weights],
        calibrate_method=CalibrationMethod[how.method],
    )
    if reader.used == 0:
        raise RunError("None of the training pictures could be read to calibrate the model.")
    _metadata(proto, target)
    return reader.used


def refit_threshold(path: Path, validation: Sequence[Path], accept: float) -> float:
    """Set the 8-bit model's own unfamiliar threshold in its metadata, the way the app set
    the run's: accepting the same share ``accept`` of the validation pictures, now scored by
    the 8-bit model (8-bit rounding moves the scores: on a run whose classes are tight, by up
    to two thirds of the full model's threshold). Returns the threshold."""
    import onnx

    from tl_core.training.familiarity import threshold_for

    predictor = standalone_predict.OnnxPredictor(path.parent, file=path.name)
    scores = [
        u for _, p, u, _ in standalone_predict.score_files(predictor, validation) if u is not None
    ]
    if not scores:
        raise RunError("The 8-bit model could not score the validation pictures.")
    threshold = float(threshold_for(np.asarray(scores, dtype=np.float64), accept))
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "unfamiliar_threshold":
            prop.value = json.dumps(threshold)
    onnx.save(proto, str(path))
    return threshold


def _write(bundle: Path, model: ModelToExport) -> None:
    """model_int8.onnx from the model.onnx just written; RunError when it cannot be made."""
    if not model.calibration:
        raise RunError(
            "The 8-bit model needs some of the training pictures to set its number ranges, "
            "and the run's data set was not found."
        )
    try:
        quantize_model(bundle / ONNX_FILE, bundle / FILE, model.calibration)
        if model.familiar is not None and model.validation:
            refit_threshold(bundle / FILE, model.validation, model.familiar.accept)
    except RunError:
        raise
    except Exception as exc:
        raise RunError(f"{model.title} could not be made 8-bit ({error_line(exc)}).") from exc


def accuracy_kept(correct: int, app_correct: int, n: int) -> bool:
    """Whether ``correct`` of ``n`` pictures right is as good as the app's ``app_correct``
    within the validation set's noise: the drop in accuracy is no larger than half the width
    of the 95% interval of the app's accuracy on ``n`` pictures."""
    if n <= 0 or correct >= app_correct:
        return True
    low, high = wilson_interval(app_correct, n)
    return (app_correct - correct) / n <= (high - low) / 2


def _allowed(app_correct: int, n: int) -> int:
    """The most pictures the 8-bit model may lose to the app and still keep its accuracy."""
    lost = 0
    while lost < app_correct and accuracy_kept(app_correct - lost - 1, app_correct, n):
        lost += 1
    return lost


def judge(parity: FormatParity) -> str:
    """Why the 8-bit model is not offered ("" when it is): its accuracy on the validation
    pictures, or how often its unfamiliar flag is right (validation pictures not flagged,
    everyday ones flagged), is lower than the full model's by more than chance explains."""
    n = parity.images
    if n <= 0:
        return ""
    app = parity.app_correct
    correct = parity.correct
    if app is None or correct is None:  # no labels to count: every changed answer may be wrong
        app, correct = n, parity.top1_agree
    if not accuracy_kept(correct, app, n):
        return (
            f"the 8-bit model gets {app - correct} more of {n} validation pictures wrong than "
            f"the full model, more than chance explains (up to {_allowed(app, n)} would be)"
        )
    m, right, app_right = parity.flag_images, parity.flag_right, parity.app_flag_right
    if m and right is not None and app_right is not None and not accuracy_kept(right, app_right, m):
        return (
            f"the 8-bit model's unfamiliar flag is wrong on {app_right - right} more of {m} "
            "pictures (your validation pictures and everyday ones) than the full model's, more "
            f"than chance explains (up to {_allowed(app_right, m)} would be)"
        )
    return ""


def _usage(has_check: bool) -> list[str]:
    return [
        f"- **ONNX, 8-bit**: `{FILE}` takes the same input and gives the same outputs as "
        f"`{ONNX_FILE}`, about a quarter of its size and faster on most processors; its "
        "answers may differ slightly (see the check above)."
    ]


def _files(has_check: bool) -> list[str]:
    return [f"- `{FILE}`: the ONNX model with 8-bit weights (smaller, faster)"]


def _example(has_check: bool) -> str:
    return usage_example(FILE)


def _unavailable() -> str:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed here"
    return ""


def _missing() -> str:
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        return "onnxruntime and onnx are needed to make the 8-bit model"
    return ""


PART = BundlePart(
    name="int8",
    write=_write,
    writing=f"Making the small 8-bit model (calibrating on up to {CALIBRATION_PICTURES} "
    "training pictures)",
    usage=_usage,
    files=_files,
    parity=ParityCheck(
        tolerance=INT8_TOLERANCE,
        checking="Checking: the 8-bit model with onnxruntime",
        load=partial(standalone_predict.load_predictor, fmt="int8"),
        unavailable=_unavailable,
        judge=judge,
    ),
    option=FormatOption(
        key="int8",
        title="ONNX, 8-bit (small, fast)",
        paths=lambda bundle: [bundle / FILE],
        example=_example,
        needs=("onnx",),
        missing=_missing,
    ),
)
