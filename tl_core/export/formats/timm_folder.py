"""The model for timm/PyTorch: ``model/config.json`` and ``model/model.safetensors``, as
``timm.create_model("local-dir:model")`` reads them."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torch import nn

from tl_core.data import standalone_predict
from tl_core.export.formats.base import BundlePart, FormatOption, ModelToExport, ParityCheck
from tl_core.models.catalog import DataConfig

__all__ = ["PART", "SAFETENSORS_TOLERANCE", "write_timm_folder"]

SAFETENSORS_TOLERANCE = 1e-3  # largest allowed probability difference to the app
FOLDER = "model"


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


def _write(bundle: Path, model: ModelToExport) -> None:
    write_timm_folder(model.net, model.data_config, model.classes, bundle / FOLDER)


def _usage(has_check: bool) -> list[str]:
    return [
        "- **timm / PyTorch**: `timm.create_model('local-dir:model', pretrained=True)` loads "
        "`model/`; `timm.data.create_transform(**timm.data.resolve_model_data_config(model))` "
        "prepares a picture exactly as the app does."
    ]


def _files(has_check: bool) -> list[str]:
    return ["- `model/`: the model for timm/PyTorch (config.json, model.safetensors)"]


def _example(has_check: bool) -> str:
    return (
        "import timm\n"
        'model = timm.create_model("local-dir:model", pretrained=True).eval()\n'
        "# or, on a folder of pictures: python predict.py FOLDER --format safetensors"
    )


PART = BundlePart(
    name="safetensors",
    write=_write,
    writing="Writing the model for timm (safetensors)",
    usage=_usage,
    files=_files,
    parity=ParityCheck(
        tolerance=SAFETENSORS_TOLERANCE,
        checking="Checking: the safetensors model with timm",
        load=partial(standalone_predict.load_predictor, fmt="safetensors"),
        unavailable=lambda: "",  # timm and torch are the app's own
    ),
    option=FormatOption(
        key="safetensors",
        title="timm / PyTorch (safetensors)",
        paths=lambda bundle: [bundle / FOLDER],
        example=_example,
    ),
)
