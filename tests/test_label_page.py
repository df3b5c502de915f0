"""The Label page and the Data page's likely wrong labels, as a user works them (AppTest; the
survey job runs in the test process)."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import app_test
from test_survey import _demo_subset

from tl_core.data import labels, review
from tl_core.data.dataset import DatasetManifest, import_folder
from tl_core.runs.store import Store

TIMEOUT = 240
LABEL = "app_pages/label.py"


def _project(workspace: Path, src: Path) -> tuple[str, DatasetManifest]:
    store = Store(workspace)
    project = store.create_project()
    dest = store.new_data_dir(project.id)
    manifest = import_folder(src, dest)
    store.set_data_dir(project.id, dest)
    return project.id, manifest


def _truth(manifest: DatasetManifest) -> dict[str, str]:
    return {i.file: Path(i.source).name.split("-")[0] for i in manifest.unlabelled}


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.sidebar.metric}


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption]
    parts += [str(m.value) for m in at.warning] + [str(m.value) for m in at.info]
    parts += [str(m.value) for m in at.success]
    return "\n".join(parts)


def test_the_label_page_saves_labels_suggests_and_makes_a_data_version(workspace, tmp_path) -> None:
    pid, m = _project(workspace, _demo_subset(tmp_path / "src", per_class=3, pool=12))
    truth = _truth(m)
    at = app_test(LABEL, pid, TIMEOUT)
    assert not at.exception, at.exception
    assert _metrics(at)["labelled"] == "9" and _metrics(at)["unlabelled"] == "36"
    boxes = [b for b in at.selectbox if str(b.key).startswith("next_")]
    assert 0 < len(boxes) <= 12
    files = [str(b.key)[len("next_") :] for b in boxes]
    assert len(set(files)) == len(files) and set(files) <= set(truth)
    # every class has 3 labels: the model's guess is preselected; answer with the truth
    assert all(b.value in ("trouser", "sneaker", "bag") for b in boxes)
    for box, f in zip(boxes, files, strict=True):
        box.set_value(truth[f])
    next(b for b in at.button if b.label == "Save these labels").click().run()
    assert not at.exception, at.exception
    given = labels.read(m.root)
    assert given.labels() == {f: truth[f] for f in files}
    assert {g.by for g in given.given.values()} <= {"user", "suggestion"}
    assert _metrics(at)["labelled"] == str(9 + len(files))
    at = app_test(LABEL, pid, TIMEOUT)  # a new tab, or after a restart: the labels are there
    assert _metrics(at)["labelled"] == str(9 + len(files))
    next(b for b in at.button if b.label == "Use these labels for training").click().run()
    assert not at.exception, at.exception
    project = Store(workspace).project(pid)
    assert project.data_dir != str(m.root)
    new = DatasetManifest.load(Path(project.data_dir))
    assert len(new.items) == 9 + len(files) and len(new.unlabelled) == 36 - len(files)


def test_a_set_without_classes_starts_by_naming_them(workspace, tmp_path) -> None:
    src = _demo_subset(tmp_path / "src", per_class=0, pool=5)
    for cls in ("trouser", "sneaker", "bag"):
        shutil.rmtree(src / cls)
    pid, m = _project(workspace, src / "unlabelled")
    assert m.items == [] and len(m.unlabelled) == 15
    at = app_test(LABEL, pid, TIMEOUT)
    assert not at.exception, at.exception
    assert "Name the classes" in _texts(at)
    boxes = [b for b in at.selectbox if str(b.key).startswith("next_")]
    assert boxes and all(b.value == "(skip)" for b in boxes)  # nothing to suggest yet
    for name in ("trouser", "sneaker"):
        at.text_input(key="new_class_name").input(name)
        next(b for b in at.button if b.label == "Add class").click().run()
    assert labels.read(m.root).classes == ["trouser", "sneaker"]
    at.text_input(key="new_class_name").input("Trouser")
    next(b for b in at.button if b.label == "Add class").click().run()
    assert "There is already a class called 'trouser'" in "\n".join(
        str(w.value) for w in at.warning
    )
    at = app_test("app_pages/model.py", pid, TIMEOUT)  # no labels yet: the Label page first
    assert "Your pictures need labels first" in _texts(at)


def test_the_data_page_counts_likely_wrong_labels_and_saves_the_fix(
    workspace, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("TL_STUDIO_LABEL_CHECK", "on")
    src = _demo_subset(tmp_path / "src", per_class=14)
    moved = sorted((src / "trouser").glob("*.png"))[0]
    shutil.move(moved, src / "bag" / "was-a-trouser.png")
    pid, m = _project(workspace, src)
    at = app_test(None, pid, TIMEOUT)
    assert not at.exception, at.exception
    assert any("look more like another class" in str(w.value) for w in at.warning), _texts(at)
    wrong = next(i.file for i in m.items if i.source.endswith("was-a-trouser.png"))
    at.selectbox(key=f"issue_fix_{wrong}").set_value("trouser")
    next(b for b in at.button if b.label == "Save review").click().run()
    assert review.load(m.root).relabel == {wrong: "trouser"}


def test_with_the_check_off_the_data_page_looks_for_wrong_labels_when_asked(
    workspace, tmp_path
) -> None:
    pid, _ = _project(workspace, _demo_subset(tmp_path / "src", per_class=6))
    at = app_test(None, pid, TIMEOUT)
    assert not Store(workspace).jobs(pid, kind="survey")
    next(b for b in at.button if b.label == "Look for wrong labels").click().run()
    assert not at.exception, at.exception
    assert [j.status for j in Store(workspace).jobs(pid, kind="survey")] == ["finished"]
