"""Checks on the folders a user names (``--data``, ``--val``, ``--out``), before any work.

Cheap and torch-free: a walk of names and file identities (device and inode numbers), so a
command refuses with one plain sentence before it imports anything or creates a project.
The app can call the same checks.
"""

from __future__ import annotations

import os
import shutil
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from tl_core.data.layout import VAL_FOLDER_NAMES, folder_entries, is_junk, os_reason
from tl_core.errors import DataError, RunError

__all__ = [
    "IMAGE_SUFFIXES",
    "check_data_folder",
    "check_out_folder",
    "check_val_folder",
    "empty_folder",
]

# Every kind the importer may read (a superset of tl_core.data.dataset.IMAGE_SUFFIXES, checked by a
# test). The importer also reads pictures whose names say nothing (``IMG_0001``), so a file
# without one of these is still looked at: its first bytes against the formats' signatures.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {
        *(".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp"),
        *(".tif", ".tiff", ".heic", ".heif", ".avif"),
    }
)
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
_HEIF_BRANDS = (b"heic", b"heix", b"heif", b"mif1", b"msf1", b"avif", b"avis", b"hevc")


def _files(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files the importer would read under ``root`` (its own walk: symlinked folders once,
    clutter and hidden files left out), and what it would skip, with the reasons."""
    try:
        found = folder_entries(root)
    except OSError as exc:
        raise DataError(
            f"The folder '{root}' cannot be opened ({os_reason(exc, 'folder')})."
        ) from None
    return [Path(e.fetch()) for e in found.entries], found.skipped


def _is_image(path: Path) -> bool:
    """A picture kind the importer reads, by its name or else by its first bytes."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return (
        head.startswith(_SIGNATURES)
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or (head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS)
    )


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` points to: equal for hard links and symlinks."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _within(inner: Path, outer: Path) -> bool:
    """Whether ``inner`` is ``outer`` or lies below it (compared by identity, so symlinks,
    relative paths, trailing slashes and case-insensitive disks do not hide it)."""
    target = _identity(outer)
    if target is None:
        return False
    here = Path(os.path.realpath(inner))
    return any(_identity(folder) == target for folder in (here, *here.parents))


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def check_data_folder(data: Path) -> None:
    """``--data`` must be an existing folder."""
    if not data.exists():
        raise DataError(f"The folder '{data}' does not exist. Choose a folder of images.")
    if not data.is_dir():
        raise DataError(
            f"'{data}' is a file, not a folder. Choose a folder with one sub-folder of images "
            "per class."
        )


def _class_folders(root: Path) -> dict[str, Path]:
    return {
        _nfc(p.name): p
        for p in sorted(_entries(root))
        if p.is_dir() and not is_junk((p.name,)) and not p.name.startswith(".")
    }


def check_val_folder(data: Path, val: Path) -> None:
    """Raise DataError unless ``val`` can be the validation set exactly as given.

    Refused: missing, not a folder, empty or without images, the same folder as ``data``,
    inside it or containing it, any file shared with it (hard links, symlinks), classes that
    ``data`` lacks, images outside class folders, and a ``data`` that has its own split.
    """
    _check_val_place(data, val)
    images = _val_images(val)
    data_classes = _class_folders(data)
    _refuse_second_split(data, data_classes)
    val_classes = {
        _nfc(p.relative_to(val).parts[0]) for p in images if len(p.relative_to(val).parts) > 1
    }
    missing = sorted(val_classes - set(data_classes))
    if missing:
        listed = ", ".join(f"'{m}'" for m in missing[:3]) + (" …" if len(missing) > 3 else "")
        raise DataError(
            f"The validation folder '{val}' has classes the data folder lacks ({listed}); "
            "use the same class folder names in both."
        )
    data_ids = {i: p for p in _files(data)[0] if (i := _identity(p)) is not None}
    shared = [(p, data_ids[i]) for p in images if (i := _identity(p)) in data_ids]
    if shared:
        v, d = shared[0]
        verb = "is" if len(shared) == 1 else "are"
        raise DataError(
            f"{_n(len(shared), 'file')} of the validation folder {verb} "
            f"also in the data folder (e.g. '{v}' is the same file as '{d}', through a link); "
            "validation images must be separate from the training images."
        )


def _check_val_place(data: Path, val: Path) -> None:
    """``val`` exists, is a folder, and is neither ``data`` nor inside or around it."""
    if not val.exists():
        broken = " (a broken link)" if val.is_symlink() else ""
        raise DataError(f"The validation folder '{val}' does not exist{broken}.")
    if not val.is_dir():
        raise DataError(
            f"'{val}' is a file, not a folder: --val needs a folder with one sub-folder of "
            "images per class."
        )
    if _within(val, data) and _within(data, val):
        raise DataError(
            f"--val names the same folder as --data ('{val}'); give a separate folder of "
            "validation images, or leave out --val to hold back a share of --data."
        )
    if _within(val, data):
        raise DataError(
            f"The validation folder '{val}' lies inside the data folder '{data}', so its "
            "images would be trained on; move it out of the data folder."
        )
    if _within(data, val):
        raise DataError(
            f"The validation folder '{val}' contains the data folder '{data}'; give a "
            "validation folder that is separate from the training images."
        )


def _val_images(val: Path) -> list[Path]:
    """The validation folder's images, all inside class folders (else DataError)."""
    val_files, skipped = _files(val)
    images = [p for p in val_files if _is_image(p)]
    if not val_files:
        folders = [p for p in _entries(val) if p.is_dir()]
        why = (
            f"has no file that can be imported (e.g. '{skipped[0][0]}': {skipped[0][1]})"
            if skipped
            else "has only empty class folders"
            if folders
            else "is empty"
        )
        raise DataError(
            f"The validation folder '{val}' {why}; put one sub-folder of images per class in it."
        )
    if not images:
        raise DataError(
            f"The validation folder '{val}' holds no image files; put one sub-folder of "
            "images per class in it."
        )
    loose = [p for p in images if p.parent == val]
    if loose:
        raise DataError(
            f"The validation folder '{val}' has {_n(len(loose), 'image')} outside class "
            f"folders (e.g. '{loose[0].name}'); put each image in the sub-folder of its class."
        )
    return images


def _refuse_second_split(data: Path, data_classes: dict[str, Path]) -> None:
    """A ``data`` folder with its own train/val split cannot take a ``--val`` as well."""
    names = {n.casefold() for n in data_classes}
    if any(n.casefold() == "train" for n in names) and names & set(VAL_FOLDER_NAMES):
        split = [
            n for n in data_classes if n.casefold() == "train" or n.casefold() in VAL_FOLDER_NAMES
        ]
        if all(any(c.is_dir() for c in _entries(data_classes[n])) for n in split):
            raise DataError(
                f"The data folder '{data}' already has its own '{split[0]}' and '{split[1]}' "
                "folders; leave out --val, or point --data at its training folder."
            )


def _nearest_existing(path: Path) -> Path:
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            return folder
    return Path("/")


def check_out_folder(out: Path, overwrite: bool, keep: Iterable[Path | None] = ()) -> bool:
    """Raise RunError unless ``out`` can hold a new run; True when it must be emptied first.

    ``out`` must be new or an empty folder; a non-empty folder only with ``overwrite``, and
    never one that holds (or is) a folder in ``keep`` (the workspace, the data), the home
    folder or the filesystem root.
    """
    if os.path.lexists(out) and not out.is_dir():
        what = "a broken link" if not out.exists() else "a file"
        raise RunError(
            f"'{out}' is {what}, not a folder; --out needs a new or empty folder for the "
            "run's files."
        )
    if not out.exists():
        parent = _nearest_existing(out.parent)
        if not parent.is_dir():
            raise RunError(
                f"The folder '{out}' cannot be made because '{parent}' is a file; choose "
                "another --out folder."
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunError(f"You cannot write in '{parent}'; choose another --out folder.")
        return False
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunError(f"You cannot write in '{out}'; choose another --out folder.")
    try:
        entries = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise RunError(f"The folder '{out}' cannot be read ({exc.strerror}).") from None
    if not entries:
        return False
    if not overwrite:
        shown = ", ".join(entries[:3]) + (" …" if len(entries) > 3 else "")
        raise RunError(
            f"The folder '{out}' is not empty (it holds {shown}); choose a new or empty "
            "folder, or add --overwrite to replace what is in it."
        )
    for folder in (Path.home(), Path("/"), *(k for k in keep if k is not None)):
        if _within(folder, out):
            raise RunError(
                f"--overwrite would delete '{folder}', which lies in '{out}'; choose another "
                "--out folder."
            )
    return True


def empty_folder(folder: Path) -> None:
    """Delete everything inside ``folder`` (links are removed, never followed)."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
