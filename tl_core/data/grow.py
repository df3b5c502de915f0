"""Add images to an imported data set, to existing classes or new ones, as a new data version.

:func:`grow` writes a new folder beside the old one: the old images are hard-linked with their
manifest entries unchanged, only the new ones are decoded (as by an import,
:mod:`tl_core.data.ingest`). The old folder is never written to, so runs that used it keep
their data; the split keeps the sides of its images (:mod:`tl_core.data.split`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tl_core import diskspace
from tl_core.data.checks import (
    count_warnings,
    examples,
    missing_val_warnings,
    plural,
    refuse_thin_classes,
    skipped_warning,
    val_copies_warning,
)
from tl_core.data.ingest import (
    MAX_IMPORT_MB,
    Intake,
    Progress,
    Source,
    Taken,
    files_source,
    folder_source,
    images_only,
    no_class_folders,
    take,
    zip_source,
)
from tl_core.data.layout import POOL_FOLDER, Entry, clean_name, label_key, nfc, plan_layout, some
from tl_core.data.manifest import batch_count, link_old, new_dest, undo
from tl_core.data.neardup import near_links
from tl_core.data.pixelcache import Square, row_bytes
from tl_core.data.records import DatasetManifest, DataWarning, ImageItem, SkippedFile
from tl_core.errors import DataError

__all__ = ["GrowSource", "Growth", "grow"]

# A folder (or a path to a .zip), a file-like .zip, or uploaded files as (name, bytes).
GrowSource = Path | str | BinaryIO | Sequence[tuple[str, bytes | Path]]
# Warnings worked out again for the whole data version at each addition.
_RECOUNTED = frozenset({"few_images", "unbalanced", "missing_val"})


@dataclass(frozen=True)
class Growth:
    """What :func:`grow` did: the new data version and what was added to it."""

    manifest: DatasetManifest
    added: dict[str, int]  # class -> images added
    new_classes: list[str]
    duplicates: list[tuple[str, str]]  # (left-out copy, kept image), by source name
    skipped: list[SkippedFile]
    warnings: list[DataWarning]  # about the added images
    linked: int  # earlier images hard-linked into the new version
    copied: int  # earlier images copied (where the disk cannot link)

    def summary(self) -> str:
        """One plain sentence: 'Added 40 images to 'rust' (2 duplicates left out); …'."""
        total = sum(self.added.values())
        if len(self.added) == 1:
            (label,) = self.added
            new = "the new class " if label in self.new_classes else ""
            head = f"Added {plural(total, 'image')} to {new}'{label}'"
        else:
            shown = ", ".join(f"{n:,} to '{c}'" for c, n in list(self.added.items())[:4])
            more = f" and {len(self.added) - 4:,} more classes" if len(self.added) > 4 else ""
            head = f"Added {plural(total, 'image')} ({shown}{more})"
        left = []
        if self.duplicates:
            left.append(f"{plural(len(self.duplicates), 'duplicate')} left out")
        if self.skipped:
            left.append(f"{plural(len(self.skipped), 'file')} skipped")
        extra = f" ({', '.join(left)})" if left else ""
        return f"{head}{extra}; earlier runs keep their data."


@contextmanager
def _grow_source(source: GrowSource, dest: Path) -> Iterator[Source]:
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            yield folder_source(path, dest)
            return
        if not path.is_file():
            raise DataError(f"'{path}' does not exist. Choose a folder of images or a .zip file.")
        with zip_source(path, dest, MAX_IMPORT_MB * 1024**2, 100_000) as src:
            yield src
        return
    if hasattr(source, "read"):
        with zip_source(source, dest, MAX_IMPORT_MB * 1024**2, 100_000) as src:  # type: ignore[arg-type]
            yield src
        return
    yield files_source(source, "The uploaded files")  # type: ignore[arg-type]


def _intake_of(base: DatasetManifest, dest: Path, squares: Sequence[Square]) -> Intake:
    """New images are compared with the old ones and numbered after them, class by class."""
    intake = Intake(dest, taken={POOL_FOLDER.casefold()}, squares=squares)
    for item in [*base.items, *base.unlabelled]:
        intake.first.setdefault(item.sha256, item)
        parts = item.file.split("/")
        if len(parts) != 3 or parts[1] == POOL_FOLDER:  # labelled later: numbered as the pool
            continue
        intake.dirs.setdefault(item.label, parts[1])
        intake.taken.add(parts[1].casefold())
        stem = Path(parts[2]).stem
        if stem.isdigit():
            intake.numbers[item.label] = max(intake.numbers[item.label], int(stem) + 1)
    return intake


@dataclass
class _Todo:
    """The new images to take, with their class and subset, and what the layout said: the
    files it left out, its warnings, the validation folder's name (with one)."""

    todo: list[tuple[Entry, str, str | None]]
    skipped: list[SkippedFile]
    warnings: list[DataWarning]
    val_dir: str | None = None


def _grow_todo(base: DatasetManifest, images: list[Entry], src: Source, label: str | None) -> _Todo:
    """Each new image's class (an existing one where the name matches) and subset."""
    existing = {label_key(c): c for c in base.classes}
    renamed: dict[str, str] = {}
    default_subset = "train" if base.has_explicit_val else None
    out = _Todo([], [], [])
    if label is not None:
        name = clean_name(nfc([label])[0])
        if not name:
            raise DataError("Type a name for the new class, or choose one of the classes.")
        target = existing.get(label_key(name), name)
        if target != name:
            renamed[name] = target
        out.todo = [(e, target, default_subset) for e in sorted(images, key=lambda e: e.parts)]
    else:
        folders = list(src.folders) + [e.parts[:-1] for e in src.entries if len(e.parts) > 1]
        plan = plan_layout(images, folders)
        out.skipped += [SkippedFile(source, reason) for source, reason in plan.skipped]
        if not plan.todo:
            raise no_class_folders()
        if plan.explicit and not base.has_explicit_val:
            raise DataError(
                f"These images come in '{plan.train_dir}' and '{plan.val_dir}' folders, but "
                "this data set holds back part of each class for validation itself. Put the "
                "images in one folder per class, without those two folders, and add them again."
            )
        out.val_dir = plan.val_dir
        out.warnings += plan.warnings
        for entry, found, subset in plan.todo:
            target = existing.get(label_key(found), found)
            if target != found:
                renamed[found] = target
            out.todo.append((entry, target, subset or default_subset))
    if renamed:
        pairs = [f"'{a}' as '{b}'" for a, b in sorted(renamed.items())]
        text = (
            f"Class names that differ from a class of the data set only in capital letters or "
            f"in how their letters are written are the same class: added {some(pairs)}."
        )
        out.warnings.append(DataWarning("class_names", text, tuple(sorted(set(renamed.values())))))
    return out


def _grow_warnings(
    taken: Taken, skipped: list[SkippedFile], val_dir: str | None
) -> list[DataWarning]:
    """The warnings about the images an addition left out."""
    out: list[DataWarning] = []
    inner = len(taken.duplicates) - taken.known
    if taken.known:
        text = (
            f"{plural(taken.known, 'added image', 'was', 'were')} already in the data set and "
            f"{'was' if taken.known == 1 else 'were'} left out."
        )
        out.append(DataWarning("already_there", text))
    if inner:
        text = (
            f"{plural(inner, 'exact duplicate image', 'was', 'were')} among the added ones left "
            "out (one copy of each is kept)."
        )
        out.append(DataWarning("duplicates", text))
    if taken.across:
        text = (
            f"{plural(taken.across, 'added image')} "
            f"{'was a copy' if taken.across == 1 else 'were copies'} of an image in another "
            "class; only the first copy was kept. Check that each "
            "picture is in the right class."
        )
        out.append(DataWarning("other_class", text))
    if taken.leaks:
        out.append(val_copies_warning(taken.leaks, val_dir))
    if skipped:
        out.append(skipped_warning(len(skipped)))
    return out


def _check_growth(
    base: DatasetManifest, todo: list[tuple[Entry, str, str | None]], taken: Taken
) -> list[str]:
    """Refuse an addition that adds nothing or a class that cannot be trained on; the new
    classes."""
    if not taken.items:
        if taken.duplicates:
            raise DataError(
                f"Nothing was added: {plural(len(taken.duplicates), 'image')} "
                f"{'is a copy' if len(taken.duplicates) == 1 else 'are copies'} of images "
                "already in the data set (or of each other). Choose other pictures."
            )
        skipped = [s for ss in taken.skipped_in.values() for s in ss]
        raise DataError(
            f"None of the {len(todo)} image files could be used ({examples(skipped)}). "
            "Check that they are real, complete pictures and try again."
        )
    new_classes = sorted({label for _, label, _ in todo} - set(base.classes))
    refuse_thin_classes(
        taken.items,
        new_classes,
        taken.skipped_in,
        held_back=not base.has_explicit_val,
        name="The new class '{label}'",
        if_empty="Add real pictures to it, or leave it out.",
        if_one="Add more images of '{label}'.",
    )
    return new_classes


def _grown_warnings(
    base: DatasetManifest, items: list[ImageItem], classes: list[str], val_dir: str | None
) -> list[DataWarning]:
    """The data set's warnings with those that depend on the counts worked out again."""
    kept = [w for w in base.warnings if w.kind not in _RECOUNTED]
    old_val_dir = next((w.folder for w in base.warnings if w.kind == "missing_val"), None)
    out = kept + count_warnings(items, classes)
    if base.has_explicit_val:
        out += missing_val_warnings(items, classes, old_val_dir or val_dir or "val")
    return out


def _grown(
    base: DatasetManifest,
    dest: Path,
    taken: Taken,
    skipped: list[SkippedFile],
    new_classes: list[str],
    val_dir: str | None,
) -> DatasetManifest:
    """The new data version's manifest: the old images, then the added ones as a new batch
    (without the warnings about the addition itself)."""
    items = [*base.items, *taken.items]
    classes = sorted({*base.classes, *new_classes})
    manifest = DatasetManifest(
        root=dest,
        items=items,
        classes=classes,
        skipped=[*base.skipped, *skipped],
        duplicates=[*base.duplicates, *taken.duplicates],
        warnings=_grown_warnings(base, items, classes, val_dir),
        has_explicit_val=base.has_explicit_val,
        batch_starts=[*base.batch_starts, len(base.items)],
        grown_from=Path(base.root).name,
        # an older base was split without near-duplicates: its batches stay so
        near_since=base.near_since if base.near_links is not None else batch_count(base),
        unlabelled=base.unlabelled,
    )
    manifest.near_links = near_links(manifest, base)  # only the new images' pairs
    return manifest


def grow(
    base: DatasetManifest,
    source: GrowSource,
    dest: Path,
    label: str | None = None,
    progress: Progress | None = None,
    squares: Sequence[Square] = (),
) -> Growth:
    """Add images to a data set as a new data version in ``dest`` (a new or empty folder).

    With ``label`` every new image goes into that class (an existing one, or a new class);
    without, ``source`` holds one folder per class as for an import (``train/`` + ``val/``
    only when ``base`` has a validation folder). A class name matching an existing class
    case-insensitively or after Unicode normalisation (NFKC) is that class. ``base``'s items
    are kept unchanged and their files hard-linked (copied where linking fails); only the new
    images are decoded, and copies of old images are left out by their pixel hash. ``base``
    is only read. On failure ``dest`` vanishes (DataError, DiskFullError). ``squares``: as
    for :func:`~tl_core.data.ingest.import_folder`, made of the new images.
    """
    dest = Path(dest)
    with _grow_source(source, dest) as src:
        skipped = list(src.skipped)
        hint = (
            "Choose some images to add."
            if label is not None
            else "Put one folder of images per class in it."
        )
        images = images_only(src.entries, skipped, src.what, hint)
        added = _grow_todo(base, images, src, label)
        skipped += added.skipped
        created = new_dest(dest)
        need = diskspace.import_need(len(added.todo), src.size, row_bytes(squares))
        diskspace.check_free(dest, need)
        try:
            taken = take(added.todo, _intake_of(base, dest, squares), progress, skipped)
            new_classes = _check_growth(base, added.todo, taken)
            linked = link_old(base, dest)
            added.warnings += _grow_warnings(taken, skipped, added.val_dir)
            manifest = _grown(base, dest, taken, skipped, new_classes, added.val_dir)
            manifest.warnings += added.warnings
            manifest.save()
        except BaseException as exc:
            undo(dest, created, exc, need)
            raise
    counts = Counter(i.label for i in taken.items)
    return Growth(
        manifest=manifest,
        added={c: counts[c] for c in manifest.classes if counts[c]},
        new_classes=new_classes,
        duplicates=taken.duplicates,
        skipped=skipped,
        warnings=added.warnings,
        linked=linked,
        copied=len(base.items) - linked,
    )
