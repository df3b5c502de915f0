"""The user's review of their labels: fixed labels, excluded images, likely label errors.

Kept beside the imported images as ``corrections.json``; the imported files are never
changed or deleted. A run takes a snapshot of the corrections into its config, so it can be
repeated exactly, and applies them after the train/validation split: fixing a label never
moves an image between training and validation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tl_core.data.records import Split
from tl_core.errors import DataError

__all__ = [
    "FILE_NAME",
    "Corrections",
    "apply",
    "load",
    "save",
]

FILE_NAME = "corrections.json"


@dataclass
class Corrections:
    """``relabel``: file -> new class; ``exclude``: files left out; ``suspect``: files flagged."""

    relabel: dict[str, str] = field(default_factory=dict)
    exclude: set[str] = field(default_factory=set)
    suspect: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.relabel or self.exclude)

    def to_dict(self) -> dict[str, Any]:
        return {
            "relabel": dict(sorted(self.relabel.items())),
            "exclude": sorted(self.exclude),
            "suspect": sorted(self.suspect),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Corrections:
        raw = raw or {}
        return cls(
            relabel={str(k): str(v) for k, v in (raw.get("relabel") or {}).items()},
            exclude={str(f) for f in raw.get("exclude") or ()},
            suspect={str(f) for f in raw.get("suspect") or ()},
        )

    def describe(self) -> str:
        """One plain line: what changes in the next run."""
        parts = []
        if self.relabel:
            parts.append(f"{len(self.relabel)} label(s) fixed")
        if self.exclude:
            parts.append(f"{len(self.exclude)} image(s) left out")
        if self.suspect:
            parts.append(f"{len(self.suspect)} flagged as a possible label error")
        return ", ".join(parts) if parts else "no changes"


def load(data_dir: Path) -> Corrections:
    path = Path(data_dir) / FILE_NAME
    if not path.exists():
        return Corrections()
    try:
        return Corrections.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        raise DataError(f"The label corrections in '{path}' are unreadable.") from None


def save(data_dir: Path, corrections: Corrections) -> None:
    path = Path(data_dir) / FILE_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(corrections.to_dict(), indent=1), encoding="utf-8")
    tmp.replace(path)


def apply(split: Split, corrections: Corrections, classes: list[str]) -> Split:
    """The split with labels fixed and excluded images left out, on both sides."""
    unknown = sorted(set(corrections.relabel.values()) - set(classes))
    if unknown:
        raise DataError(f"Labels can only be changed to existing classes, not {unknown}.")

    def fix(items: list) -> list:
        return [
            replace(i, label=corrections.relabel.get(i.file, i.label))
            for i in items
            if i.file not in corrections.exclude
        ]

    fixed = Split(fix(split.train), fix(split.val))
    empty = [c for c in classes if not any(i.label == c for i in fixed.train)]
    if empty:
        raise DataError(
            f"After your corrections, class '{empty[0]}' has no training images left. Undo an "
            "exclusion or a label change for it."
        )
    return fixed
