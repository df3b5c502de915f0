"""The survey of a data version's pictures: computed once per data version and model (or
trained run) by the ``survey`` job, read by the Label and Data pages and the command line.

One pass of every picture, labelled or not, through the frozen network (the features are
cached beside the data set, shared with the Model page's head-start check) or through a
trained run's model; then the space the suggestions work in (:func:`assist.reduce`), the 2D
map (:mod:`projection`) and, for pretrained features and a labelled set, the likely wrong
labels (:mod:`issues`). Saved as ``survey.npz`` in the job's folder.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tl_core.data.records import DatasetManifest, ImageItem
from tl_core.labeling import assist, issues, projection
from tl_core.training.featurecache import write_cache

__all__ = ["FILE_NAME", "Survey", "compute", "load", "pictures"]

FILE_NAME = "survey.npz"
FORMAT = 1
MIN_LABELS_FOR_ISSUES = 2  # per class: cross-validation needs two of each

Report = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class Survey:
    """Every picture of the data version (labelled and not), sorted by file."""

    files: list[str]
    space: np.ndarray  # (n, d) float32: what the suggestions are computed on
    xy: np.ndarray  # (n, 2) float32 in [0, 1]: the map
    method: str  # the map's method, for its caption
    trained: bool  # features of a trained run's model (else the pretrained network's)
    model: str  # the catalog key of the network
    # Likely wrong labels among the labelled pictures, worst first: rows of ``files``, the
    # class the features suggest instead, its out-of-sample probability, the label quality.
    issue_rows: np.ndarray
    issue_suggested: list[str]
    issue_confidence: np.ndarray
    issue_quality: np.ndarray

    def row_of(self) -> dict[str, int]:
        return {f: k for k, f in enumerate(self.files)}


def pictures(manifest: DatasetManifest) -> list[ImageItem]:
    """Every picture of the data version, labelled or not, in the survey's order."""
    return sorted([*manifest.items, *manifest.unlabelled], key=lambda i: i.file)


def _features(
    manifest: DatasetManifest, model_key: str, run_dir: Path | None, report: Report
) -> np.ndarray:
    def progress(done: int, total: int) -> None:
        report("features", done, total)

    if run_dir is None:
        from tl_core.analysis.transfer import picture_features

        return picture_features(manifest, model_key, progress=progress)[1]
    from tl_core.training.inference import load_trained

    trained = load_trained(run_dir)
    root = Path(manifest.root)
    # its class scores: what training changed, even with the whole backbone frozen (a
    # head-only run leaves the pooled features exactly the pretrained ones)
    paths = [root / i.file for i in pictures(manifest)]
    return trained.embeddings(paths, progress=progress, logits=True)


def _no_issues() -> dict[str, np.ndarray]:
    return {
        "issue_rows": np.zeros(0, np.int64),
        "issue_suggested": np.array([], dtype=str),
        "issue_confidence": np.zeros(0, np.float32),
        "issue_quality": np.zeros(0, np.float32),
    }


def _issues(manifest: DatasetManifest, files: list[str], space: np.ndarray) -> dict:
    """Likely wrong labels of the labelled pictures (none when a class is too small)."""
    row = {f: k for k, f in enumerate(files)}
    classes = manifest.classes
    index = {c: k for k, c in enumerate(classes)}
    rows = np.array([row[i.file] for i in manifest.items], dtype=np.int64)
    labels = np.array([index[i.label] for i in manifest.items], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(0)
    if len(classes) < 2 or counts.min() < MIN_LABELS_FOR_ISSUES:
        return _no_issues()
    found = issues.find_issues(space[rows], labels)
    return {
        "issue_rows": np.array([rows[i.row] for i in found], dtype=np.int64),
        "issue_suggested": np.array([classes[i.suggested] for i in found], dtype=str),
        "issue_confidence": np.array([i.confidence for i in found], dtype=np.float32),
        "issue_quality": np.array([i.quality for i in found], dtype=np.float32),
    }


def compute(
    manifest: DatasetManifest,
    model_key: str,
    out: Path,
    run_dir: Path | None = None,
    report: Report | None = None,
) -> dict[str, object]:
    """Survey the pictures into ``out`` (a ``survey.npz``); a short summary for the job's
    result. ``report(phase, done, total)``: "features", "map", "label_issues"."""
    report = report or (lambda phase, done, total: None)
    started = time.monotonic()
    files = [i.file for i in pictures(manifest)]
    vectors = _features(manifest, model_key, run_dir, report)
    space = assist.reduce(vectors)

    def mapped(done: int, total: int) -> None:
        report("map", done, total)

    xy = projection.project(vectors, progress=mapped)
    found = _no_issues()
    if run_dir is None:  # the given labels, judged by the network that never saw them
        report("label_issues", 0, 1)
        found = _issues(manifest, files, space)
        report("label_issues", 1, 1)
    data = {
        "format": np.array(FORMAT),
        "files": np.array(files, dtype=str),
        "space": space.astype(np.float32),
        "xy": xy.astype(np.float32),
        "method": np.array(projection.METHOD),
        "trained": np.array(run_dir is not None),
        "model": np.array(model_key),
        **found,
    }
    write_cache(Path(out), data)  # atomically: a temporary file, then a rename
    return {
        "pictures": len(files),
        "labelled": len(manifest.items),
        "unlabelled": len(manifest.unlabelled),
        "issues": len(found["issue_rows"]),
        "method": projection.METHOD,
        "trained": run_dir is not None,
        "seconds": round(time.monotonic() - started, 1),
    }


def load(path: Path) -> Survey | None:
    """The survey saved at ``path``; None when it is missing, unreadable or of another
    format."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if int(data.get("format", -1)) != FORMAT:
        return None
    return Survey(
        files=data["files"].tolist(),
        space=data["space"],
        xy=data["xy"],
        method=str(data["method"]),
        trained=bool(data["trained"]),
        model=str(data["model"]),
        issue_rows=data["issue_rows"],
        issue_suggested=data["issue_suggested"].tolist(),
        issue_confidence=data["issue_confidence"],
        issue_quality=data["issue_quality"],
    )
