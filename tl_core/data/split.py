"""The seeded split of a data set into training and validation images.

The same manifest, share and seed always give the same split. Near-identical pictures and
the frames of one second of a camera recording are kept on one side (groups), and a grown
data set is split batch by batch so that its earlier images keep their side: runs on an older
version and on a newer one are checked on the same earlier images.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

from tl_core.config import SplitSettings
from tl_core.data.checks import plural
from tl_core.data.layout import some
from tl_core.data.manifest import batches
from tl_core.data.records import DatasetManifest, ImageItem, Split
from tl_core.errors import DataError

__all__ = [
    "RUN_FRAMES",
    "Groups",
    "camera_run",
    "split_dataset",
    "split_groups",
    "split_rule_text",
]

# About one second of a camera recording (5-10 frames a second): consecutive frames of one
# recording in the same run of this many are one group for the split, flagged or not.
RUN_FRAMES = 8
_CAMERA_NAME = re.compile(r"(?:^|/)r(\d{4,})-f(\d{4,})\.jpg$")


def camera_run(item: ImageItem) -> tuple[int, int] | None:
    """(recording, run of :data:`RUN_FRAMES` frames) of a camera frame (its source is named
    ``<class>/r0003-f0012.jpg``, see :mod:`tl_core.data.camera`), else None."""
    found = _CAMERA_NAME.search(item.source.replace("\\", "/"))
    return (int(found[1]), (int(found[2]) - 1) // RUN_FRAMES) if found else None


class Groups:
    """Union-find over item indices."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, k: int) -> int:
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def join(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)
        return True


def _n_val(n: int, val_fraction: float) -> int:
    """Images of a class of ``n`` held back: ``round(n * val_fraction)``, 1 to n - 1."""
    return min(max(round(n * val_fraction), 1), n - 1)


def _check_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise DataError(
            f"The share of images held back for validation must be between 0 and 1 (not "
            f"{val_fraction}); 0.2 is a good start."
        )


def _pick(
    fresh: list[list[int]],
    files: list[str],
    rng: random.Random,
    need: int,
    train_left: int,
    none_yet: bool,
) -> list[list[int]]:
    """The groups of one class and batch that go to validation.

    Groups are shuffled (by their first file, so that single images shuffle exactly as the
    files themselves used to) and taken whole while fewer than ``need`` images are held back;
    a group that would overshoot the share by more than it would still lack is passed over,
    and at least one image stays in training. When the class would get no validation image at
    all (``none_yet``) and has two groups or more, the smallest group goes.
    """
    by_first = {files[g[0]]: g for g in fresh}
    order = sorted(by_first)
    rng.shuffle(order)
    chosen: list[list[int]] = []
    held = 0
    for first in order:
        if held >= need:
            break
        size = len(by_first[first])
        if held + size > need and held + size - need > need - held:
            continue
        if train_left - size < 1:
            continue
        chosen.append(by_first[first])
        held += size
        train_left -= size
    if not chosen and none_yet and len(fresh) + (train_left > sum(map(len, fresh))) >= 2:
        smallest = min((by_first[f] for f in order), key=len)
        if train_left - len(smallest) >= 1:
            chosen.append(smallest)
    return chosen


def split_groups(manifest: DatasetManifest) -> list[list[str]]:
    """The groups of two or more images the split keeps on one side, each sorted (files)."""
    groups = Groups(len(manifest.items))
    for edges in _edges(manifest, batches(manifest)).values():
        for a, b in edges:
            groups.join(a, b)
    members: dict[int, list[str]] = {}
    for k, item in enumerate(manifest.items):
        members.setdefault(groups.find(k), []).append(item.file)
    return sorted(sorted(g) for g in members.values() if len(g) > 1)


def _edges(manifest: DatasetManifest, batch_of: list[int]) -> dict[int, list[tuple[int, int]]]:
    """What joins images into groups, by the batch it first counts in: the near-duplicate
    links and the camera runs (none for a manifest of an older release)."""
    out: dict[int, list[tuple[int, int]]] = {}
    if manifest.near_links is None:
        return out
    items = manifest.items
    index = {item.file: k for k, item in enumerate(items)}
    for a_file, b_file in manifest.near_links:
        a, b = index.get(a_file), index.get(b_file)
        if a is not None and b is not None:
            out.setdefault(max(batch_of[a], batch_of[b]), []).append((a, b))
    first: dict[tuple[int, str, int, int], int] = {}
    for k, item in enumerate(items):
        b = batch_of[k]
        if b >= manifest.near_since and (run := camera_run(item)) is not None:
            head = first.setdefault((b, item.label, *run), k)
            if head != k:
                out.setdefault(b, []).append((head, k))
    return out


@dataclass
class _Sides:
    """The split as it is worked out batch by batch: each item's side ("train", "val", or
    None while its batch is not reached) and, per class, the images placed so far (``seen``)
    and those of them held back (``held``)."""

    side: list[str | None]
    seen: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)


def _fresh_groups(
    items: list[ImageItem], b: int, batch_of: list[int], members: list[list[int]], sides: _Sides
) -> dict[str, list[list[int]]]:
    """Batch ``b``'s images in a group with earlier images take their side (training when
    they are on both); the groups of batch ``b``'s other images, by class."""
    fresh_by_label: dict[str, list[list[int]]] = {}
    for group in members:
        new = [k for k in group if batch_of[k] == b]
        if not new:
            continue
        old = {sides.side[k] for k in group if batch_of[k] < b}
        if old:
            got = "val" if old == {"val"} else "train"
            for k in new:
                sides.side[k] = got
                sides.seen[items[k].label] += 1
                sides.held[items[k].label] += got == "val"
        else:
            fresh_by_label.setdefault(items[group[0]].label, []).append(sorted(new))
    return fresh_by_label


def _hold_back(
    label: str, fresh: list[list[int]], files: list[str], b: int, sides: _Sides, how: SplitSettings
) -> None:
    """Place the new groups of one class in batch ``b``: those :func:`_pick` chooses fill up
    the class's validation share, the others train."""
    sides.seen[label] += sum(map(len, fresh))
    target = _n_val(sides.seen[label], how.val_fraction)
    seed = how.seed
    rng = random.Random(f"{seed}:{label}" if b == 0 else f"{seed}:{label}:{b}")
    train_left = sides.seen[label] - sides.held[label]
    need = target - sides.held[label]
    chosen = _pick(fresh, files, rng, need, train_left, none_yet=not sides.held[label])
    for group in fresh:
        for k in group:
            sides.side[k] = "train"
    for group in chosen:
        for k in group:
            sides.side[k] = "val"
        sides.held[label] += len(group)


def split_dataset(
    manifest: DatasetManifest,
    val_fraction: float = SplitSettings.val_fraction,
    seed: int = SplitSettings.seed,
) -> Split:
    """Training and validation images.

    An explicit ``val/`` folder is used as is (``val_fraction`` ignored). Otherwise each class
    is shuffled with its own ``random.Random`` seeded by (seed, class) and ``round(n *
    val_fraction)`` images, at least 1 and at most n - 1, go to validation.

    Near-duplicates stay on one side: images of a class joined by near-duplicate pairs
    (``manifest.near_links``) or shot in the same second of one camera recording
    (:data:`RUN_FRAMES` consecutive frames) are one group, and groups go to validation whole
    until the class's share is reached (:func:`_pick`); a data set without such groups splits
    exactly as above. A class that is one group keeps all its images for training.

    A grown data set (``manifest.batch_starts``) is split batch by batch so that the earlier
    images keep their side: the images added to a class fill up its validation share (the
    count for the whole class, as above, less what earlier batches hold back), chosen at
    random among the added images (shuffled by (seed, class, batch)); an added image in a
    group with earlier images takes their side (training when they are on both).
    """
    if manifest.has_explicit_val:
        train = [i for i in manifest.items if i.subset != "val"]
        return Split(train, [i for i in manifest.items if i.subset == "val"])
    _check_fraction(val_fraction)
    how = SplitSettings(val_fraction, seed)
    items = manifest.items
    files = [i.file for i in items]
    batch_of = batches(manifest)
    groups = Groups(len(items))
    edges = _edges(manifest, batch_of)
    joined = sorted({k for level in edges.values() for e in level for k in e})
    in_batch: dict[int, list[int]] = {}
    for k, b in enumerate(batch_of):
        in_batch.setdefault(b, []).append(k)
    sides = _Sides([None] * len(items))
    for b in range(max(batch_of, default=0) + 1):
        for x, y in edges.get(b, []):
            groups.join(x, y)
        # the batch's images, and the earlier ones that may share a group with them
        members: dict[int, list[int]] = {}
        for k in [*(k for k in joined if batch_of[k] < b), *in_batch.get(b, [])]:
            members.setdefault(groups.find(k), []).append(k)
        fresh_by_label = _fresh_groups(items, b, batch_of, list(members.values()), sides)
        for label in manifest.classes:
            if fresh_by_label.get(label):
                _hold_back(label, fresh_by_label[label], files, b, sides, how)
    return Split(
        train=[i for i, s in zip(items, sides.side, strict=True) if s != "val"],
        val=[i for i, s in zip(items, sides.side, strict=True) if s == "val"],
    )


def split_rule_text(
    manifest: DatasetManifest,
    val_fraction: float = SplitSettings.val_fraction,
    seed: int = SplitSettings.seed,
) -> str:
    """How the images are split, in one or two plain sentences for the Data page (with the
    classes that get no validation image, and why)."""
    if manifest.has_explicit_val:
        return "The images in the validation folder check the model; all the others train it."
    _check_fraction(val_fraction)
    share = f"{val_fraction:.0%} of each class is held back at random to check the model"
    if manifest.near_links is None:
        return share + "."
    text = (
        f"{share}. Near-identical pictures, and the frames of each second of a camera "
        "recording, always go to the same side, so the check never sees a near-copy of a "
        "training picture"
    )
    groups = split_groups(manifest)
    if groups:
        text += f" ({plural(len(groups), 'such group')} of {sum(map(len, groups)):,} images here)"
    text += "."
    split = split_dataset(manifest, val_fraction, seed)
    in_val = {i.label for i in split.val}
    missing = [c for c in manifest.classes if c not in in_val]
    if missing:
        one = len(missing) == 1
        text += (
            f" {'Class' if one else 'Classes'} {some(missing)} {'is' if one else 'are'} all "
            "near-identical pictures, so none can be held back and the model is not checked "
            f"on {'it' if one else 'them'}: record more takes, moving the object between them."
        )
    return text
