"""Sort every picture in a folder with the exported model; prints a CSV.

    python predict.py FOLDER [--format auto|safetensors|onnx|int8] [--out predictions.csv]
                             [--unfamiliar-threshold X | --no-unfamiliar]

``--format safetensors`` needs timm, torch and Pillow; ``--format onnx`` (``model.onnx``) and
``--format int8`` (``model_int8.onnx``, the smaller, faster 8-bit copy, when the bundle has
it) need only onnxruntime, numpy and Pillow. ``auto`` (the default) uses safetensors when
timm and torch are installed, else ``model.onnx``. Each picture is opened as Transfer
Learning Studio opens one: turned upright (EXIF), made RGB (transparency on white) and shrunk
to at most 640 pixels a side.
Then the safetensors model uses timm's own preprocessing (resize, centre crop, normalise) and
the ONNX model does the same steps inside itself.

The CSV has one row per picture: ``file``, ``prediction`` (the class, or ``unfamiliar`` for
a picture that looks like none of the classes), ``probability`` (of the nearest class),
``problem`` (why a file could not be read), ``nearest_class`` (the model's top class, always
filled) and ``unfamiliarity`` (the cosine distance from the picture's features to the nearest
training picture's, in units of that picture's class's spread; empty for a model without the
unfamiliar check). A picture whose
unfamiliarity is above the threshold saved with the model (or ``--unfamiliar-threshold``) is
unfamiliar; ``--no-unfamiliar`` always names the nearest class.

This file stands alone: it is copied into the exported bundle next to ``model/``,
``model.onnx`` and ``familiarity.npz`` (the training pictures' features, for the safetensors
model's unfamiliar check; the ONNX model holds them itself).
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
    "COLUMNS",
    "FAMILIARITY_FILE",
    "HERE",
    "IMAGE_SUFFIXES",
    "MAX_SIDE",
    "MAX_SOURCE_PIXELS",
    "UNFAMILIAR",
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
    "read_familiarity",
    "score_files",
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
UNFAMILIAR = "unfamiliar"  # the prediction of a picture that looks like none of the classes
FAMILIARITY_FILE = "familiarity.npz"  # bank (unit rows, float16), row_scale, threshold
COLUMNS = ("file", "prediction", "probability", "problem", "nearest_class", "unfamiliarity")
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


def read_familiarity(
    bundle: Path = HERE,
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """``familiarity.npz``: the training pictures' features (N, D; unit rows, as float32),
    what each one's distances are multiplied by (N,; one over its class's spread) and the
    threshold; None for a model without the unfamiliar check."""
    path = bundle / FAMILIARITY_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as npz:
        bank = np.asarray(npz["bank"], dtype=np.float32)
        scale = npz["row_scale"] if "row_scale" in npz.files else np.ones(len(bank))
        inverse = 1.0 / np.asarray(scale, dtype=np.float32)  # as the app computes it
        return bank, inverse.astype(np.float32), float(npz["threshold"])


class Predictor(Protocol):
    classes: list[str]
    has_check: bool  # the model gives an unfamiliarity score
    threshold: float | None  # above it a picture is unfamiliar; None: never

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def scores(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]: ...


class SafetensorsPredictor:
    """``model/`` loaded with timm (``local-dir:``), preprocessing from timm's data config;
    the unfamiliar check from ``familiarity.npz``."""

    def __init__(self, bundle: Path = HERE) -> None:
        import timm
        import torch

        self._torch = torch
        self.model = timm.create_model(f"local-dir:{bundle / 'model'}", pretrained=True).eval()
        data_config = timm.data.resolve_model_data_config(self.model)
        self.transform = timm.data.create_transform(**data_config)
        self.classes = [str(c) for c in read_config(bundle)["label_names"]]
        check = read_familiarity(bundle)
        self.has_check = check is not None
        self.bank: Any = None  # (N, D) float32 tensor with the check
        self.inverse: Any = None  # (N,) float32 tensor: one over each row's class spread
        self.threshold: float | None = None
        if check is not None:
            self.bank, self.inverse = torch.from_numpy(check[0]), torch.from_numpy(check[1])
            self.threshold = check[2]

    def scores(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (N, classes) and unfamiliarity (N,; None without the check) as
        float32: the pooled features (the classifier's input) give both."""
        torch = self._torch
        probs = [np.zeros((0, len(self.classes)), dtype=np.float32)]
        far = [np.zeros(0, dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(images), BATCH):
                x = torch.stack([self.transform(img) for img in images[start : start + BATCH]])
                f = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
                probs.append(self.model.get_classifier()(f).float().softmax(1).numpy())
                if self.bank is not None:  # cosine distance to the nearest training picture
                    f = f.float()
                    q = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    d = (1.0 - q @ self.bank.T) * self.inverse  # in units of its class's spread
                    far.append(d.amin(dim=1).numpy())
        return np.concatenate(probs), np.concatenate(far) if self.has_check else None

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Class probabilities (N, classes) as float32."""
        return self.scores(images)[0]


class OnnxPredictor:
    """``model.onnx`` (or ``file``, e.g. ``model_int8.onnx``) in onnxruntime: it resizes,
    crops and normalises inside itself."""

    def __init__(self, bundle: Path = HERE, file: str = "model.onnx") -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(bundle / file), providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.classes = [str(c) for c in json.loads(meta["classes"])]
        self.input = self.session.get_inputs()[0].name
        outputs = {o.name for o in self.session.get_outputs()}
        self.has_check = "unfamiliarity" in outputs and "unfamiliar_threshold" in meta
        self.threshold = float(meta["unfamiliar_threshold"]) if self.has_check else None
        self._outputs = ["probabilities"] + (["unfamiliarity"] if self.has_check else [])

    def scores(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (N, classes) and unfamiliarity (N,; None without the check) as
        float32; one picture per call (any size)."""
        probs = [np.zeros((0, len(self.classes)), dtype=np.float32)]
        far = [np.zeros(0, dtype=np.float32)]
        for img in images:
            x = np.asarray(img.convert("RGB"), dtype=np.uint8)[None]
            got = self.session.run(self._outputs, {self.input: x})
            probs.append(got[0])
            far += got[1:]
        return np.concatenate(probs), np.concatenate(far) if self.has_check else None

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Class probabilities (N, classes) as float32; one picture per call (any size)."""
        return self.scores(images)[0]


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
    if fmt == "int8":
        return OnnxPredictor(bundle, "model_int8.onnx")
    raise ValueError(f"unknown format {fmt!r}: use safetensors, onnx or int8")


def score_files(
    predictor: Predictor, files: Sequence[Path]
) -> Iterator[tuple[Path, np.ndarray | None, float | None, str]]:
    """(file, probabilities or None, unfamiliarity or None, problem) for each file, a batch
    of pictures at a time."""
    for start in range(0, len(files), BATCH):
        chunk = files[start : start + BATCH]
        opened: list[tuple[Path, Image.Image]] = []
        problems: dict[Path, str] = {}
        for path in chunk:
            try:
                opened.append((path, open_image(path)))
            except ValueError as exc:
                problems[path] = str(exc)
        probs, far = predictor.scores([img for _, img in opened])
        by_file = {path: k for k, (path, _) in enumerate(opened)}
        for path in chunk:
            k = by_file.get(path)
            if k is None:
                yield path, None, None, problems.get(path, "")
            else:
                yield path, probs[k], None if far is None else float(far[k]), ""


def predict_files(
    predictor: Predictor, files: Sequence[Path]
) -> Iterator[tuple[Path, np.ndarray | None, str]]:
    """(file, probabilities or None, problem) for each file, a batch of pictures at a time."""
    for path, probs, _, problem in score_files(predictor, files):
        yield path, probs, problem


# ----------------------------------------------------------------------------- command


def write_csv(stream: TextIO, predictor: Predictor, files: Sequence[Path], root: Path) -> None:
    """One row per file (:data:`COLUMNS`): file (relative to ``root``), prediction (the class,
    or ``unfamiliar`` above ``predictor.threshold``), the nearest class's probability,
    problem, nearest class, unfamiliarity (empty without the check)."""
    writer = csv.writer(stream)
    writer.writerow(COLUMNS)
    threshold = predictor.threshold
    for path, probs, far, problem in score_files(predictor, files):
        name = path.relative_to(root).as_posix()
        if probs is None:
            writer.writerow([name, "", "", problem, "", ""])
            continue
        top = int(np.argmax(probs))
        nearest = predictor.classes[top]
        unfamiliar = far is not None and threshold is not None and far > threshold
        writer.writerow(
            [
                name,
                UNFAMILIAR if unfamiliar else nearest,
                f"{probs[top]:.6f}",
                "",
                nearest,
                "" if far is None else f"{far:.6f}",
            ]
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of pictures (searched recursively)")
    parser.add_argument(
        "--format",
        choices=("auto", "safetensors", "onnx", "int8"),
        default="auto",
        help=(
            "which copy of the model to run: int8 is the smaller, faster 8-bit ONNX model "
            "(default: safetensors if timm is installed, else onnx)"
        ),
    )
    parser.add_argument("--out", type=Path, default=None, help="write the CSV here, not stdout")
    check = parser.add_mutually_exclusive_group()
    check.add_argument(
        "--unfamiliar-threshold",
        type=float,
        default=None,
        metavar="X",
        help=(
            "answer 'unfamiliar' for a picture whose unfamiliarity (the CSV's distance to the "
            "nearest training picture, in units of its class's spread) is above X (default: "
            "the threshold saved with the model, which accepts 95%% of its validation "
            "pictures); higher flags fewer"
        ),
    )
    check.add_argument(
        "--no-unfamiliar",
        action="store_true",
        help="always answer with the nearest class (the unfamiliarity column is still filled)",
    )
    args = parser.parse_args(argv)
    if not args.folder.exists():
        print(f"error: {args.folder} does not exist", file=sys.stderr)
        return 2
    files = find_images(args.folder)
    if not files:
        print(f"error: no pictures found in {args.folder}", file=sys.stderr)
        return 2
    if args.format == "int8" and not (HERE / "model_int8.onnx").is_file():
        print(
            "error: this bundle has no 8-bit model (model_int8.onnx): use --format onnx, "
            "or export the model again with the 8-bit format chosen",
            file=sys.stderr,
        )
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
    if args.no_unfamiliar:
        predictor.threshold = None
    elif args.unfamiliar_threshold is not None:
        if predictor.has_check:
            predictor.threshold = args.unfamiliar_threshold
        else:
            print(
                "note: this model has no unfamiliar check (it was trained before the check "
                "existed), so --unfamiliar-threshold does nothing",
                file=sys.stderr,
            )
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
