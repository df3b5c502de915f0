"""Label review: fixed labels and exclusions reach the next run; nothing moves or is deleted."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from helpers import make_shapes

from tl_core.analysis.results import load_predictions
from tl_core.data import review
from tl_core.data.dataset import import_folder, split_dataset
from tl_core.errors import DataError
from tl_core.runs.recording import run_worker
from tl_core.runs.store import Store
from tl_core.training.engine import TrainConfig


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    return import_folder(make_shapes(root / "src", per_class=10), root / "data")


def test_corrections_round_trip_and_apply_on_both_sides(manifest) -> None:
    split = split_dataset(manifest, 0.3, seed=0)
    moved, dropped = split.val[0].file, split.train[0].file
    new_label = next(c for c in manifest.classes if c != split.val[0].label)
    corrections = review.Corrections(relabel={moved: new_label}, exclude={dropped})
    review.save(manifest.root, corrections)
    loaded = review.load(manifest.root)
    assert loaded == corrections
    fixed = review.apply(split, loaded, manifest.classes)
    assert {i.file: i.label for i in fixed.val}[moved] == new_label
    assert dropped not in {i.file for i in [*fixed.train, *fixed.val]}
    assert len(fixed.val) == len(split.val)  # fixing a label moves nothing across the split
    assert len(fixed.train) == len(split.train) - 1
    assert (manifest.root / dropped).exists()  # excluded, not deleted


def test_bad_corrections_are_explained(manifest) -> None:
    split = split_dataset(manifest, 0.3, seed=0)
    with pytest.raises(DataError, match="existing classes"):
        review.apply(split, review.Corrections(relabel={split.val[0].file: "zebra"}), ["x"])
    square = {i.file for i in split.train if i.label == "square"}
    with pytest.raises(DataError, match="'square' has no training images"):
        review.apply(split, review.Corrections(exclude=square), manifest.classes)


def test_a_run_uses_the_snapshot_of_corrections_it_was_given(manifest, tmp_path) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project("review")
    split = split_dataset(manifest, 0.3, seed=0)
    relabelled = split.val[0]
    target = next(c for c in manifest.classes if c != relabelled.label)
    excluded = split.val[1].file
    corrections = review.Corrections(relabel={relabelled.file: target}, exclude={excluded})
    config = {
        **asdict(TrainConfig(model="test_efficientnet", epochs=1, pretrained=False)),
        "val_fraction": 0.3,
        "corrections": corrections.to_dict(),
    }
    run = store.create_job(project.id, config, manifest.root, status="starting")
    review.save(manifest.root, review.Corrections())  # later edits do not change this run
    assert run_worker(store, run.id) is not None
    preds = load_predictions(store.job(run.id).run_dir)
    assert preds is not None
    by_file = dict(zip(preds.files, preds.labels, strict=True))
    assert excluded not in by_file
    assert preds.classes[by_file[relabelled.file]] == target
    assert (
        "Label review applied"
        in (tmp_path / "ws").joinpath(store.job(run.id).run_dir, "run.log").read_text()
    )
