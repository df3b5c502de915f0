"""Where a user's images are and what class each belongs to: files found, layout detected.

Used by :mod:`tl_core.data`; names and folders are untrusted and only ever read.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

VAL_FOLDER_NAMES = ("val", "valid", "validation", "test")  # in order of preference
_JUNK = frozenset({"__macosx", "thumbs.db", "desktop.ini"})


# ------------------------------------------------------------------------- sources


@dataclass
class Entry:
    parts: tuple[str, ...]  # NFC-normalised, relative to what the user chose
    source: str
    fetch: Callable[[], Path | BinaryIO]


def nfc(parts: Iterable[str]) -> tuple[str, ...]:
    return tuple(unicodedata.normalize("NFC", p) for p in parts)


def is_junk(parts: tuple[str, ...]) -> bool:
    """Hidden files, macOS/Windows clutter: ignored without a word."""
    return any(p.startswith(".") or p.casefold() in _JUNK for p in parts)


def folder_entries(src: Path, dest: Path) -> list[Entry]:
    """Every file under ``src`` (following symlinked folders once, never into ``dest``)."""
    seen = {os.path.realpath(dest)}
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not is_junk((d,))]
        rel = Path(dirpath).relative_to(src)
        for name in filenames:
            path = Path(dirpath, name)
            if is_junk((name,)) or not path.is_file():
                continue
            source = (rel / name).as_posix()
            entries.append(Entry(nfc(source.split("/")), source, lambda p=path: p))
    return entries


# -------------------------------------------------------------------------- layout


@dataclass
class Plan:
    todo: list[tuple[Entry, str, str | None]]  # entry, label, subset
    skipped: list[tuple[str, str]]  # (source, reason)
    explicit: bool
    val_dir: str | None
    warnings: list[str]


def plan_layout(images: list[Entry]) -> Plan:
    """Find the classes: ``<class>/…`` or ``train/<class>/…`` + ``val/<class>/…``."""
    depth = 0  # descend through single wrapping folders ("flowers/<class>/…")
    while (
        len({e.parts[depth] for e in images}) == 1
        and all(len(e.parts) > depth + 1 for e in images)
        and any(len(e.parts) > depth + 2 for e in images)
    ):
        depth += 1
    tops = sorted({e.parts[depth] for e in images if len(e.parts) > depth + 1})
    train_dir = next((t for t in tops if t.casefold() == "train"), None)
    val_dir = next(
        (t for name in VAL_FOLDER_NAMES for t in tops if t.casefold() == name and train_dir), None
    )
    explicit = val_dir is not None
    todo: list[tuple[Entry, str, str | None]] = []
    skipped: list[tuple[str, str]] = []  # (source, reason)
    for e in images:
        rel, subset = e.parts[depth:], None
        if explicit:
            if rel[0] not in (train_dir, val_dir):
                reason = f"not inside the '{train_dir}' or '{val_dir}' folder"
                skipped.append((e.source, reason))
                continue
            subset, rel = ("train" if rel[0] == train_dir else "val"), rel[1:]
        if len(rel) < 2:
            skipped.append((e.source, "not inside a class folder"))
            continue
        todo.append((e, rel[0], subset))
    warnings: list[str] = []
    if explicit:
        train_labels = {label for _, label, s in todo if s == "train"}
        orphans = sorted({label for _, label, s in todo if s == "val"} - train_labels)
        for label in orphans:
            warnings.append(
                f"The '{val_dir}' folder has a class '{label}' that the '{train_dir}' folder "
                "lacks; its images were skipped. Add a training folder for it if you need it."
            )
        reason = f"its class has no folder in '{train_dir}'"
        skipped += [(e.source, reason) for e, label, _ in todo if label in orphans]
        todo = [t for t in todo if t[1] not in orphans]
    todo.sort(key=lambda t: (t[2] == "val", t[1], t[0].parts))
    return Plan(todo, skipped, explicit, val_dir, warnings)
