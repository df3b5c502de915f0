"""The store and the queue: ids, settings, queue places, claiming slots, recovery."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tl_core import events
from tl_core.config import EpochRow, RunSpec, StepRow, TrainConfig
from tl_core.runs import jobs, supervisor
from tl_core.runs.kinds import JobSpec
from tl_core.runs.recording import StoreSink
from tl_core.runs.store import Store, repair
from tl_core.runs.worker import JobContext


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "ws")


def test_project_ids_are_unguessable_and_settings_persist(store: Store) -> None:
    a, b = store.create_project(), store.create_project()
    assert a.id != b.id and len(a.id) >= 20
    store.update_settings(a.id, model="efficientnet_lite0", epochs=3)
    store.update_settings(a.id, epochs=4)
    assert Store(store.workspace).project(a.id).settings == {
        "model": "efficientnet_lite0",
        "epochs": 4,
    }
    assert store.project("nope") is None


def test_new_data_dirs_never_overwrite_earlier_imports(store: Store) -> None:
    p = store.create_project()
    first = store.new_data_dir(p.id)
    first.mkdir()
    assert store.new_data_dir(p.id) != first


def test_queue_positions_and_slot_limit(store: Store, monkeypatch) -> None:
    spawned: list[str] = []
    monkeypatch.setattr(supervisor, "_spawn", lambda s, run: spawned.append(run.id))
    p = store.create_project()
    one = RunSpec(TrainConfig(epochs=1))
    runs = [jobs.submit(store, p.id, one, store.workspace) for _ in range(3)]
    assert [store.queue_position(r.id) for r in runs] == [1, 2, 3]
    # Claimed runs have no live pid yet; within the grace period they still hold their slot.
    assert supervisor.pump(store, limit=2) == [runs[0].id, runs[1].id]
    assert store.queue_position(runs[2].id) == 1
    assert store.job(runs[0].id).status == "starting"
    assert supervisor.pump(store, limit=2) == []
    jobs.request_stop(store, runs[2].id)
    assert store.job(runs[2].id).status == "stopped"


def test_recover_marks_runs_with_a_dead_worker_interrupted(store: Store) -> None:
    p = store.create_project()
    run = store.create_job(p.id, {}, store.workspace, status="running")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.update_job(run.id, pid=dead.pid, heartbeat=1.0)
    alive = store.create_job(p.id, {}, store.workspace, status="running")
    import os
    import time

    store.update_job(alive.id, pid=os.getpid(), heartbeat=time.time())
    assert jobs.recover(store) == [run.id]
    assert store.job(run.id).status == "interrupted"
    assert store.job(alive.id).status == "running"


def test_resume_needs_a_saved_epoch(store: Store) -> None:
    from tl_core.errors import RunError

    p = store.create_project()
    run = store.create_job(p.id, {}, store.workspace, status="interrupted")
    with pytest.raises(RunError, match="first epoch"):
        jobs.resume(store, run.id)


STEPS = [
    [StepRow(1, 1, 4, 1.5, 0.25, 0.01, 0.5)],
    [StepRow(1, s, 6, 1.0 / s, 0.1 * s, 0.01, 0.2 * s) for s in range(1, 7)],
    [StepRow(2, 5, 8, 0.0, 1.0, 1e-4, 3)],  # an int elapsed, a resumed run's later step
]
EPOCHS = [
    [EpochRow(1, 4, 1.2, 0.5, 1.1, 0.55, 1.5)],
    [EpochRow(e, 3 * e, 1.0 / e, 0.2 * e, 1.1 / e, 0.19 * e, 0.7 * e) for e in range(1, 5)],
    [EpochRow(1, 1, 0.0, 1.0, 0.0, 1.0, 0)],
]


def _run(store: Store, tmp_path) -> str:
    project = store.create_project()
    return store.create_job(project.id, {"epochs": 4}, tmp_path / "data").id


@pytest.mark.parametrize(("steps", "epochs"), list(zip(STEPS, EPOCHS, strict=True)))
def test_metric_rows_come_back_typed_and_in_order(store: Store, tmp_path, steps, epochs) -> None:
    run_id = _run(store, tmp_path)
    other = _run(store, tmp_path)
    for row in reversed(steps):
        store.add_step(run_id, row)
    for row in reversed(epochs):
        store.add_epoch(run_id, row)
    store.add_epoch(other, EpochRow(9, 99, 1.0, 0.0, 1.0, 0.0, 9.0))
    assert store.steps(run_id) == steps and store.epochs(run_id) == epochs
    assert all(isinstance(r, StepRow) for r in store.steps(run_id))
    assert store.epochs(run_id)[0].val_accuracy == epochs[0].val_accuracy
    store.drop_metrics_after(run_id, 1)
    assert store.epochs(run_id) == [e for e in epochs if e.epoch <= 1]
    assert not hasattr(store, "metrics")  # one way to read them: the typed readers


@pytest.mark.parametrize("epochs", EPOCHS)
def test_run_json_keeps_epochs_as_table_rows_and_repair_reads_them_back(
    store: Store, tmp_path, epochs
) -> None:
    run_id = _run(store, tmp_path)
    for row in epochs:
        store.add_epoch(run_id, row)
    store.update_job(run_id, status="finished")
    record = json.loads((Path(store.job(run_id).run_dir) / "run.json").read_text())
    first = epochs[0]
    assert record["epochs"][0] == {
        "run_id": run_id,
        "kind": "epoch",
        "epoch": first.epoch,
        "step": first.step,
        "total_steps": None,
        "loss": first.train_loss,
        "accuracy": first.train_accuracy,
        "val_loss": first.val_loss,
        "val_accuracy": first.val_accuracy,
        "lr": None,
        "elapsed": first.elapsed_s,
    }
    assert len(record["epochs"]) == len(epochs)
    store.close()
    for f in store.workspace.glob("studio.db*"):
        f.unlink()
    repair(store.workspace)
    assert Store(store.workspace).epochs(run_id) == epochs


@pytest.mark.parametrize(
    "bad",
    [
        "not a row",
        {"epoch": 2, "step": 8},  # values missing
        {"epoch": 2, "step": 8, "loss": "x", "accuracy": 0.5, "val_loss": 1.0,
         "val_accuracy": 0.5, "elapsed": 2.0},
        {"epoch": 2, "step": 8, "loss": 1.0, "accuracy": True, "val_loss": 1.0,
         "val_accuracy": 0.5, "elapsed": 2.0},
    ],
)  # fmt: skip
def test_repair_skips_epoch_entries_that_are_not_rows(store: Store, tmp_path, bad) -> None:
    run_id = _run(store, tmp_path)
    good = EpochRow(1, 4, 1.2, 0.5, 1.1, 0.55, 1.5)
    store.add_epoch(run_id, good)
    store.update_job(run_id, status="finished")
    path = Path(store.job(run_id).run_dir) / "run.json"
    record = json.loads(path.read_text())
    record["epochs"].append(bad)
    path.write_text(json.dumps(record))
    store.close()
    for f in store.workspace.glob("studio.db*"):
        f.unlink()
    repair(store.workspace)
    assert Store(store.workspace).epochs(run_id) == [good]


@pytest.mark.parametrize("through_a_pipe", [False, True])
def test_engine_events_are_recorded_as_the_same_rows(store: Store, tmp_path, through_a_pipe):
    """The engine's step and epoch objects are the store's rows: what a job reports on its
    callbacks (as JSON over a worker's pipe or straight into the store) is what it reads."""
    from tl_core.training.engine import EpochMetrics

    run = store.job(_run(store, tmp_path))
    sink = StoreSink(store, run)
    if through_a_pipe:
        emit = sink.emit
        sink.emit = lambda event: emit(  # type: ignore[method-assign]
            events.from_dict(json.loads(json.dumps(event.to_dict())))
        )
    ctx = JobContext(
        JobSpec(run.id, "train", run.project_id, RunSpec(TrainConfig()), "", run.run_dir), sink
    )
    steps = STEPS[1]
    for row in steps:
        ctx.on_step(row)
    epoch = EpochMetrics(1, 6, 0.5, 0.8, 0.6, 0.75, 1.2, is_best=True)
    ctx.on_epoch(epoch)
    assert store.steps(run.id) == steps
    assert store.epochs(run.id) == [EpochRow(1, 6, 0.5, 0.8, 0.6, 0.75, 1.2)]
    assert isinstance(epoch, EpochRow)
