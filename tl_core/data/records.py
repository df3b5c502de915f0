"""The records of an imported data set: its images, what was left out, its warnings, the
manifest that holds them all (saved as ``manifest.json`` beside the images) and a split.

Only data types and their JSON form live here, so that every module of the package (the
importer, the split, near-duplicates, the label review) and the pages can use them without
importing each other. No torch, no Pillow.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from tl_core.errors import DataError

__all__ = [
    "MANIFEST_NAME",
    "WARNING_KINDS",
    "DataWarning",
    "DatasetManifest",
    "ImageItem",
    "SkippedFile",
    "Split",
    "WarningKind",
    "legacy_warning",
]

MANIFEST_NAME = "manifest.json"

# What a warning of the importer is about; pages choose their wording (or leave one out) by it.
WarningKind = Literal[
    "few_images",  # classes under the recommended count (``classes``: those, fewest first)
    "unbalanced",  # one class much bigger than another (``classes``: the biggest, the smallest)
    "missing_val",  # the validation ``folder`` has no images of ``classes``
    "val_copies",  # images of the validation ``folder`` that copy training images, left out
    "duplicates",  # exact copies among the images given, left out
    "already_there",  # added images that were already in the data set, left out
    "other_class",  # copies of an image of another class, left out
    "skipped",  # files that could not be used (the manifest's skipped list says why)
    "class_names",  # class folder names shown cleaned, merged or told apart (``classes``)
    "val_orphans",  # classes of the validation ``folder`` without training images, skipped
    "other",  # a warning of an older release whose kind is not known
]
WARNING_KINDS: frozenset[str] = frozenset(get_args(WarningKind))


@dataclass(frozen=True)
class DataWarning:
    """One warning of an import or addition: what it is about (``kind``), the classes and the
    folder it names, and the sentence shown as it is (``text``)."""

    kind: WarningKind
    text: str
    classes: tuple[str, ...] = ()
    folder: str | None = None  # the validation folder's name, for the kinds that name one

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "text": self.text,
            "classes": list(self.classes),
            "folder": self.folder,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any] | str) -> DataWarning:
        """A warning as saved; a sentence alone (manifests and job results of older releases)
        gets its kind from :func:`legacy_warning`."""
        if isinstance(raw, str):
            return legacy_warning(raw)
        kind = raw.get("kind")
        return cls(
            kind=kind if kind in WARNING_KINDS else "other",  # type: ignore[arg-type]
            text=str(raw.get("text") or ""),
            classes=tuple(str(c) for c in raw.get("classes") or ()),
            folder=None if raw.get("folder") is None else str(raw["folder"]),
        )


# Between the folder's name and the classes in an older release's missing-validation warning.
_MISSING_VAL_MIDDLE = "' folder has no images of class"


def legacy_warning(text: str) -> DataWarning:
    """A warning saved by an older release, as a sentence only: its kind (and the validation
    folder it names), known once here from the importer's wording of the time. Kinds the
    code does not act on stay "other"."""
    if text.startswith("The '") and _MISSING_VAL_MIDDLE in text:
        folder = text[len("The '") : text.index(_MISSING_VAL_MIDDLE)]
        return DataWarning("missing_val", text, folder=folder)
    if text.startswith("The classes are unbalanced: "):
        return DataWarning("unbalanced", text)
    one_few = text.startswith("Class '") and text.endswith(" are recommended.")
    many_few = " classes have fewer than " in text and text.endswith(" are recommended.")
    if one_few or many_few:
        return DataWarning("few_images", text)
    return DataWarning("other", text)


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
    warnings: list[DataWarning]
    has_explicit_val: bool
    # Where each later addition (``grow``) starts in ``items``: the split keeps the sides of
    # the images before it. Empty for a plain import.
    batch_starts: list[int] = field(default_factory=list)
    grown_from: str | None = None  # the folder name of the data version this one grew from
    # Near-duplicates the split keeps on one side (tl_core.data.split): a spanning forest
    # of the near-duplicate pairs within each class, as (file, file) links, found when the
    # data version was made. None: not looked for (a data version of an older release), so
    # the split is the plain one. ``near_since``: the first batch (0 = the import, 1 = the
    # first ``grow``, ...) split with them; earlier batches keep the sides they had.
    near_links: list[tuple[str, str]] | None = None
    near_since: int = 0
    # Pictures without a label yet (label ""), under ``images/_pool/``: imported from a folder
    # with no class folders or from its ``unlabelled/`` folder. Training never sees them; the
    # labels given on the Label page (tl_core.data.labels) move them into ``items`` in the
    # next data version.
    unlabelled: list[ImageItem] = field(default_factory=list)

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
            "warnings": [w.to_json() for w in self.warnings],
            "batch_starts": self.batch_starts,
            "grown_from": self.grown_from,
            "near_links": None if self.near_links is None else [list(x) for x in self.near_links],
            "near_since": self.near_since,
            "unlabelled": [asdict(i) for i in self.unlabelled],
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
            warnings=[DataWarning.from_json(w) for w in data["warnings"]],
            has_explicit_val=bool(data["has_explicit_val"]),
            batch_starts=[int(b) for b in data.get("batch_starts") or []],
            grown_from=data.get("grown_from"),
            near_links=(
                None
                if data.get("near_links") is None
                else [(str(a), str(b)) for a, b in data["near_links"]]
            ),
            near_since=int(data.get("near_since") or 0),
            unlabelled=[ImageItem(**i) for i in data.get("unlabelled") or []],
        )


@dataclass(frozen=True)
class Split:
    train: list[ImageItem]
    val: list[ImageItem]
