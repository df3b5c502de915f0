"""Growing a data set: more images for a class, or a new class, as a new data version."""

from __future__ import annotations

import errno
import io
import os
import random
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import app_test, make_shapes, tree_digest
from jobrunner import inline_spawn
from PIL import Image

from tl_core import diskspace, service
from tl_core.config import TrainConfig
from tl_core.data import dataset as tl_data
from tl_core.data import manifest as data_versions
from tl_core.data.dataset import DatasetManifest, ImageItem, grow, import_folder, split_dataset
from tl_core.errors import DataError, DiskFullError
from tl_core.runs.store import Store
from tl_ui.grow import BY_FOLDER, NEW_CLASS

PER_CLASS = 12


def _png(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _pictures(n: int, seed: int = 1000, folder: str = "") -> list[tuple[str, bytes]]:
    """``n`` distinct pictures as uploaded files (in ``folder``/ when given)."""
    prefix = f"{folder}/" if folder else ""
    return [(f"{prefix}new_{seed + i}.png", _png(seed + i)) for i in range(n)]


def _zip(files: list[tuple[str, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files:
            zf.writestr(name, data)
    buf.seek(0)
    return buf


def _as(kind: str, files: list[tuple[str, bytes]], tmp: Path) -> tl_data.GrowSource:
    """The same pictures as uploaded files, a .zip, or a folder on disk."""
    if kind == "files":
        return files
    if kind == "zip":
        return _zip(files)
    root = tmp / "source"
    for name, data in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "src", per_class=PER_CLASS, size=32)


@pytest.fixture(scope="module")
def base(tmp_path_factory, shapes) -> DatasetManifest:
    """Three classes of 12 imported once; growing only ever reads it."""
    return import_folder(shapes, tmp_path_factory.mktemp("base") / "data-1")


@pytest.fixture(scope="module")
def base_files(base) -> dict[str, str]:
    return tree_digest(base.root)


def _check_old_kept(base: DatasetManifest, grown: DatasetManifest) -> None:
    assert grown.items[: len(base.items)] == base.items
    for item in base.items:
        old, new = base.root / item.file, grown.root / item.file
        assert new.read_bytes() == old.read_bytes()
        assert os.stat(new).st_ino == os.stat(old).st_ino  # hard-linked, not decoded again
    assert DatasetManifest.load(grown.root).items == grown.items


# ------------------------------------------------------------------------- engine


@pytest.mark.parametrize("kind", ["files", "zip", "folder"])
@pytest.mark.parametrize(
    ("label", "folder", "said"),
    [
        ("disc", "", False),
        ("DISC", "", True),  # case-insensitive: the same class
        ("\uff44\uff49\uff53\uff43", "", True),  # full-width letters (NFKC): the same class
        (" disc\u200b ", "", False),  # invisible characters and spaces are cleaned away
        (None, "disc", False),  # class folders, as for an import
        (None, "Disc", True),
        (None, "wrapper/DISC", True),  # a wrapping folder above the class folders
    ],
)
def test_growing_an_existing_class_keeps_the_old_images(
    tmp_path, base, base_files, kind, label, folder, said
) -> None:
    source = _as(kind, _pictures(5, folder=folder), tmp_path)
    growth = grow(base, source, tmp_path / "data-2", label)
    grown = growth.manifest
    assert growth.added == {"disc": 5} and growth.new_classes == []
    assert grown.classes == base.classes
    assert grown.counts() == {**base.counts(), "disc": PER_CLASS + 5}
    _check_old_kept(base, grown)
    assert growth.linked == len(base.items) and growth.copied == 0
    new = grown.items[len(base.items) :]
    assert {Path(i.file).parent.name for i in new} == {"disc"}  # beside the old ones
    assert len({i.file for i in grown.items}) == len(grown.items)
    assert all(i.phash and i.sha256 for i in new)
    assert any("same class" in w.text for w in growth.warnings) == said
    assert growth.summary().startswith("Added 5 images to 'disc';")
    assert "earlier runs keep their data" in growth.summary()
    assert grown.batch_starts == [len(base.items)] and grown.grown_from == "data-1"
    assert tree_digest(base.root) == base_files  # the old version is only read


@pytest.mark.parametrize("kind", ["files", "zip", "folder"])
@pytest.mark.parametrize(
    ("label", "files", "added"),
    [
        ("mould", _pictures(6), {"mould": 6}),
        ("Blätter", _pictures(3), {"Blätter": 3}),
        (None, _pictures(4, folder="mould"), {"mould": 4}),
        (
            None,
            _pictures(4, folder="mould") + _pictures(3, 50, "Square"),
            {"mould": 4, "square": 3},
        ),
    ],
)
def test_growing_a_new_class(tmp_path, base, base_files, kind, label, files, added) -> None:
    growth = grow(base, _as(kind, files, tmp_path), tmp_path / "data-2", label)
    grown = growth.manifest
    new_class = next(c for c in added if c not in base.classes)
    assert growth.added == added and growth.new_classes == [new_class]
    assert grown.classes == sorted([*base.classes, new_class])
    assert grown.counts()[new_class] == added[new_class]
    _check_old_kept(base, grown)
    assert f"the new class '{new_class}'" in growth.summary() or len(added) > 1
    assert any(new_class in w.text and "recommended" in w.text for w in grown.warnings)  # under 10
    assert any(w.kind == "few_images" and new_class in w.classes for w in grown.warnings)
    split = split_dataset(grown, 0.25, 0)
    assert {i.label for i in split.val} == set(grown.classes)
    assert tree_digest(base.root) == base_files


@pytest.mark.parametrize("label", ["disc", "square", None])
def test_copies_of_old_images_are_left_out_with_a_warning(tmp_path, base, shapes, label) -> None:
    old = [(f"disc/again_{i}.png", (shapes / "disc" / f"{i}.png").read_bytes()) for i in range(2)]
    growth = grow(base, old + _pictures(5, folder="disc"), tmp_path / "data-2", label)
    assert len(growth.duplicates) == 2
    assert all(kept.startswith("disc/") for _, kept in growth.duplicates)
    assert any("2 added images were already in the data set" in w.text for w in growth.warnings)
    assert "(2 duplicates left out)" in growth.summary()
    if label == "square":  # copies of another class's images: said so
        assert any("another class" in w.text for w in growth.warnings)
    grown = growth.manifest
    assert len(grown.items) == len(base.items) + 5
    assert len({i.sha256 for i in grown.items}) == len(grown.items)
    assert grown.duplicates[: len(base.duplicates)] == base.duplicates


def test_copies_among_the_new_images_are_left_out_too(tmp_path, base) -> None:
    files = [*_pictures(4), ("again.png", _pictures(1)[0][1])]
    growth = grow(base, files, tmp_path / "data-2", "stripes")
    assert growth.added == {"stripes": 4}
    assert any("among the added ones" in w.text for w in growth.warnings)


def test_skipped_files_are_listed_with_their_reason(tmp_path, base) -> None:
    files = [*_pictures(3), ("notes.txt", b"hello"), ("broken.png", b"\x89PNG\r\n\x1a\nxx")]
    growth = grow(base, files, tmp_path / "data-2", "disc")
    assert growth.added == {"disc": 3}
    reasons = {s.source: s.reason for s in growth.skipped}
    assert set(reasons) == {"notes.txt", "broken.png"}
    assert "2 files skipped" in growth.summary()
    assert growth.manifest.skipped[len(base.skipped) :] == growth.skipped


@pytest.mark.parametrize(
    ("label", "n", "gone", "new"),
    [
        ("disc", 1, None, None),
        ("mould", 3, "'square' has 8", "'mould' (3), 'square' (8)"),  # two small classes now
        ("square", 5, "'square' has 8", None),  # 13 squares: no longer too few
        ("disc", 50, None, "unbalanced"),  # 62 discs beside 8 squares
    ],
)
def test_warnings_about_counts_are_worked_out_again(tmp_path, shapes, label, n, gone, new) -> None:
    src = tmp_path / "src"
    shutil.copytree(shapes, src)
    for f in sorted((src / "square").iterdir())[8:]:  # 8 squares: fewer than recommended
        f.unlink()
    old = import_folder(src, tmp_path / "data-1")
    assert any("'square' has 8 images" in w.text for w in old.warnings)
    seen: list[tuple[int, int]] = []
    files = _pictures(n)
    grown = grow(old, files, tmp_path / "data-2", label, lambda d, t: seen.append((d, t)))
    warnings = [w.text for w in grown.manifest.warnings]
    assert seen[0] == (0, n) and seen[-1] == (n, n)  # only the new images are prepared
    assert any("'square' has 8" in w for w in warnings) == (gone is None)
    if new:
        assert any(new in w for w in warnings)
    else:
        assert warnings == [w.text for w in old.warnings if gone is None or gone not in w.text]
    assert len(warnings) == len(set(warnings))  # no warning twice


def test_growing_twice_keeps_both_earlier_versions_and_their_split(tmp_path, base) -> None:
    first = grow(base, _pictures(6), tmp_path / "data-2", "disc").manifest
    second = grow(first, _pictures(6, 2000), tmp_path / "data-3", "mould").manifest
    _check_old_kept(first, second)
    assert second.items[: len(base.items)] == base.items
    assert second.batch_starts == [len(base.items), len(first.items)]
    for fraction, seed in [(0.2, 0), (0.3, 5)]:
        v0 = {i.file for i in split_dataset(base, fraction, seed).val}
        v1 = {i.file for i in split_dataset(first, fraction, seed).val}
        v2 = {i.file for i in split_dataset(second, fraction, seed).val}
        old0, old1 = {i.file for i in base.items}, {i.file for i in first.items}
        assert v1 & old0 == v0 and v2 & old1 == v1


def test_images_are_copied_where_the_disk_cannot_link(tmp_path, base, monkeypatch) -> None:
    def no_link(src, dst) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(data_versions.os, "link", no_link)
    growth = grow(base, _pictures(3), tmp_path / "data-2", "disc")
    assert growth.linked == 0 and growth.copied == len(base.items)
    grown = growth.manifest
    assert grown.items[: len(base.items)] == base.items
    for item in base.items:
        assert (grown.root / item.file).read_bytes() == (base.root / item.file).read_bytes()


def test_the_label_review_is_carried_over_as_a_copy(tmp_path, base) -> None:
    from tl_core.data import review

    data = tmp_path / "data-1"
    shutil.copytree(base.root, data)
    old = DatasetManifest.load(data)
    review.save(data, review.Corrections(exclude={old.items[0].file}))
    grown = grow(old, _pictures(3), tmp_path / "data-2", "disc").manifest
    assert review.load(grown.root).exclude == {old.items[0].file}
    review.save(grown.root, review.Corrections())
    assert review.load(data).exclude == {old.items[0].file}  # the old version keeps its own


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_dir) -> DatasetManifest:
    """The demo set: its own validation folder."""
    return import_folder(demo_dir, tmp_path_factory.mktemp("demo") / "data-1")


def test_a_validation_folder_stays_and_added_images_train(tmp_path, demo) -> None:
    growth = grow(demo, _pictures(4), tmp_path / "d2", "bag")
    grown = growth.manifest
    assert grown.has_explicit_val
    assert {i.subset for i in grown.items[len(demo.items) :]} == {"train"}
    assert split_dataset(grown).val == split_dataset(demo).val


def test_a_split_added_to_a_set_with_a_validation_folder_is_honoured(tmp_path, demo) -> None:
    files = _pictures(4, folder="train/mould") + _pictures(2, 3000, "val/mould")
    grown = grow(demo, _zip(files), tmp_path / "d2").manifest
    new = grown.items[len(demo.items) :]
    assert Counter(i.subset for i in new) == {"train": 4, "val": 2}
    assert not any("no images of class" in w.text and "mould" in w.text for w in grown.warnings)


def test_a_new_class_without_validation_images_is_warned_about(tmp_path, demo) -> None:
    grown = grow(demo, _pictures(4), tmp_path / "d2", "mould").manifest
    assert any("no images of class 'mould'" in w.text for w in grown.warnings)
    (missing,) = [w for w in grown.warnings if w.kind == "missing_val"]
    assert "mould" in missing.classes and missing.folder == "val"


# ------------------------------------------------------------------------- failing


COPIES = "copies of three old images"
FAILING = [
    pytest.param(COPIES, "disc", "already in the data set", id="all-copies"),
    pytest.param(COPIES, None, "already in the data set", id="all-copies-by-folder"),
    pytest.param([("a.txt", b"x"), ("b.csv", b"1,2")], "disc", "No images", id="no-images"),
    pytest.param([], "disc", "empty", id="empty"),
    pytest.param([("x.png", b"")], "disc", "could be used", id="broken-only"),
    pytest.param(_pictures(1), "mould", "at least 2", id="new-class-of-one"),
    pytest.param(_pictures(3), "  \u200b ", "name", id="blank-name"),
    pytest.param(_pictures(3), None, "class folder", id="no-class-folders"),
    pytest.param(
        _pictures(3, folder="train/disc") + _pictures(2, 99, "val/disc"),
        None,
        "validation itself",
        id="split-into-a-set-without-one",
    ),
    pytest.param([("../x.png", _png(1))], "disc", "No images", id="unsafe-name-only"),
]


@pytest.fixture
def project(workspace, base) -> tuple[Store, str]:
    store = Store(workspace)
    project = store.create_project()
    data = store.new_data_dir(project.id)
    shutil.copytree(base.root, data)
    store.set_data_dir(project.id, data)
    return store, project.id


@pytest.mark.parametrize(("files", "label", "said"), FAILING)
def test_a_failing_grow_leaves_no_new_version(project, shapes, files, label, said) -> None:
    if files == COPIES:
        files = [(f"disc/{i}.png", (shapes / "disc" / f"{i}.png").read_bytes()) for i in range(3)]
    store, project_id = project
    before = store.project(project_id)
    old = Path(before.data_dir)
    snapshot = tree_digest(old)
    with pytest.raises(DataError, match=said):
        service.grow_data(store, before, files, label)
    assert store.project(project_id).data_dir == before.data_dir
    assert sorted(p.name for p in store.project_dir(project_id).glob("data-*")) == [old.name]
    assert tree_digest(old) == snapshot


@pytest.mark.parametrize(("files", "label", "said"), FAILING)
def test_a_failing_grow_job_leaves_no_new_version(project, shapes, files, label, said) -> None:
    """The page's way: the same failures, from a job, leave nothing in the job's folder."""
    if files == COPIES:
        files = [(f"disc/{i}.png", (shapes / "disc" / f"{i}.png").read_bytes()) for i in range(3)]
    store, project_id = project
    before = store.project(project_id)
    snapshot = tree_digest(Path(before.data_dir))
    upload = [(name, io.BytesIO(data)) for name, data in files]
    job = store.job(service.submit_grow(store, before, upload, label).id)
    assert job.status == "failed" and said in (job.error or ""), job.error
    assert store.project(project_id).data_dir == before.data_dir
    assert [p.name for p in store.project_dir(project_id).glob("data-*")] == [
        Path(before.data_dir).name
    ]
    assert tree_digest(Path(before.data_dir)) == snapshot
    assert not any(Path(job.run_dir).iterdir())  # no staged images, no upload left


@pytest.mark.parametrize("way", ["files", "zip", "folder"])
def test_a_grow_job_adds_a_new_version_in_the_worker(project, tmp_path, way) -> None:
    """Files, a .zip or a folder on this machine: the new version is the project's, the
    earlier one stays, and the job's result says what was added."""
    store, project_id = project
    before = store.project(project_id)
    pictures = _pictures(4, folder="disc")
    if way == "folder":
        folder = tmp_path / "more"
        for name, data in pictures:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        job = service.submit_grow(store, before, None, path=folder)
    elif way == "zip":
        job = service.submit_grow(store, before, _zip(pictures))
    else:
        job = service.submit_grow(store, before, [(n, io.BytesIO(d)) for n, d in pictures])
    job = store.job(job.id)
    assert job.status == "finished", job.error
    assert job.result["summary"].startswith("Added 4 images to 'disc'")
    after = store.project(project_id)
    assert after.data_dir != before.data_dir and Path(before.data_dir).is_dir()
    grown = DatasetManifest.load(Path(after.data_dir))
    assert (
        grown.counts()["disc"] == DatasetManifest.load(Path(before.data_dir)).counts()["disc"] + 4
    )
    assert grown.grown_from == Path(before.data_dir).name


@pytest.mark.parametrize("when", ["before", "midway"])
def test_a_full_disk_leaves_no_new_version(project, monkeypatch, when) -> None:
    store, project_id = project
    before = store.project(project_id)
    if when == "before":
        monkeypatch.setattr(diskspace, "free_bytes", lambda path: 0)
    else:  # the estimate said it fits; the disk filled anyway
        real, written = Path.write_bytes, []

        def full(self: Path, data: bytes) -> int:
            written.append(self)
            if len(written) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFullError, match="disk is full"):
        service.grow_data(store, before, _pictures(5), "disc")
    assert store.project(project_id).data_dir == before.data_dir
    assert [p.name for p in store.project_dir(project_id).glob("data-*")] == ["data-1"]


def test_a_project_without_data_cannot_grow(workspace) -> None:
    store = Store(workspace)
    with pytest.raises(DataError, match="Import a data set first"):
        service.grow_data(store, store.create_project(), _pictures(3), "disc")


def test_an_earlier_run_keeps_its_data_version(project, monkeypatch) -> None:
    inline_spawn(monkeypatch)
    store, project_id = project
    before = store.project(project_id)
    run = service.submit_training(store, before, TrainConfig(epochs=1))
    old = Path(before.data_dir)
    snapshot = tree_digest(old)
    after, growth = service.grow_data(store, before, _pictures(5), "disc")
    assert Path(after.data_dir) == growth.manifest.root != old
    assert growth.manifest.root.parent == old.parent  # data-2 beside data-1
    assert store.job(run.id).data_dir == str(old)
    assert tree_digest(old) == snapshot
    assert DatasetManifest.load(old).counts()["disc"] == PER_CLASS


# ------------------------------------------------------------------------- split


def _fake(counts: dict[str, int], batch_starts: list[int] | None = None) -> DatasetManifest:
    items = [
        ImageItem(f"images/{c}/{i:04d}.png", c, None, f"{c}/{i}.png", f"{c}{i}", 8, 8)
        for c, n in counts.items()
        for i in range(n)
    ]
    return DatasetManifest(
        Path("."), items, sorted(counts), [], [], [], False, batch_starts=batch_starts or []
    )


def _grown_fake(
    old: dict[str, int], new: dict[str, int]
) -> tuple[DatasetManifest, DatasetManifest]:
    base = _fake(old)
    extra = [
        ImageItem(f"images/{c}/{old.get(c, 0) + i:04d}.png", c, None, f"{c}+{i}", f"{c}+{i}", 8, 8)
        for c, n in new.items()
        for i in range(n)
    ]
    grown = DatasetManifest(
        Path("."),
        [*base.items, *extra],
        sorted({*old, *new}),
        [],
        [],
        [],
        False,
        batch_starts=[len(base.items)],
    )
    return base, grown


def _legacy_val(manifest: DatasetManifest, fraction: float, seed: int) -> set[str]:
    """The split before data sets could grow: one shuffle per class."""
    out: set[str] = set()
    for label in manifest.classes:
        files = sorted(i.file for i in manifest.items if i.label == label)
        random.Random(f"{seed}:{label}").shuffle(files)
        out.update(files[: min(max(round(len(files) * fraction), 1), len(files) - 1)])
    return out


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.35, 0.5])
def test_a_plain_import_splits_as_before(seed, fraction) -> None:
    manifest = _fake({"a": 37, "b": 10, "c": 3, "d": 2})
    assert {i.file for i in split_dataset(manifest, fraction, seed).val} == _legacy_val(
        manifest, fraction, seed
    )


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("fraction", [0.2, 0.3])
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"a": 20, "b": 20}, {"a": 5}),
        ({"a": 20, "b": 20}, {"a": 40, "b": 1}),
        ({"a": 3, "b": 2}, {"a": 1, "b": 30}),
        ({"a": 10, "b": 10}, {"c": 12}),
    ],
)
def test_old_images_keep_their_side_when_a_class_grows(seed, fraction, old, new) -> None:
    base, grown = _grown_fake(old, new)
    old_val = {i.file for i in split_dataset(base, fraction, seed).val}
    split = split_dataset(grown, fraction, seed)
    val = {i.file for i in split.val}
    assert val & {i.file for i in base.items} == old_val
    counts = grown.counts()
    held = Counter(i.label for i in split.val)
    for label, n in counts.items():  # as many held back as a fresh split would
        assert held[label] == min(max(round(n * fraction), 1), n - 1)
    assert len(split.train) + len(split.val) == len(grown.items)


def test_the_added_images_are_held_back_at_random() -> None:
    """Over many seeds each added image is held back about equally often: no image is kept
    on one side by its name or its place."""
    _base, grown = _grown_fake({"a": 20}, {"a": 20})
    new = [i.file for i in grown.items[20:]]
    times = Counter()
    for seed in range(300):
        val = {i.file for i in split_dataset(grown, 0.2, seed).val}
        times.update(f for f in new if f in val)
    share = [times[f] / 300 for f in new]  # 4 of the 20 added go to validation: 0.2 each
    assert all(0.1 < s < 0.3 for s in share)


# ------------------------------------------------------------------------- the page


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption]
    parts += [str(m.value) for m in at.warning] + [str(m.value) for m in at.error]
    parts += [str(m.value) for m in at.info] + [str(m.value) for m in at.success]
    return "\n".join(parts)


def _upload(files: list[tuple[str, bytes]]) -> list[tuple[str, bytes, str]]:
    return [(n, d, "application/zip" if n.endswith(".zip") else "image/png") for n, d in files]


@pytest.mark.parametrize(
    ("choice", "name", "files", "said", "counts"),
    [
        ("disc", None, _pictures(5), "Added 5 images to 'disc'", {"disc": PER_CLASS + 5}),
        (NEW_CLASS, "mould", _pictures(4), "Added 4 images to the new class 'mould'", {"mould": 4}),
        (
            BY_FOLDER,
            None,
            [("more.zip", _zip(_pictures(3, folder="mould") + _pictures(2, 9, "disc")).getvalue())],
            "Added 5 images",
            {"mould": 3, "disc": PER_CLASS + 2},
        ),
    ],
)
def test_the_data_page_adds_images_and_shows_the_new_counts(
    workspace, base, choice, name, files, said, counts
) -> None:
    store = Store(workspace)
    project = store.create_project()
    store.set_data_dir(project.id, base.root)
    at = app_test(project=project.id)
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Images"] == str(len(base.items))
    at.selectbox(key="grow_class").set_value(choice).run()
    if name:
        at.text_input(key="grow_new_class").set_value(name).run()
    at.file_uploader(key="grow_upload_0").set_value(_upload(files)).run()
    at.button(key="grow_add").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert said in _texts(at) and "earlier runs keep their data" in _texts(at)
    total = len(base.items) + sum(counts.values()) - sum(base.counts().get(c, 0) for c in counts)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == str(total)
    assert metrics["Classes"] == str(len(base.classes) + ("mould" in counts))
    project = store.project(project.id)
    assert Path(project.data_dir) != base.root
    assert DatasetManifest.load(Path(project.data_dir)).counts() == {**base.counts(), **counts}
    rows = at.dataframe[0].value  # the training / validation table shows the new counts
    assert dict(zip(rows["class"], rows["train"] + rows["validation"], strict=True)) == {
        **base.counts(),
        **counts,
    }
    assert at.file_uploader(key="grow_upload_1").value in (None, [])  # a fresh uploader


def test_the_data_page_explains_a_failing_addition(workspace, base, shapes) -> None:
    store = Store(workspace)
    project = store.create_project()
    store.set_data_dir(project.id, base.root)
    at = app_test(project=project.id)
    at.selectbox(key="grow_class").set_value("disc").run()
    copies = [(f"{i}.png", (shapes / "disc" / f"{i}.png").read_bytes()) for i in range(2)]
    at.file_uploader(key="grow_upload_0").set_value(_upload(copies)).run()
    at.button(key="grow_add").click().run()
    assert not at.exception
    assert any("already in the data set" in e.value for e in at.error)
    assert store.project(project.id).data_dir == str(base.root)
    assert {m.label: m.value for m in at.metric}["Images"] == str(len(base.items))
