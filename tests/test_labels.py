"""Unlabelled pictures: how they come in, how labels are kept as they are given, and the data
version the labels make."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import make_shapes

from tl_core import service
from tl_core.data import labels
from tl_core.data.dataset import DatasetManifest, import_folder, import_zip, split_dataset
from tl_core.data.grow import grow
from tl_core.errors import DataError
from tl_core.runs.store import Store

ROOT = Path(__file__).resolve().parent.parent


def _labelled_and_pool(tmp_path: Path, per_class: int = 3, pool: int = 8) -> Path:
    """Three classes with ``per_class`` pictures each, and an ``unlabelled/`` folder of
    ``pool`` more pictures of the same kinds."""
    shapes = make_shapes(tmp_path / "shapes", per_class=per_class + pool, size=24)
    src = tmp_path / "src"
    (src / "unlabelled").mkdir(parents=True)
    for k, cls in enumerate(("square", "disc", "stripes")):
        files = sorted((shapes / cls).glob("*.png"))
        (src / cls).mkdir()
        for f in files[:per_class]:
            shutil.copy(f, src / cls / f.name)
        for f in files[per_class : per_class + pool // 3 + (k < pool % 3)]:
            shutil.copy(f, src / "unlabelled" / f"{cls}-{f.name}")
    return src


def _truth(manifest: DatasetManifest) -> dict[str, str]:
    """The true class of each unlabelled picture, from the name it had."""
    return {i.file: Path(i.source).name.split("-")[0] for i in manifest.unlabelled}


@pytest.mark.parametrize("name", ["unlabelled", "Unlabeled", "_unlabelled"])
def test_an_unlabelled_folder_beside_the_classes_comes_in_without_labels(tmp_path, name) -> None:
    src = _labelled_and_pool(tmp_path)
    if name != "unlabelled":
        (src / "unlabelled").rename(src / name)
    m = import_folder(src, tmp_path / "d")
    assert m.classes == ["disc", "square", "stripes"]
    assert len(m.items) == 9 and all(i.label for i in m.items)
    assert len(m.unlabelled) == 8 and all(i.label == "" for i in m.unlabelled)
    assert all(i.file.startswith("images/_pool/") for i in m.unlabelled)
    assert all((m.root / i.file).is_file() for i in [*m.items, *m.unlabelled])
    assert not any(w.kind == "few_images" for w in m.warnings)  # a few labels is the start
    again = DatasetManifest.load(m.root)
    assert again.unlabelled == m.unlabelled
    split = split_dataset(m, 0.2, 0)  # training never sees the unlabelled pictures
    assert {i.file for i in split.train + split.val} == {i.file for i in m.items}


def test_a_picture_both_labelled_and_unlabelled_is_kept_once_with_its_label(tmp_path) -> None:
    src = _labelled_and_pool(tmp_path)
    first = sorted((src / "disc").glob("*.png"))[0]
    shutil.copy(first, src / "unlabelled" / "copy.png")
    m = import_folder(src, tmp_path / "d")
    assert len(m.unlabelled) == 8
    assert any(a.endswith("copy.png") for a, _ in m.duplicates)
    assert not any(w.kind == "other_class" for w in m.warnings)


def test_a_zip_with_an_unlabelled_folder_and_a_split(tmp_path) -> None:
    src = _labelled_and_pool(tmp_path, per_class=4)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for f in sorted(src.rglob("*.png")):
            rel = f.relative_to(src)
            if rel.parts[0] == "unlabelled":
                zf.write(f, f"photos/unlabelled/{rel.name}")
            else:
                side = "val" if f.stem in ("0", "1") else "train"
                zf.write(f, f"photos/{side}/{rel.as_posix()}")
    m = import_zip(io.BytesIO(buffer.getvalue()), tmp_path / "d")
    assert m.has_explicit_val and len(m.unlabelled) == 8
    assert {i.subset for i in m.items} == {"train", "val"}


def test_labels_are_kept_as_they_are_given_and_read_by_another_process(tmp_path) -> None:
    m = import_folder(_labelled_and_pool(tmp_path), tmp_path / "d")
    truth = _truth(m)
    files = sorted(truth)
    assert labels.give(m, files[:3], "disc") == 3
    assert labels.give(m, files[:3], "disc") == 0  # the same again changes nothing
    assert labels.give(m, files[:1], None) == 1  # taken back
    with pytest.raises(DataError, match=r"There is no class called 'cat'\. Add it first"):
        labels.give(m, files[3:4], "cat")
    assert labels.add_class(m, "  cat ") == "cat"
    with pytest.raises(DataError, match="There is already a class called 'cat'"):
        labels.add_class(m, "CAT")
    with pytest.raises(DataError, match="There is already a class called 'disc'"):
        labels.add_class(m, "Disc")
    with pytest.raises(DataError, match="Type a name"):
        labels.add_class(m, "   ")
    labels.give(m, files[3:4], "Cat", by="suggestion", who="ana")
    with pytest.raises(DataError, match="is not an unlabelled picture"):
        labels.give(m, [m.items[0].file], "disc")
    code = (
        "import json, sys; from pathlib import Path; from tl_core.data import labels;"
        "l = labels.read(Path(sys.argv[1]));"
        "print(json.dumps({'labels': l.labels(), 'classes': l.classes,"
        " 'by': {f: [g.by, g.who] for f, g in l.given.items()}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(m.root)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    seen = json.loads(out.stdout)
    assert seen["labels"] == {files[1]: "disc", files[2]: "disc", files[3]: "cat"}
    assert seen["classes"] == ["cat"]
    assert seen["by"][files[3]] == ["suggestion", "ana"] and seen["by"][files[1]][0] == "user"


def test_two_writers_at_once_lose_no_label(tmp_path) -> None:
    m = import_folder(_labelled_and_pool(tmp_path, pool=40), tmp_path / "d")
    files = sorted(i.file for i in m.unlabelled)
    code = (
        "import sys; from pathlib import Path; from tl_core.data import labels;"
        "from tl_core.data.dataset import DatasetManifest;"
        "m = DatasetManifest.load(Path(sys.argv[1])); files = sys.argv[3:];"
        "[labels.give(m, [f], sys.argv[2]) for f in files]"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(m.root), cls, *part], cwd=ROOT)
        for cls, part in (("disc", files[:20]), ("square", files[20:]))
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    given = labels.read(m.root).labels()
    assert len(given) == 40 and labels.read(m.root).lines == 40
    assert all(given[f] == "disc" for f in files[:20])


def test_a_torn_last_line_is_ignored(tmp_path) -> None:
    m = import_folder(_labelled_and_pool(tmp_path), tmp_path / "d")
    f = m.unlabelled[0].file
    labels.give(m, [f], "disc")
    with open(m.root / labels.FILE_NAME, "a", encoding="utf-8") as fh:
        fh.write('{"file": "images/_pool/00')
    assert labels.read(m.root).labels() == {f: "disc"}


def test_the_labels_make_the_next_data_version(tmp_path) -> None:
    m = import_folder(_labelled_and_pool(tmp_path), tmp_path / "d")
    truth = _truth(m)
    before = split_dataset(m, 0.3, 0)
    with pytest.raises(DataError, match="No picture has been labelled"):
        labels.labelled_version(m, tmp_path / "v0")
    assert not (tmp_path / "v0").exists()
    chosen = sorted(truth)[:5]
    for f in chosen:
        labels.give(m, [f], truth[f])
    assert labels.pending(m) == 5
    v = labels.labelled_version(m, tmp_path / "v1")
    assert [i.file for i in v.items[: len(m.items)]] == [i.file for i in m.items]
    assert {i.file: i.label for i in v.items[len(m.items) :]} == {f: truth[f] for f in chosen}
    assert len(v.unlabelled) == 3 and v.batch_starts == [9] and v.grown_from == "d"
    assert all(os.path.samefile(m.root / i.file, v.root / i.file) for i in v.unlabelled)
    assert (v.root / labels.FILE_NAME).is_file()  # the history comes along
    assert labels.pending(v) == 0
    after = split_dataset(v, 0.3, 0)  # the earlier pictures keep their sides
    old = {i.file for i in m.items}
    assert {i.file for i in after.val if i.file in old} == {i.file for i in before.val}
    loaded = DatasetManifest.load(v.root)
    assert loaded.items == v.items and loaded.unlabelled == v.unlabelled


def test_a_set_without_any_class_is_labelled_from_nothing(tmp_path) -> None:
    src = _labelled_and_pool(tmp_path, per_class=0, pool=12)
    for cls in ("square", "disc", "stripes"):
        (src / cls).rmdir()
    m = import_folder(src / "unlabelled", tmp_path / "d")
    assert m.items == [] and m.classes == [] and len(m.unlabelled) == 12
    truth = _truth(m)
    labels.add_class(m, "disc")
    labels.give(m, [f for f in truth if truth[f] == "disc"], "disc")
    with pytest.raises(DataError, match="at least two classes"):
        labels.labelled_version(m, tmp_path / "v1")
    labels.add_class(m, "square")
    labels.give(m, [f for f in truth if truth[f] == "square"], "square")
    v = labels.labelled_version(m, tmp_path / "v1")
    assert v.classes == ["disc", "square"] and v.batch_starts == []
    assert len(v.unlabelled) == sum(1 for c in truth.values() if c == "stripes")


def test_adding_pictures_keeps_the_unlabelled_ones_and_overwrites_none(tmp_path) -> None:
    m = import_folder(_labelled_and_pool(tmp_path), tmp_path / "d")
    labels.add_class(m, "dots")
    labels.give(m, [i.file for i in m.unlabelled[:4]], "dots")
    labels.give(m, [i.file for i in m.unlabelled[4:6]], "disc")
    v = labels.labelled_version(m, tmp_path / "v1")
    extra = make_shapes(tmp_path / "extra", per_class=2, size=24, seed=5)
    before = {i.file: (v.root / i.file).read_bytes() for i in [*v.items, *v.unlabelled]}
    grown = grow(v, extra, tmp_path / "v2").manifest
    assert grown.unlabelled == v.unlabelled
    files = [i.file for i in [*grown.items, *grown.unlabelled]]
    assert len(files) == len(set(files))
    assert all((grown.root / f).read_bytes() == b for f, b in before.items())


def test_the_service_makes_the_labels_the_project_data(tmp_path) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project()
    dest = store.new_data_dir(project.id)
    m = import_folder(_labelled_and_pool(tmp_path), dest)
    store.set_data_dir(project.id, dest)
    labels.give(m, [m.unlabelled[0].file], "disc")
    new = service.use_labels(store, store.project(project.id))
    assert store.project(project.id).data_dir == str(new) and new != dest
    assert len(DatasetManifest.load(new).items) == 10
