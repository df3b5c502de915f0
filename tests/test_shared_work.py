"""Work done once per workspace: the frozen features of the same pictures (same files and
sha256s), model and weights are computed once, whichever project or student asks first; the
others link that file, or wait for it while it is being computed; deleting a project frees
only what no other project holds."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_shapes

from tl_core.analysis import transfer
from tl_core.data.dataset import DatasetManifest, import_folder, split_dataset
from tl_core.models.catalog import get_spec
from tl_core.models.device import ComputePlan
from tl_core.runs.store import Store

MODEL = "test_efficientnet"
CPU = ComputePlan("cpu", None, False, 1)


@pytest.fixture
def classroom(tmp_path) -> tuple[Store, list[tuple[str, DatasetManifest]]]:
    """A workspace where three projects imported the same folder, and one a different one."""
    store = Store(tmp_path / "ws")
    shapes = make_shapes(tmp_path / "shapes", per_class=8, size=32)
    other = make_shapes(tmp_path / "other", per_class=8, size=32, seed=3)
    projects = []
    for source in (shapes, shapes, shapes, other):
        project = store.create_project()
        data = store.new_data_dir(project.id)
        square = [get_spec(MODEL).square]
        manifest = import_folder(source, data, squares=square)
        store.set_data_dir(project.id, data)
        projects.append((project.id, manifest))
    return store, projects


def _features(manifest: DatasetManifest, exact: bool = False) -> transfer.Features:
    split = split_dataset(manifest, 0.25, 0)
    plan = ComputePlan("cpu", torch.bfloat16, False, 1) if exact else CPU
    return transfer.frozen_features(manifest, split, MODEL, plan=plan, exact_val=exact)


def _counting(monkeypatch) -> list[int]:
    """How many pictures each pass through the network took, in order."""
    passes: list[int] = []
    real = transfer._compute

    def counted(spec, pretrained, root, items, plan, progress, rows=None):
        passes.append(len(items) if rows is None else len(rows))
        return real(spec, pretrained, root, items, plan, progress, rows)

    monkeypatch.setattr(transfer, "_compute", counted)
    return passes


def test_the_same_pictures_in_another_project_are_not_passed_again(classroom, monkeypatch):
    _, projects = classroom
    passes = _counting(monkeypatch)
    first = _features(projects[0][1])
    assert not first.from_cache and passes == [len(projects[0][1].items)]
    second = _features(projects[1][1])
    assert second.from_cache and len(passes) == 1  # linked, not computed
    assert np.array_equal(first.vectors, second.vectors)
    a = transfer.features_path(
        projects[0][1].root, sorted(projects[0][1].items, key=lambda i: i.file), MODEL, True
    )
    b = transfer.features_path(
        projects[1][1].root, sorted(projects[1][1].items, key=lambda i: i.file), MODEL, True
    )
    assert a.name == b.name and a.stat().st_ino == b.stat().st_ino  # one file on the disk
    different = _features(projects[3][1])  # other pictures: their own pass
    assert not different.from_cache and len(passes) == 2


def test_projects_asking_at_once_pass_the_pictures_once(classroom, monkeypatch):
    _, projects = classroom
    passes = _counting(monkeypatch)
    results: dict[int, transfer.Features] = {}
    errors: list[BaseException] = []

    def ask(k: int) -> None:
        try:
            results[k] = _features(projects[k][1])
        except BaseException as exc:  # pragma: no cover - shown by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and len(results) == 3
    assert len(passes) == 1  # one computed, two waited and linked
    assert sorted(r.from_cache for r in results.values()) == [False, True, True]
    assert all(np.array_equal(results[0].vectors, r.vectors) for r in results.values())


def test_deleting_a_project_keeps_what_another_one_uses(classroom):
    store, projects = classroom
    first = _features(projects[0][1])
    _features(projects[1][1])
    store.delete_project(projects[0][0])
    assert not Path(projects[0][1].root).exists()
    again = _features(projects[1][1])
    assert again.from_cache and np.array_equal(again.vectors, first.vectors)


def test_a_copy_without_the_exact_validation_features_is_completed_once(classroom, monkeypatch):
    """The head start of a reduced-precision machine keeps the validation features in fp32 as
    well: the first project completes the file, the second links the complete one."""
    _, projects = classroom
    plain = _features(projects[0][1])  # no fp32 validation features yet
    passes = _counting(monkeypatch)
    exact = _features(projects[1][1], exact=True)  # links, then completes with one pass
    n_val = len(split_dataset(projects[1][1], 0.25, 0).val)
    assert exact.from_cache and passes == [n_val]  # the validation pictures only
    again = _features(projects[2][1], exact=True)
    assert again.from_cache and passes == [n_val]  # the complete file, linked
    assert np.array_equal(plain.vectors, again.vectors)


def _head_start_job(store: Store, project_id: str) -> dict:
    from jobrunner import run_job

    from tl_core import service

    job = service.submit_features(store, store.project(project_id), MODEL, 0.25, 0)
    done = run_job(store, store.job(job.id))
    assert done.status == "finished", done.error
    return done.result


def test_the_head_start_readings_are_computed_once_for_the_same_pictures(classroom, monkeypatch):
    """The Model page's head start of a class's copies of one set: the features job of the
    second project reads the first one's readings; other labels give readings of their own."""
    store, projects = classroom
    calls: list[int] = []
    real = transfer.head_start
    monkeypatch.setattr(transfer, "head_start", lambda f: calls.append(1) or real(f))
    first = _head_start_job(store, projects[0][0])
    second = _head_start_job(store, projects[1][0])
    assert len(calls) == 1 and second["head_start"] == first["head_start"]
    assert second["curve"] == first["curve"]
    other = _head_start_job(store, projects[3][0])  # other pictures
    assert len(calls) == 2 and other["n_train"] == first["n_train"]  # computed for them
