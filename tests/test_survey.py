"""The survey job: every picture through the network once, the map, the space of the label
suggestions and the likely wrong labels; cached per data version and model."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from helpers import make_shapes

from tl_core import service
from tl_core.config import TrainConfig
from tl_core.data.dataset import import_folder, split_dataset
from tl_core.labeling import survey
from tl_core.models.device import ComputePlan
from tl_core.runs.store import Store

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo" / "fashion_mnist" / "train"
CLASSES = ("trouser", "sneaker", "bag")


def _demo_subset(root: Path, per_class: int = 12, pool: int = 0) -> Path:
    """Three distinct demo classes, ``per_class`` labelled pictures each (and ``pool`` more
    of each in ``unlabelled/``)."""
    for cls in CLASSES:
        files = sorted((DEMO / cls).glob("*.png"))
        (root / cls).mkdir(parents=True)
        for f in files[:per_class]:
            shutil.copy(f, root / cls / f.name)
        if pool:
            (root / "unlabelled").mkdir(exist_ok=True)
            for f in files[per_class : per_class + pool]:
                shutil.copy(f, root / "unlabelled" / f"{cls}-{f.name}")
    return root


def test_the_survey_places_every_picture_and_finds_a_swapped_label(tmp_path) -> None:
    src = _demo_subset(tmp_path / "src", per_class=14, pool=6)
    swapped = sorted((src / "trouser").glob("*.png"))[0]
    shutil.move(swapped, src / "bag" / "was-a-trouser.png")
    m = import_folder(src, tmp_path / "d")
    phases: list[str] = []
    out = tmp_path / "job" / survey.FILE_NAME
    summary = survey.compute(
        m, "efficientnet_lite0", out, report=lambda phase, done, total: phases.append(phase)
    )
    s = survey.load(out)
    assert s is not None and not s.trained and s.model == "efficientnet_lite0"
    everything = sorted(i.file for i in [*m.items, *m.unlabelled])
    assert s.files == everything and len(everything) == 3 * 20
    assert s.xy.shape == (60, 2) and s.xy.dtype == np.float32
    assert float(s.xy.min()) >= 0.0 and float(s.xy.max()) <= 1.0
    assert s.space.shape[0] == 60 and np.isfinite(s.space).all()
    assert {"features", "map", "label_issues"} <= set(phases)
    moved = next(i.file for i in m.items if i.source.endswith("was-a-trouser.png"))
    flagged = [s.files[r] for r in s.issue_rows]
    assert moved in flagged[:3], flagged
    k = flagged.index(moved)
    assert s.issue_suggested[k] == "trouser" and 0 < float(s.issue_confidence[k]) <= 1
    assert summary["issues"] == len(flagged) and summary["unlabelled"] == 18
    assert survey.load(tmp_path / "missing.npz") is None


def test_the_survey_is_a_job_computed_once_per_data_version_and_model(tmp_path) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project()
    dest = store.new_data_dir(project.id)
    import_folder(_demo_subset(tmp_path / "src", per_class=6, pool=4), dest)
    store.set_data_dir(project.id, dest)
    project = store.project(project.id)
    job = service.submit_survey(store, project)
    assert job is not None and job.kind == "survey" and job.status == "finished", job.error
    loaded = service.survey_of(job)
    assert loaded is not None and len(loaded.files) == 30
    again = service.submit_survey(store, project)
    assert again is not None and again.id == job.id  # reused, not computed again
    assert service.submit_survey(store, project, submit=False).id == job.id


def test_a_trained_run_draws_its_own_map(tmp_path) -> None:
    from tl_core.training.engine import fit

    src = make_shapes(tmp_path / "src", per_class=10, size=32)
    m = import_folder(src, tmp_path / "d")
    cfg = TrainConfig(
        model="test_efficientnet", epochs=2, batch_size=8, pretrained=False, trainable_groups=2
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    split = split_dataset(m, cfg.val_fraction, cfg.seed)
    fit(cfg, split, m.root, m.classes, run_dir, plan=ComputePlan("cpu", None, True, 2))
    out = tmp_path / "trained" / survey.FILE_NAME
    summary = survey.compute(m, "test_efficientnet", out, run_dir=run_dir)
    s = survey.load(out)
    assert s is not None and s.trained and summary["trained"]
    assert s.xy.shape == (30, 2) and len(s.issue_rows) == 0  # wrong labels: pretrained only
    assert asdict(cfg)["model"] == s.model


@pytest.mark.parametrize("content", [b"", b"not an npz", None])
def test_an_unreadable_survey_reads_as_none(tmp_path, content) -> None:
    path = tmp_path / survey.FILE_NAME
    if content is not None:
        path.write_bytes(content)
    assert survey.load(path) is None
