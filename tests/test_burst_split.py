"""The burst-aware split: near-identical pictures (and each second of a camera recording) stay
on one side of the validation split, whatever the kind of burst; a data set without them
splits exactly as before."""

from __future__ import annotations

import io
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import make_shapes
from PIL import Image

from tl_core import service
from tl_core.data import neardup
from tl_core.data.dataset import (
    RUN_FRAMES,
    DatasetManifest,
    ImageItem,
    Split,
    batch_count,
    camera_run,
    grow,
    import_folder,
    split_dataset,
    split_groups,
    split_rule_text,
)
from tl_core.runs.store import Store

W, H = 160, 120
COLOURS = [(200, 60, 60), (60, 200, 60), (60, 60, 200)]


def scene(kind: int, take: int) -> np.ndarray:
    """What the camera sees in take ``take`` of object ``kind``: a textured background tinted
    by the class, the object somewhere in it."""
    rng = np.random.default_rng(100 * kind + take)
    small = rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC), np.float64)
    bg = 0.5 * bg + 0.5 * np.array(COLOURS[kind % 3])
    y, x = 20 + 10 * (take % 5), 20 + 17 * (take % 6)
    bg[y : y + 50, x : x + 50] = [(250, 250, 0), (0, 250, 250), (250, 0, 250)][kind % 3]
    return bg


def burst(kind: int, take: int, n: int, step: float, first: int = 0) -> list[bytes]:
    """``n`` frames of one take: the scene panned by ``step`` pixels a frame, sensor noise."""
    base = scene(kind, take)
    rng = np.random.default_rng(10_000 + 100 * kind + take + 7 * first)
    out = []
    for i in range(first, first + n):
        img = np.roll(base, round(i * step), axis=1) + rng.normal(0, 3, base.shape)
        buf = io.BytesIO()
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# kind -> takes per class, frames per take, pixels panned per frame
BURSTS = {
    "still frames": (4, 10, 0),
    "slowly moving": (3, 15, 1),
    "one long recording": (1, 48, 9),
    "several short ones": (6, 5, 4),
    "long and still mixed": (2, 24, 0.5),
}


def record(store: Store, project_id: str, takes: int, n: int, step: float, first_take=0) -> None:
    for kind, label in enumerate(("apple", "banana", "pen")):
        for t in range(first_take, first_take + takes):
            service.camera_add_frames(store, project_id, label, burst(kind, t, n, step), f"t{t}")


def legacy_val(manifest: DatasetManifest, fraction: float, seed: int) -> set[str]:
    """The split as it was before bursts were kept together (batch by batch, at random)."""
    n = len(manifest.items)
    starts = sorted({0, *(b for b in manifest.batch_starts if 0 < b < n)})
    by_label: dict[str, dict[int, list[str]]] = {}
    for b, (lo, hi) in enumerate(zip(starts, [*starts[1:], n], strict=True)):
        for item in manifest.items[lo:hi]:
            by_label.setdefault(item.label, {}).setdefault(b, []).append(item.file)
    out: set[str] = set()
    for label in manifest.classes:
        seen = held = 0
        for b, batch in sorted(by_label.get(label, {}).items()):
            files = sorted(batch)
            random.Random(f"{seed}:{label}" if b == 0 else f"{seed}:{label}:{b}").shuffle(files)
            seen += len(files)
            target = min(max(round(seen * fraction), 1), seen - 1)
            out.update(files[: max(target - held, 0)])
            held = max(target, held)
    return out


def check_split(manifest: DatasetManifest, fraction: float, seed: int) -> None:
    """No near-identical pair and no second of a recording on both sides; every class with
    two groups or more is checked on some images, about its share."""
    split = split_dataset(manifest, fraction, seed)
    assert len(split.train) + len(split.val) == len(manifest.items)
    found = neardup.classify(neardup.manifest_pairs(manifest), split)
    assert neardup.counts(found)["train_val"] == 0
    val = {i.file for i in split.val}
    runs: dict[tuple, set[bool]] = {}
    for item in manifest.items:
        if (run := camera_run(item)) is not None:
            runs.setdefault((item.label, *run), set()).add(item.file in val)
    assert all(len(sides) == 1 for sides in runs.values())
    groups = split_groups(manifest)
    grouped = {f for g in groups for f in g}
    for label in manifest.classes:
        files = [i.file for i in manifest.items if i.label == label]
        mine = [g for g in groups if g[0] in files]
        n_groups = len(mine) + sum(f not in grouped for f in files)
        held = sum(f in val for f in files)
        if n_groups >= 2:
            assert held > 0, label
            assert held < len(files), label
            target = round(len(files) * fraction)
            assert abs(held - target) <= max(map(len, mine), default=1), (label, held, target)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "ws")


@pytest.mark.parametrize("kind", list(BURSTS))
def test_bursts_stay_on_one_side(store, kind) -> None:
    project = service.camera_project(store, None)
    record(store, project.id, *BURSTS[kind])
    manifest = DatasetManifest.load(Path(service.camera_commit(store, project.id).data_dir))
    assert manifest.near_links is not None
    for fraction, seed in ((0.2, 0), (0.3, 1), (0.25, 7)):
        check_split(manifest, fraction, seed)
    assert split_dataset(manifest, 0.2, 0).val  # the classes' takes give validation images
    # the old split put near-copies, or frames of one second, on both sides
    old = legacy_val(manifest, 0.2, 0)
    split = Split(
        [i for i in manifest.items if i.file not in old],
        [i for i in manifest.items if i.file in old],
    )
    leaks = neardup.counts(neardup.classify(neardup.manifest_pairs(manifest), split))
    runs: dict[tuple, set[bool]] = {}
    for item in manifest.items:
        runs.setdefault((item.label, camera_run(item)), set()).add(item.file in old)
    assert leaks["train_val"] > 0 or any(len(s) == 2 for s in runs.values())


def test_one_take_of_a_still_object_is_not_held_back(store) -> None:
    project = service.camera_project(store, None)
    service.camera_add_frames(store, project.id, "mug", burst(0, 0, 20, 0), "t0")
    record_more = [burst(1, t, 8, 2) for t in range(4)]
    for t, frames in enumerate(record_more):
        service.camera_add_frames(store, project.id, "pen", frames, f"t{t}")
    manifest = DatasetManifest.load(Path(service.camera_commit(store, project.id).data_dir))
    split = split_dataset(manifest)
    assert not [i for i in split.val if i.label == "mug"]  # one burst: all of it trains
    assert [i for i in split.val if i.label == "pen"]
    text = split_rule_text(manifest)
    assert "'mug'" in text and "record more takes" in text and "'pen'" not in text


@pytest.mark.parametrize("first", [(2, 10, 0), (2, 12, 1)])
def test_a_grown_set_keeps_old_sides_and_bursts(store, first) -> None:
    project = service.camera_project(store, None)
    record(store, project.id, *first)
    base = DatasetManifest.load(Path(service.camera_commit(store, project.id).data_dir))
    # more takes, and a take that continues an old one (the same scene: near-identical)
    record(store, project.id, 2, 10, 1, first_take=10)
    for kind, label in enumerate(("apple", "banana", "pen")):
        frames = burst(kind, 0, 6, first[2], first=first[1])
        service.camera_add_frames(store, project.id, label, frames, "again")
    project = service.camera_commit(store, project.id)
    grown = DatasetManifest.load(Path(project.data_dir))
    assert batch_count(grown) == 2
    for fraction, seed in ((0.2, 0), (0.3, 3)):
        old_val = {i.file for i in split_dataset(base, fraction, seed).val}
        split = split_dataset(grown, fraction, seed)
        val = {i.file for i in split.val}
        assert val & {i.file for i in base.items} == old_val
        found = neardup.classify(neardup.manifest_pairs(grown), split)
        assert neardup.counts(found)["train_val"] == 0
        assert {i.label for i in split.val} == set(grown.classes)


def test_a_set_grown_from_an_older_version_keeps_its_plain_split(tmp_path) -> None:
    """A data version made before near-duplicates were kept together keeps its split; the
    images added to it are split with their bursts together."""
    old_root = tmp_path / "v1"
    base = import_folder(make_shapes(tmp_path / "shapes", 12), old_root)
    base.near_links = None  # as an older release wrote it
    base.save()
    base = DatasetManifest.load(old_root)
    frames = [("square/" + f"r0001-f{i + 1:04d}.jpg", b) for i, b in enumerate(burst(0, 0, 16, 0))]
    grown = grow(base, frames, tmp_path / "v2").manifest
    assert grown.near_since == 1
    for seed in (0, 1, 2):
        old_val = {i.file for i in split_dataset(base, 0.25, seed).val}
        assert old_val == legacy_val(base, 0.25, seed)
        split = split_dataset(grown, 0.25, seed)
        assert {i.file for i in split.val} & {i.file for i in base.items} == old_val
        new_val = {i.file for i in split.val} - old_val
        new = {i.file for i in grown.items[len(base.items) :]}
        assert new_val in (set(), new)  # the still burst goes whole


# ------------------------------------------------------------ no near-duplicates: as before


@pytest.mark.parametrize("shapes", [(30, 48, 0), (10, 48, 3), (25, 32, 1)])
@pytest.mark.parametrize(("fraction", "seed"), [(0.2, 0), (0.35, 5), (0.1, 2)])
def test_a_set_without_near_duplicates_splits_as_before(tmp_path, shapes, fraction, seed):
    manifest = import_folder(make_shapes(tmp_path / "s", *shapes), tmp_path / "data")
    assert manifest.near_links == [] and split_groups(manifest) == []
    assert {i.file for i in split_dataset(manifest, fraction, seed).val} == legacy_val(
        manifest, fraction, seed
    )


def test_a_grown_set_without_near_duplicates_splits_as_before(tmp_path):
    base = import_folder(make_shapes(tmp_path / "a", 20), tmp_path / "v1")
    more = make_shapes(tmp_path / "b", 9, seed=5)
    grown = grow(base, more, tmp_path / "v2").manifest
    assert grown.near_links == [] and batch_count(grown) == 2
    for fraction, seed in ((0.2, 0), (0.3, 4)):
        val = {i.file for i in split_dataset(grown, fraction, seed).val}
        assert val == legacy_val(grown, fraction, seed)


def _fake(groups: list[int], label: str = "a", camera: bool = False) -> list[ImageItem]:
    items = []
    for g, size in enumerate(groups):
        for i in range(size):
            k = len(items)
            source = f"{label}/r{g + 1:04d}-f{i + 1:04d}.jpg" if camera else f"{label}/{k}.png"
            items.append(
                ImageItem(f"images/{label}/{k:04d}.png", label, None, source, f"{k}", 8, 8)
            )
    return items


@pytest.mark.parametrize(
    "sizes", [[1] * 30, [3] * 10, [2, 5, 1, 1, 8, 1, 1, 3, 1, 1, 1], [12, 1, 1, 1, 1, 1, 1]]
)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_uploaded_near_duplicates_go_whole(sizes, seed) -> None:
    items = _fake(sizes)
    links, k = [], 0
    for size in sizes:
        links += [(items[k].file, items[j].file) for j in range(k + 1, k + size)]
        k += size
    manifest = DatasetManifest(Path("."), items, ["a"], [], [], [], False, near_links=links)
    val = {i.file for i in split_dataset(manifest, 0.2, seed).val}
    k = 0
    for size in sizes:
        group = {i.file for i in items[k : k + size]}
        assert group <= val or not group & val
        k += size
    assert 0 < len(val) < len(items)
    if sizes == [1] * 30:
        assert val == legacy_val(manifest, 0.2, seed)


@pytest.mark.parametrize("frames", [8, 20, 40])
def test_camera_runs_without_flagged_pairs_go_whole(frames) -> None:
    """Frames of one second of a recording stay together even where no pair was flagged."""
    items = _fake([frames, frames], camera=True)
    manifest = DatasetManifest(Path("."), items, ["a"], [], [], [], False, near_links=[])
    for seed in range(5):
        val = {i.file for i in split_dataset(manifest, 0.2, seed).val}
        assert val
        runs: dict[tuple, set[bool]] = {}
        for item in items:
            runs.setdefault(camera_run(item), set()).add(item.file in val)
        assert all(len(s) == 1 for s in runs.values())
        assert len({camera_run(i) for i in items if i.file in val}) >= 1
    assert RUN_FRAMES == 8


def test_the_rule_in_plain_words(tmp_path, store) -> None:
    plain = import_folder(make_shapes(tmp_path / "s", 10), tmp_path / "d")
    assert "20% of each class is held back" in split_rule_text(plain)
    assert "Near-identical pictures" in split_rule_text(plain)
    plain.near_links = None
    assert split_rule_text(plain, 0.3) == (
        "30% of each class is held back at random to check the model."
    )
    project = service.camera_project(store, None)
    record(store, project.id, 3, 10, 0)
    manifest = DatasetManifest.load(Path(service.camera_commit(store, project.id).data_dir))
    text = split_rule_text(manifest)
    assert "9 such groups of 90 images" in text and "record more takes" not in text
    assert len([s for s in text.split(". ") if s]) <= 2


def test_the_worker_and_the_near_duplicate_panel_agree(store) -> None:
    """The training worker's summary and the Data page's panel read the same split: the
    pairs kept on one side are no train/validation near-copies for either."""
    project = service.camera_project(store, None)
    record(store, project.id, 3, 10, 0)
    project = service.camera_commit(store, project.id)
    manifest = DatasetManifest.load(Path(project.data_dir))
    split = service.split_settings(project)
    fraction, seed = split.val_fraction, split.seed
    summary = neardup.run_summary(manifest, fraction, seed)
    assert summary["train_val"] == 0 and len(neardup.manifest_pairs(manifest)) > 100
    counts = Counter(i.label for i in split_dataset(manifest, fraction, seed).val)
    assert set(counts) == set(manifest.classes)


def test_a_grown_set_looks_only_for_the_added_images_pairs(tmp_path, monkeypatch) -> None:
    """``grow`` reads the old version's pairs back and looks for the added images' pairs
    only; the result is what a search of the whole set finds."""
    base = import_folder(make_shapes(tmp_path / "s", 8), tmp_path / "v1")
    takes = [burst(k, 0, 6, 0) for k in range(2)] + [burst(0, 1, 6, 1)]
    files = [
        (f"{label}/r{t + 1:04d}-f{i + 1:04d}.jpg", b)
        for t, (label, take) in enumerate(zip(("square", "disc", "square"), takes, strict=True))
        for i, b in enumerate(take)
    ]
    searched: list[int] = []
    real = neardup.candidates

    def counting(hashes, max_bits=neardup.MAX_BITS, rows=None):
        searched.append(len(hashes) if rows is None else rows)
        return real(hashes, max_bits, rows)

    monkeypatch.setattr(neardup, "candidates", counting)
    grown = grow(base, files, tmp_path / "v2").manifest
    assert searched == [len(files)]  # rows of the added images only
    kept = neardup.manifest_pairs(grown)
    (grown.root / neardup.CACHE_NAME).unlink()
    assert neardup.manifest_pairs(grown) == kept and len(kept) > 10


def test_training_without_a_validation_image_says_why(tmp_path) -> None:
    """Every class one still burst: nothing can be held back, and a run says so plainly."""
    from tl_core.errors import RunError
    from tl_core.training.engine import QuietCallbacks, TrainConfig, fit

    files = [
        (f"{label}/r0001-f{i + 1:04d}.jpg", b)
        for kind, label in enumerate(("mug", "pen"))
        for i, b in enumerate(burst(kind, 0, 12, 0))
    ]
    from tl_core.data.dataset import import_files

    manifest = import_files(files, tmp_path / "data")
    split = split_dataset(manifest)
    assert split.train and not split.val
    assert "'mug' and 'pen'" in split_rule_text(manifest)
    cfg = TrainConfig(model="test_efficientnet", epochs=1)
    with pytest.raises(RunError, match="record each class in a few takes"):
        fit(cfg, split, manifest.root, manifest.classes, tmp_path / "run", QuietCallbacks())
