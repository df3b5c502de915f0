"""Near-duplicate detection: true positives on constructed near-copies, false positives on
distinct images, and the time the pair search takes at 50,000 images.

For each data set (``<name>/train/<class>/*`` and ``<name>/test/<class>/*``):

- false positives: every image of the set (train and test together) is imported as a
  training image; each pair :mod:`tl_core.data.neardup` reports is a false positive (the sets hold
  no known copies; the closest pairs found are printed so they can be looked at);
- true positives: for each transformation, a copy of every image goes into a ``val/``
  folder next to the originals; a copy counts as caught when the import left it out as an
  exact copy, or the near-duplicate search pairs it with its own original across the
  train/validation boundary. Any other pair found is a false positive.

Then the block search's time on 50,000 hashes (real hashes with random bits flipped).

    uv run python bench/near_duplicates.py [DATASETS_DIR ...]

Default: every data set under ../shared/datasets when present, else the bundled demo set.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cli_run import data_sets
from PIL import Image, ImageEnhance

from tl_core.data import neardup
from tl_core.data.dataset import IMAGE_SUFFIXES, DatasetManifest, import_folder, split_dataset
from tl_core.errors import DataError


def _reload(img: Image.Image, fmt: str, **kw: object) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _crop(img: Image.Image, frac: float, sides: str) -> Image.Image:
    w, h = img.size
    dx, dy = max(1, round(frac * w)), max(1, round(frac * h))
    left, top = (dx if "l" in sides else 0), (dy if "t" in sides else 0)
    right, bottom = (w - dx if "r" in sides else w), (h - dy if "b" in sides else h)
    return img.crop((left, top, right, bottom))


def _add(img: Image.Image, amount: int) -> Image.Image:
    a = np.asarray(img, np.int16) + amount
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


BICUBIC = Image.Resampling.BICUBIC


def _half(img: Image.Image) -> Image.Image:
    return img.resize((max(1, img.width // 2), max(1, img.height // 2)), BICUBIC)


# name -> (transformation, file suffix of the copy)
TRANSFORMS: dict[str, tuple[Callable[[Image.Image], Image.Image], str]] = {
    "resize 0.5x": (_half, ".png"),
    "resize 2x": (lambda i: i.resize((2 * i.width, 2 * i.height), BICUBIC), ".png"),
    "JPEG q=30": (lambda i: _reload(i, "JPEG", quality=30), ".png"),
    "JPEG q=50": (lambda i: _reload(i, "JPEG", quality=50), ".png"),
    "JPEG q=75 (PNG->JPEG)": (lambda i: i, ".jpg"),
    "JPEG q=95": (lambda i: _reload(i, "JPEG", quality=95), ".png"),
    "WebP (q=80)": (lambda i: i, ".webp"),
    "crop 2% all sides": (lambda i: _crop(i, 0.02, "ltrb"), ".png"),
    "crop 3% all sides": (lambda i: _crop(i, 0.03, "ltrb"), ".png"),
    "crop 3% left+top": (lambda i: _crop(i, 0.03, "lt"), ".png"),
    "crop 5% all sides": (lambda i: _crop(i, 0.05, "ltrb"), ".png"),
    "crop 3% left only": (lambda i: _crop(i, 0.03, "l"), ".png"),
    "brightness x1.1": (lambda i: ImageEnhance.Brightness(i).enhance(1.1), ".png"),
    "brightness +10% (+26)": (lambda i: _add(i, 26), ".png"),
    "resize 0.5x + JPEG q=75": (_half, ".jpg"),
}


def _images(root: Path) -> list[tuple[str, Path]]:
    return sorted(
        (p.parent.name, p)
        for p in root.glob("*/*/*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def _originals(images: list[tuple[str, Path]], dest: Path) -> dict[str, Path]:
    """All images as ``dest/train/<class>/<n>.png``; returns the stored name per image."""
    names = {}
    for n, (label, path) in enumerate(images):
        (dest / "train" / label).mkdir(parents=True, exist_ok=True)
        target = dest / "train" / label / f"{n:05d}{path.suffix}"
        target.symlink_to(path.resolve())
        names[f"{n:05d}"] = path
    return names


def false_positives(root: Path) -> dict[str, object]:
    images = _images(root)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "set").mkdir()
        for label, path in images:
            (Path(tmp) / "set" / label).mkdir(exist_ok=True)
            (Path(tmp) / "set" / label / f"{path.parent.parent.name}_{path.name}").symlink_to(
                path.resolve()
            )
        manifest = import_folder(Path(tmp) / "set", Path(tmp) / "data")
        start = time.perf_counter()
        pairs = neardup.manifest_pairs(manifest)
        seconds = time.perf_counter() - start
    n = len(manifest.items)
    return {
        "images": n,
        "distinct_pairs": n * (n - 1) // 2,
        "flagged": len(pairs),
        "rate": len(pairs) / max(1, n * (n - 1) // 2),
        "closest": [(p.a, p.b, p.bits, p.similarity) for p in pairs[:5]],
        "search_s": round(seconds, 3),
        "exact_duplicates_at_import": len(manifest.duplicates),
    }


def true_positives(root: Path, name: str) -> dict[str, object]:
    func, suffix = TRANSFORMS[name]
    images = _images(root)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        _originals(images, src)
        for n, (label, path) in enumerate(images):
            (src / "val" / label).mkdir(parents=True, exist_ok=True)
            with Image.open(path) as img:
                func(img.convert("RGB")).save(src / "val" / label / f"{n:05d}{suffix}")
        try:
            manifest = import_folder(src, Path(tmp) / "data")
        except DataError as exc:  # e.g. every copy pixel-identical: the import refuses
            return {"copies": len(images), "caught": 0, "exact_at_import": 0, "refused": str(exc)}
        found = _caught(manifest)
    return {"copies": len(images), **found}


def _caught(manifest: DatasetManifest) -> dict[str, object]:
    stem = {i.file: Path(i.source).stem for i in manifest.items}
    exact = {Path(a).stem for a, b in manifest.duplicates if Path(a).stem == Path(b).stem}
    findings = neardup.classify(neardup.manifest_pairs(manifest), split_dataset(manifest))
    own = {stem[f.b.file] for f in findings if stem[f.a.file] == stem[f.b.file]}
    other = [f for f in findings if stem[f.a.file] != stem[f.b.file]]
    caught = len(exact | own)
    return {"exact_at_import": len(exact), "near": len(own), "caught": caught, "other": len(other)}


def search_speed(n: int = 50_000, seed: int = 0) -> dict[str, object]:
    """``candidates`` on n hashes: real hashes of the bundled demo set, random bits flipped."""
    demo = Path(__file__).resolve().parent.parent / "assets" / "demo" / "fashion_mnist"
    base = []
    for path in sorted(demo.glob("*/*/*.png")):
        with Image.open(path) as img:
            base.append(neardup.image_hash(img.convert("RGB")))
    hashes = neardup._hash_array(base)
    rng = np.random.default_rng(seed)
    picked = hashes[rng.integers(0, len(hashes), n)]
    flips = np.zeros_like(picked)
    for _ in range(12):  # ~12 random bits per view: distinct images, as alike as fashion's
        flips |= np.left_shift(np.uint64(1), rng.integers(0, 64, picked.shape).astype(np.uint64))
    picked ^= flips
    start = time.perf_counter()
    cand = neardup.candidates(picked)
    seconds = time.perf_counter() - start
    return {"hashes": n, "candidates": len(cand), "seconds": round(seconds, 1)}


def main(argv: list[str]) -> None:
    for root in data_sets(argv):
        fp = false_positives(root)
        print(json.dumps({"data_set": root.name, "false_positives": fp}))
        rows = {}
        for name in TRANSFORMS:
            rows[name] = tp = true_positives(root, name)
            if "refused" in tp:
                print(f"  {name:26s} import refused: {tp['refused']}", flush=True)
                continue
            print(
                f"  {name:26s} caught {tp['caught']}/{tp['copies']} "
                f"({tp['caught'] / tp['copies']:.1%}; exact {tp['exact_at_import']}), "
                f"other pairs {tp['other']}",
                flush=True,
            )
        print(json.dumps({"data_set": root.name, "true_positives": rows}))
    print(json.dumps({"search_speed": search_speed()}))


if __name__ == "__main__":
    main(sys.argv[1:])
