"""The store and the queue: ids, settings, queue places, claiming slots, recovery."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tl_core.runs import jobs
from tl_core.runs.store import Store


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
    monkeypatch.setattr(jobs, "_spawn", lambda s, run: spawned.append(run.id))
    p = store.create_project()
    runs = [jobs.submit(store, p.id, {"epochs": 1}, store.workspace, start=False) for _ in range(3)]
    assert [store.queue_position(r.id) for r in runs] == [1, 2, 3]
    # Claimed runs have no live pid yet; within the grace period they still hold their slot.
    assert jobs.pump(store, limit=2) == [runs[0].id, runs[1].id]
    assert store.queue_position(runs[2].id) == 1
    assert store.run(runs[0].id).status == "starting"
    assert jobs.pump(store, limit=2) == []
    jobs.request_stop(store, runs[2].id)
    assert store.run(runs[2].id).status == "stopped"


def test_recover_marks_runs_with_a_dead_worker_interrupted(store: Store) -> None:
    p = store.create_project()
    run = store.create_run(p.id, {}, store.workspace, status="running")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.update_run(run.id, pid=dead.pid, heartbeat=1.0)
    alive = store.create_run(p.id, {}, store.workspace, status="running")
    import os
    import time

    store.update_run(alive.id, pid=os.getpid(), heartbeat=time.time())
    assert jobs.recover(store) == [run.id]
    assert store.run(run.id).status == "interrupted"
    assert store.run(alive.id).status == "running"


def test_resume_needs_a_saved_epoch(store: Store) -> None:
    from tl_core.errors import RunError

    p = store.create_project()
    run = store.create_run(p.id, {}, store.workspace, status="interrupted")
    with pytest.raises(RunError, match="first epoch"):
        jobs.resume(store, run.id)
