"""Sort every picture in a folder with the exported model; prints a CSV.

    python predict.py FOLDER [--format auto|safetensors|onnx] [--out predictions.csv]

``--format safetensors`` needs timm, torch and Pillow; ``--format onnx`` needs only
onnxruntime, numpy and Pillow. ``auto`` (the default) uses safetensors when timm and torch are
installed, else ONNX. Each picture is opened as Transfer Learning Studio opens one: turned
upright (EXIF), made RGB (transparency on white) and shrunk to at most 640 pixels a side.
Then the safetensors model uses timm's own preprocessing (resize, centre crop, normalise) and
the ONNX model does the same steps inside itself.

This file stands alone: it is copied into the exported bundle next to ``model/`` and
``model.onnx``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "BATCH",
    "HERE",
    "IMAGE_SUFFIXES",
    "MAX_SIDE",
    "MAX_SOURCE_PIXELS",
    "OnnxPredictor",
    "Predictor",
    "SafetensorsPredictor",
    "cap_side",
    "find_images",
    "load_predictor",
    "main",
    "open_image",
    "predict_files",
    "read_config",
    "to_rgb",
    "upright_rgb",
    "write_csv",
]

try:  # iPhone photos (HEIC/HEIF); Pillow itself reads AVIF
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - predict.py without pillow-heif installed
    pass
else:
    register_heif_opener()

HERE = Path(__file__).resolve().parent
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    | {".heic", ".heif", ".avif"}
)
MAX_SIDE = 640  # the app shrinks every picture to at most this many pixels a side
MAX_SOURCE_PIXELS = 100_000_000  # larger pictures are refused, as in the app
BATCH = 32
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


# ----------------------------------------------------------------------------- pictures


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images scaled to 8 bits (mode L), keeping relative brightness."""
    a = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        a = a / 257.0
    elif img.mode == "F" and a.size and a.min() >= 0.0 and a.max() <= 1.0:
        a = a * 255.0
    elif img.mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535:
        a = a / (257.0 if a.max() > 255 else 1.0)
    else:  # unknown range: stretch what is there to 0..255
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB; transparency is composited on white."""
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def upright_rgb(img: Image.Image) -> Image.Image:
    """A loaded picture turned upright (EXIF; unreadable EXIF: as stored) and made RGB, as a new
    image. Raises ValueError when its colour format is not supported."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # unreadable EXIF: keep the picture as stored
        upright = img
    try:
        rgb = to_rgb(upright)
    except (ValueError, OSError):
        raise ValueError(f"colour format not supported ({img.mode})") from None
    return rgb.copy() if rgb is img else rgb


def cap_side(rgb: Image.Image, max_side: int = MAX_SIDE) -> None:
    """Shrink ``rgb`` in place to at most ``max_side`` pixels a side, as every import does.

    Bilinear (antialiased, as Pillow's resize always is): within a level or two of bicubic on
    photos, in about 70% of its time.
    """
    rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=3.0)


def open_image(path: Path) -> Image.Image:
    """Open a picture as the app does: upright, RGB, at most MAX_SIDE pixels a side.

    Raises ValueError with a plain reason when the file cannot be used.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Exception:
            raise ValueError("not a readable picture") from None
        with img:
            width, height = img.size
            if width * height > MAX_SOURCE_PIXELS:
                raise ValueError(f"picture too large ({width}x{height} pixels)")
            try:
                if img.format == "JPEG":
                    img.draft("RGB", (MAX_SIDE, MAX_SIDE))
                img.load()
            except Exception:
                raise ValueError("picture is damaged or cut off") from None
            rgb = upright_rgb(img)
    rgb.info = {}
    cap_side(rgb)
    return rgb


def find_images(target: Path) -> list[Path]:
    """The pictures in ``target`` and all its sub-folders (or ``target`` itself), sorted."""
    if target.is_file():
        return [target]
    return sorted(
        p
        for p in target.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


# ----------------------------------------------------------------------------- models


def read_config(bundle: Path = HERE) -> dict[str, Any]:
    """``model/config.json``: the architecture, class names and preprocessing."""
    return json.loads((bundle / "model" / "config.json").read_text(encoding="utf-8"))


class Predictor(Protocol):
    classes: list[str]

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class SafetensorsPredictor:
    """``model/`` loaded with timm (``local-dir:``), preprocessing from timm's data config."""

    def __init__(self, bundle: Path = HERE) -> None:
        import timm
        import torch

        self._torch = torch
        self.model = timm.create_model(f"local-dir:{bundle / 'model'}", pretrained=True).eval()
        data_config = timm.data.resolve_model_data_config(self.model)
        self.transform = timm.data.create_transform(**data_config)
        self.classes = [str(c) for c in read_config(bundle)["label_names"]]

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Class probabilities (N, classes) as float32."""
        torch = self._torch
        out = [np.zeros((0, len(self.classes)), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(images), BATCH):
                x = torch.stack([self.transform(img) for img in images[start : start + BATCH]])
                out.append(self.model(x).float().softmax(1).numpy())
        return np.concatenate(out)


class OnnxPredictor:
    """``model.onnx`` in onnxruntime: it resizes, crops and normalises inside itself."""

    def __init__(self, bundle: Path = HERE) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(
            str(bundle / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        self.classes = [str(c) for c in json.loads(meta["classes"])]
        self.input = self.session.get_inputs()[0].name

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Class probabilities (N, classes) as float32; one picture per call (any size)."""
        out = [np.zeros((0, len(self.classes)), dtype=np.float32)]
        for img in images:
            x = np.asarray(img.convert("RGB"), dtype=np.uint8)[None]
            out.append(self.session.run(["probabilities"], {self.input: x})[0])
        return np.concatenate(out)


def load_predictor(bundle: Path = HERE, fmt: str = "auto") -> Predictor:
    """The model of ``bundle`` in the format asked for ("auto": safetensors if possible)."""
    if fmt == "auto":
        try:
            import timm  # noqa: F401
            import torch  # noqa: F401

            fmt = "safetensors"
        except ImportError:
            fmt = "onnx"
    if fmt == "safetensors":
        return SafetensorsPredictor(bundle)
    if fmt == "onnx":
        return OnnxPredictor(bundle)
    raise ValueError(f"unknown format {fmt!r}: use safetensors or onnx")


def predict_files(
    predictor: Predictor, files: Sequence[Path]
) -> Iterator[tuple[Path, np.ndarray | None, str]]:
    """(file, probabilities or None, problem) for each file, a batch of pictures at a time."""
    for start in range(0, len(files), BATCH):
        chunk = files[start : start + BATCH]
        opened: list[tuple[Path, Image.Image]] = []
        problems: dict[Path, str] = {}
        for path in chunk:
            try:
                opened.append((path, open_image(path)))
            except ValueError as exc:
                problems[path] = str(exc)
        probs = predictor.probabilities([img for _, img in opened])
        by_file = {path: p for (path, _), p in zip(opened, probs, strict=True)}
        for path in chunk:
            yield path, by_file.get(path), problems.get(path, "")


# ----------------------------------------------------------------------------- command


def write_csv(stream: TextIO, predictor: Predictor, files: Sequence[Path], root: Path) -> None:
    """One row per file: file (relative to ``root``), prediction, probability, problem."""
    writer = csv.writer(stream)
    writer.writerow(["file", "prediction", "probability", "problem"])
    for path, probs, problem in predict_files(predictor, files):
        name = path.relative_to(root).as_posix()
        if probs is None:
            writer.writerow([name, "", "", problem])
        else:
            top = int(np.argmax(probs))
            writer.writerow([name, predictor.classes[top], f"{probs[top]:.6f}", ""])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of pictures (searched recursively)")
    parser.add_argument(
        "--format",
        choices=("auto", "safetensors", "onnx"),
        default="auto",
        help="which copy of the model to run (default: safetensors if timm is installed)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the CSV here, not stdout")
    args = parser.parse_args(argv)
    if not args.folder.exists():
        print(f"error: {args.folder} does not exist", file=sys.stderr)
        return 2
    files = find_images(args.folder)
    if not files:
        print(f"error: no pictures found in {args.folder}", file=sys.stderr)
        return 2
    try:
        predictor = load_predictor(HERE, args.format)
    except ImportError as exc:
        print(
            f"error: {exc.name or exc} is not installed: run "
            "'python -m pip install -r requirements.txt' (or try the other --format)",
            file=sys.stderr,
        )
        return 2
    root = args.folder if args.folder.is_dir() else args.folder.parent
    if args.out is None:
        try:
            write_csv(sys.stdout, predictor, files, root)
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. piped into `head`: stop quietly
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    else:
        with open(args.out, "w", newline="", encoding="utf-8") as stream:
            write_csv(stream, predictor, files, root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
