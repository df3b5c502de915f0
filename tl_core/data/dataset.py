"""Import a user's labelled images once: a folder, a .zip or uploaded files.

Every import writes a new folder ``dest/`` holding ``manifest.json`` and
``images/<class>/NNNN.png|jpg``: each image decoded, rotated upright, converted to RGB and
downscaled, under a generated file name. Nothing the user gave is trusted (names, sizes,
contents) and the source is never modified. Mistakes raise :class:`DataError` in plain words;
a failed import leaves no ``dest`` behind. No torch here: pages import this module.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from tl_core import diskspace
from tl_core.data.imageprep import ImageSkip, Prepared, decode_workers, prepare
from tl_core.data.layout import (
    Entry,
    Plan,
    folder_entries,
    is_junk,
    nfc,
    os_reason,
    plan_layout,
    screen,
    some,
)
from tl_core.data.neardup import image_hash
from tl_core.data.standalone_predict import IMAGE_SUFFIXES
from tl_core.data.zipsafe import ByteBudget, check_zip, extract_member, open_zip, safe_parts
from tl_core.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "IMBALANCE_RATIO",
    "MANIFEST_NAME",
    "MAX_IMPORT_MB",
    "MAX_SIDE",
    "MAX_SOURCE_PIXELS",
    "MIN_IMAGES_PER_CLASS",
    "SNIFFED_FORMATS",
    "DatasetManifest",
    "ImageItem",
    "Progress",
    "SkippedFile",
    "Split",
    "import_files",
    "import_folder",
    "import_zip",
    "split_dataset",
]

# IMAGE_SUFFIXES (from standalone_predict) is also what predict.py accepts: one definition.
# A file whose name has another (or no) file type is still imported when its contents are a
# picture in one of these formats (e.g. 'photo.jpg.download', 'IMG_0001' from a phone).
SNIFFED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF", "HEIF", "AVIF"})
_SNIFF_BYTES = 1024 * 1024
MIN_IMAGES_PER_CLASS = 10
MAX_SIDE = 640
MAX_SOURCE_PIXELS = 100_000_000
# The most a .zip may unpack to, in MiB; the app's upload limit (.streamlit/config.toml
# server.maxUploadSize) is the same number.
MAX_IMPORT_MB = 4096
MANIFEST_NAME = "manifest.json"
IMBALANCE_RATIO = 5
_UNSAFE_DIR_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageItem:
    """One normalised image. ``sha256`` hashes its normalised RGB pixels and size."""

    file: str  # relative to the data set folder, posix: "images/cat/0003.png"
    label: str
    subset: str | None  # "train" / "val" with an explicit split, else None
    source: str  # the name the user had, for messages
    sha256: str
    width: int
    height: int
    phash: str | None = None  # perceptual hash for near-duplicates (tl_core.data.neardup)


@dataclass(frozen=True)
class SkippedFile:
    source: str
    reason: str


@dataclass
class DatasetManifest:
    """What an import produced; saved as ``root/manifest.json``."""

    root: Path
    items: list[ImageItem]
    classes: list[str]
    skipped: list[SkippedFile]
    duplicates: list[tuple[str, str]]  # (left-out copy, kept copy), by source name
    warnings: list[str]
    has_explicit_val: bool

    def counts(self) -> dict[str, int]:
        """Images per class, all subsets together."""
        counter = Counter(i.label for i in self.items)
        return {c: counter[c] for c in self.classes}

    def save(self) -> None:
        data = {
            "version": 1,
            "classes": self.classes,
            "has_explicit_val": self.has_explicit_val,
            "items": [asdict(i) for i in self.items],
            "skipped": [asdict(s) for s in self.skipped],
            "duplicates": [list(d) for d in self.duplicates],
            "warnings": self.warnings,
        }
        tmp = self.root / (MANIFEST_NAME + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, self.root / MANIFEST_NAME)

    @classmethod
    def load(cls, root: Path) -> DatasetManifest:
        try:
            data = json.loads((Path(root) / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise DataError(
                f"The imported images in '{root}' are missing or unreadable. Import them again."
            ) from None
        return cls(
            root=Path(root),
            items=[ImageItem(**i) for i in data["items"]],
            classes=list(data["classes"]),
            skipped=[SkippedFile(**s) for s in data["skipped"]],
            duplicates=[(a, b) for a, b in data["duplicates"]],
            warnings=list(data["warnings"]),
            has_explicit_val=bool(data["has_explicit_val"]),
        )


@dataclass(frozen=True)
class Split:
    train: list[ImageItem]
    val: list[ImageItem]


# -------------------------------------------------------------------------- import


def _class_dir(label: str, taken: set[str]) -> str:
    """A folder name that is safe on every OS; unique even on case-insensitive disks."""
    base = _UNSAFE_DIR_CHARS.sub("_", label).strip(" .")[:80] or "class"
    name, n = base, 2
    while name.casefold() in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name.casefold())
    return name


def _is_empty(src: Path | BinaryIO) -> bool:
    if isinstance(src, Path):
        return src.stat().st_size == 0
    end = src.seek(0, os.SEEK_END)
    src.seek(0)
    return end == 0


def _examples(skipped: list[SkippedFile], n: int = 3) -> str:
    return "; ".join(f"'{s.source}': {s.reason}" for s in skipped[:n])


def _n(count: int, word: str, one: str = "", many: str = "") -> str:
    """'1 image was' / '3 images were'."""
    return f"{count} {word} {one}".rstrip() if count == 1 else f"{count} {word}s {many}".rstrip()


def _classes(plan: Plan) -> list[str]:
    """The classes the layout promises (validation-only folders were already skipped)."""
    wanted = sorted({label for _, label, subset in plan.todo if subset != "val"})
    if len(wanted) < 2:
        found = f" (only '{wanted[0]}')" if wanted else ""
        raise DataError(
            f"Only one class was found{found}: at least two classes are needed. Put each "
            "class's images in its own folder, e.g. cats/…, dogs/…, and try again."
        )
    return wanted


def _check(
    plan: Plan,
    items: list[ImageItem],
    skipped: list[SkippedFile],
    skipped_in: dict[str, list[SkippedFile]],
    leaks: int = 0,
) -> list[str]:
    """Refuse data sets that cannot be trained on; return the plain-words warnings."""
    wanted = _classes(plan)
    if not items:
        raise DataError(
            f"None of the {len(plan.todo)} image files could be used ({_examples(skipped)}). "
            "Check that they are real, complete pictures and try again."
        )
    per_class = Counter(i.label for i in items if i.subset != "val")
    for label in wanted:
        if per_class[label] == 0:
            why = _examples(skipped_in.get(label, [])) or "all are copies of other images"
            raise DataError(
                f"Class '{label}' has no usable images ({why}). Add real pictures to its "
                "folder, or remove the folder."
            )
        if not plan.explicit and per_class[label] < 2:
            raise DataError(
                f"Class '{label}' has 1 usable image; each class needs at least 2 (10 or more "
                "recommended) so that some can be held back to check the model. Add images to "
                f"'{label}' or remove its folder."
            )
    out = list(plan.warnings)
    counts = Counter(i.label for i in items)
    few = sorted((c for c in wanted if counts[c] < MIN_IMAGES_PER_CLASS), key=lambda c: counts[c])
    if len(few) == 1:
        out.append(
            f"Class '{few[0]}' has {_n(counts[few[0]], 'image')}; at least "
            f"{MIN_IMAGES_PER_CLASS} are recommended."
        )
    elif few:
        named = ", ".join(f"'{c}' ({counts[c]})" for c in few[:3])
        named += f" and {len(few) - 3:,} more" if len(few) > 3 else ""
        out.append(
            f"{len(few):,} classes have fewer than {MIN_IMAGES_PER_CLASS} images: {named}. At "
            f"least {MIN_IMAGES_PER_CLASS} per class are recommended."
        )
    big, small = max(wanted, key=lambda c: counts[c]), min(wanted, key=lambda c: counts[c])
    if counts[big] > IMBALANCE_RATIO * counts[small]:
        out.append(
            f"The classes are unbalanced: '{big}' has {counts[big]} images but '{small}' only "
            f"{counts[small]}. The model may favour the big classes; add images to the small "
            "ones if you can."
        )
    if plan.explicit:
        val_counts = Counter(i.label for i in items if i.subset == "val")
        if not val_counts and leaks:
            raise DataError(
                f"Every image in '{plan.val_dir}' is a copy of a training image, so it cannot "
                "check the model. Put other pictures in it, or remove it so that part of the "
                "training images is held back instead."
            )
        if not val_counts:
            raise DataError(
                f"The '{plan.val_dir}' folder has no usable images. Add images to it (one folder "
                "per class), or remove it so that part of the training images is held back "
                "instead."
            )
        missing = [c for c in wanted if val_counts[c] == 0]
        if missing:
            out.append(
                f"The '{plan.val_dir}' folder has no images of "
                f"{'class' if len(missing) == 1 else 'classes'} {some(missing)}, so the model "
                f"will not be checked on {'that class' if len(missing) == 1 else 'those'}."
            )
    return out


def _not_a_picture(entry: Entry) -> str | None:
    """Why a file whose name has no picture type is not imported; None when it is a picture."""
    kinds = ", ".join(sorted(IMAGE_SUFFIXES))
    suffix = Path(entry.parts[-1]).suffix.lower()
    try:
        src = entry.head() if entry.head else entry.fetch()
        if isinstance(src, Path):
            with open(src, "rb") as fh:
                src = io.BytesIO(fh.read(_SNIFF_BYTES))
    except OSError as exc:
        return os_reason(exc)
    except Exception:
        src = io.BytesIO()
    try:
        with src, Image.open(src) as img:
            if img.format in SNIFFED_FORMATS:
                return None
    except Exception:
        pass
    if not suffix:
        return f"not an image file (its name has no file type; supported: {kinds})"
    return f"file type '{suffix}' is not supported (supported: {kinds})"


def _import(
    entries: list[Entry],
    dest: Path,
    progress: Progress | None,
    what: str,
    skipped: list[SkippedFile] | None = None,
    folders: Iterable[tuple[str, ...]] = (),
    source_bytes: int | None = None,
) -> DatasetManifest:
    """Shared pipeline: plan, normalise, dedupe, check, save; ``dest`` vanishes on failure.

    ``source_bytes`` (the sources' total size) sizes the free-space check; a full disk,
    before or during the import, is a DiskFullError.
    """
    skipped = list(skipped or [])
    images: list[Entry] = []
    for e in entries:
        why = None if Path(e.parts[-1]).suffix.lower() in IMAGE_SUFFIXES else _not_a_picture(e)
        if why is None:
            images.append(e)
        else:
            skipped.append(SkippedFile(e.source, why))
    if not entries and not skipped:
        raise DataError(f"{what} is empty. Put one folder of images per class in it.")
    if not images:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        why = f" ({_examples(skipped)})" if skipped else ""
        raise DataError(f"No images were found in {what.lower()}{why}. Supported kinds: {kinds}.")
    folders = list(folders) + [e.parts[:-1] for e in entries if len(e.parts) > 1]
    plan = plan_layout(images, folders)
    skipped += [SkippedFile(source, reason) for source, reason in plan.skipped]
    if not plan.todo:
        raise DataError(
            "No class folders were found. Put each class's images in its own folder, e.g. "
            "cats/…, dogs/…, and try again."
        )
    _classes(plan)
    created = not dest.exists()
    if not created and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} must be a new or empty folder")
    need = diskspace.import_need(len(plan.todo), source_bytes or 0)
    diskspace.check_free(dest, need)
    try:
        manifest = _convert(plan, dest, progress, skipped)
        manifest.save()
        return manifest
    except BaseException as exc:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        if diskspace.is_disk_full(exc):  # measured after the clean-up freed the space
            raise diskspace.disk_full_error(dest, need) from None
        raise


def _prepare_and_encode(src: Path | BinaryIO) -> tuple[Prepared, bytes] | ImageSkip:
    """Decode, normalise and re-encode one image (runs in a worker thread)."""
    try:
        try:
            try:
                empty = _is_empty(src)
            except OSError as exc:
                raise ImageSkip(os_reason(exc)) from None
            if empty:
                raise ImageSkip("empty file (0 bytes)")
            prepared = prepare(src, MAX_SIDE, MAX_SOURCE_PIXELS)
        finally:
            if not isinstance(src, Path):
                src.close()
    except ImageSkip as skip:
        return skip
    out = io.BytesIO()
    if prepared.lossless:
        prepared.image.save(out, "PNG", optimize=False)
    else:
        prepared.image.save(out, "JPEG", quality=95)
    return prepared, out.getvalue()


def _prepared_all(
    todo: list[tuple[Entry, str, str]],
) -> Iterator[tuple[Prepared, bytes] | ImageSkip]:
    """Each image prepared, in order, on all cores (Pillow decodes and resizes outside the GIL).

    Sources are fetched here, one at a time (zip members share one budget); at most a few
    images per core are in memory at once.
    """
    workers = decode_workers()
    window: deque[Future[tuple[Prepared, bytes] | ImageSkip]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="import") as pool:
        for entry, _, _ in todo:
            try:
                window.append(pool.submit(_prepare_and_encode, entry.fetch()))
            except ImageSkip as skip:
                done: Future[tuple[Prepared, bytes] | ImageSkip] = Future()
                done.set_result(skip)
                window.append(done)
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _convert(
    plan: Plan, dest: Path, progress: Progress | None, skipped: list[SkippedFile]
) -> DatasetManifest:
    (dest / ".incoming").mkdir(parents=True, exist_ok=True)
    items: list[ImageItem] = []
    first: dict[str, ImageItem] = {}
    duplicates: list[tuple[str, str]] = []
    leaks = across = 0
    dirs: dict[str, str] = {}
    taken: set[str] = set()
    numbers: Counter[str] = Counter()
    skipped_in: dict[str, list[SkippedFile]] = {}
    total = len(plan.todo)
    if progress:
        progress(0, total)
    for done, ((entry, label, subset), outcome) in enumerate(
        zip(plan.todo, _prepared_all(plan.todo), strict=True), 1
    ):
        if isinstance(outcome, ImageSkip):
            skipped.append(SkippedFile(entry.source, outcome.reason))
            skipped_in.setdefault(label, []).append(skipped[-1])
        else:
            prepared, encoded = outcome
            kept = first.get(prepared.sha256)
            if kept is not None:
                duplicates.append((entry.source, kept.source))
                leaks += kept.subset == "train" and subset == "val"
                across += kept.label != label
            else:
                folder = dirs.get(label) or dirs.setdefault(label, _class_dir(label, taken))
                ext = "png" if prepared.lossless else "jpg"
                rel = f"images/{folder}/{numbers[label]:04d}.{ext}"
                numbers[label] += 1
                (dest / "images" / folder).mkdir(parents=True, exist_ok=True)
                (dest / rel).write_bytes(encoded)
                img = prepared.image
                phash = image_hash(
                    img
                )  # near-duplicates are looked for later (tl_core.data.neardup)
                item = ImageItem(rel, label, subset, entry.source, prepared.sha256, *img.size)
                item = replace(item, phash=phash)
                first[prepared.sha256] = item
                items.append(item)
        if progress:
            progress(done, total)
    shutil.rmtree(dest / ".incoming", ignore_errors=True)
    warnings = _check(plan, items, skipped, skipped_in, leaks)
    if duplicates:
        warnings.append(
            f"{_n(len(duplicates), 'exact duplicate image', 'was', 'were')} left out "
            "(one copy of each is kept)."
        )
    if leaks:
        warnings.append(
            f"{_n(leaks, 'image')} in '{plan.val_dir}' "
            f"{'was an exact copy' if leaks == 1 else 'were exact copies'} of training images; "
            "left out of validation so that the check stays honest."
        )
    if across:
        warnings.append(
            f"{_n(across, 'image')} appeared in two different classes; only the first copy was "
            "kept. Check that each picture is in the right folder."
        )
    if skipped:
        warnings.append(
            f"{_n(len(skipped), 'file', 'was', 'were')} skipped; the list of skipped files "
            "says why."
        )
    return DatasetManifest(
        root=dest,
        items=items,
        classes=sorted({i.label for i in items}),
        skipped=skipped,
        duplicates=duplicates,
        warnings=warnings,
        has_explicit_val=plan.explicit,
    )


def import_folder(src: Path, dest: Path, progress: Progress | None = None) -> DatasetManifest:
    """Import a folder with one sub-folder per class (or ``train/`` + ``val/``)."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"The folder '{src}' does not exist. Choose a folder of images.")
    try:
        found = folder_entries(src, dest)
    except OSError as exc:
        raise DataError(
            f"The folder '{src}' cannot be opened ({os_reason(exc, 'folder')}). Choose a folder "
            "you can read, or copy the images somewhere you can."
        ) from None
    skipped = [SkippedFile(source, reason) for source, reason in found.skipped]
    size = diskspace.files_bytes(src / e.source for e in found.entries)
    return _import(
        found.entries, dest, progress, "The folder", skipped, found.folders, source_bytes=size
    )


def import_zip(
    zip_file: Path | BinaryIO,
    dest: Path,
    progress: Progress | None = None,
    max_total_bytes: int = MAX_IMPORT_MB * 1024**2,
    max_files: int = 100_000,
) -> DatasetManifest:
    """Import a .zip; unsafe or oversized archives are refused before anything is unpacked."""
    with open_zip(zip_file) as zf:
        infos = check_zip(zf, max_total_bytes, max_files)
        budget = ByteBudget(max_total_bytes)
        tmp = Path(dest) / ".incoming"
        entries = []
        for info in infos:
            raw = safe_parts(info.filename) or ()
            if raw:
                fetch = lambda i=info: extract_member(zf, i, budget, tmp)  # noqa: E731
                head = lambda i=info: _zip_head(zf, i)  # noqa: E731
                entries.append(Entry(nfc(raw), info.filename, fetch, raw, head))
        entries, hidden = screen(entries)
        skipped = [SkippedFile(source, reason) for source, reason in hidden]
        folders = [
            parts
            for i in zf.infolist()
            if i.is_dir()
            and (parts := nfc(safe_parts(i.filename) or ()))
            and not is_junk(parts)
            and not any(p.startswith(".") for p in parts)
        ]
        size = sum(i.file_size for i in infos)
        return _import(
            entries, Path(dest), progress, "The .zip file", skipped, folders, source_bytes=size
        )


def _zip_head(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> BinaryIO:
    """The first megabyte of a member, to tell whether it is a picture (not counted)."""
    with zf.open(info) as member:
        return io.BytesIO(member.read(_SNIFF_BYTES))


def import_files(
    files: Iterable[tuple[str, bytes | Path]], dest: Path, progress: Progress | None = None
) -> DatasetManifest:
    """Import uploaded files given as (relative name, bytes or the file they were saved to).

    Names only ever become class labels, never paths; a leading '/' is tolerated (browsers
    send dropped folders so), names climbing out with '..' are skipped. Saved files are read
    one at a time, as the import reaches them.
    """
    entries: list[Entry] = []
    skipped: list[SkippedFile] = []
    size = 0
    for name, data in files:
        size += data.stat().st_size if isinstance(data, Path) else len(data)
        parts = safe_parts(name.lstrip("/\\"))
        fetch: Callable[[], Path | BinaryIO] = (
            (lambda p=data: p) if isinstance(data, Path) else (lambda d=data: io.BytesIO(d))
        )
        if parts is None:
            skipped.append(SkippedFile(name, "unsafe file name"))
        elif parts:
            entries.append(Entry(nfc(parts), name, fetch, parts))
    entries, hidden = screen(entries)
    skipped += [SkippedFile(source, reason) for source, reason in hidden]
    return _import(entries, Path(dest), progress, "The uploaded folder", skipped, source_bytes=size)


# --------------------------------------------------------------------------- split


def split_dataset(manifest: DatasetManifest, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Training and validation images.

    An explicit ``val/`` folder is used as is (``val_fraction`` ignored). Otherwise each class
    is shuffled with its own ``random.Random`` seeded by (seed, class) and ``round(n *
    val_fraction)`` images, at least 1 and at most n - 1, go to validation.
    """
    if manifest.has_explicit_val:
        train = [i for i in manifest.items if i.subset != "val"]
        return Split(train, [i for i in manifest.items if i.subset == "val"])
    if not 0 < val_fraction < 1:
        raise DataError(
            f"The share of images held back for validation must be between 0 and 1 (not "
            f"{val_fraction}); 0.2 is a good start."
        )
    val_files: set[str] = set()
    by_label: dict[str, list[str]] = {}
    for item in manifest.items:
        by_label.setdefault(item.label, []).append(item.file)
    for label in manifest.classes:
        files = sorted(by_label.get(label, []))
        random.Random(f"{seed}:{label}").shuffle(files)
        n_val = min(max(round(len(files) * val_fraction), 1), len(files) - 1)
        val_files.update(files[:n_val])
    return Split(
        train=[i for i in manifest.items if i.file not in val_files],
        val=[i for i in manifest.items if i.file in val_files],
    )
