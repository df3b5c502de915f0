"""Pictures recorded with the camera, kept in the project until they become a data version.

A project's captures live in ``<project folder>/capture/``: one folder per class (named as the
importer names class folders), holding ``class.json`` (the class's name as the user typed it,
its place in the list, the recordings it holds) and the frames as JPEG files named
``r0003-f0012.jpg``: frame 12 of recording 3, a recording being one press (or hold) of the
record button. Every frame is checked and normalised as an import does it (a real JPEG or PNG,
upright, RGB, long side capped at :data:`CAMERA_SIDE`) before it is written; nothing is
written anywhere else.

:func:`commit_files` lists the frames as ``(class/name, path)`` pairs for
:func:`tl_core.data.ingest.import_files` or :func:`tl_core.data.grow.grow`; the service
(:func:`tl_core.service.camera_commit`) makes them a data version and then calls :func:`clear`.
Mistakes raise :class:`DataError` in plain words. No torch here: pages import this module.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tl_core.data.imageprep import ImageSkip, prepare
from tl_core.data.layout import class_dir, clean_name, is_junk, label_key, nfc
from tl_core.errors import DataError

__all__ = [
    "CAMERA_SIDE",
    "CAPTURE_FOLDER",
    "CLASS_FILE",
    "FRAME_NAME",
    "LATEST",
    "MAX_FRAME_BYTES",
    "MAX_FRAME_PIXELS",
    "MAX_NAME",
    "MIN_FRAME_SIDE",
    "CaptureClass",
    "CaptureState",
    "add_class",
    "add_frames",
    "check_label",
    "clear",
    "commit_files",
    "delete_shot",
    "frame_key",
    "locked",
    "remove_class",
    "rename_class",
    "state",
]

CAPTURE_FOLDER = "capture"
CLASS_FILE = "class.json"
LATEST = 12  # shots shown in the strip of a class
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_FRAME_PIXELS = 40_000_000  # a camera frame: 8K video is 33 megapixels
MIN_FRAME_SIDE = 16
# Frames are kept with their long side at most this: 384x288 from a 4:3 camera, still above
# the 256-pixel square the models' preprocessing cuts (224 / 0.875), a third of the pixels of
# 640x480 to decode at every later step.
CAMERA_SIDE = 384
MAX_NAME = 60
JPEG_QUALITY = 92
FRAME_NAME = re.compile(r"^r(\d{4,})-f(\d{4,})\.jpg$")
_FRAME_SOURCE = re.compile(r"(?:^|/)r(\d{4,})-f(\d{4,})\.jpg$")
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
_LOCK = threading.Lock()
_HELD = threading.local()


@dataclass(frozen=True)
class CaptureClass:
    """One recorded class: its name, how many shots, the latest shots (newest last)."""

    label: str
    count: int
    latest: list[Path]
    folder: str = ""  # its folder under ``capture/``
    recordings: int = 0  # presses of the record button that left shots


@dataclass(frozen=True)
class CaptureState:
    """The classes recorded so far in a project, in the order they were added."""

    classes: list[CaptureClass] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Shots of all classes together."""
        return sum(c.count for c in self.classes)

    def get(self, label: str) -> CaptureClass | None:
        """The class called ``label`` (compared as class names are), or None."""
        key = label_key(label)
        return next((c for c in self.classes if label_key(c.label) == key), None)


def frame_key(source: str) -> tuple[int, int] | None:
    """(recording, frame) of a camera frame's name (``cat/r0003-f0012.jpg``), else None."""
    found = _FRAME_SOURCE.search(source.replace("\\", "/"))
    return (int(found[1]), int(found[2])) if found else None


# ---------------------------------------------------------------------------- class records


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """One change of the captures at a time: in this process (a lock) and across processes
    (flock, where the system has it). A thread that holds it may take it again."""
    if getattr(_HELD, "depth", 0):
        _HELD.depth += 1
        try:
            yield
        finally:
            _HELD.depth -= 1
        return
    with _LOCK:
        Path(root).mkdir(parents=True, exist_ok=True)
        _HELD.depth = 1
        try:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - Windows
                yield
                return
            with open(Path(root) / ".lock", "a+b") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            _HELD.depth = 0


def _read_record(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / CLASS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("label"), str):
        return None
    return data


def _write_record(folder: Path, record: dict) -> None:
    tmp = folder / (CLASS_FILE + ".tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, folder / CLASS_FILE)


def _records(root: Path) -> list[tuple[Path, dict]]:
    """Each class folder with its record, in the order the classes were added."""
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.is_dir() and (record := _read_record(folder)) is not None:
            found.append((folder, record))
    return sorted(found, key=lambda fr: (int(fr[1].get("order", 0)), fr[0].name))


def _find(root: Path, label: str) -> tuple[Path, dict] | None:
    key = label_key(label)
    return next(((f, r) for f, r in _records(root) if label_key(r["label"]) == key), None)


def _unknown(label: str) -> DataError:
    return DataError(
        f"There is no recorded class called '{label}'. Reload the page to see the classes."
    )


def _shots(folder: Path) -> list[tuple[int, int, Path]]:
    """(recording, frame, path) of the class's shots, oldest first."""
    out = []
    for path in folder.iterdir():
        if found := FRAME_NAME.match(path.name):
            out.append((int(found[1]), int(found[2]), path))
    return sorted(out)


def check_label(label: str) -> str:
    """The class name as it is kept (spaces tidied, Unicode NFC); DataError when it cannot be
    a class name."""
    name = clean_name(nfc([str(label)])[0])
    if not name:
        raise DataError("Type a name for the class first.")
    if "/" in name or "\\" in name:
        raise DataError(f"A class name cannot contain '/' or '\\' ('{name}'). Choose another.")
    if name.startswith(".") or is_junk((name,)):
        raise DataError(f"'{name}' cannot be a class name. Choose another name.")
    if len(name) > MAX_NAME:
        raise DataError(f"Class names can be at most {MAX_NAME} characters long; shorten it.")
    return name


def _create(root: Path, name: str) -> tuple[Path, dict]:
    records = _records(root)
    if any(label_key(r["label"]) == label_key(name) for _, r in records):
        raise DataError(f"There is already a class called '{name}'. Choose another name.")
    taken = {p.name.casefold() for p in root.iterdir()}
    folder = root / class_dir(name, taken)
    folder.mkdir()
    record = {
        "label": name,
        "order": 1 + max((int(r.get("order", 0)) for _, r in records), default=0),
        "recordings": {},
    }
    _write_record(folder, record)
    return folder, record


# ---------------------------------------------------------------------------- the state


def state(root: Path) -> CaptureState:
    """What has been recorded under ``root`` (a project's ``capture/`` folder)."""
    classes = []
    for folder, record in _records(Path(root)):
        shots = _shots(folder)
        classes.append(
            CaptureClass(
                label=record["label"],
                count=len(shots),
                latest=[p for _, _, p in shots[-LATEST:]],
                folder=folder.name,
                recordings=len({r for r, _, _ in shots}),
            )
        )
    return CaptureState(classes)


def add_class(root: Path, label: str) -> CaptureState:
    """A new, empty class; DataError when the name is empty, unusable or taken."""
    root = Path(root)
    name = check_label(label)
    with locked(root):
        _create(root, name)
    return state(root)


def rename_class(root: Path, old: str, new: str) -> CaptureState:
    """Give a recorded class another name (its shots stay); the new name must be free."""
    root = Path(root)
    name = check_label(new)
    with locked(root):
        found = _find(root, old)
        if found is None:
            raise _unknown(old)
        folder, record = found
        other = _find(root, name)
        if other is not None and other[0] != folder:
            raise DataError(f"There is already a class called '{name}'. Choose another name.")
        _write_record(folder, {**record, "label": name})
    return state(root)


def remove_class(root: Path, label: str) -> CaptureState:
    """Remove a recorded class with all its shots."""
    root = Path(root)
    with locked(root):
        found = _find(root, label)
        if found is None:
            raise _unknown(label)
        shutil.rmtree(found[0])
    return state(root)


def delete_shot(root: Path, label: str, shot: str | Path) -> CaptureState:
    """Delete one shot (its file name, e.g. ``r0003-f0012.jpg``, or its path) of a class."""
    root = Path(root)
    name = Path(str(shot)).name
    if not FRAME_NAME.match(name):
        raise DataError(f"'{name}' is not one of the recorded pictures. Reload the page.")
    with locked(root):
        found = _find(root, label)
        if found is None:
            raise _unknown(label)
        try:
            (found[0] / name).unlink()
        except FileNotFoundError:
            raise DataError(
                f"That picture of '{found[1]['label']}' is already gone. Reload the page."
            ) from None
    return state(root)


# ---------------------------------------------------------------------------- recording


def _frame(data: bytes, n: int, total: int) -> bytes:
    """One frame checked and normalised, as JPEG bytes; DataError in plain words."""
    which = "The camera picture" if total == 1 else f"Camera picture {n} of {total}"
    if not isinstance(data, bytes | bytearray | memoryview) or not len(data):
        raise DataError(f"{which} arrived empty. Check the camera and record again.")
    data = bytes(data)
    if len(data) > MAX_FRAME_BYTES:
        raise DataError(
            f"{which} is too large ({len(data) / 1024**2:.0f} MB; at most "
            f"{MAX_FRAME_BYTES // 1024**2} MB). Use a lower camera resolution."
        )
    if not data.startswith(_MAGIC):
        raise DataError(f"{which} is not a JPEG or PNG picture. Record again.")
    try:
        prepared = prepare(io.BytesIO(data), CAMERA_SIDE, MAX_FRAME_PIXELS)
    except ImageSkip as skip:
        raise DataError(f"{which} cannot be used: {skip.reason}. Record again.") from None
    if min(prepared.image.size) < MIN_FRAME_SIDE:
        w, h = prepared.image.size
        raise DataError(
            f"{which} is too small ({w}x{h} pixels; at least {MIN_FRAME_SIDE} on each side)."
        )
    out = io.BytesIO()
    prepared.image.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def add_frames(root: Path, label: str, frames: Sequence[bytes], recording: str) -> CaptureState:
    """Check and store ``frames`` (JPEG or PNG bytes, in the order shot) in class ``label``
    (made when it does not exist yet) as part of recording ``recording`` (any short text the
    caller keeps for one press of the record button). All or nothing: when one frame cannot
    be used, none is stored and DataError says which and why."""
    root = Path(root)
    name = check_label(label)
    recording = str(recording)
    if not recording or len(recording) > 200:
        raise DataError("The recording has no usable name; press record again.")
    frames = list(frames)
    encoded = [_frame(f, n, len(frames)) for n, f in enumerate(frames, 1)]
    with locked(root):
        found = _find(root, name) or _create(root, name)
        folder, record = found
        numbers: dict[str, int] = dict(record.get("recordings") or {})
        if recording not in numbers:
            numbers[recording] = 1 + max(numbers.values(), default=0)
            record = {**record, "recordings": numbers}
            _write_record(folder, record)
        rec = numbers[recording]
        nxt = 1 + max((f for r, f, _ in _shots(folder) if r == rec), default=0)
        for data in encoded:
            path = folder / f"r{rec:04d}-f{nxt:04d}.jpg"
            tmp = folder / f".{path.name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, path)
            nxt += 1
    return state(root)


# ---------------------------------------------------------------------------- commit


def commit_files(root: Path) -> list[tuple[str, Path]]:
    """Every shot as ``("<class name>/r0003-f0012.jpg", path)``, class by class, in order.

    DataError when nothing was recorded or a class has no shots.
    """
    out: list[tuple[str, Path]] = []
    records = _records(Path(root))
    for folder, record in records:
        shots = _shots(folder)
        if not shots:
            raise DataError(
                f"The class '{record['label']}' has no pictures yet. Record some, or remove it."
            )
        out += [(f"{record['label']}/{p.name}", p) for _, _, p in shots]
    if not out:
        raise DataError("Nothing was recorded yet. Name a class and record some pictures.")
    return out


def clear(root: Path) -> None:
    """Remove every recorded class (after they became a data version)."""
    root = Path(root)
    with locked(root):
        for folder in root.iterdir():
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
