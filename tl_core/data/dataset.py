"""Import a user's labelled images once: a folder, a .zip or uploaded files; grow them later.

Every import writes a new folder ``dest/`` holding ``manifest.json`` and
``images/<class>/NNNN.png|jpg``: each image decoded, rotated upright, converted to RGB and
downscaled, under a generated file name. Nothing the user gave is trusted (names, sizes,
contents) and the source is never modified. Mistakes raise :class:`DataError` in plain words;
a failed import leaves no ``dest`` behind. No torch here: pages import this module.

:func:`grow` adds images (to existing classes or new ones) as a new folder beside the old
one: the old images are hard-linked with their manifest entries unchanged, only the new ones
are decoded. The old folder is never written to, so runs that used it keep their data.
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from tl_core import diskspace
from tl_core.data import neardup
from tl_core.data.imageprep import ImageSkip, Prepared, decode_workers, prepare
from tl_core.data.layout import (
    Entry,
    Plan,
    _clean_name,
    _label_key,
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
    "RUN_FRAMES",
    "SNIFFED_FORMATS",
    "DatasetManifest",
    "GrowSource",
    "Growth",
    "ImageItem",
    "Progress",
    "SkippedFile",
    "Split",
    "batch_count",
    "camera_run",
    "grow",
    "import_files",
    "import_folder",
    "import_zip",
    "near_links",
    "split_dataset",
    "split_groups",
    "split_rule_text",
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
    # Where each later addition (``grow``) starts in ``items``: the split keeps the sides of
    # the images before it. Empty for a plain import.
    batch_starts: list[int] = field(default_factory=list)
    grown_from: str | None = None  # the folder name of the data version this one grew from
    # Near-duplicates the split keeps on one side (:func:`split_dataset`): a spanning forest
    # of the near-duplicate pairs within each class, as (file, file) links, found when the
    # data version was made. None: not looked for (a data version of an older release), so
    # the split is the plain one. ``near_since``: the first batch (0 = the import, 1 = the
    # first ``grow``, ...) split with them; earlier batches keep the sides they had.
    near_links: list[tuple[str, str]] | None = None
    near_since: int = 0

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
            "batch_starts": self.batch_starts,
            "grown_from": self.grown_from,
            "near_links": None if self.near_links is None else [list(x) for x in self.near_links],
            "near_since": self.near_since,
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
            batch_starts=[int(b) for b in data.get("batch_starts") or []],
            grown_from=data.get("grown_from"),
            near_links=(
                None
                if data.get("near_links") is None
                else [(str(a), str(b)) for a, b in data["near_links"]]
            ),
            near_since=int(data.get("near_since") or 0),
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
    out = list(plan.warnings) + _count_warnings(items, wanted)
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
        out += _missing_val_warnings(items, wanted, plan.val_dir or "val")
    return out


def _count_warnings(items: Sequence[ImageItem], wanted: list[str]) -> list[str]:
    """Warnings that depend on the images per class: too few, unbalanced."""
    out: list[str] = []
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
    return out


_MISSING_VAL = re.compile(r"^The '.*' folder has no images of class(es)? ")


def _missing_val_warnings(items: Sequence[ImageItem], wanted: list[str], val_dir: str) -> list[str]:
    """With a validation folder: the classes it has no images of."""
    val_counts = Counter(i.label for i in items if i.subset == "val")
    missing = [c for c in wanted if val_counts[c] == 0]
    if not missing:
        return []
    return [
        f"The '{val_dir}' folder has no images of "
        f"{'class' if len(missing) == 1 else 'classes'} {some(missing)}, so the model "
        f"will not be checked on {'that class' if len(missing) == 1 else 'those'}."
    ]


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


def _images_only(
    entries: list[Entry], skipped: list[SkippedFile], what: str, empty_hint: str
) -> list[Entry]:
    """The entries that are pictures (by name or contents); the others go to ``skipped``."""
    images: list[Entry] = []
    for e in entries:
        why = None if Path(e.parts[-1]).suffix.lower() in IMAGE_SUFFIXES else _not_a_picture(e)
        if why is None:
            images.append(e)
        else:
            skipped.append(SkippedFile(e.source, why))
    if not entries and not skipped:
        raise DataError(f"{what} is empty. {empty_hint}")
    if not images:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        why = f" ({_examples(skipped)})" if skipped else ""
        raise DataError(f"No images were found in {what.lower()}{why}. Supported kinds: {kinds}.")
    return images


def _no_class_folders() -> DataError:
    return DataError(
        "No class folders were found. Put each class's images in its own folder, e.g. "
        "cats/…, dogs/…, and try again."
    )


def _new_dest(dest: Path) -> bool:
    """Check that ``dest`` is new or empty; True when it does not exist yet."""
    created = not dest.exists()
    if not created and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} must be a new or empty folder")
    return created


def _undo(dest: Path, created: bool, exc: BaseException, need: int) -> None:
    """Remove what a failed import or addition wrote; a full disk becomes DiskFullError."""
    if created:
        shutil.rmtree(dest, ignore_errors=True)
    else:
        for child in dest.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    if diskspace.is_disk_full(exc):  # measured after the clean-up freed the space
        raise diskspace.disk_full_error(dest, need) from None


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
    images = _images_only(entries, skipped, what, "Put one folder of images per class in it.")
    folders = list(folders) + [e.parts[:-1] for e in entries if len(e.parts) > 1]
    plan = plan_layout(images, folders)
    skipped += [SkippedFile(source, reason) for source, reason in plan.skipped]
    if not plan.todo:
        raise _no_class_folders()
    _classes(plan)
    created = _new_dest(dest)
    need = diskspace.import_need(len(plan.todo), source_bytes or 0)
    diskspace.check_free(dest, need)
    try:
        manifest = _convert(plan, dest, progress, skipped)
        manifest.near_links = near_links(manifest)
        manifest.save()
        return manifest
    except BaseException as exc:
        _undo(dest, created, exc, need)
        raise


def _prepare_and_encode(src: Path | BinaryIO) -> tuple[Prepared, bytes, str] | ImageSkip:
    """Decode, normalise, re-encode and hash one image (runs in a worker thread)."""
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
    return prepared, out.getvalue(), image_hash(prepared.image)


def _prepared_all(
    todo: list[tuple[Entry, str, str]],
) -> Iterator[tuple[Prepared, bytes, str] | ImageSkip]:
    """Each image prepared, in order, on all cores (Pillow decodes and resizes outside the GIL).

    Sources are fetched here, one at a time (zip members share one budget); at most a few
    images per core are in memory at once.
    """
    workers = decode_workers()
    window: deque[Future[tuple[Prepared, bytes, str] | ImageSkip]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="import") as pool:
        for entry, _, _ in todo:
            try:
                window.append(pool.submit(_prepare_and_encode, entry.fetch()))
            except ImageSkip as skip:
                done: Future[tuple[Prepared, bytes, str] | ImageSkip] = Future()
                done.set_result(skip)
                window.append(done)
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


@dataclass
class _Intake:
    """Where new images are written and what they are compared with (an import starts empty).

    ``first``: sha256 -> the kept image; ``dirs``: class -> its folder under ``images/``;
    ``taken``: folder names in use (case-folded); ``numbers``: the next file number per class.
    """

    dest: Path
    first: dict[str, ImageItem] = field(default_factory=dict)
    dirs: dict[str, str] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    numbers: Counter[str] = field(default_factory=Counter)


@dataclass
class _Taken:
    """What an intake produced: the images kept and the copies left out."""

    items: list[ImageItem]
    duplicates: list[tuple[str, str]]
    leaks: int  # validation images that copy a training image
    across: int  # copies of an image of another class
    known: int  # copies of an image that was there before (``grow``)
    skipped_in: dict[str, list[SkippedFile]]


def _take(
    todo: list[tuple[Entry, str, str | None]],
    intake: _Intake,
    progress: Progress | None,
    skipped: list[SkippedFile],
) -> _Taken:
    """Decode, normalise, dedupe (also against ``intake.first``) and write each image."""
    dest = intake.dest
    (dest / ".incoming").mkdir(parents=True, exist_ok=True)
    before = set(intake.first)
    made: set[str] = set()
    out = _Taken([], [], 0, 0, 0, {})
    total = len(todo)
    if progress:
        progress(0, total)
    for done, ((entry, label, subset), outcome) in enumerate(
        zip(todo, _prepared_all(todo), strict=True), 1
    ):
        if isinstance(outcome, ImageSkip):
            skipped.append(SkippedFile(entry.source, outcome.reason))
            out.skipped_in.setdefault(label, []).append(skipped[-1])
        else:
            prepared, encoded, phash = outcome  # phash: near-duplicates are looked for later
            kept = intake.first.get(prepared.sha256)
            if kept is not None:
                out.duplicates.append((entry.source, kept.source))
                out.leaks += kept.subset == "train" and subset == "val"
                out.across += kept.label != label
                out.known += prepared.sha256 in before
            else:
                folder = intake.dirs.get(label) or intake.dirs.setdefault(
                    label, _class_dir(label, intake.taken)
                )
                ext = "png" if prepared.lossless else "jpg"
                rel = f"images/{folder}/{intake.numbers[label]:04d}.{ext}"
                intake.numbers[label] += 1
                if folder not in made:  # once per class: a mkdir costs milliseconds on some disks
                    (dest / "images" / folder).mkdir(parents=True, exist_ok=True)
                    made.add(folder)
                (dest / rel).write_bytes(encoded)
                img = prepared.image
                item = ImageItem(rel, label, subset, entry.source, prepared.sha256, *img.size)
                item = replace(item, phash=phash)
                intake.first[prepared.sha256] = item
                out.items.append(item)
        if progress:
            progress(done, total)
    shutil.rmtree(dest / ".incoming", ignore_errors=True)
    return out


def _convert(
    plan: Plan, dest: Path, progress: Progress | None, skipped: list[SkippedFile]
) -> DatasetManifest:
    taken = _take(plan.todo, _Intake(dest), progress, skipped)
    items, duplicates, leaks, across = taken.items, taken.duplicates, taken.leaks, taken.across
    warnings = _check(plan, items, skipped, taken.skipped_in, leaks)
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


@dataclass
class _Source:
    """What the user gave, as file entries: those left out already, folders seen, size."""

    entries: list[Entry]
    skipped: list[SkippedFile]
    folders: list[tuple[str, ...]]
    size: int
    what: str  # "The folder", for messages


def _folder_source(src: Path, dest: Path) -> _Source:
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
    return _Source(found.entries, skipped, found.folders, size, "The folder")


@contextmanager
def _zip_source(
    zip_file: Path | BinaryIO, dest: Path, max_total_bytes: int, max_files: int
) -> Iterator[_Source]:
    """The archive's members (unpacked one at a time, while the archive is open)."""
    with open_zip(zip_file) as zf:
        infos = check_zip(zf, max_total_bytes, max_files)
        budget = ByteBudget(max_total_bytes)
        tmp = dest / ".incoming"
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
        yield _Source(entries, skipped, folders, size, "The .zip file")


def _files_source(files: Iterable[tuple[str, bytes | Path]], what: str) -> _Source:
    """Uploaded files as (name, bytes or the file they were saved to); saved files are read
    one at a time, as the import reaches them."""
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
    return _Source(entries, skipped, [], size, what)


def _import_source(src: _Source, dest: Path, progress: Progress | None) -> DatasetManifest:
    return _import(
        src.entries, dest, progress, src.what, src.skipped, src.folders, source_bytes=src.size
    )


def import_folder(src: Path, dest: Path, progress: Progress | None = None) -> DatasetManifest:
    """Import a folder with one sub-folder per class (or ``train/`` + ``val/``)."""
    return _import_source(_folder_source(Path(src), dest), dest, progress)


def import_zip(
    zip_file: Path | BinaryIO,
    dest: Path,
    progress: Progress | None = None,
    max_total_bytes: int = MAX_IMPORT_MB * 1024**2,
    max_files: int = 100_000,
) -> DatasetManifest:
    """Import a .zip; unsafe or oversized archives are refused before anything is unpacked."""
    with _zip_source(zip_file, Path(dest), max_total_bytes, max_files) as src:
        return _import_source(src, Path(dest), progress)


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
    return _import_source(_files_source(files, "The uploaded folder"), Path(dest), progress)


# ---------------------------------------------------------------------------- grow

# A folder (or a path to a .zip), a file-like .zip, or uploaded files as (name, bytes).
GrowSource = Path | str | BinaryIO | Sequence[tuple[str, bytes]]
# Files beside the images that a new data version takes over (the user's label review).
_CARRIED = ("corrections.json",)


@dataclass(frozen=True)
class Growth:
    """What :func:`grow` did: the new data version and what was added to it."""

    manifest: DatasetManifest
    added: dict[str, int]  # class -> images added
    new_classes: list[str]
    duplicates: list[tuple[str, str]]  # (left-out copy, kept image), by source name
    skipped: list[SkippedFile]
    warnings: list[str]  # about the added images
    linked: int  # earlier images hard-linked into the new version
    copied: int  # earlier images copied (where the disk cannot link)

    def summary(self) -> str:
        """One plain sentence: 'Added 40 images to 'rust' (2 duplicates left out); …'."""
        total = sum(self.added.values())
        if len(self.added) == 1:
            (label,) = self.added
            new = "the new class " if label in self.new_classes else ""
            head = f"Added {_n(total, 'image')} to {new}'{label}'"
        else:
            shown = ", ".join(f"{n:,} to '{c}'" for c, n in list(self.added.items())[:4])
            more = f" and {len(self.added) - 4:,} more classes" if len(self.added) > 4 else ""
            head = f"Added {_n(total, 'image')} ({shown}{more})"
        left = []
        if self.duplicates:
            left.append(f"{_n(len(self.duplicates), 'duplicate')} left out")
        if self.skipped:
            left.append(f"{_n(len(self.skipped), 'file')} skipped")
        extra = f" ({', '.join(left)})" if left else ""
        return f"{head}{extra}; earlier runs keep their data."


@contextmanager
def _grow_source(source: GrowSource, dest: Path) -> Iterator[_Source]:
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            yield _folder_source(path, dest)
            return
        if not path.is_file():
            raise DataError(f"'{path}' does not exist. Choose a folder of images or a .zip file.")
        with _zip_source(path, dest, MAX_IMPORT_MB * 1024**2, 100_000) as src:
            yield src
        return
    if hasattr(source, "read"):
        with _zip_source(source, dest, MAX_IMPORT_MB * 1024**2, 100_000) as src:  # type: ignore[arg-type]
            yield src
        return
    yield _files_source(source, "The uploaded files")  # type: ignore[arg-type]


def _intake_of(base: DatasetManifest, dest: Path) -> _Intake:
    """New images are compared with the old ones and numbered after them, class by class."""
    intake = _Intake(dest)
    for item in base.items:
        intake.first.setdefault(item.sha256, item)
        parts = item.file.split("/")
        if len(parts) != 3:
            continue
        intake.dirs.setdefault(item.label, parts[1])
        intake.taken.add(parts[1].casefold())
        stem = Path(parts[2]).stem
        if stem.isdigit():
            intake.numbers[item.label] = max(intake.numbers[item.label], int(stem) + 1)
    return intake


def _link_old(base: DatasetManifest, dest: Path) -> int:
    """Hard-link (copy where the disk cannot) the old images and label review into ``dest``."""
    root, linked = Path(base.root), 0
    for item in base.items:
        src, dst = root / item.file, dest / item.file
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
            linked += 1
            continue
        except FileExistsError:
            raise
        except OSError:
            pass
        try:
            shutil.copy2(src, dst)
        except FileNotFoundError:
            raise DataError(
                f"The image '{item.file}' is missing from '{root}', so images cannot be added "
                "to this data set. Import the images again."
            ) from None
    for name in _CARRIED:
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)  # a copy: editing one leaves the other
    return linked


def _grow_todo(
    base: DatasetManifest, images: list[Entry], src: _Source, label: str | None
) -> tuple[list[tuple[Entry, str, str | None]], list[SkippedFile], list[str], str | None]:
    """Each new image's class (an existing one where the name matches) and subset.

    Also the files left out by the layout, the warnings about names, and the validation
    folder's name (for a data set with a validation folder).
    """
    existing = {_label_key(c): c for c in base.classes}
    renamed: dict[str, str] = {}
    skipped: list[SkippedFile] = []
    warnings: list[str] = []
    val_dir: str | None = None
    default_subset = "train" if base.has_explicit_val else None
    todo: list[tuple[Entry, str, str | None]] = []
    if label is not None:
        name = _clean_name(nfc([label])[0])
        if not name:
            raise DataError("Type a name for the new class, or choose one of the classes.")
        target = existing.get(_label_key(name), name)
        if target != name:
            renamed[name] = target
        todo = [(e, target, default_subset) for e in sorted(images, key=lambda e: e.parts)]
    else:
        folders = list(src.folders) + [e.parts[:-1] for e in src.entries if len(e.parts) > 1]
        plan = plan_layout(images, folders)
        skipped += [SkippedFile(source, reason) for source, reason in plan.skipped]
        if not plan.todo:
            raise _no_class_folders()
        if plan.explicit and not base.has_explicit_val:
            raise DataError(
                f"These images come in '{plan.train_dir}' and '{plan.val_dir}' folders, but "
                "this data set holds back part of each class for validation itself. Put the "
                "images in one folder per class, without those two folders, and add them again."
            )
        val_dir = plan.val_dir
        warnings += plan.warnings
        for entry, found, subset in plan.todo:
            target = existing.get(_label_key(found), found)
            if target != found:
                renamed[found] = target
            todo.append((entry, target, subset or default_subset))
    if renamed:
        pairs = [f"'{a}' as '{b}'" for a, b in sorted(renamed.items())]
        warnings.append(
            f"Class names that differ from a class of the data set only in capital letters or "
            f"in how their letters are written are the same class: added {some(pairs)}."
        )
    return todo, skipped, warnings, val_dir


def _grow_warnings(taken: _Taken, skipped: list[SkippedFile], val_dir: str | None) -> list[str]:
    out: list[str] = []
    inner = len(taken.duplicates) - taken.known
    if taken.known:
        out.append(
            f"{_n(taken.known, 'added image', 'was', 'were')} already in the data set and "
            f"{'was' if taken.known == 1 else 'were'} left out."
        )
    if inner:
        out.append(
            f"{_n(inner, 'exact duplicate image', 'was', 'were')} among the added ones left "
            "out (one copy of each is kept)."
        )
    if taken.across:
        out.append(
            f"{_n(taken.across, 'added image')} "
            f"{'was a copy' if taken.across == 1 else 'were copies'} of an image in another "
            "class; only the first copy was kept. Check that each "
            "picture is in the right class."
        )
    if taken.leaks:
        out.append(
            f"{_n(taken.leaks, 'image')} in '{val_dir}' "
            f"{'was an exact copy' if taken.leaks == 1 else 'were exact copies'} of training "
            "images; left out of validation so that the check stays honest."
        )
    if skipped:
        out.append(
            f"{_n(len(skipped), 'file', 'was', 'were')} skipped; the list of skipped files "
            "says why."
        )
    return out


def _check_growth(
    base: DatasetManifest, todo: list[tuple[Entry, str, str | None]], taken: _Taken
) -> list[str]:
    """Refuse an addition that adds nothing or a class that cannot be trained on."""
    if not taken.items:
        if taken.duplicates:
            raise DataError(
                f"Nothing was added: {_n(len(taken.duplicates), 'image')} "
                f"{'is a copy' if len(taken.duplicates) == 1 else 'are copies'} of images "
                "already in the data set (or of each other). Choose other pictures."
            )
        skipped = [s for ss in taken.skipped_in.values() for s in ss]
        raise DataError(
            f"None of the {len(todo)} image files could be used ({_examples(skipped)}). "
            "Check that they are real, complete pictures and try again."
        )
    new_classes = sorted({label for _, label, _ in todo} - set(base.classes))
    per_class = Counter(i.label for i in taken.items if i.subset != "val")
    for label in new_classes:
        if per_class[label] == 0:
            why = _examples(taken.skipped_in.get(label, [])) or "all are copies of other images"
            raise DataError(
                f"The new class '{label}' has no usable images ({why}). Add real pictures to "
                "it, or leave it out."
            )
        if not base.has_explicit_val and per_class[label] < 2:
            raise DataError(
                f"The new class '{label}' has 1 usable image; each class needs at least 2 (10 "
                "or more recommended) so that some can be held back to check the model. Add "
                f"more images of '{label}'."
            )
    return new_classes


def _grown_warnings(
    base: DatasetManifest, items: list[ImageItem], classes: list[str], val_dir: str | None
) -> list[str]:
    """The data set's warnings with those that depend on the counts worked out again."""
    stale = set(_count_warnings(base.items, base.classes))
    kept, old_val_dir = [], None
    for w in base.warnings:
        if _MISSING_VAL.match(w):
            old_val_dir = old_val_dir or w.split("'")[1]
        elif w not in stale:
            kept.append(w)
    out = kept + _count_warnings(items, classes)
    if base.has_explicit_val:
        out += _missing_val_warnings(items, classes, old_val_dir or val_dir or "val")
    return out


def grow(
    base: DatasetManifest,
    source: GrowSource,
    dest: Path,
    label: str | None = None,
    progress: Progress | None = None,
) -> Growth:
    """Add images to a data set as a new data version in ``dest`` (a new or empty folder).

    With ``label`` every new image goes into that class (an existing one, or a new class);
    without, ``source`` holds one folder per class as for an import (``train/`` + ``val/``
    only when ``base`` has a validation folder). A class name matching an existing class
    case-insensitively or after Unicode normalisation (NFKC) is that class. ``base``'s items
    are kept unchanged and their files hard-linked (copied where linking fails); only the new
    images are decoded, and copies of old images are left out by their pixel hash. ``base``
    is only read. On failure ``dest`` vanishes (DataError, DiskFullError).
    """
    dest = Path(dest)
    with _grow_source(source, dest) as src:
        skipped = list(src.skipped)
        hint = (
            "Choose some images to add."
            if label is not None
            else "Put one folder of images per class in it."
        )
        images = _images_only(src.entries, skipped, src.what, hint)
        todo, layout_skipped, warnings, val_dir = _grow_todo(base, images, src, label)
        skipped += layout_skipped
        created = _new_dest(dest)
        need = diskspace.import_need(len(todo), src.size)
        diskspace.check_free(dest, need)
        try:
            taken = _take(todo, _intake_of(base, dest), progress, skipped)
            new_classes = _check_growth(base, todo, taken)
            linked = _link_old(base, dest)
            items = [*base.items, *taken.items]
            classes = sorted({*base.classes, *new_classes})
            warnings += _grow_warnings(taken, skipped, val_dir)
            manifest = DatasetManifest(
                root=dest,
                items=items,
                classes=classes,
                skipped=[*base.skipped, *skipped],
                duplicates=[*base.duplicates, *taken.duplicates],
                warnings=_grown_warnings(base, items, classes, val_dir) + warnings,
                has_explicit_val=base.has_explicit_val,
                batch_starts=[*base.batch_starts, len(base.items)],
                grown_from=Path(base.root).name,
                # an older base was split without near-duplicates: its batches stay so
                near_since=base.near_since if base.near_links is not None else batch_count(base),
            )
            manifest.near_links = near_links(manifest, base)  # only the new images' pairs
            manifest.save()
        except BaseException as exc:
            _undo(dest, created, exc, need)
            raise
    added = Counter(i.label for i in taken.items)
    return Growth(
        manifest=manifest,
        added={c: added[c] for c in classes if added[c]},
        new_classes=new_classes,
        duplicates=taken.duplicates,
        skipped=skipped,
        warnings=warnings,
        linked=linked,
        copied=len(base.items) - linked,
    )


# --------------------------------------------------------------------------- split


def _n_val(n: int, val_fraction: float) -> int:
    """Images of a class of ``n`` held back: ``round(n * val_fraction)``, 1 to n - 1."""
    return min(max(round(n * val_fraction), 1), n - 1)


# About one second of a camera recording (5-10 frames a second): consecutive frames of one
# recording in the same run of this many are one group for the split, flagged or not.
RUN_FRAMES = 8
_CAMERA_NAME = re.compile(r"(?:^|/)r(\d{4,})-f(\d{4,})\.jpg$")


def camera_run(item: ImageItem) -> tuple[int, int] | None:
    """(recording, run of :data:`RUN_FRAMES` frames) of a camera frame (its source is named
    ``<class>/r0003-f0012.jpg``, see :mod:`tl_core.data.camera`), else None."""
    found = _CAMERA_NAME.search(item.source.replace("\\", "/"))
    return (int(found[1]), (int(found[2]) - 1) // RUN_FRAMES) if found else None


def batch_count(manifest: DatasetManifest) -> int:
    """How many batches the data set came in: 1 for an import, +1 for each ``grow``."""
    n = len(manifest.items)
    return 1 + len({b for b in manifest.batch_starts if 0 < b < n})


def _batches(manifest: DatasetManifest) -> list[int]:
    """The batch of each item (0: imported, 1: the first addition, ...)."""
    n = len(manifest.items)
    starts = sorted({0, *(b for b in manifest.batch_starts if 0 < b < n)})
    batch_of = [0] * n
    for b, (lo, hi) in enumerate(zip(starts, [*starts[1:], n], strict=True)):
        batch_of[lo:hi] = [b] * (hi - lo)
    return batch_of


class _Groups:
    """Union-find over item indices."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, k: int) -> int:
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def join(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)
        return True


def near_links(
    manifest: DatasetManifest, base: DatasetManifest | None = None
) -> list[tuple[str, str]]:
    """The near-duplicate pairs within each class (:func:`neardup.manifest_pairs`, found here
    and kept beside the manifest; with ``base``, the version it grew from, only those of the
    added images are looked for) thinned to a spanning forest, added batch by batch: the
    groups they make among the images of the first k batches are those of all pairs."""
    items = manifest.items
    index = {item.file: k for k, item in enumerate(items)}
    batch_of = _batches(manifest)
    edges = []
    for p in neardup.manifest_pairs(manifest, base):
        a, b = index.get(p.a), index.get(p.b)
        if a is None or b is None or items[a].label != items[b].label:
            continue
        level = max(batch_of[a], batch_of[b])
        if level >= manifest.near_since:
            edges.append((level, min(a, b), max(a, b)))
    groups = _Groups(len(items))
    return [(items[a].file, items[b].file) for _, a, b in sorted(edges) if groups.join(a, b)]


def _n_val(n: int, val_fraction: float) -> int:
    """Images of a class of ``n`` held back: ``round(n * val_fraction)``, 1 to n - 1."""
    return min(max(round(n * val_fraction), 1), n - 1)


def _check_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise DataError(
            f"The share of images held back for validation must be between 0 and 1 (not "
            f"{val_fraction}); 0.2 is a good start."
        )


def _pick(
    fresh: list[list[int]],
    files: list[str],
    rng: random.Random,
    need: int,
    train_left: int,
    none_yet: bool,
) -> list[list[int]]:
    """The groups of one class and batch that go to validation.

    Groups are shuffled (by their first file, so that single images shuffle exactly as the
    files themselves used to) and taken whole while fewer than ``need`` images are held back;
    a group that would overshoot the share by more than it would still lack is passed over,
    and at least one image stays in training. When the class would get no validation image at
    all (``none_yet``) and has two groups or more, the smallest group goes.
    """
    by_first = {files[g[0]]: g for g in fresh}
    order = sorted(by_first)
    rng.shuffle(order)
    chosen: list[list[int]] = []
    held = 0
    for first in order:
        if held >= need:
            break
        size = len(by_first[first])
        if held + size > need and held + size - need > need - held:
            continue
        if train_left - size < 1:
            continue
        chosen.append(by_first[first])
        held += size
        train_left -= size
    if not chosen and none_yet and len(fresh) + (train_left > sum(map(len, fresh))) >= 2:
        smallest = min((by_first[f] for f in order), key=len)
        if train_left - len(smallest) >= 1:
            chosen.append(smallest)
    return chosen


def split_groups(manifest: DatasetManifest) -> list[list[str]]:
    """The groups of two or more images the split keeps on one side, each sorted (files)."""
    groups = _Groups(len(manifest.items))
    _join_all(manifest, groups, _batches(manifest), None)
    members: dict[int, list[str]] = {}
    for k, item in enumerate(manifest.items):
        members.setdefault(groups.find(k), []).append(item.file)
    return sorted(sorted(g) for g in members.values() if len(g) > 1)


def _join_all(
    manifest: DatasetManifest, groups: _Groups, batch_of: list[int], level: int | None
) -> None:
    """Join the near-duplicate links and camera runs of batches up to ``level`` (all: None)."""
    if manifest.near_links is None:
        return
    items = manifest.items
    index = {item.file: k for k, item in enumerate(items)}
    for a_file, b_file in manifest.near_links:
        a, b = index.get(a_file), index.get(b_file)
        if (
            a is not None
            and b is not None
            and (level is None or max(batch_of[a], batch_of[b]) <= level)
        ):
            groups.join(a, b)
    first: dict[tuple[int, str, int, int], int] = {}
    for k, item in enumerate(items):
        b = batch_of[k]
        if b < manifest.near_since or (level is not None and b > level):
            continue
        run = camera_run(item)
        if run is not None:
            groups.join(first.setdefault((b, item.label, *run), k), k)


def split_dataset(manifest: DatasetManifest, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Training and validation images.

    An explicit ``val/`` folder is used as is (``val_fraction`` ignored). Otherwise each class
    is shuffled with its own ``random.Random`` seeded by (seed, class) and ``round(n *
    val_fraction)`` images, at least 1 and at most n - 1, go to validation.

    Near-duplicates stay on one side: images of a class joined by near-duplicate pairs
    (``manifest.near_links``) or shot in the same second of one camera recording
    (:data:`RUN_FRAMES` consecutive frames) are one group, and groups go to validation whole
    until the class's share is reached (:func:`_pick`); a data set without such groups splits
    exactly as above. A class that is one group keeps all its images for training.

    A grown data set (``manifest.batch_starts``) is split batch by batch so that the earlier
    images keep their side: the images added to a class fill up its validation share (the
    count for the whole class, as above, less what earlier batches hold back), chosen at
    random among the added images (shuffled by (seed, class, batch)); an added image in a
    group with earlier images takes their side (training when they are on both).
    """
    if manifest.has_explicit_val:
        train = [i for i in manifest.items if i.subset != "val"]
        return Split(train, [i for i in manifest.items if i.subset == "val"])
    _check_fraction(val_fraction)
    items = manifest.items
    files = [i.file for i in items]
    batch_of = _batches(manifest)
    n_batches = max(batch_of, default=0) + 1
    groups = _Groups(len(items))
    side: list[str | None] = [None] * len(items)
    seen: Counter[str] = Counter()
    held: Counter[str] = Counter()
    for b in range(n_batches):
        _join_all(manifest, groups, batch_of, b)
        members: dict[int, list[int]] = {}
        for k in range(len(items)):
            if batch_of[k] <= b:
                members.setdefault(groups.find(k), []).append(k)
        fresh_by_label: dict[str, list[list[int]]] = {}
        for group in members.values():
            new = [k for k in group if batch_of[k] == b]
            if not new:
                continue
            old = {side[k] for k in group if batch_of[k] < b}
            if old:
                got = "val" if old == {"val"} else "train"
                for k in new:
                    side[k] = got
                    seen[items[k].label] += 1
                    held[items[k].label] += got == "val"
            else:
                fresh_by_label.setdefault(items[group[0]].label, []).append(sorted(new))
        for label in manifest.classes:
            fresh = fresh_by_label.get(label, [])
            if not fresh:
                continue
            seen[label] += sum(map(len, fresh))
            target = _n_val(seen[label], val_fraction)
            rng = random.Random(f"{seed}:{label}" if b == 0 else f"{seed}:{label}:{b}")
            train_left = seen[label] - held[label]
            chosen = _pick(
                fresh, files, rng, target - held[label], train_left, none_yet=not held[label]
            )
            for group in fresh:
                for k in group:
                    side[k] = "train"
            for group in chosen:
                for k in group:
                    side[k] = "val"
                held[label] += len(group)
    return Split(
        train=[i for i, s in zip(items, side, strict=True) if s != "val"],
        val=[i for i, s in zip(items, side, strict=True) if s == "val"],
    )


def split_rule_text(manifest: DatasetManifest, val_fraction: float = 0.2, seed: int = 0) -> str:
    """How the images are split, in one or two plain sentences for the Data page (with the
    classes that get no validation image, and why)."""
    if manifest.has_explicit_val:
        return "The images in the validation folder check the model; all the others train it."
    _check_fraction(val_fraction)
    share = f"{val_fraction:.0%} of each class is held back at random to check the model"
    if manifest.near_links is None:
        return share + "."
    text = (
        f"{share}. Near-identical pictures, and the frames of each second of a camera "
        "recording, always go to the same side, so the check never sees a near-copy of a "
        "training picture"
    )
    groups = split_groups(manifest)
    if groups:
        text += f" ({_n(len(groups), 'such group')} of {sum(map(len, groups)):,} images here)"
    text += "."
    split = split_dataset(manifest, val_fraction, seed)
    in_val = {i.label for i in split.val}
    missing = [c for c in manifest.classes if c not in in_val]
    if missing:
        one = len(missing) == 1
        text += (
            f" {'Class' if one else 'Classes'} {some(missing)} {'is' if one else 'are'} all "
            "near-identical pictures, so none can be held back and the model is not checked "
            f"on {'it' if one else 'them'}: record more takes, moving the object between them."
        )
    return text
