"""The Evaluate page's decisions, without Streamlit: which baselines a run is held against,
which alarms and small-sample warning it gets, and where its label review is saved."""

from __future__ import annotations

from pathlib import Path

import pytest

from tl_core import service
from tl_core.analysis import alarms, comparison
from tl_core.config import EpochRow, TrainConfig
from tl_core.data import review
from tl_core.models import catalog
from tl_core.runs import supervisor
from tl_core.runs.store import Store


def _epochs(pairs: list[tuple[float, float]]) -> list[EpochRow]:
    """Epoch rows from (train accuracy, validation accuracy), losses falling evenly."""
    return [
        EpochRow(k + 1, 10 * (k + 1), 1.0 / (k + 1), train, 1.0 / (k + 1), val, 1.0)
        for k, (train, val) in enumerate(pairs)
    ]


STEADY = _epochs([(0.6, 0.58), (0.8, 0.78), (0.9, 0.88)])
MEMORISING = _epochs([(0.7, 0.6), (0.9, 0.62), (0.99, 0.63)])


def test_a_large_validation_set_keeps_the_evaluations_own_warning() -> None:
    said = alarms.run_alarms(STEADY, 0.88, 2000, warning="the evaluation's own words")
    assert said.alarms == ()
    assert said.warning == "the evaluation's own words"


def test_a_small_validation_set_says_so_once_as_an_alarm() -> None:
    said = alarms.run_alarms(STEADY, 0.88, 12, warning="the evaluation's own words")
    assert [a.kind for a in said.alarms] == ["too_little_data"]
    assert said.warning is None  # the alarm already says it: not twice


def test_baselines_within_the_noise_raise_the_small_data_alarm() -> None:
    # 86% against 84% from scratch on 200 images: the difference is within the noise
    said = alarms.run_alarms(STEADY, 0.86, 200, scratch_accuracy=0.84, warning="w")
    assert [a.kind for a in said.alarms] == ["too_little_data"]
    assert "2%" in said.alarms[0].explanation and said.warning is None
    alone = alarms.run_alarms(STEADY, 0.86, 200, warning="w")  # no baseline: no difference
    assert alone.alarms == () and alone.warning == "w"


def test_alarms_come_in_the_pages_order() -> None:
    said = alarms.run_alarms(MEMORISING, 0.63, 2000, scratch_accuracy=0.9, frozen_accuracy=0.5)
    assert [a.kind for a in said.alarms] == ["overfitting", "negative_transfer"]
    assert "Training from scratch reached 90%" in said.alarms[1].explanation


@pytest.mark.parametrize(
    "accuracy,frozen,effect",
    [
        (0.9, 0.9, "made no difference"),
        (0.804, 0.8, "made no difference"),
        (0.9, 0.8, "added 10 points"),
        (0.7, 0.8, "cost 10 points"),
    ],
)
def test_the_frozen_features_sentence(accuracy, frozen, effect) -> None:
    sentence = comparison.frozen_sentence(accuracy, frozen)
    assert f"alone reaches {frozen:.0%} on these images" in sentence
    assert sentence.endswith(f"letting layer groups learn {effect}.")


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    monkeypatch.setattr(supervisor, "_spawn", lambda store, run: None)  # no worker processes
    return Store(tmp_path / "ws")


def _finished(store: Store, demo_dir: Path, **config):
    project = service.import_data(store, None, "demo", None, demo_dir=demo_dir)
    run = service.submit_training(store, project, TrainConfig(epochs=2, **config))
    store.update_job(run.id, status="finished", result={"val_accuracy": 0.9})
    return project, store.job(run.id)


def _features_jobs(store: Store, project_id: str) -> list:
    return store.runs(project_id, kind="features")


def test_a_run_from_random_weights_has_no_baselines(store, demo_dir) -> None:
    project, run = _finished(store, demo_dir, pretrained=False, trainable_groups=3)
    assert service.baselines(store, project, run) == service.Baselines(None, None)
    assert not _features_jobs(store, project.id)


def test_a_head_only_run_is_held_against_its_scratch_run_only(store, demo_dir) -> None:
    project, run = _finished(store, demo_dir, trainable_groups=0)
    assert service.baselines(store, project, run) == service.Baselines(None, None)
    scratch = service.train_scratch_baseline(store, project, run, n_backbone=5)
    store.update_job(scratch.id, status="finished", result={"val_accuracy": 0.4})
    assert service.baselines(store, project, run) == service.Baselines(0.4, None)
    assert not _features_jobs(store, project.id)  # nothing learned beyond the head


def test_the_frozen_baseline_waits_for_the_weights(store, demo_dir, monkeypatch) -> None:
    project, run = _finished(store, demo_dir, trainable_groups=2, val_fraction=0.3, seed=5)
    monkeypatch.setattr(catalog, "weights_status", lambda spec: "needs download")
    assert service.baselines(store, project, run).frozen_job is None
    assert not _features_jobs(store, project.id)
    monkeypatch.setattr(catalog, "weights_status", lambda spec: "ready")
    job = service.baselines(store, project, run).frozen_job
    assert job is not None and job.kind == "features"
    cfg = run.spec.config  # the run's own model, data and split, not the project's current ones
    assert job.key == service.features_key(run.data_dir, cfg.model, 0.3, 5)
    assert service.baselines(store, project, run).frozen_job.id == job.id  # found again
    assert len(_features_jobs(store, project.id)) == 1


def test_the_review_is_saved_in_the_projects_current_images(store, demo_dir, tmp_path) -> None:
    project, run = _finished(store, demo_dir)
    assert service.review_folder(project, run) == Path(project.data_dir)
    bare = store.create_project()  # no images of its own: the run's are reviewed
    assert service.review_folder(bare, run) == Path(run.data_dir)
    folder = tmp_path / "data"
    folder.mkdir()
    corrections = review.Corrections(relabel={"old.png": "cat"}, exclude={"b.png"})
    edits = [
        service.ReviewEdit("a.png", "cat", "dog", False, True),
        service.ReviewEdit("b.png", "dog", "(keep)", False, False),
    ]
    saved = service.save_review(folder, corrections, edits)
    assert saved is corrections
    again = review.load(folder)
    assert again.relabel == {"old.png": "cat", "a.png": "dog"}
    assert again.exclude == set() and again.suspect == {"a.png"}
