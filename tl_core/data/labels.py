"""Labels given to a data version's unlabelled pictures, and the data version they make.

Kept beside the pictures as ``labels.jsonl``: one line per labelling (which file, which class
or none, by whom, when), appended as it happens, so labelling survives a refresh, a restart
and a second tab, and the whole history stays. The last line about a file wins. A class the
user names before any picture has it is a line too. The data version itself is never
changed: :func:`labelled_version` writes the next one, whose ``items`` gain the labelled
pictures (as a new batch: the split keeps the sides of the earlier pictures) and whose
``unlabelled`` keeps the rest. Nothing here loads torch.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tl_core import diskspace
from tl_core.data.camera import check_label
from tl_core.data.checks import count_warnings
from tl_core.data.layout import label_key
from tl_core.data.manifest import batch_count, link_old, new_dest, undo
from tl_core.data.neardup import near_links
from tl_core.data.records import DatasetManifest, DataWarning, ImageItem
from tl_core.errors import DataError

__all__ = [
    "BY",
    "FILE_NAME",
    "Given",
    "Labelling",
    "add_class",
    "give",
    "labelled_version",
    "pending",
    "read",
]

FILE_NAME = "labels.jsonl"
# Who gave a label: the user by hand, a suggestion the user accepted, a file of labels.
BY = ("user", "suggestion", "file")


@dataclass(frozen=True)
class Given:
    """The label a picture has now (``label`` None: taken back) and who gave it, when."""

    label: str | None
    by: str
    at: float
    who: str = ""


@dataclass
class Labelling:
    """What ``labels.jsonl`` says now: the label of each file, the classes named."""

    given: dict[str, Given] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)  # named on the page, in order
    lines: int = 0

    def labels(self) -> dict[str, str]:
        """file -> class, for the files labelled now."""
        return {f: g.label for f, g in self.given.items() if g.label is not None}

    def counts(self) -> Counter[str]:
        return Counter(self.labels().values())


_CACHE: dict[str, tuple[tuple[int, int], Labelling]] = {}
_LOCK = threading.Lock()


def _path(data_dir: Path) -> Path:
    return Path(data_dir) / FILE_NAME


def read(data_dir: Path) -> Labelling:
    """The labelling of a data version (empty when none was given); read again only when the
    file changed. A torn last line (a crash while writing) is ignored."""
    path = _path(data_dir)
    try:
        st = path.stat()
    except FileNotFoundError:
        return Labelling()
    stamp = (st.st_mtime_ns, st.st_size)
    with _LOCK:
        hit = _CACHE.get(str(path))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    out = Labelling()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            out.lines += 1
            if "class" in raw:
                if all(label_key(c) != label_key(raw["class"]) for c in out.classes):
                    out.classes.append(str(raw["class"]))
            elif "file" in raw:
                label = raw.get("label")
                out.given[str(raw["file"])] = Given(
                    None if label is None else str(label),
                    str(raw.get("by", "user")),
                    float(raw.get("at", 0)),
                    str(raw.get("who", "")),
                )
    with _LOCK:
        _CACHE[str(path)] = (stamp, out)
    return out


def _append(data_dir: Path, records: Iterable[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not text:
        return
    # One write in append mode: lines from two tabs never interleave.
    fd = os.open(_path(data_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _known(manifest: DatasetManifest) -> dict[str, str]:
    """The class names of the data version and those named on the page, by label key."""
    names = [*manifest.classes, *read(manifest.root).classes]
    return {label_key(c): c for c in reversed(names)}


def add_class(manifest: DatasetManifest, name: str) -> str:
    """Name a new class (kept even before a picture has it); the name as kept. DataError when
    the name is empty, unusable or already a class."""
    label = check_label(name)
    if label_key(label) in _known(manifest):
        raise DataError(
            f"There is already a class called '{_known(manifest)[label_key(label)]}'. Choose "
            "another name."
        )
    _append(manifest.root, [{"class": label, "at": time.time()}])
    return label


def give(
    manifest: DatasetManifest,
    files: Sequence[str],
    label: str | None,
    by: str = "user",
    who: str = "",
) -> int:
    """Label the unlabelled pictures ``files`` (``label`` None takes their label back); how
    many changed. The class must exist (:func:`add_class`); files that are not unlabelled
    pictures of this data version are refused."""
    if by not in BY:
        raise ValueError(f"by must be one of {BY}")
    pool = {i.file for i in manifest.unlabelled}
    unknown = [f for f in files if f not in pool]
    if unknown:
        raise DataError(
            f"'{unknown[0]}' is not an unlabelled picture of this data set"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + ". Reload the page: the data set may have changed."
        )
    if label is not None:
        known = _known(manifest)
        if label_key(label) not in known:
            raise DataError(f"There is no class called '{label}'. Add it first.")
        label = known[label_key(label)]
    now = read(manifest.root).given
    at = time.time()
    records = [
        {"file": f, "label": label, "by": by, "at": at, **({"who": who} if who else {})}
        for f in dict.fromkeys(files)
        if (now[f].label if f in now else None) != label
    ]
    _append(manifest.root, records)
    return len(records)


def pending(manifest: DatasetManifest) -> int:
    """How many unlabelled pictures have a label that is not in a data version yet."""
    labels = read(manifest.root).labels()
    return sum(1 for i in manifest.unlabelled if i.file in labels)


def labelled_version(base: DatasetManifest, dest: Path) -> DatasetManifest:
    """The next data version in ``dest`` (a new or empty folder): ``base``'s pictures with
    the labels given so far (a new batch), the pictures still unlabelled kept so. Files are
    hard-linked (copied where the disk cannot); ``base`` is only read. DataError when no
    picture was labelled, or the labelled set would have fewer than two classes."""
    labels = read(base.root).labels()
    added = [replace(i, label=labels[i.file]) for i in base.unlabelled if i.file in labels]
    if not added:
        raise DataError("No picture has been labelled since this data set was made.")
    items = [*base.items, *added]
    counts = Counter(i.label for i in items)
    if len(counts) < 2:
        raise DataError(
            "Label pictures of at least two classes before training: a model learns to tell "
            "classes apart."
        )
    created = new_dest(dest)
    try:
        link_old(base, dest)
        manifest = replace(
            base,
            root=dest,
            items=items,
            classes=sorted(counts),
            unlabelled=[i for i in base.unlabelled if i.file not in labels],
            batch_starts=[*base.batch_starts, len(base.items)] if base.items else [],
            grown_from=Path(base.root).name,
            warnings=_labelled_warnings(base.warnings, items, sorted(counts)),
            near_since=base.near_since if base.near_links is not None else batch_count(base),
        )
        manifest.near_links = near_links(manifest, base)
        manifest.save()
    except BaseException as exc:
        undo(dest, created, exc, diskspace.import_need(0, 0))
        raise
    return manifest


def _labelled_warnings(
    old: list[DataWarning], items: list[ImageItem], classes: list[str]
) -> list[DataWarning]:
    """The base's warnings about files, and the counts' warnings of the labelled set."""
    kept = [w for w in old if w.kind not in ("few_images", "unbalanced")]
    return kept + count_warnings(items, classes)
