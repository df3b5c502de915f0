"""``model.mlpackage`` (Core ML, ML Program) for iPhone, iPad and Mac: an image classifier whose
input ``image`` is an RGB picture at the model's input size, so Vision can feed it a camera
frame; normalisation inside; outputs the class (``classLabel``), every class's probability
(``classLabel_probs``) and, with the unfamiliar check, ``unfamiliarity``.

Core ML models run only on Apple devices: here the package's description is read back and
checked (:func:`offline_check`), its answers are not. Converted with coremltools, in the
optional ``export`` extra and imported only when used.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl_core.errors import RunError
from tl_core.export.extras import COREML_MODULES, missing_sentence
from tl_core.export.formats.base import BundlePart, FormatOption, ModelToExport, error_line
from tl_core.models.catalog import DataConfig
from tl_core.training.familiar_pass import NearestDistance, WithFeatures
from tl_core.training.familiarity import Familiarity
from tl_core.training.inputs import Normalize, cache_side

__all__ = [
    "CANNOT_RUN",
    "FILE",
    "INPUT_NAME",
    "PART",
    "CoreMLPipeline",
    "describe_package",
    "export_coreml",
    "missing",
    "offline_check",
]

FILE = "model.mlpackage"  # a folder
INPUT_NAME = "image"
LABEL, PROBABILITIES = "classLabel", "classLabel_probs"  # Core ML's classifier outputs
UNFAMILIARITY = "unfamiliarity"
CANNOT_RUN = (
    "Core ML models run only on Apple devices; on Linux its answers cannot be checked. Its "
    "description (input picture size and colours, class names, outputs) was read back and "
    "checked."
)


class CoreMLPipeline(nn.Module):
    """Float RGB pixels 0-255 (1, 3, height, width), as Core ML hands over an image input ->
    probabilities (1, classes), and (unfamiliarity (1,), probabilities) with the run's
    unfamiliar check: the app's own modules. The probabilities are computed last, since
    coremltools attaches its classifier to the graph's last result."""

    def __init__(
        self, model: nn.Module, cfg: DataConfig, familiar: Familiarity | None = None
    ) -> None:
        super().__init__()
        self.with_features = WithFeatures(Normalize(cfg), model)
        self.distance = None if familiar is None else NearestDistance.of(familiar)

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.with_features(image)
        if self.distance is None:
            return logits.softmax(-1)
        far = self.distance(features)
        return logits.softmax(-1), far


def export_coreml(
    model: nn.Module,
    cfg: DataConfig,
    classes: list[str],
    path: Path,
    familiar: Familiarity | None = None,
) -> None:
    """Write ``model`` as a Core ML ML Program package at ``path``: input ``image`` (RGB,
    the model's input size), classifier outputs over ``classes`` and, with ``familiar``,
    ``unfamiliarity``. In float32, as the app computes (float16 could move the unfamiliar
    score across its threshold, and here nothing can check it)."""
    import coremltools as ct

    pipeline = CoreMLPipeline(model, cfg, familiar).eval()
    height, width = int(cfg.input_size[-2]), int(cfg.input_size[-1])
    example = torch.zeros((1, 3, height, width))
    with torch.no_grad():
        program = torch.export.export(pipeline, (example,)).run_decompositions({})
    converted = ct.convert(
        program,
        inputs=[
            ct.ImageType(
                name=INPUT_NAME, shape=(1, 3, height, width), color_layout=ct.colorlayout.RGB
            )
        ],
        classifier_config=ct.ClassifierConfig(list(classes)),
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS15,
    )
    spec = converted.get_spec()
    for output in list(spec.description.output):
        if output.name not in (LABEL, PROBABILITIES):  # the unfamiliarity's generated name
            ct.utils.rename_feature(spec, output.name, UNFAMILIARITY)
    mlmodel = ct.models.MLModel(spec, weights_dir=converted.weights_dir)
    _describe(mlmodel, cfg, classes, familiar)
    mlmodel.save(str(path))


def _describe(
    mlmodel: Any, cfg: DataConfig, classes: list[str], familiar: Familiarity | None
) -> None:
    """What Xcode shows: the descriptions of the model, its input and outputs; metadata."""
    width, height = int(cfg.input_size[-1]), int(cfg.input_size[-2])
    mlmodel.short_description = (
        f"Image classifier for {len(classes)} classes, exported by Transfer Learning Studio."
    )
    margin = (1.0 - cfg.crop_pct) / 2
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB picture, {width}x{height}. The app resizes a picture's shorter side to "
        f"{cache_side(cfg)} ({cfg.interpolation}) and keeps the centre; with Vision, "
        f"regionOfInterest = CGRect(x: {margin:.4g}, y: {margin:.4g}, width: "
        f"{cfg.crop_pct:.4g}, height: {cfg.crop_pct:.4g}) and .centerCrop do the same"
    )
    mlmodel.output_description[LABEL] = "The most likely class"
    mlmodel.output_description[PROBABILITIES] = "Each class's probability"
    meta = mlmodel.user_defined_metadata
    meta["classes"] = json.dumps(classes)
    meta["preprocessing"] = json.dumps(asdict(cfg))
    if familiar is not None:
        mlmodel.output_description[UNFAMILIARITY] = (
            "How unlike the training pictures it is; above unfamiliar_threshold (metadata) "
            "it looks like none of the classes"
        )
        meta["unfamiliar_threshold"] = json.dumps(familiar.threshold)


def _write(bundle: Path, model: ModelToExport) -> None:
    """model.mlpackage in ``bundle``; RunError, naming the model, when it cannot be
    converted."""
    try:
        export_coreml(model.net, model.data_config, model.classes, bundle / FILE, model.familiar)
    except Exception as exc:
        shutil.rmtree(bundle / FILE, ignore_errors=True)
        raise RunError(
            f"{model.title} could not be converted to Core ML ({error_line(exc)})."
        ) from exc


def describe_package(path: Path) -> dict[str, Any]:
    """What a saved package says of itself: its input (name, kind, width, height, colours),
    class labels (from the program's classify step), output names in the description and in
    the program, and its user metadata."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    desc = spec.description
    first = desc.input[0] if desc.input else None
    image = first.type.imageType if first is not None else None
    colours = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace
    main = spec.mlProgram.functions.get("main")
    block = main.block_specializations[main.opset] if main is not None else None
    labels: list[str] = []
    for op in block.operations if block is not None else []:
        if op.type == "classify":
            items = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            labels = [str(v.immediateValue.tensor.strings.values[0]) for v in items]
    return {
        "kind": spec.WhichOneof("Type"),
        "inputs": [i.name for i in desc.input],
        "input_type": first.type.WhichOneof("Type") if first is not None else None,
        "width": int(image.width) if image is not None else 0,
        "height": int(image.height) if image is not None else 0,
        "colours": colours.Name(image.colorSpace) if image is not None else "",
        "labels": labels,
        "outputs": [o.name for o in desc.output],
        "program_outputs": list(block.outputs) if block is not None else [],
        "predicted": (desc.predictedFeatureName, desc.predictedProbabilitiesName),
        "metadata": dict(desc.metadata.userDefined),
    }


def offline_check(bundle: Path, model: ModelToExport) -> str:
    """ "" when ``model.mlpackage`` in ``bundle`` reads back as written: an ML Program whose
    input ``image`` is an RGB picture of the model's input size, whose class labels are the
    run's classes in order and whose outputs are the classifier's (and ``unfamiliarity``
    with the unfamiliar check); else the first problem found."""
    path = bundle / FILE
    if not path.is_dir():
        return f"{FILE} was not written"
    try:
        got = describe_package(path)
    except Exception as exc:
        return f"{FILE} could not be read back ({type(exc).__name__})"
    cfg = model.data_config
    width, height = int(cfg.input_size[-1]), int(cfg.input_size[-2])
    outputs = [LABEL, PROBABILITIES] + ([] if model.familiar is None else [UNFAMILIARITY])
    if got["kind"] != "mlProgram":
        return f"it is a {got['kind']} model, not an ML Program"
    if got["inputs"] != [INPUT_NAME] or got["input_type"] != "imageType":
        return f"its input is not one picture named '{INPUT_NAME}'"
    if (got["width"], got["height"]) != (width, height):
        return f"its input picture is {got['width']}x{got['height']}, not {width}x{height}"
    if got["colours"] != "RGB":
        return f"its input picture is {got['colours']}, not RGB"
    if got["labels"] != list(model.classes):
        return "its class labels are not the run's classes in the run's order"
    if got["outputs"] != outputs or got["program_outputs"] != outputs:
        return f"its outputs are {', '.join(got['outputs'])}, not {', '.join(outputs)}"
    if got["predicted"] != (LABEL, PROBABILITIES):
        return "it does not name its class and probability outputs as a classifier"
    return ""


def missing() -> str:
    """The install sentence when coremltools is not installed."""
    return missing_sentence("Core ML", COREML_MODULES)


def _usage(has_check: bool) -> list[str]:
    extra = (
        f", and `{UNFAMILIARITY}`: above the metadata's `unfamiliar_threshold` the picture "
        "looks like none of the classes"
        if has_check
        else ""
    )
    return [
        f"- **Core ML** (`{FILE}`, iPhone, iPad, Mac): input `{INPUT_NAME}` is an RGB picture "
        'at the model\'s input size (see "Input" under "The model"); Vision scales a camera '
        "frame to it (to cut it as the app does, set the request's `regionOfInterest` to the "
        "centre rectangle given in the input's description in Xcode) and the model normalises "
        "it itself. Outputs: `classLabel` (the class), `classLabel_probs` (each class's "
        f"probability){extra}. In Python on a Mac: "
        f"`coremltools.models.MLModel('{FILE}').predict({{'{INPUT_NAME}': pil_image}})`. "
        "Core ML models run only on Apple devices, so its answers were not checked here; its "
        "description (input, class names, outputs) was."
    ]


def _files(has_check: bool) -> list[str]:
    return [f"- `{FILE}`: the model for Core ML (iPhone, iPad, Mac), a folder"]


def _example(has_check: bool) -> str:
    return (
        f'let url = try MLModel.compileModel(at: URL(fileURLWithPath: "{FILE}"))\n'
        "let request = VNCoreMLRequest(model: try VNCoreMLModel(for: MLModel(contentsOf: url)))"
        " { r, _ in print((r.results as? [VNClassificationObservation])?.first as Any) }\n"
        "try VNImageRequestHandler(cgImage: picture).perform([request])"
    )


def _paths(bundle: Path) -> list[Path]:
    return [bundle / FILE]


PART = BundlePart(
    name="coreml",
    write=_write,
    writing="Converting the model to Core ML",
    usage=_usage,
    files=_files,
    parity=None,
    option=FormatOption(
        key="coreml",
        title="Core ML (iPhone, iPad, Mac)",
        paths=_paths,
        example=_example,
        missing=missing,
        offline_check=offline_check,
        cannot_run=CANNOT_RUN,
    ),
)
