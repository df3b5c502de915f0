"""``predict.py`` (:mod:`tl_core.data.standalone_predict`) and its ``requirements.txt``: run the
bundle's model on a folder of pictures, with either format."""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

from tl_core.data import standalone_predict
from tl_core.export.formats.base import BundlePart, ModelToExport

__all__ = ["PART"]


def _requirements() -> str:
    """requirements.txt: what predict.py needs, at least at the versions installed here."""

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


def _write(bundle: Path, model: ModelToExport) -> None:
    shutil.copyfile(Path(standalone_predict.__file__), bundle / "predict.py")
    (bundle / "requirements.txt").write_text(_requirements(), encoding="utf-8")


def _files(has_check: bool) -> list[str]:
    return ["- `predict.py`, `requirements.txt`: run the model on a folder of pictures"]


PART = BundlePart(name="predict.py", write=_write, files=_files)
