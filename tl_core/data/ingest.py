"""Import a user's images once: a folder, a .zip or uploaded files, as a new data
version.

Every import writes a new folder ``dest/`` holding ``manifest.json`` and
``images/<class>/NNNN.png|jpg``: each image decoded, rotated upright, converted to RGB and
downscaled, under a generated file name. Nothing the user gave is trusted (names, sizes,
contents) and the source is never modified. Mistakes raise :class:`DataError` in plain words;
a failed import leaves no ``dest`` behind. The reading of sources and the decoding here are
also those of an addition (:mod:`tl_core.data.grow`). No torch here: pages import this module.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from PIL import Image
from threadpoolctl import threadpool_limits

from tl_core import diskspace
from tl_core.data.checks import check_import, classes_of, copy_warnings, examples
from tl_core.data.imageprep import ImageSkip, Prepared, decode_workers, prepare
from tl_core.data.layout import (
    POOL_FOLDER,
    Entry,
    Plan,
    class_dir,
    folder_entries,
    in_unlabelled_folder,
    is_junk,
    nfc,
    os_reason,
    plan_layout,
    screen,
    split_unlabelled,
)
from tl_core.data.manifest import new_dest, undo
from tl_core.data.neardup import near_links
from tl_core.data.pixelcache import Derived, ImportCache, Square, derive, row_bytes
from tl_core.data.records import DatasetManifest, ImageItem, SkippedFile
from tl_core.data.standalone_predict import IMAGE_SUFFIXES
from tl_core.data.zipsafe import ByteBudget, check_zip, extract_member, open_zip, safe_parts
from tl_core.errors import DataError

__all__ = [
    "MAX_IMPORT_MB",
    "MAX_SIDE",
    "MAX_SOURCE_PIXELS",
    "SNIFFED_FORMATS",
    "Intake",
    "Progress",
    "Source",
    "Taken",
    "files_source",
    "folder_source",
    "images_only",
    "import_files",
    "import_folder",
    "import_zip",
    "no_class_folders",
    "source_fingerprint",
    "take",
    "zip_source",
]

# IMAGE_SUFFIXES (from standalone_predict) is also what predict.py accepts: one definition.
# A file whose name has another (or no) file type is still imported when its contents are a
# picture in one of these formats (e.g. 'photo.jpg.download', 'IMG_0001' from a phone).
SNIFFED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF", "HEIF", "AVIF"})
_SNIFF_BYTES = 1024 * 1024
MAX_SIDE = 640
MAX_SOURCE_PIXELS = 100_000_000
# The most a .zip may unpack to, in MiB; the app's upload limit (.streamlit/config.toml
# server.maxUploadSize) is the same number.
MAX_IMPORT_MB = 4096

Progress = Callable[[int, int], None]


def _is_empty(src: Path | BinaryIO) -> bool:
    if isinstance(src, Path):
        return src.stat().st_size == 0
    end = src.seek(0, os.SEEK_END)
    src.seek(0)
    return end == 0


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


def images_only(
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
        why = f" ({examples(skipped)})" if skipped else ""
        raise DataError(f"No images were found in {what.lower()}{why}. Supported kinds: {kinds}.")
    return images


def no_class_folders() -> DataError:
    return DataError(
        "No class folders were found. Put each class's images in its own folder, e.g. "
        "cats/…, dogs/…, and try again."
    )


def _import(
    entries: list[Entry],
    dest: Path,
    progress: Progress | None,
    what: str,
    skipped: list[SkippedFile] | None = None,
    folders: Iterable[tuple[str, ...]] = (),
    source_bytes: int | None = None,
    squares: Sequence[Square] = (),
) -> DatasetManifest:
    """Shared pipeline: plan, normalise, dedupe, check, save; ``dest`` vanishes on failure.

    Pictures in an ``unlabelled/`` folder, or all of them when there is no class folder at
    all, are kept without a label (``DatasetManifest.unlabelled``). ``source_bytes`` (the
    sources' total size) sizes the free-space check; a full disk, before or during the
    import, is a DiskFullError.
    """
    skipped = list(skipped or [])
    images = images_only(entries, skipped, what, "Put one folder of images per class in it.")
    folders = list(folders) + [e.parts[:-1] for e in entries if len(e.parts) > 1]
    labelled, pool = split_unlabelled(images)
    plan = plan_layout(labelled, [f for f in folders if not in_unlabelled_folder(f)])
    if not plan.todo and not pool:  # no class folder anywhere: none of them is labelled yet
        plan, pool = Plan([], [], False, None, []), labelled
    skipped += [SkippedFile(source, reason) for source, reason in plan.skipped]
    if not pool:
        classes_of(plan)
    todo = plan.todo + [(e, "", None) for e in sorted(pool, key=lambda e: e.parts)]
    created = new_dest(dest)
    need = diskspace.import_need(len(todo), source_bytes or 0, row_bytes(squares))
    diskspace.check_free(dest, need)
    try:
        manifest = _convert(plan, todo, Intake(dest, squares=squares), progress, skipped)
        manifest.near_links = near_links(manifest)
        manifest.save()
        return manifest
    except BaseException as exc:
        undo(dest, created, exc, need)
        raise


Outcome = tuple[Prepared, bytes, Derived] | ImageSkip


def _prepare_and_encode(src: Path | BinaryIO, squares: Sequence[Square]) -> Outcome:
    """Decode and normalise one image, make its stored copy (its own bytes without metadata
    when they decode to the normalised pixels, else encoded again) and what the import
    keeps besides (:func:`pixelcache.derive`); runs in a worker thread."""
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
    if prepared.as_stored is not None:
        stored = prepared.as_stored
    else:
        out = io.BytesIO()
        if prepared.lossless:
            prepared.image.save(out, "PNG", optimize=False)
        else:
            prepared.image.save(out, "JPEG", quality=95)
        stored = out.getvalue()
    return prepared, stored, derive(prepared, stored, squares)


def _prepared_all(
    todo: list[tuple[Entry, str, str | None]], squares: Sequence[Square]
) -> Iterator[Outcome]:
    """Each image prepared, in order, on all cores (Pillow decodes and resizes outside the GIL).

    Sources are fetched here, one at a time (zip members share one budget); at most a few
    images per core are in memory at once.
    """
    workers = decode_workers()
    window: deque[Future[Outcome]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="import") as pool:
        for entry, _, _ in todo:
            try:
                window.append(pool.submit(_prepare_and_encode, entry.fetch(), squares))
            except ImageSkip as skip:
                done: Future[Outcome] = Future()
                done.set_result(skip)
                window.append(done)
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


@dataclass
class Intake:
    """Where new images are written and what they are compared with (an import starts empty).

    ``first``: sha256 -> the kept image; ``dirs``: class -> its folder under ``images/``;
    ``taken``: folder names in use (case-folded); ``numbers``: the next file number per class;
    ``squares``: the model inputs to make of each new image (:mod:`tl_core.data.pixelcache`).
    """

    dest: Path
    first: dict[str, ImageItem] = field(default_factory=dict)
    dirs: dict[str, str] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    numbers: Counter[str] = field(default_factory=Counter)
    squares: Sequence[Square] = ()


@dataclass
class Taken:
    """What an intake produced: the images kept and the copies left out."""

    items: list[ImageItem]
    duplicates: list[tuple[str, str]]
    leaks: int  # validation images that copy a training image
    across: int  # copies of an image of another class
    known: int  # copies of an image that was there before (``grow``)
    skipped_in: dict[str, list[SkippedFile]]


def take(
    todo: list[tuple[Entry, str, str | None]],
    intake: Intake,
    progress: Progress | None,
    skipped: list[SkippedFile],
) -> Taken:
    """Decode, normalise, dedupe (also against ``intake.first``) and write each image, and
    what the import keeps besides (:class:`pixelcache.ImportCache`)."""
    dest = intake.dest
    (dest / ".incoming").mkdir(parents=True, exist_ok=True)
    cache = ImportCache(dest, intake.squares, len(todo))
    # One BLAS thread: the fingerprints' small matrix products run in every decoding thread
    # at once, and BLAS's own threads on top of them made the import half as fast.
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            out = _take_all(todo, intake, progress, skipped, cache)
        cache.finish(out.items)
    finally:
        cache.close()
    shutil.rmtree(dest / ".incoming", ignore_errors=True)
    return out


def _take_all(
    todo: list[tuple[Entry, str, str | None]],
    intake: Intake,
    progress: Progress | None,
    skipped: list[SkippedFile],
    cache: ImportCache,
) -> Taken:
    dest = intake.dest
    before = set(intake.first)
    made: set[str] = set()
    out = Taken([], [], 0, 0, 0, {})
    total = len(todo)
    if progress:
        progress(0, total)
    for done, ((entry, label, subset), outcome) in enumerate(
        zip(todo, _prepared_all(todo, intake.squares), strict=True), 1
    ):
        if isinstance(outcome, ImageSkip):
            skipped.append(SkippedFile(entry.source, outcome.reason))
            out.skipped_in.setdefault(label, []).append(skipped[-1])
        else:
            prepared, encoded, derived = outcome  # near-duplicates are looked for later
            kept = intake.first.get(prepared.sha256)
            if kept is not None:
                out.duplicates.append((entry.source, kept.source))
                out.leaks += kept.subset == "train" and subset == "val"
                out.across += bool(label and kept.label) and kept.label != label
                out.known += prepared.sha256 in before
            else:
                folder = intake.dirs.get(label) or intake.dirs.setdefault(
                    label, class_dir(label, intake.taken)
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
                item = replace(item, phash=derived.phash)
                intake.first[prepared.sha256] = item
                out.items.append(item)
                cache.add(derived)
        if progress:
            progress(done, total)
    return out


def _convert(
    plan: Plan,
    todo: list[tuple[Entry, str, str | None]],
    intake: Intake,
    progress: Progress | None,
    skipped: list[SkippedFile],
) -> DatasetManifest:
    """Write the pictures of ``todo`` (the plan's, then the unlabelled ones, label "") into
    ``intake.dest``, a new folder."""
    dest = intake.dest
    intake.dirs[""] = POOL_FOLDER
    intake.taken.add(POOL_FOLDER.casefold())
    taken = take(todo, intake, progress, skipped)
    items = [i for i in taken.items if i.label]
    unlabelled = [i for i in taken.items if not i.label]
    if len(todo) > len(plan.todo):  # some pictures have no label yet: few labels are normal
        if not taken.items:
            raise DataError(
                f"None of the {len(todo)} image files could be used ({examples(skipped)}). "
                "Check that they are real, complete pictures and try again."
            )
        warnings = list(plan.warnings)
    else:
        warnings = check_import(plan, items, skipped, taken.skipped_in, taken.leaks)
    warnings += copy_warnings(
        len(taken.duplicates), taken.leaks, taken.across, len(skipped), plan.val_dir
    )
    return DatasetManifest(
        root=dest,
        items=items,
        classes=sorted({i.label for i in items}),
        skipped=skipped,
        duplicates=taken.duplicates,
        warnings=warnings,
        has_explicit_val=plan.explicit,
        unlabelled=unlabelled,
    )


@dataclass
class Source:
    """What the user gave, as file entries: those left out already, folders seen, size."""

    entries: list[Entry]
    skipped: list[SkippedFile]
    folders: list[tuple[str, ...]]
    size: int
    what: str  # "The folder", for messages


def folder_source(src: Path, dest: Path) -> Source:
    """The files of a folder (``dest``, inside it, is left out)."""
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
    return Source(found.entries, skipped, found.folders, size, "The folder")


@contextmanager
def zip_source(
    zip_file: Path | BinaryIO, dest: Path, max_total_bytes: int, max_files: int
) -> Iterator[Source]:
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
        yield Source(entries, skipped, folders, size, "The .zip file")


def files_source(files: Iterable[tuple[str, bytes | Path]], what: str) -> Source:
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
    return Source(entries, skipped, [], size, what)


def _import_source(
    src: Source, dest: Path, progress: Progress | None, squares: Sequence[Square] = ()
) -> DatasetManifest:
    return _import(
        src.entries,
        dest,
        progress,
        src.what,
        src.skipped,
        src.folders,
        source_bytes=src.size,
        squares=squares,
    )


def import_folder(
    src: Path, dest: Path, progress: Progress | None = None, squares: Sequence[Square] = ()
) -> DatasetManifest:
    """Import a folder with one sub-folder per class (or ``train/`` + ``val/``).

    ``squares``: the inputs of the models likely to be trained next, made from each picture
    while it is decoded (:mod:`tl_core.data.pixelcache`), so that training decodes nothing.
    """
    return _import_source(folder_source(Path(src), dest), dest, progress, squares)


def import_zip(
    zip_file: Path | BinaryIO,
    dest: Path,
    progress: Progress | None = None,
    max_total_bytes: int = MAX_IMPORT_MB * 1024**2,
    max_files: int = 100_000,
    squares: Sequence[Square] = (),
) -> DatasetManifest:
    """Import a .zip; unsafe or oversized archives are refused before anything is unpacked
    (``squares``: as for :func:`import_folder`)."""
    with zip_source(zip_file, Path(dest), max_total_bytes, max_files) as src:
        return _import_source(src, Path(dest), progress, squares)


def _zip_head(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> BinaryIO:
    """The first megabyte of a member, to tell whether it is a picture (not counted)."""
    with zf.open(info) as member:
        return io.BytesIO(member.read(_SNIFF_BYTES))


def import_files(
    files: Iterable[tuple[str, bytes | Path]],
    dest: Path,
    progress: Progress | None = None,
    squares: Sequence[Square] = (),
) -> DatasetManifest:
    """Import uploaded files given as (relative name, bytes or the file they were saved to)
    (``squares``: as for :func:`import_folder`).

    Names only ever become class labels, never paths; a leading '/' is tolerated (browsers
    send dropped folders so), names climbing out with '..' are skipped. Saved files are read
    one at a time, as the import reaches them.
    """
    return _import_source(files_source(files, "The uploaded folder"), Path(dest), progress, squares)


def source_fingerprint(src: Path) -> str:
    """A digest of a folder's files (relative paths, sizes, modification times) and of the
    importer's own code: equal while neither changed. For reusing an earlier import of the
    same folder."""
    import hashlib

    from tl_core.data import checks, imageprep, layout, neardup, records

    digest = hashlib.sha256()
    for module in (checks, imageprep, layout, neardup, records):
        digest.update(Path(module.__file__ or "").read_bytes())
    digest.update(Path(__file__).read_bytes())
    for path in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        st = path.stat()
        name = path.relative_to(src).as_posix()
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]
