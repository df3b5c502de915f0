"""Pooled features of the whole frozen backbone, cached per image beside the data set.

Written by the features job (head start, gauge, learning curve, recommendation: see
:func:`tl_core.analysis.transfer.frozen_features`) and read back by a head-only training run
without augmentation, which trains on exactly these outputs: so pressing Train after the
Model page's head start runs no image through the network again.

A features file is named by what it is made of: the pictures (files and sha256s), the model
and its weights (:func:`features_path`). Work is done once per workspace, not per project:
the same file in another project's data version (thirty students' copies of the demo set)
is hard-linked (:func:`linked_twin`), rows of the same pictures in other versions are copied
(:func:`earlier_rows`), and while one job computes a file the others that need it wait for
it (:func:`one_pass`) instead of computing it again. Deleting a project removes its links
only: a file goes when no data version holds it any more.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tl_core.data.dataset import ImageItem

__all__ = [
    "FORMAT",
    "earlier_rows",
    "features_path",
    "kept_result",
    "linked_twin",
    "one_pass",
    "pooled_rows",
    "read_cache",
    "write_cache",
]

FORMAT = 1  # bump when the cached features' content changes


def _digest(items: Sequence[ImageItem]) -> str:
    text = json.dumps([FORMAT, *([i.file, i.sha256] for i in items)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def features_path(root: Path, items: Sequence[ImageItem], model_key: str, pretrained: bool) -> Path:
    """Where the features of ``items`` (sorted by file) are cached."""
    kind = "pretrained" if pretrained else "random"
    return Path(root) / "cache" / f"features-{model_key}-{kind}-{_digest(items)}.npz"


def _load(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # unreadable: computed again and rewritten


def read_cache(path: Path, files: list[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays when the file is there, readable and holds exactly ``files``."""
    if not path.exists():
        return None
    data = _load(path)
    if data is None or "files" not in data or data["files"].tolist() != files:
        return None
    return data


def _projects_folder(root: Path) -> Path | None:
    """The workspace's folder of projects when ``root`` is a data version in it (the store's
    ``projects/<id>/data-N`` layout), else None (a command's temporary import, a test's)."""
    folder = Path(root).parent.parent
    return folder if folder.name == "projects" and Path(root).name.startswith("data-") else None


def _other_versions(root: Path) -> list[Path]:
    """The other data versions of the workspace: the project's own first
    (``root.parent/data-*``), then, in a workspace, the other projects'."""
    here = Path(root).resolve()
    own = sorted(Path(root).parent.glob("data-*"))
    projects = _projects_folder(root)
    others = sorted(projects.glob("*/data-*")) if projects is not None else []
    return [v for v in dict.fromkeys([*own, *others]) if v.resolve() != here]


def earlier_rows(
    root: Path, model_key: str, pretrained: bool
) -> dict[str, tuple[dict[str, np.ndarray], int]]:
    """sha256 -> (arrays, row) of images whose features the other data versions of the
    workspace (:func:`_other_versions`) cached for the same model and weights: a grown data
    set, or another project of some of the same pictures, passes only the new ones through
    the network."""
    kind = "pretrained" if pretrained else "random"
    found: dict[str, tuple[dict[str, np.ndarray], int]] = {}
    name = f"features-{model_key}-{kind}-*.npz"
    paths = [p for v in _other_versions(root) for p in (v / "cache").glob(name)]
    for path in sorted(paths, key=lambda p: -p.stat().st_mtime):
        data = _load(path)
        if data is None or "sha256" not in data or "vectors" not in data:
            continue
        if len(data["sha256"]) != len(data["vectors"]):
            continue
        for row, sha in enumerate(data["sha256"].tolist()):
            found.setdefault(str(sha), (data, row))
    return found


def linked_twin(
    path: Path, files: list[str], complete: Callable[[dict[str, np.ndarray]], bool]
) -> dict[str, np.ndarray] | None:
    """The features file ``path`` (its name says what it is made of) as another data version
    of the workspace cached it (one that is ``complete`` first), hard-linked into place
    (copied where linking fails) and read; None when none did."""
    found: list[tuple[Path, dict[str, np.ndarray]]] = []
    for version in _other_versions(path.parent.parent):
        twin = version / "cache" / path.name
        data = read_cache(twin, files) if twin.is_file() else None
        if data is not None:
            found.append((twin, data))
            if complete(data):
                break
    if not found:
        return None
    twin, data = next(((t, d) for t, d in found if complete(d)), found[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        os.link(twin, tmp)
    except OSError:
        shutil.copyfile(twin, tmp)
    tmp.replace(path)
    return data


@contextlib.contextmanager
def one_pass(path: Path) -> Iterator[None]:
    """Hold the workspace's lock on the features file ``path`` while it is computed: a job
    that needs the same file (same pictures, model and weights) in any project waits here,
    then finds it (:func:`linked_twin`). The lock is a file beside the projects' folders
    (beside the file outside a workspace), released when its holder ends, even killed."""
    projects = _projects_folder(path.parent.parent)  # projects/<id>/data-N/cache/<file>
    lock = (projects or path.parent) / f".{path.stem}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only place: no lock, each job computes its own
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def kept_result(
    path: Path, name: str, make: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """What ``make`` computes from the features file ``path`` alone (``name`` says which
    reading, with its settings), kept beside it as JSON and shared like the file: read back
    here or from another data version of the workspace, else computed once (under the
    file's lock) and kept. (The result, whether it was read back.)"""
    kept = path.with_name(f"{path.stem}-{name}.json")

    def read(candidate: Path) -> dict[str, Any] | None:
        try:
            raw = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return raw if isinstance(raw, dict) else None

    found = read(kept)
    if found is not None:
        return found, True
    with one_pass(path):
        for version in [path.parent.parent, *_other_versions(path.parent.parent)]:
            found = read(version / "cache" / kept.name)
            if found is not None:
                break
        result = found if found is not None else make()
        tmp = kept.with_name(f"{kept.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        with contextlib.suppress(OSError):  # a read-only place: computed again next time
            tmp.write_text(json.dumps(result), encoding="utf-8")
            tmp.replace(kept)
    return result, found is not None


def write_cache(path: Path, data: dict[str, np.ndarray]) -> None:
    """Write atomically: a temporary file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def pooled_rows(
    root: Path,
    train: Sequence[ImageItem],
    val: Sequence[ImageItem],
    model_key: str,
    pretrained: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """The cached pooled features of ``train`` and ``val`` in their order, and the fp32
    features of ``val`` when they were kept; None when the features job has not computed
    them for exactly these images."""
    items = sorted([*train, *val], key=lambda i: i.file)
    files = [i.file for i in items]
    data = read_cache(features_path(root, items, model_key, pretrained), files)
    if data is None or "vectors" not in data:
        return None
    row = {f: r for r, f in enumerate(files)}
    vectors = data["vectors"]
    exact = None
    if "exact_files" in data and data["exact_files"].tolist() == [i.file for i in val]:
        exact = data["exact_vectors"]
    return vectors[[row[i.file] for i in train]], vectors[[row[i.file] for i in val]], exact
