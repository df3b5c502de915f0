"""Where a user's images are and what class each belongs to: files found, layout detected.

Used by the importer (:mod:`tl_core.data.ingest`, :mod:`tl_core.data.grow`); names and folders
are untrusted and only ever read. Nothing is dropped without a word: every file that is not
used is listed with its reason, except operating-system clutter (``.DS_Store``, ``Thumbs.db``,
``__MACOSX``, …), which nobody puts in an image folder on purpose.

The layout rule (``plan_layout``), at the first folder level holding more than one folder:

* **split**: a ``train`` folder (any case; also ``training``) that holds class sub-folders,
  beside a validation folder (``val``, ``valid``, ``validation`` or ``test``, any case, in that
  order of preference) that also holds class sub-folders. Anything else there is refused with
  one sentence: a validation folder that is empty, holds images directly, or holds no class
  the training folder has; a training folder holding images beside its class folders; two
  folders that are both ``train``; class folders in ``val`` without a ``train`` beside it.
* **classes**: otherwise every folder is a class, also one named ``train`` or ``val`` that holds
  its images directly; images in deeper sub-folders count for the class above them. A class
  folder holding a folder named like a split (``cats/val/…``) is refused: the user meant a
  split, laid out the other way round.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tl_core.data.records import DataWarning
from tl_core.errors import DataError

__all__ = [
    "HIDDEN_FILE_REASON",
    "POOL_FOLDER",
    "SPLIT_FOLDER_NAMES",
    "TRAIN_FOLDER_NAMES",
    "UNLABELLED_FOLDER_NAMES",
    "UNNAMED_CLASS",
    "VAL_FOLDER_NAMES",
    "Entry",
    "Found",
    "Plan",
    "class_dir",
    "clean_name",
    "folder_entries",
    "in_unlabelled_folder",
    "is_junk",
    "label_key",
    "nfc",
    "os_reason",
    "plan_layout",
    "screen",
    "shown_raw",
    "some",
    "split_unlabelled",
]

TRAIN_FOLDER_NAMES = ("train", "training")
VAL_FOLDER_NAMES = ("val", "valid", "validation", "test")  # in order of preference
SPLIT_FOLDER_NAMES = frozenset(TRAIN_FOLDER_NAMES + VAL_FOLDER_NAMES)
# A folder of pictures without labels yet, beside the class folders (any depth).
UNLABELLED_FOLDER_NAMES = frozenset({"unlabelled", "unlabeled", "_unlabelled", "_unlabeled"})
# Where an import writes those pictures, under images/ (never a class folder's name).
POOL_FOLDER = "_pool"
# Clutter the operating system leaves in folders and archives: ignored without a word.
_JUNK = frozenset(
    {
        "__macosx",
        ".ds_store",
        ".appledouble",
        ".spotlight-v100",
        ".trashes",
        ".fseventsd",
        ".temporaryitems",
        ".documentrevisions-v100",
        ".apdisk",
        ".localized",
        "icon\r",
        "thumbs.db",
        "ehthumbs.db",
        "desktop.ini",
        "$recycle.bin",
        "system volume information",
    }
)
UNNAMED_CLASS = "unnamed class"
_UNSAFE_DIR_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


# ------------------------------------------------------------------------- sources


@dataclass
class Entry:
    parts: tuple[str, ...]  # NFC-normalised, relative to what the user chose
    source: str
    fetch: Callable[[], Path | BinaryIO]
    raw: tuple[str, ...] = ()  # the parts exactly as given (before NFC); empty: same as parts
    head: Callable[[], BinaryIO] | None = None  # the file's first bytes, where fetch is costly

    def raw_parts(self) -> tuple[str, ...]:
        return self.raw or self.parts


@dataclass
class Found:
    """What a folder holds: usable file entries, files left out (with reasons), folders."""

    entries: list[Entry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    folders: list[tuple[str, ...]] = field(default_factory=list)  # NFC parts, root excluded


def nfc(parts: Iterable[str]) -> tuple[str, ...]:
    return tuple(unicodedata.normalize("NFC", p) for p in parts)


def _is_junk_name(name: str) -> bool:
    """Operating-system clutter: '.DS_Store', 'Thumbs.db', '__MACOSX', AppleDouble '._x'."""
    return name.casefold() in _JUNK or name.startswith("._")


def is_junk(parts: tuple[str, ...]) -> bool:
    """True when any part of the path is operating-system clutter."""
    return any(_is_junk_name(p) for p in parts)


def _files(n: int) -> str:
    return "1 file" if n == 1 else f"{n:,} files"


def _hidden_folder_reason(name: str, n_files: int) -> str:
    return f"hidden folder '{name}' ({_files(n_files)}) ignored"


HIDDEN_FILE_REASON = "hidden file ignored"


def os_reason(exc: OSError, what: str = "file") -> str:
    """The true, plain reason an operating-system call on a file or folder failed."""
    code = exc.errno
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM):
        verb = "opened" if what == "folder" else "read"
        return f"permission denied: the {what} could not be {verb}"
    if code == errno.ENAMETOOLONG:
        return "path too long for the operating system"
    if code == errno.ELOOP:
        return "link loop: the link leads back to itself"
    if code == errno.ENOENT:
        return "broken link, or the file vanished: what it points to does not exist"
    return f"the {what} could not be read ({exc.strerror or type(exc).__name__})"


def screen(entries: Iterable[Entry]) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Entries of an archive or upload without clutter and hidden files, those listed.

    One skipped line per hidden folder (with its file count), one per hidden file.
    """
    kept: list[Entry] = []
    skipped: list[tuple[str, str]] = []
    hidden: Counter[tuple[str, ...]] = Counter()
    hidden_source: dict[tuple[str, ...], str] = {}
    for e in entries:
        if is_junk(e.parts):
            continue
        at = next((k for k, p in enumerate(e.parts) if p.startswith(".")), None)
        if at is None:
            kept.append(e)
        elif at == len(e.parts) - 1:
            skipped.append((e.source, HIDDEN_FILE_REASON))
        else:
            hidden[e.parts[: at + 1]] += 1
            hidden_source.setdefault(e.parts[: at + 1], "/".join(e.raw_parts()[: at + 1]) + "/")
    skipped += [(hidden_source[p], _hidden_folder_reason(p[-1], n)) for p, n in hidden.items()]
    return kept, skipped


def _count_files(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def folder_entries(src: Path, dest: Path | None = None) -> Found:
    """Every file under ``src`` (following symlinked folders once, never into ``dest``).

    Files and folders that cannot be read are listed in ``skipped`` with the true reason
    (permission denied, path too long, broken link, link loop, hidden, not a regular file).
    """
    found = Found()
    skip_real = None if dest is None else os.path.realpath(dest)
    seen: dict[str, str] = {}  # real path -> where it was first read
    stack: list[tuple[str, tuple[str, ...]]] = [(os.fspath(src), ())]
    while stack:
        path, rel = stack.pop()
        shown = "/".join(rel) + "/" if rel else "."
        real = os.path.realpath(path)
        if real == skip_real:
            continue
        if real in seen:
            found.skipped.append(
                (shown, f"a link to the folder '{seen[real]}', which is already included")
            )
            continue
        seen[real] = shown
        try:
            with os.scandir(path) as it:
                children = sorted(it, key=lambda d: d.name, reverse=True)
        except OSError as exc:
            if not rel:
                raise
            found.skipped.append((shown, os_reason(exc, "folder")))
            continue
        if rel:
            found.folders.append(nfc(rel))
        for child in children:
            name, child_rel = child.name, (*rel, child.name)
            source = "/".join(child_rel)
            if _is_junk_name(name):
                continue
            try:
                is_dir = child.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if name.startswith("."):
                if is_dir:
                    n = _count_files(child.path)
                    found.skipped.append((source + "/", _hidden_folder_reason(name, n)))
                else:
                    found.skipped.append((source, HIDDEN_FILE_REASON))
                continue
            if is_dir:
                stack.append((child.path, child_rel))
                continue
            try:
                mode = os.stat(child.path).st_mode
            except OSError as exc:
                found.skipped.append((source, os_reason(exc)))
                continue
            if not stat.S_ISREG(mode):
                found.skipped.append((source, "not a regular file (a device, pipe or socket)"))
                continue
            found.entries.append(
                Entry(nfc(child_rel), source, lambda p=Path(child.path): p, child_rel)
            )
    found.entries.reverse()
    return found


# -------------------------------------------------------------------------- labels


def label_key(name: str) -> str:
    """What two class names are compared by: NFKC, case-folded (full-width, ligatures…)."""
    return unicodedata.normalize("NFKC", name).casefold()


def clean_name(name: str) -> str:
    """A class name without control, zero-width or direction characters; spaces collapsed."""
    spaced = "".join(" " if ch.isspace() else ch for ch in name)
    kept = "".join(ch for ch in spaced if unicodedata.category(ch) not in ("Cc", "Cf", "Co"))
    return " ".join(kept.split())


def class_dir(label: str, taken: set[str]) -> str:
    """A folder name for a class that is safe on every OS; unique even on case-insensitive
    disks (``taken``: the names in use, case-folded, to which it is added)."""
    base = _UNSAFE_DIR_CHARS.sub("_", label).strip(" .")[:80] or "class"
    name, n = base, 2
    while name.casefold() in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name.casefold())
    return name


def shown_raw(name: str) -> str:
    """A name with its invisible characters made visible ('cat\\u200b')."""
    return repr(name)[1:-1]


def some(names: list[str], n: int = 3) -> str:
    """ "'a', 'b', 'c' and 7 more"."""
    quoted = [f"'{x}'" for x in names[:n]]
    if len(names) > n:
        return ", ".join(quoted) + f" and {len(names) - n:,} more"
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _labels(raw_names: dict[str, set[str]]) -> tuple[dict[str, str], list[DataWarning]]:
    """Class folder name (NFC) -> the label shown; plus warnings about odd or clashing names.

    ``raw_names`` maps each NFC folder name to the spellings seen (NFC and NFD forms of the
    same name are one class). Labels are never merged by cleaning: a clash gets ' (2)'.
    """
    labels: dict[str, str] = {}
    taken: set[str] = set()
    dirty: list[str] = []
    blank: list[str] = []
    renamed: dict[str, list[str]] = {"blank": [], "dirty": []}  # folder names, by why
    for name in sorted(raw_names):
        label = clean_name(name)
        if not label:
            blank.append(shown_raw(name))
            renamed["blank"].append(name)
            label = UNNAMED_CLASS
        elif label != name:
            dirty.append(f"{shown_raw(name)}' as '{label}")
            renamed["dirty"].append(name)
        base, n = label, 2
        while label in taken:
            label, n = f"{base} ({n})", n + 1
        taken.add(label)
        labels[name] = label
    warnings: list[DataWarning] = []
    if blank:
        text = (
            f"{_files(len(blank)).replace('file', 'class folder')} with a blank name "
            f"({some(blank)}) {'is' if len(blank) == 1 else 'are'} shown as '{UNNAMED_CLASS}'. "
            "Give the folders real names if you can."
        )
        shown = tuple(labels[n] for n in renamed["blank"])
        warnings.append(DataWarning("class_names", text, shown))
    if dirty:
        text = (
            "Some class folder names hold invisible or control characters; they are shown "
            f"cleaned: {some(dirty)}."
        )
        shown = tuple(labels[n] for n in renamed["dirty"])
        warnings.append(DataWarning("class_names", text, shown))
    merged = sorted(n for n, spellings in raw_names.items() if len(spellings) > 1)
    if merged:
        text = (
            f"The class folders named {some(merged)} were each found twice, written with "
            "different character codes (Unicode forms); each pair was put in one class."
        )
        warnings.append(DataWarning("class_names", text, tuple(labels[n] for n in merged)))
    by_key: defaultdict[str, list[str]] = defaultdict(list)
    for label in labels.values():
        by_key[label_key(label)].append(label)
    groups = [group for group in by_key.values() if len(group) > 1]
    if groups:
        clashes = [" and ".join(f"'{x}'" for x in group) for group in groups]
        extra = f" (and {len(clashes) - 3:,} more such groups)" if len(clashes) > 3 else ""
        text = (
            f"The class folders {'; '.join(clashes[:3])}{extra} differ only in capital letters "
            "or in how their letters are written; they are kept as separate classes. Rename or "
            "merge them if they are the same class."
        )
        warnings.append(DataWarning("class_names", text, tuple(c for g in groups for c in g)))
    return labels, warnings


# -------------------------------------------------------------------------- layout


@dataclass
class Plan:
    todo: list[tuple[Entry, str, str | None]]  # entry, label, subset
    skipped: list[tuple[str, str]]  # (source, reason)
    explicit: bool
    val_dir: str | None
    warnings: list[DataWarning]
    train_dir: str | None = None


def _children(folders: set[tuple[str, ...]], prefix: tuple[str, ...]) -> set[str]:
    d = len(prefix)
    return {f[d] for f in folders if len(f) > d and f[:d] == prefix}


def _where(prefix: tuple[str, ...], name: str) -> str:
    return "/".join((*prefix, name))


def _refuse_nested(todo: list[tuple[Entry, str, str | None]], depth: int) -> None:
    """A class folder holding 'val' or 'train': a split laid out the other way round."""
    for entry, _, subset in sorted(todo, key=lambda t: t[0].parts):
        start = depth + (2 if subset else 1)
        inner = entry.parts[start:-1]
        hit = next((p for p in inner if p.casefold() in SPLIT_FOLDER_NAMES), None)
        if hit is not None:
            cls = "/".join(entry.parts[:start])
            where = "/".join(entry.parts[: entry.parts.index(hit, start) + 1])
            raise DataError(
                f"The class folder '{cls}' holds a folder named '{hit}' ('{where}'): a split "
                "goes at the top, as train/<class>/… and val/<class>/…. Move the images that "
                f"way, or rename '{where}'."
            )


def _wrapping_prefix(
    img_folders: set[tuple[str, ...]], all_folders: set[tuple[str, ...]]
) -> tuple[str, ...]:
    """The single wrapping folders above the classes ("flowers/<class>/…" -> ("flowers",))."""
    prefix: tuple[str, ...] = ()
    while True:
        tops = _children(img_folders, prefix)
        if len(tops) != 1:
            return prefix
        (top,) = tops
        nested = any(
            len(f) > len(prefix) + 1 and f[: len(prefix) + 1] == (*prefix, top) for f in img_folders
        )
        beside = _children(all_folders, prefix) - {top}
        if not nested or any(b.casefold() in SPLIT_FOLDER_NAMES for b in beside):
            return prefix
        prefix = (*prefix, top)


_Todo = list[tuple[Entry, str, str | None]]  # (image, class folder, "train" | "val" | None)


def _assign(
    under: list[Entry], depth: int, split: tuple[str | None, str | None] | None
) -> tuple[_Todo, list[tuple[str, str]]]:
    """Each image's class folder and subset; ``split`` = (train, val folder) when explicit."""
    todo: _Todo = []
    skipped: list[tuple[str, str]] = []
    for e in under:
        rel, subset = e.parts[depth:], None
        if split is not None:
            train_dir, val_dir = split
            if rel[0] not in (train_dir, val_dir):
                if rel[0].casefold() in VAL_FOLDER_NAMES:
                    reason = (
                        f"the '{rel[0]}' folder is not used: '{val_dir}' is the validation folder"
                    )
                else:
                    reason = f"not inside the '{train_dir}' or '{val_dir}' folder"
                skipped.append((e.source, reason))
                continue
            subset, rel = ("train" if rel[0] == train_dir else "val"), rel[1:]
        if len(rel) < 2:
            skipped.append((e.source, "not inside a class folder"))
            continue
        todo.append((e, rel[0], subset))
    return todo, skipped


def _drop_orphans(
    todo: _Todo, train_dir: str | None, val_dir: str | None
) -> tuple[_Todo, list[tuple[str, str]], list[DataWarning]]:
    """Validation classes the training folder lacks: skipped with a warning (all: refused)."""
    train_labels = {label for _, label, s in todo if s == "train"}
    val_labels = {label for _, label, s in todo if s == "val"}
    orphans = sorted(val_labels - train_labels)
    if orphans and orphans == sorted(val_labels):
        raise DataError(
            f"None of the class folders in '{val_dir}' ({some(orphans)}) has a folder of "
            f"the same name in '{train_dir}'. Name the validation class folders as the "
            "training ones."
        )
    warnings: list[DataWarning] = []
    if orphans:
        keys = {label_key(t): t for t in train_labels}
        hints = [f"'{o}' (like '{keys[label_key(o)]}')" for o in orphans if label_key(o) in keys]
        hint = f" Some differ only in capital letters: {', '.join(hints[:3])}." if hints else ""
        text = (
            f"The '{val_dir}' folder has {'a class' if len(orphans) == 1 else 'classes'} "
            f"{some(orphans)} that the '{train_dir}' folder lacks; "
            f"{'its' if len(orphans) == 1 else 'their'} images were skipped. Add a training "
            f"folder for each if you need them.{hint}"
        )
        warnings.append(DataWarning("val_orphans", text, tuple(orphans), val_dir))
    reason = f"its class has no folder in '{train_dir}'"
    skipped = [(e.source, reason) for e, label, _ in todo if label in orphans]
    return [t for t in todo if t[1] not in orphans], skipped, warnings


def in_unlabelled_folder(parts: tuple[str, ...]) -> bool:
    """Whether a file (its path parts) or folder lies in an ``unlabelled/`` folder."""
    return any(p.casefold() in UNLABELLED_FOLDER_NAMES for p in parts)


def split_unlabelled(images: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """(images in class folders or loose, images in an ``unlabelled/`` folder)."""
    pool = [e for e in images if in_unlabelled_folder(e.parts[:-1])]
    return [e for e in images if not in_unlabelled_folder(e.parts[:-1])], pool


def plan_layout(images: list[Entry], folders: Iterable[tuple[str, ...]] = ()) -> Plan:
    """Find the classes: ``<class>/…`` or ``train/<class>/…`` + ``val/<class>/…``.

    ``folders`` are all folders seen (also empty ones, or ones holding no image), so that an
    empty or image-less validation folder is refused rather than overlooked. Raises DataError
    when a split is laid out so that its validation images cannot be used as given.
    """
    img_folders = {e.parts[:k] for e in images for k in range(1, len(e.parts))}
    all_folders = img_folders | {f for f in folders if f}
    prefix = _wrapping_prefix(img_folders, all_folders)
    depth = len(prefix)
    under = [e for e in images if e.parts[:depth] == prefix]
    skipped = [(e.source, "not inside a class folder") for e in images if e.parts[:depth] != prefix]
    all_tops = sorted(_children(all_folders, prefix))

    def has_sub(top: str) -> bool:
        return bool(_children(all_folders, (*prefix, top)))

    def direct(top: str) -> list[Entry]:
        return [e for e in under if len(e.parts) == depth + 2 and e.parts[depth] == top]

    trains = [t for t in all_tops if t.casefold() in TRAIN_FOLDER_NAMES]
    vals = sorted(
        (t for t in all_tops if t.casefold() in VAL_FOLDER_NAMES),
        key=lambda t: VAL_FOLDER_NAMES.index(t.casefold()),
    )
    explicit = any(has_sub(t) for t in trains + vals)
    train_dir = val_dir = None
    if explicit:
        train_dir, val_dir = _check_split(prefix, trains, vals, has_sub, direct, under)
    todo, assigned_skips = _assign(under, depth, (train_dir, val_dir) if explicit else None)
    skipped += assigned_skips
    _refuse_nested(todo, depth)
    warnings: list[DataWarning] = []
    if explicit:
        todo, orphan_skips, warnings = _drop_orphans(todo, train_dir, val_dir)
        skipped += orphan_skips
    raw: defaultdict[str, set[str]] = defaultdict(set)
    for e, label, subset in todo:
        raw[label].add(e.raw_parts()[depth + (1 if subset else 0)])
    labels, label_warnings = _labels(raw)
    warnings += label_warnings
    todo = [(e, labels[label], subset) for e, label, subset in todo]
    todo.sort(key=lambda t: (t[2] == "val", t[1], t[0].parts))
    return Plan(todo, skipped, explicit, val_dir, warnings, train_dir)


def _check_split(
    prefix: tuple[str, ...],
    trains: list[str],
    vals: list[str],
    has_sub: Callable[[str], bool],
    direct: Callable[[str], list[Entry]],
    under: list[Entry],
) -> tuple[str, str]:
    """The training and validation folder of a split, or DataError saying what is wrong."""
    named = [t for t in trains + vals if has_sub(t)]
    if len(trains) > 1:
        raise DataError(
            f"There are two training folders, {some(trains)}; keep one of them (with one "
            "folder per class inside) and try again."
        )
    if not trains:
        raise DataError(
            f"The folder '{_where(prefix, named[0])}' holds class folders, but there is no "
            "'train' folder beside it. Put the training images in train/<class>/… next to it, "
            "or rename it."
        )
    train = trains[0]
    where_t = _where(prefix, train)
    if not has_sub(train):
        raise DataError(
            f"The folder '{_where(prefix, named[0])}' holds class folders, but '{where_t}' holds "
            f"its images directly. Put the training images in one folder per class "
            f"({where_t}/<class>/…), or rename the folders if they are classes."
        )
    if direct(train):
        raise DataError(
            f"The '{where_t}' folder holds images directly (e.g. '{direct(train)[0].source}') as "
            f"well as class folders. Put every training image in a class folder "
            f"({where_t}/<class>/…) and try again."
        )
    if not vals:
        raise DataError(
            f"The '{where_t}' folder holds class folders, but there is no validation folder "
            f"beside it. Put validation images in val/<class>/… next to it, or import the "
            f"'{where_t}' folder on its own so that part of its images is held back."
        )
    keys = Counter(v.casefold() for v in vals)
    twins = [v for v in vals if keys[v.casefold()] > 1]
    if twins:
        raise DataError(
            f"There are two validation folders, {some(twins)}; keep one of them and try again."
        )
    val = vals[0]
    where_v = _where(prefix, val)
    if direct(val):
        raise DataError(
            f"The '{where_v}' folder holds images directly (e.g. '{direct(val)[0].source}'); "
            f"validation images go in one folder per class as in '{where_t}' "
            f"({where_v}/<class>/…)."
        )
    depth = len(prefix)
    if not any(e.parts[depth] == val for e in under):
        raise DataError(
            f"The '{where_v}' folder holds no images. Put validation images in "
            f"{where_v}/<class>/…, or remove '{where_v}' so that part of the training images is "
            "held back instead."
        )
    return train, val
