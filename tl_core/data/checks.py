"""What an import (or an addition) is refused for, and what it warns about, in plain words.

Refusals raise :class:`DataError`; warnings are :class:`DataWarning` records whose ``kind``
tells the pages what they are about (the Data page words the few-images one itself). The
import (:mod:`tl_core.data.ingest`) and the addition (:mod:`tl_core.data.grow`) share them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from tl_core.data.layout import Plan, some
from tl_core.data.records import DataWarning, ImageItem, SkippedFile
from tl_core.errors import DataError

__all__ = [
    "IMBALANCE_RATIO",
    "MIN_IMAGES_PER_CLASS",
    "check_import",
    "classes_of",
    "copy_warnings",
    "count_warnings",
    "examples",
    "missing_val_warnings",
    "plural",
    "refuse_thin_classes",
    "skipped_warning",
    "val_copies_warning",
]

MIN_IMAGES_PER_CLASS = 10
IMBALANCE_RATIO = 5


def plural(count: int, word: str, one: str = "", many: str = "") -> str:
    """'1 image was' / '3 images were'."""
    return f"{count} {word} {one}".rstrip() if count == 1 else f"{count} {word}s {many}".rstrip()


def examples(skipped: list[SkippedFile], n: int = 3) -> str:
    """The first few files left out, with why: "'a.png': empty file (0 bytes); …"."""
    return "; ".join(f"'{s.source}': {s.reason}" for s in skipped[:n])


def classes_of(plan: Plan) -> list[str]:
    """The classes the layout promises (validation-only folders were already skipped)."""
    wanted = sorted({label for _, label, subset in plan.todo if subset != "val"})
    if len(wanted) < 2:
        found = f" (only '{wanted[0]}')" if wanted else ""
        raise DataError(
            f"Only one class was found{found}: at least two classes are needed. Put each "
            "class's images in its own folder, e.g. cats/…, dogs/…, and try again."
        )
    return wanted


def refuse_thin_classes(
    items: list[ImageItem],
    labels: Iterable[str],
    skipped_in: dict[str, list[SkippedFile]],
    held_back: bool,
    name: str,
    if_empty: str,
    if_one: str,
) -> None:
    """Refuse a class of ``labels`` with no usable training image, or with one when part of
    the training images is held back for validation (``held_back``). ``name`` and the two
    remedies are worded by the caller (an import's class, a grown set's new class), with
    ``{label}`` for the class."""
    per_class = Counter(i.label for i in items if i.subset != "val")
    for label in labels:
        subject = name.format(label=label)
        if per_class[label] == 0:
            why = examples(skipped_in.get(label, [])) or "all are copies of other images"
            raise DataError(
                f"{subject} has no usable images ({why}). {if_empty.format(label=label)}"
            )
        if held_back and per_class[label] < 2:
            raise DataError(
                f"{subject} has 1 usable image; each class needs at least 2 (10 or more "
                "recommended) so that some can be held back to check the model. "
                + if_one.format(label=label)
            )


def check_import(
    plan: Plan,
    items: list[ImageItem],
    skipped: list[SkippedFile],
    skipped_in: dict[str, list[SkippedFile]],
    leaks: int = 0,
) -> list[DataWarning]:
    """Refuse data sets that cannot be trained on; return the layout's and the counts'
    warnings."""
    wanted = classes_of(plan)
    if not items:
        raise DataError(
            f"None of the {len(plan.todo)} image files could be used ({examples(skipped)}). "
            "Check that they are real, complete pictures and try again."
        )
    refuse_thin_classes(
        items,
        wanted,
        skipped_in,
        held_back=not plan.explicit,
        name="Class '{label}'",
        if_empty="Add real pictures to its folder, or remove the folder.",
        if_one="Add images to '{label}' or remove its folder.",
    )
    out = list(plan.warnings) + count_warnings(items, wanted)
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
        out += missing_val_warnings(items, wanted, plan.val_dir or "val")
    return out


def count_warnings(items: Sequence[ImageItem], wanted: list[str]) -> list[DataWarning]:
    """Warnings that depend on the images per class: too few, unbalanced."""
    out: list[DataWarning] = []
    counts = Counter(i.label for i in items)
    few = sorted((c for c in wanted if counts[c] < MIN_IMAGES_PER_CLASS), key=lambda c: counts[c])
    if len(few) == 1:
        text = (
            f"Class '{few[0]}' has {plural(counts[few[0]], 'image')}; at least "
            f"{MIN_IMAGES_PER_CLASS} are recommended."
        )
        out.append(DataWarning("few_images", text, tuple(few)))
    elif few:
        named = ", ".join(f"'{c}' ({counts[c]})" for c in few[:3])
        named += f" and {len(few) - 3:,} more" if len(few) > 3 else ""
        text = (
            f"{len(few):,} classes have fewer than {MIN_IMAGES_PER_CLASS} images: {named}. At "
            f"least {MIN_IMAGES_PER_CLASS} per class are recommended."
        )
        out.append(DataWarning("few_images", text, tuple(few)))
    big, small = max(wanted, key=lambda c: counts[c]), min(wanted, key=lambda c: counts[c])
    if counts[big] > IMBALANCE_RATIO * counts[small]:
        text = (
            f"The classes are unbalanced: '{big}' has {counts[big]} images but '{small}' only "
            f"{counts[small]}. The model may favour the big classes; add images to the small "
            "ones if you can."
        )
        out.append(DataWarning("unbalanced", text, (big, small)))
    return out


def missing_val_warnings(
    items: Sequence[ImageItem], wanted: list[str], val_dir: str
) -> list[DataWarning]:
    """With a validation folder: the classes it has no images of."""
    val_counts = Counter(i.label for i in items if i.subset == "val")
    missing = [c for c in wanted if val_counts[c] == 0]
    if not missing:
        return []
    text = (
        f"The '{val_dir}' folder has no images of "
        f"{'class' if len(missing) == 1 else 'classes'} {some(missing)}, so the model "
        f"will not be checked on {'that class' if len(missing) == 1 else 'those'}."
    )
    return [DataWarning("missing_val", text, tuple(missing), val_dir)]


def val_copies_warning(leaks: int, val_dir: str | None) -> DataWarning:
    """Validation images that copied training images and were left out."""
    text = (
        f"{plural(leaks, 'image')} in '{val_dir}' "
        f"{'was an exact copy' if leaks == 1 else 'were exact copies'} of training images; "
        "left out of validation so that the check stays honest."
    )
    return DataWarning("val_copies", text, folder=val_dir)


def skipped_warning(skipped: int) -> DataWarning:
    """Files that could not be used (the manifest lists them with their reasons)."""
    text = f"{plural(skipped, 'file', 'was', 'were')} skipped; the list of skipped files says why."
    return DataWarning("skipped", text)


def copy_warnings(
    duplicates: int, leaks: int, across: int, skipped: int, val_dir: str | None
) -> list[DataWarning]:
    """An import's warnings about the images it left out: exact copies (among the images, of
    training images in the validation folder, across classes) and unusable files."""
    out: list[DataWarning] = []
    if duplicates:
        text = (
            f"{plural(duplicates, 'exact duplicate image', 'was', 'were')} left out "
            "(one copy of each is kept)."
        )
        out.append(DataWarning("duplicates", text))
    if leaks:
        out.append(val_copies_warning(leaks, val_dir))
    if across:
        text = (
            f"{plural(across, 'image')} appeared in two different classes; only the first copy "
            "was kept. Check that each picture is in the right folder."
        )
        out.append(DataWarning("other_class", text))
    if skipped:
        out.append(skipped_warning(skipped))
    return out
