"""The queue's wait estimate before any job has finished: from what working jobs told so far."""

from __future__ import annotations

import os
import time
from dataclasses import asdict

import pytest

from tl_core.config import EpochRow, TrainConfig
from tl_core.runs import jobs
from tl_core.runs.store import Job, Store


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    monkeypatch.setenv("TL_STUDIO_MAX_RUNS", "1")
    return Store(tmp_path / "ws")


def _train(store: Store, project: str, epochs: int, **fields) -> Job:
    run = store.create_job(project, asdict(TrainConfig(epochs=epochs)), store.workspace)
    if fields:
        store.update_job(run.id, **fields)
    return store.job(run.id)


def _working(store: Store, project: str, kind: str = "train", **params) -> Job:
    config = asdict(TrainConfig(**params)) if kind == "train" else params
    run = store.create_job(project, config, store.workspace, kind=kind)
    store.update_job(run.id, status="running", started=time.time() - 5, pid=os.getpid())
    return store.job(run.id)


def _epochs(store: Store, run_id: str, elapsed: list[float], first_epoch: int = 1) -> None:
    for i, seconds in enumerate(elapsed):
        epoch = first_epoch + i
        store.add_epoch(run_id, EpochRow(epoch, 10 * epoch, 0.5, 0.8, 0.6, 0.7, seconds))


@pytest.mark.parametrize(
    ("elapsed", "total", "left"),
    [
        ([10.0], 20, 190.0),  # one epoch: its time, the start-up included, per epoch
        ([10.0, 20.0, 30.0], 20, 170.0),  # 10 s an epoch, 17 to go
        ([12.0, 14.0, 16.0, 18.0], 10, 12.0),  # a slow first epoch (start-up), then 2 s
        ([4.0, 5.0], 200, 198.0),
        ([8.0, 16.0], 2, 1.0),  # every epoch done: writing its results, about to free
    ],
)
def test_the_next_job_waits_what_the_running_run_still_needs(store, elapsed, total, left):
    """Nothing has finished in this workspace: the running run's own epochs say when its slot
    frees (old: a fixed 60 s guess for any training run)."""
    running = _working(store, store.create_project("a").id, epochs=total)
    _epochs(store, running.id, elapsed)
    other = store.create_project("b").id
    first, second = _train(store, other, 5), _train(store, other, 5)
    assert jobs.estimated_wait(store, first.id) == pytest.approx(left)
    # the next one waits for the first, which trains its 5 epochs at the same speed
    per = (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1) if len(elapsed) > 1 else elapsed[0]
    assert jobs.estimated_wait(store, second.id) == pytest.approx(left + elapsed[0] + 4 * per)
    assert jobs.estimated_wait(store, running.id) is None


def test_a_resumed_run_counts_from_its_latest_start(store) -> None:
    running = _working(store, store.create_project("a").id, epochs=10)
    _epochs(store, running.id, [10.0, 20.0, 30.0])  # before the stop: 10 s an epoch
    _epochs(store, running.id, [3.0, 4.0], first_epoch=4)  # resumed on a warm worker: 1 s
    waiting = _train(store, store.create_project("b").id, 3)
    assert jobs.estimated_wait(store, waiting.id) == pytest.approx(5.0)  # 5 epochs left


@pytest.mark.parametrize("epochs", [1, 5, 40])
def test_waiting_runs_are_scaled_by_their_epochs(store, epochs) -> None:
    """The workspace's speed (a first epoch of 6 s with the start-up, then 2 s each) times
    each waiting run's own epochs."""
    running = _working(store, store.create_project("a").id, epochs=4)
    _epochs(store, running.id, [6.0, 8.0])  # 2 epochs left: 4 s
    other = store.create_project("b").id
    ahead, behind = _train(store, other, epochs), _train(store, other, 3)
    assert jobs.estimated_wait(store, ahead.id) == pytest.approx(4.0)
    assert jobs.estimated_wait(store, behind.id) == pytest.approx(4.0 + 6.0 + 2.0 * (epochs - 1))


def test_a_waiting_resume_counts_only_its_epochs_left(store) -> None:
    running = _working(store, store.create_project("a").id, epochs=4)
    _epochs(store, running.id, [6.0, 8.0])
    other = store.create_project("b").id
    resumed = _train(store, other, 10, status="queued", resume=1)
    _epochs(store, resumed.id, [6.0, 8.0, 10.0, 12.0])  # 4 of 10 done before it stopped
    behind = _train(store, other, 3)
    assert jobs.estimated_wait(store, behind.id) == pytest.approx(4.0 + 6.0 + 2.0 * 5)


def test_a_run_yet_to_end_an_epoch_uses_the_speed_of_earlier_runs(store) -> None:
    pid = store.create_project("a").id
    done = _train(store, pid, 3, status="finished", started=100.0, finished=112.0)
    _epochs(store, done.id, [6.0, 8.0, 10.0])
    running = _working(store, pid, epochs=20)  # started 5 s ago, no epoch yet
    waiting = _train(store, store.create_project("b").id, 2)
    assert jobs.estimated_wait(store, waiting.id) == pytest.approx(6.0 + 2.0 * 19 - 5.0, abs=1)
    assert running.status == "running"


@pytest.mark.parametrize(
    ("kind", "progress", "left"),
    [
        ("features", 0.25, 15.0),  # 5 s for a quarter: 15 s more
        ("recommend", 0.5, 5.0),
        ("export", 0.1, 45.0),
        ("predict", 1.0, 1.0),
    ],
)
def test_a_job_that_counts_its_work_frees_its_slot_by_its_pace(store, kind, progress, left):
    working = _working(store, store.create_project("a").id, kind=kind)
    store.update_job(working.id, progress=progress)
    waiting = _train(store, store.create_project("b").id, 2)
    assert jobs.estimated_wait(store, waiting.id) == pytest.approx(left, abs=0.5)


def test_two_slots_the_first_to_free_goes_first(store, monkeypatch) -> None:
    monkeypatch.setenv("TL_STUDIO_MAX_RUNS", "2")
    slow = _working(store, store.create_project("a").id, epochs=20)
    _epochs(store, slow.id, [10.0, 20.0])  # 180 s left
    quick = _working(store, store.create_project("b").id, epochs=3)
    _epochs(store, quick.id, [10.0, 20.0])  # 10 s left
    other = store.create_project("c").id
    first, second = _train(store, other, 2), _train(store, other, 2)
    assert jobs.estimated_wait(store, first.id) == pytest.approx(10.0)
    assert jobs.estimated_wait(store, second.id) == pytest.approx(10.0 + 10.0 + 10.0)


def test_the_estimate_stays_cheap_with_a_long_history(store) -> None:
    """A semester of runs: the estimate reads a bounded part of it on every page refresh."""
    pid = store.create_project("a").id
    with store.transaction() as db:
        for i in range(400):
            db.execute(
                "INSERT INTO runs (id, project_id, created, status, config, data_dir, run_dir,"
                " started, finished) VALUES (?, ?, ?, 'finished', '{}', '', '', ?, ?)",
                (f"old{i}", pid, float(i), float(i), i + 20.0),
            )
            db.executemany(
                "INSERT INTO metrics (run_id, kind, epoch, step, loss, accuracy, val_loss,"
                " val_accuracy, elapsed) VALUES (?, 'epoch', ?, ?, 1, 1, 1, 1, ?)",
                [(f"old{i}", e, e, 1.0 * e) for e in range(1, 21)],
            )
    running = _working(store, pid, epochs=20)
    waiting = _train(store, store.create_project("b").id, 20)
    started = time.perf_counter()
    for _ in range(20):
        wait = jobs.estimated_wait(store, waiting.id)
    per_call = (time.perf_counter() - started) / 20
    assert wait == pytest.approx(20.0 - 5.0, abs=1)  # 1 s an epoch, 5 s already run
    assert per_call < 0.05, per_call
    assert running.active


@pytest.mark.parametrize("slots", [1, 3])
def test_the_estimate_counts_the_slots_of_the_serving_executor(store, slots) -> None:
    """A cluster's server writes how many jobs it runs at once (runtime.json): waiting jobs
    that fit in those slots start at once, the rest wait (the machine's own limit here is 1)."""
    (store.workspace / "runtime.json").write_text(f'{{"pid": {os.getpid()}, "slots": {slots}}}')
    running = _working(store, store.create_project("a").id, epochs=20)
    _epochs(store, running.id, [10.0])  # 190 s to go
    other = store.create_project("b").id
    first = _train(store, other, 5)
    assert jobs.serving_slots(store.workspace) == slots
    assert jobs.estimated_wait(store, first.id) == pytest.approx(190.0 if slots == 1 else 0.0)
