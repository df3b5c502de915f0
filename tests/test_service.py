"""tl_core.service: what the pages ask of the engine, without widgets (and without torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_shapes

from tl_core import service
from tl_core.config import TrainConfig
from tl_core.data import review
from tl_core.errors import DataError, RunError
from tl_core.runs import supervisor
from tl_core.runs.store import Store


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    monkeypatch.setattr(supervisor, "_spawn", lambda store, run: None)  # no worker processes
    return Store(tmp_path / "ws")


@pytest.mark.parametrize("kind", ["demo", "files"])
def test_import_data_makes_a_project_with_the_images(store, demo_dir, tmp_path, kind) -> None:
    if kind == "demo":
        project = service.import_data(store, None, "demo", None, demo_dir=demo_dir)
        assert project.settings["model"]
    else:
        src = make_shapes(tmp_path / "src", per_class=6)
        files = [(str(f.relative_to(src)), f.read_bytes()) for f in sorted(src.rglob("*.png"))]
        project = service.import_data(store, None, "files", files)
    assert project.data_dir and (Path(project.data_dir) / "manifest.json").is_file()


@pytest.mark.parametrize("files", [[], [("a/x.png", b"not a picture")]])
def test_a_failed_import_leaves_no_folder_and_keeps_the_old_images(store, files) -> None:
    project = store.create_project()
    with pytest.raises(DataError):
        service.import_data(store, project, "files", files)
    assert store.project(project.id).data_dir is None
    assert not list(store.project_dir(project.id).glob("data-*"))


def _edit(file: str, true: str, label: str = "(keep)", out=False, sus=False):
    return service.ReviewEdit(file, true, label, out, sus)


@pytest.mark.parametrize(
    "edits,relabel,exclude,suspect",
    [
        ([_edit("a.png", "cat", "dog")], {"a.png": "dog", "old.png": "cat"}, set(), set()),
        ([_edit("a.png", "cat", "cat", out=True)], {"old.png": "cat"}, {"a.png"}, set()),
        ([_edit("old.png", "dog")], {}, set(), set()),  # back to "(keep)": the fix is undone
        ([_edit("b.png", "dog", sus=True)], {"old.png": "cat"}, set(), {"b.png"}),
    ],
)
def test_merge_review(edits, relabel, exclude, suspect) -> None:
    corrections = review.Corrections()
    corrections.relabel["old.png"] = "cat"
    service.merge_review(corrections, edits)
    assert corrections.relabel == relabel
    assert corrections.exclude == exclude and corrections.suspect == suspect


def test_baseline_retrain_and_one_run_at_a_time(store, demo_dir) -> None:
    project = service.import_data(store, None, "demo", None, demo_dir=demo_dir)
    run = service.submit_training(store, project, TrainConfig(epochs=2, trainable_groups=1))
    with pytest.raises(RunError):  # the first one is still waiting
        service.retrain(store, project, run)
    store.update_job(run.id, status="finished", result={"val_accuracy": 0.9})
    assert service.baseline_run(store, project.id, run) is None
    scratch = service.train_scratch_baseline(store, project, run, n_backbone=5)
    assert scratch.spec.baseline_of == run.id and not scratch.spec.config.pretrained
    assert service.baseline_run(store, project.id, run).id == scratch.id
    assert service.scratch_accuracy(store, project.id, run) is None  # not finished yet
    store.update_job(scratch.id, status="finished", result={"val_accuracy": 0.4})
    assert service.scratch_accuracy(store, project.id, run) == 0.4
    review.save(Path(project.data_dir), review.Corrections(exclude={"x.png"}))
    again = service.retrain(store, project, run)
    assert again.spec.config == run.spec.config and again.spec.corrections["exclude"]


def test_feature_jobs_are_found_again_and_failed_ones_are_not_restarted(store, demo_dir) -> None:
    project = service.import_data(store, None, "demo", None, demo_dir=demo_dir)
    first = service.submit_features(store, project, "efficientnet_lite0", 0.2, 0)
    assert service.submit_features(store, project, "efficientnet_lite0", 0.2, 0).id == first.id
    other = service.submit_features(store, project, "efficientnet_lite0", 0.3, 0)
    assert other.id != first.id  # another split: another job
    store.update_job(first.id, status="failed", error="It broke.")
    assert service.submit_features(store, project, "efficientnet_lite0", 0.2, 0).id == first.id
    retried = service.retry_job(store, store.job(first.id))
    assert retried.id != first.id and retried.key == first.key and retried.kind == "features"
