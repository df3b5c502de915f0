"""Near-duplicate images: the same picture resized, re-compressed, re-saved, slightly cropped
or brightened.

Exact copies are caught at import (:mod:`tl_core.data.ingest`, by pixel hash). Near-copies are
found in two stages, both vectorised with numpy:

1. **Perceptual hash** (computed once at import, :func:`image_hash`): a 64-bit DCT pHash of
   the grayscale image, plus the pHash of five slightly cropped views (3% off all sides, or
   off two adjacent sides), so that a cropped copy still matches one view. Pairs whose
   closest views differ in at most :data:`MAX_BITS` bits are candidates; the search runs in
   blocks of XOR + popcount, never pair by pair in Python.
2. **Confirmation**: for candidates only, 16x16 grayscale thumbnails of one image and of
   21 cropped views of the other (0-6% off all sides in steps of 1.5%, off two adjacent
   sides, off one side) are compared by correlation (brightness and contrast do not count); at least
   :data:`MIN_SIMILARITY` makes a near-duplicate. Small grayscale sets (clothing, handwritten
   characters) hold many distinct pictures within a few pHash bits of each other: the second
   stage keeps those apart (figures in docs/PERFORMANCE.md).

All pairs of a data set are found once and kept in ``near_duplicates.json`` beside the
manifest; which of them matter (across training and validation, or across classes) depends on
the split a run uses and is decided by :func:`classify`; the links the split keeps on one side
(:func:`near_links`) are found with each data version. No torch here: pages import this.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from tl_core.data.manifest import batches
from tl_core.data.records import DatasetManifest, ImageItem, Split
from tl_core.data.review import Corrections
from tl_core.data.split import Groups, split_dataset

__all__ = [
    "CACHE_NAME",
    "CROP",
    "HASH_LOW",
    "HASH_SIDE",
    "MAX_BITS",
    "MAX_CANDIDATES",
    "MIN_SIMILARITY",
    "THUMB_SIDE",
    "THUMB_VIEWS",
    "VIEWS",
    "WORK_SIDE",
    "WORK_STEM",
    "Finding",
    "Kind",
    "NearPair",
    "candidates",
    "classify",
    "counts",
    "fingerprint",
    "image_hash",
    "manifest_pairs",
    "near_links",
    "run_summary",
    "stored_work",
    "warning",
    "work_row",
]

CROP = 0.03
# (left, top, right, bottom) fractions cut off: the image itself first, then cropped views.
VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 0.0),
    (CROP, CROP, CROP, CROP),
    (CROP, CROP, 0.0, 0.0),
    (0.0, CROP, CROP, 0.0),
    (0.0, 0.0, CROP, CROP),
    (CROP, 0.0, 0.0, CROP),
)


def _corners(c: float) -> list[tuple[float, float, float, float]]:
    return [(c, c, 0.0, 0.0), (0.0, c, c, 0.0), (0.0, 0.0, c, c), (c, 0.0, 0.0, c)]


# The second stage compares more views, finer steps of 1.5% up to 6%: a thumbnail is less
# forgiving of a crop between two views than the hash's lowest frequencies are.
THUMB_VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 0.0),
    *((c, c, c, c) for c in (0.015, 0.03, 0.045, 0.06)),
    *(v for c in (0.015, 0.03, 0.045) for v in _corners(c)),
    (CROP, 0.0, 0.0, 0.0),
    (0.0, CROP, 0.0, 0.0),
    (0.0, 0.0, CROP, 0.0),
    (0.0, 0.0, 0.0, CROP),
)
HASH_SIDE = 32  # the grayscale image the DCT is taken of
HASH_LOW = 8  # 8x8 lowest frequencies -> 64 bits
THUMB_SIDE = 16  # the thumbnails the second stage correlates
WORK_SIDE = 128  # every view is cut from this reduction of the image (fast, and the same
# whether the picture came from memory at import or from its stored file later)
MAX_BITS = 10
MIN_SIMILARITY = 0.99
MAX_CANDIDATES = 100_000  # closest first, if a data set has more
TILE_ROWS, TILE_COLS = 256, 4096
CACHE_NAME = "near_duplicates.json"
# An import keeps every picture's reduction (_work) in cache/near-work.u8 (rows of
# WORK_SIDE x WORK_SIDE bytes, the picture top left) with cache/near-work.json (the
# pictures' sha256s and sizes, row by row).
WORK_STEM = "near-work"
_VERSION = 1

Kind = Literal["train_val", "cross_class"]


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT = _dct_matrix(HASH_SIDE)


def _work(img: Image.Image) -> Image.Image:
    gray = img.convert("L")
    if max(gray.size) > WORK_SIDE:
        gray = gray.copy()
        gray.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    return gray


def _phash(pixels: np.ndarray) -> int:
    low = (_DCT @ pixels @ _DCT.T)[:HASH_LOW, :HASH_LOW].ravel()
    bits = low > np.median(low[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def image_hash(img: Image.Image) -> str:
    """The perceptual hash of one (normalised) image and its cropped views, as hex text."""
    return _hash_of(_work(img))


def fingerprint(img: Image.Image) -> tuple[str, Image.Image]:
    """Both stages' data for one (normalised) image: its :func:`image_hash` and the small
    grayscale reduction the hash and the thumbnails are cut from (what an import keeps, so
    that confirming a candidate pair decodes nothing: see :func:`stored_work`)."""
    gray = _work(img)
    return _hash_of(gray), gray


def _hash_of(gray: Image.Image) -> str:
    views = _resized_views(gray, HASH_SIDE, VIEWS)
    return "".join(f"{_phash(view):016x}" for view in views)


def _thumbs(img: Image.Image) -> np.ndarray:
    return _thumbs_of(_work(img))


def _thumbs_of(gray: Image.Image) -> np.ndarray:
    """One zero-mean, unit-length thumbnail per view: (views, THUMB_SIDE**2) float16."""
    a = _resized_views(gray, THUMB_SIDE, THUMB_VIEWS).reshape(len(THUMB_VIEWS), -1)
    a -= a.mean(axis=1, keepdims=True)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-6)
    return a.astype(np.float16)


def _resized_views(gray: Image.Image, side: int, views: Views) -> np.ndarray:
    """Each view's box of ``gray`` resized to side x side: (views, side, side) float64.

    Pillow's Lanczos resampling (its weights and its 8-bit rounding after each pass,
    horizontal pass first), computed for all views at once as two matrix products
    (:func:`_view_weights`): a few times faster than Pillow's resize per view, and within
    one level of it (Pillow itself takes the vertical pass first for tall images).
    """
    wx, wy = _view_weights(gray.width, gray.height, side, views)
    pixels = np.asarray(gray, dtype=np.float64)
    rows = np.clip(np.floor(pixels[None] @ wx + 0.5), 0, 255)  # (views, height, side)
    return np.clip(np.floor(wy @ rows + 0.5), 0, 255)


Views = tuple[tuple[float, float, float, float], ...]


@functools.lru_cache(maxsize=128)
def _view_weights(width: int, height: int, side: int, views: Views) -> tuple[np.ndarray, ...]:
    """The views of a width x height image as resampling matrices: (views, width, side) and
    (views, side, height)."""
    wx = [_lanczos(width, c[0] * width, width - c[2] * width, side).T for c in views]
    wy = [_lanczos(height, c[1] * height, height - c[3] * height, side) for c in views]
    return np.ascontiguousarray(np.stack(wx)), np.stack(wy)


def _lanczos(size: int, start: float, end: float, side: int) -> np.ndarray:
    """Pillow's Lanczos weights (Resample.c ``precompute_coeffs``, in its 22-bit fixed
    point) from the source span [start, end) of ``size`` pixels to ``side`` pixels."""
    scale = (end - start) / side
    stretch = max(scale, 1.0)
    support = 3.0 * stretch
    out = np.zeros((side, size))
    for i in range(side):
        center = start + (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size)
        x = (np.arange(lo, hi) - center + 0.5) / stretch
        k = np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)
        total = k.sum()
        out[i, lo:hi] = k / total if total else k
    fixed = 1 << 22
    return np.trunc(out * fixed + np.where(out < 0, -0.5, 0.5)) / fixed


def _hash_array(hashes: Sequence[str]) -> np.ndarray:
    n = len(VIEWS)
    out = np.empty((len(hashes), n), np.uint64)
    for i, text in enumerate(hashes):
        out[i] = [int(text[16 * v : 16 * v + 16], 16) for v in range(n)]
    return out


_Buffers = tuple[np.ndarray, np.ndarray, np.ndarray]


def _tile_distances(
    hashes: np.ndarray, views_t: np.ndarray, rows: slice, cols: slice, buf: _Buffers
) -> np.ndarray:
    """Closest-view distances of one tile of pairs, into preallocated buffers."""
    full = hashes[:, 0]
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    xor, count, best = (b[: shape[0], : shape[1]] for b in buf)
    np.bitwise_xor(full[rows, None], full[None, cols], out=xor)
    np.bitwise_count(xor, out=best)
    for v in range(1, hashes.shape[1]):  # view 0 is the image itself: done above
        for left, right in (
            (full[rows, None], views_t[v, None, cols]),
            (hashes[rows, v, None], full[None, cols]),
        ):
            np.bitwise_xor(left, right, out=xor)
            np.bitwise_count(xor, out=count)
            np.minimum(best, count, out=best)
    return best


def candidates(hashes: np.ndarray, max_bits: int = MAX_BITS, rows: int | None = None) -> np.ndarray:
    """Pairs (i, j, bits) with i < j whose closest views differ in at most ``max_bits``;
    with ``rows``, only the pairs whose first image is one of the first ``rows``.

    ``hashes`` is (n, views) uint64 with the image itself in column 0; the distance of two
    images is the smallest over "one image against any view of the other", both ways.
    Runs in tiles of TILE_ROWS x TILE_COLS pairs (small enough to stay in the CPU's cache);
    at most :data:`MAX_CANDIDATES` pairs (the closest) are kept.
    """
    n = len(hashes)
    views_t = np.ascontiguousarray(hashes.T)
    buf: _Buffers = (
        np.empty((TILE_ROWS, TILE_COLS), np.uint64),
        np.empty((TILE_ROWS, TILE_COLS), np.uint8),
        np.empty((TILE_ROWS, TILE_COLS), np.uint8),
    )
    found: list[np.ndarray] = []
    kept = 0
    limit = max_bits
    last = n if rows is None else min(rows, n)
    for r0 in range(0, min(n - 1, last), TILE_ROWS):
        tile = slice(r0, min(r0 + TILE_ROWS, last))
        for c0 in range(r0, n, TILE_COLS):
            cols = slice(c0, min(c0 + TILE_COLS, n))
            best = _tile_distances(hashes, views_t, tile, cols, buf)
            i, j = np.nonzero(best <= limit)
            i, j = i + r0, j + c0
            upper = j > i
            if upper.any():
                i, j = i[upper], j[upper]
                found.append(np.stack([i, j, best[i - r0, j - c0]], 1).astype(np.int64))
                kept += len(i)
        if kept > MAX_CANDIDATES:  # tighten: keep the closest
            allp = np.concatenate(found)
            allp = allp[np.argsort(allp[:, 2], kind="stable")[:MAX_CANDIDATES]]
            limit = int(allp[-1, 2])
            found, kept = [allp], len(allp)
    if not found:
        return np.empty((0, 3), np.int64)
    return np.concatenate(found)


def _confirm(pairs: np.ndarray, images: Sequence[int], table: np.ndarray) -> np.ndarray:
    """The similarity (correlation of the closest views) of each candidate pair; ``table[k]``
    holds the thumbnails of image ``images[k]`` (float16: 10 kB an image, converted to float32
    per chunk, so 20,000 candidates take 0.2 GB and not three times that)."""
    if not len(pairs):
        return np.empty(0, np.float32)
    row = np.zeros(max(images) + 1, np.int64)
    row[list(images)] = np.arange(len(images))
    out = np.empty(len(pairs), np.float32)
    for start in range(0, len(pairs), 512):
        chunk = pairs[start : start + 512]
        a = table[row[chunk[:, 0]]].astype(np.float32)
        b = table[row[chunk[:, 1]]].astype(np.float32)
        ab = np.einsum("pvd,pd->pv", b, a[:, 0]).max(1)
        ba = np.einsum("pvd,pd->pv", a, b[:, 0]).max(1)
        out[start : start + len(chunk)] = np.maximum(ab, ba)
    return out


@dataclass(frozen=True)
class NearPair:
    """Two imported images that show the same picture; files relative to the data folder."""

    a: str
    b: str
    bits: int  # pHash distance of the closest views, of 64
    similarity: float  # correlation of the closest thumbnails, 1.0 = identical


def _find_pairs(
    hashes: Sequence[str | None],
    load: Callable[[int], Image.Image],
    files: Sequence[str],
    first_new: int = 0,
    kept: Callable[[int], Image.Image | None] = lambda i: None,
) -> list[NearPair]:
    """All near-duplicate pairs among images; ``load(i)`` opens image i (for missing hashes
    and for confirming candidates whose reduction ``kept(i)`` does not have). With
    ``first_new``, only the pairs that hold one of the images from there on (those among the
    earlier ones are known)."""
    from concurrent.futures import ThreadPoolExecutor

    from tl_core.data.imageprep import decode_workers

    with (
        ThreadPoolExecutor(decode_workers(), thread_name_prefix="neardup") as pool,
        threadpool_limits(limits=1, user_api="blas"),  # small products in every thread
    ):
        # Pillow decodes and resizes outside the GIL: one thread per core
        missing = [i for i, h in enumerate(hashes) if not h]
        found = dict(zip(missing, pool.map(lambda i: image_hash(load(i)), missing), strict=True))
        filled = [h or found[i] for i, h in enumerate(hashes)]
        if len(filled) < 2:
            return []
        if first_new:  # the new images first: pairs (i, j) with i among them
            order = np.r_[np.arange(first_new, len(filled)), np.arange(first_new)]
            found_new = candidates(
                _hash_array([filled[k] for k in order]), rows=len(order) - first_new
            )
            a, b = order[found_new[:, 0]], order[found_new[:, 1]]
            cand = np.stack([np.minimum(a, b), np.maximum(a, b), found_new[:, 2]], 1)
        else:
            cand = candidates(_hash_array(filled))
        needed = sorted({int(x) for x in cand[:, :2].ravel()})
        table = np.empty((len(needed), len(THUMB_VIEWS), THUMB_SIDE * THUMB_SIDE), np.float16)

        def thumbs_of(i: int) -> np.ndarray:
            found = kept(i)
            return _thumbs(load(i)) if found is None else _thumbs_of(found)

        for k, thumbs in enumerate(pool.map(thumbs_of, needed)):
            table[k] = thumbs
    sims = _confirm(cand, needed, table)
    keep = sims >= MIN_SIMILARITY
    pairs = [
        NearPair(files[int(i)], files[int(j)], int(bits), round(float(s), 4))
        for (i, j, bits), s in zip(cand[keep], sims[keep], strict=True)
    ]
    return sorted(pairs, key=lambda p: (-p.similarity, p.bits, p.a, p.b))


def work_row(gray: Image.Image) -> np.ndarray:
    """A reduction as one fixed-size row: WORK_SIDE x WORK_SIDE bytes, the picture top left."""
    row = np.zeros((WORK_SIDE, WORK_SIDE), np.uint8)
    row[: gray.height, : gray.width] = np.asarray(gray, dtype=np.uint8)
    return row


def stored_work(roots: Sequence[Path]) -> Callable[[str], Image.Image | None]:
    """Reductions kept by the imports of the data versions ``roots``, by picture sha256
    (None for a picture none of them kept, or when the files cannot be read)."""
    rows: dict[str, tuple[np.ndarray, int, tuple[int, int]]] = {}
    for root in roots:
        index, data = (Path(root) / "cache" / f"{WORK_STEM}{ext}" for ext in (".json", ".u8"))
        try:
            raw = json.loads(index.read_text(encoding="utf-8"))
            shas, sizes = raw["sha256"], raw["sizes"]
            shape = (len(shas), WORK_SIDE, WORK_SIDE)
            table = np.memmap(data, dtype=np.uint8, mode="r", shape=shape)
        except (OSError, ValueError, TypeError, KeyError):
            continue
        for row, (sha, (w, h)) in enumerate(zip(shas, sizes, strict=True)):
            rows.setdefault(str(sha), (table, row, (int(w), int(h))))

    def get(sha: str) -> Image.Image | None:
        found = rows.get(sha)
        if found is None:
            return None
        table, row, (w, h) = found
        return Image.fromarray(np.array(table[row, :h, :w]), mode="L")

    return get


def _signature(manifest: DatasetManifest) -> str:
    digest = hashlib.sha256(
        f"{_VERSION}:{MAX_BITS}:{MIN_SIMILARITY}:{THUMB_SIDE}:{VIEWS}:{THUMB_VIEWS}".encode()
    )
    for item in manifest.items:
        digest.update(f"{item.file}\0{item.sha256}\n".encode())
    return digest.hexdigest()


def _cached(manifest: DatasetManifest) -> list[NearPair] | None:
    """The pairs kept beside the manifest, when they are those of its images."""
    try:
        raw = json.loads((Path(manifest.root) / CACHE_NAME).read_text(encoding="utf-8"))
        if raw.get("signature") == _signature(manifest):
            return [NearPair(**p) for p in raw["pairs"]]
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


def manifest_pairs(
    manifest: DatasetManifest, base: DatasetManifest | None = None
) -> list[NearPair]:
    """The near-duplicate pairs of an imported data set, found once and then read back.

    ``base``: the data version ``manifest`` grew from (its images come first, unchanged):
    its pairs are read back and only those with an added image are looked for.
    """
    root = Path(manifest.root)
    cache = root / CACHE_NAME
    signature = _signature(manifest)
    found = _cached(manifest)
    if found is not None:
        return found
    items = manifest.items
    known: list[NearPair] = []
    first_new = 0
    if base is not None and [(i.file, i.sha256) for i in base.items] == [
        (i.file, i.sha256) for i in items[: len(base.items)]
    ]:
        known_or_none = _cached(base)
        if known_or_none is not None:
            known, first_new = known_or_none, len(base.items)

    def load(i: int) -> Image.Image:
        with Image.open(root / items[i].file) as img:
            img.load()
            return img

    kept = stored_work([root] if base is None else [root, Path(base.root)])
    pairs = _find_pairs(
        [i.phash for i in items],
        load,
        [i.file for i in items],
        first_new,
        lambda i: kept(items[i].sha256),
    )
    if known:
        pairs = sorted([*known, *pairs], key=lambda p: (-p.similarity, p.bits, p.a, p.b))
    data = {"signature": signature, "pairs": [p.__dict__ for p in pairs]}
    try:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:  # a read-only data folder: found again next time
        pass
    return pairs


def near_links(
    manifest: DatasetManifest, base: DatasetManifest | None = None
) -> list[tuple[str, str]]:
    """The near-duplicate pairs within each class (:func:`manifest_pairs`, found here and kept
    beside the manifest; with ``base``, the version it grew from, only those of the added
    images are looked for) thinned to a spanning forest, added batch by batch: the groups they
    make among the images of the first k batches are those of all pairs."""
    items = manifest.items
    index = {item.file: k for k, item in enumerate(items)}
    batch_of = batches(manifest)
    edges = []
    for p in manifest_pairs(manifest, base):
        a, b = index.get(p.a), index.get(p.b)
        if a is None or b is None or items[a].label != items[b].label:
            continue
        level = max(batch_of[a], batch_of[b])
        if level >= manifest.near_since:
            edges.append((level, min(a, b), max(a, b)))
    groups = Groups(len(items))
    return [(items[a].file, items[b].file) for _, a, b in sorted(edges) if groups.join(a, b)]


@dataclass(frozen=True)
class Finding:
    """A near-duplicate pair that matters for a run: ``a``/``b`` as that run sees them."""

    kind: Kind
    a: ImageItem
    b: ImageItem
    a_subset: str  # "train" / "val"
    b_subset: str
    bits: int
    similarity: float

    @property
    def val_side(self) -> ImageItem | None:
        """The validation-side copy of a train/validation pair."""
        if self.a_subset == self.b_subset:
            return None
        return self.a if self.a_subset == "val" else self.b


def classify(
    pairs: Sequence[NearPair], split: Split, corrections: Corrections | None = None
) -> list[Finding]:
    """The pairs that cross the split's train/validation boundary or two classes.

    Images the corrections leave out are gone; fixed labels count. A pair in two classes is a
    label conflict (``cross_class``) wherever its images are; otherwise a pair with one image
    on each side of the boundary is a leak (``train_val``). Pairs within one class and one
    side are harmless and not listed.
    """
    exclude = corrections.exclude if corrections else set()
    relabel = corrections.relabel if corrections else {}
    where: dict[str, tuple[ImageItem, str]] = {}
    for subset, items in (("train", split.train), ("val", split.val)):
        for item in items:
            if item.file not in exclude:
                where[item.file] = (item, subset)
    out: list[Finding] = []
    for p in pairs:
        if p.a not in where or p.b not in where:
            continue
        (a, sa), (b, sb) = where[p.a], where[p.b]
        if relabel.get(a.file, a.label) != relabel.get(b.file, b.label):
            kind: Kind = "cross_class"
        elif sa != sb:
            kind = "train_val"
            if sa == "val":  # the training copy first
                (a, sa), (b, sb) = (b, sb), (a, sa)
        else:
            continue
        out.append(Finding(kind, a, b, sa, sb, p.bits, p.similarity))
    return out


def counts(findings: Sequence[Finding]) -> dict[str, int]:
    """``train_val``: validation images that are near-copies of training images (pairs);
    ``cross_class``: pairs of near-copies labelled with two different classes."""
    return {
        "train_val": sum(f.kind == "train_val" for f in findings),
        "cross_class": sum(f.kind == "cross_class" for f in findings),
    }


def warning(found: dict[str, int]) -> str | None:
    """One plain sentence about the near-duplicates of a run, or None when there are none."""
    parts = []
    if found["train_val"]:
        n = found["train_val"]
        parts.append(
            f"{n} validation image{'s are near-copies' if n != 1 else ' is a near-copy'} of "
            "training images (resized, re-compressed or re-saved), so the validation accuracy "
            "looks better than it is"
        )
    if found["cross_class"]:
        n = found["cross_class"]
        parts.append(f"{n} picture{'s appear' if n != 1 else ' appears'} in two different classes")
    if not parts:
        return None
    return "; ".join(parts) + ". Leave them out on the Data page and train again."


def run_summary(
    manifest: DatasetManifest,
    val_fraction: float,
    seed: int,
    corrections: Corrections | None = None,
    *,
    stream: TextIO | None = None,
) -> dict[str, object]:
    """The near-duplicates of the split a run with these settings uses, for a JSON summary;
    the warning sentence is also written to ``stream`` when there are any."""
    split = split_dataset(manifest, val_fraction, seed)
    found = counts(classify(manifest_pairs(manifest), split, corrections))
    text = warning(found)
    if text and stream is not None:
        print(f"warning: {text}", file=stream)
    return {**found, **({"warning": text} if text else {})}
