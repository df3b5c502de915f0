"""The job runtime: the fair queue, its estimates, warm workers, Stop and crash isolation."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import make_shapes
from jobrunner import wait_for

from tl_core import service
from tl_core.config import RunSpec, TrainConfig
from tl_core.data.dataset import import_folder
from tl_core.runs import jobs, supervisor
from tl_core.runs.kinds import entry
from tl_core.runs.store import Job, Store, fair_order

FAST = TrainConfig(epochs=1, batch_size=16, head_epochs=1)


def _job(project: str, queued_at: float, pid: int | None = None) -> Job:
    return Job(
        id=f"{project}-{queued_at}",
        project_id=project,
        created=queued_at,
        status="queued",
        config={},
        data_dir="",
        run_dir="",
        source="app",
        pid=pid,
        heartbeat=None,
        started=None,
        finished=None,
        stop_requested=False,
        resume=False,
        message="",
        error=None,
        result=None,
        queued_at=queued_at,
    )


@pytest.mark.parametrize(
    ("queued", "active", "expected"),
    [
        # one student's sweep of three runs does not hold the others up
        ([("a", 1), ("a", 2), ("a", 3), ("b", 4), ("c", 5)], {}, ["a", "b", "c", "a", "a"]),
        # a project with a job running goes after those with none
        ([("a", 1), ("b", 2)], {"a": 1}, ["b", "a"]),
        # among projects with nothing running: the one waiting longest first
        ([("b", 2), ("a", 1), ("c", 3)], {}, ["a", "b", "c"]),
        # two running for a, one for b: b's next job first, then turns again
        ([("a", 1), ("b", 2), ("b", 3)], {"a": 2, "b": 1}, ["b", "a", "b"]),
        ([], {"a": 1}, []),
    ],
)
def test_fair_order_is_round_robin_across_projects(queued, active, expected) -> None:
    order = fair_order([_job(p, t) for p, t in queued], active)
    assert [j.project_id for j in order] == expected
    assert sorted(j.queued_at for j in order) == sorted(t for _, t in queued)


def test_max_runs_follows_the_machine_and_the_setting(monkeypatch) -> None:
    monkeypatch.delenv("TL_STUDIO_MAX_RUNS", raising=False)
    assert jobs.max_parallel_runs() == jobs.machine_slots() >= 1
    monkeypatch.setattr(jobs, "cpu_count", lambda: 16)
    monkeypatch.setattr(jobs, "_available_gb", lambda: 64.0)
    assert jobs.machine_slots() == 4
    monkeypatch.setattr(jobs, "_available_gb", lambda: 3.0)  # memory holds one
    assert jobs.machine_slots() == 1
    monkeypatch.setenv("TL_STUDIO_MAX_RUNS", "3")
    assert jobs.max_parallel_runs() == 3


def _project(tmp_path: Path, name: str = "p") -> tuple[Store, str, Path]:
    store = Store(tmp_path / "ws")
    project = store.create_project(name)
    data = store.new_data_dir(project.id)
    import_folder(make_shapes(tmp_path / f"src-{name}", per_class=12, size=32), data)
    store.set_data_dir(project.id, data)
    return store, project.id, data


def test_queue_places_and_estimated_waits_follow_measured_durations(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TL_STUDIO_MAX_RUNS", "1")
    store, pid, data = _project(tmp_path)
    other = store.create_project("other").id
    done = store.create_job(pid, asdict(FAST), data)
    store.update_job(done.id, status="finished", started=100.0, finished=130.0)  # took 30 s
    running = store.create_job(pid, asdict(FAST), data)
    store.update_job(running.id, status="running", started=time.time() - 10, pid=os.getpid())
    mine = [store.create_job(pid, asdict(FAST), data) for _ in range(2)]
    theirs = store.create_job(other, asdict(FAST), data)
    # the other project's job goes first: it has nothing running
    assert [store.queue_position(j.id) for j in (theirs, *mine)] == [1, 2, 3]
    waits = [jobs.estimated_wait(store, j.id) for j in (theirs, *mine)]
    assert waits[0] == pytest.approx(20, abs=2)  # 30 s median, 10 s already run
    assert waits[1] == pytest.approx(50, abs=2)
    assert waits[2] == pytest.approx(80, abs=2)
    assert jobs.estimated_wait(store, running.id) is None


def test_imports_have_a_lane_beside_a_full_queue(tmp_path, monkeypatch) -> None:
    """With every slot taken by long jobs, a student's import still starts at once (one at a
    time in its lane), its place counts only the imports ahead, and no other kind slips in."""
    monkeypatch.setenv("TL_STUDIO_MAX_RUNS", "1")
    store, pid, data = _project(tmp_path)
    a, b, c = (store.create_project(n).id for n in "abc")
    running = store.create_job(pid, asdict(FAST), data)
    store.update_job(running.id, status="running", started=time.time(), pid=os.getpid())
    train = store.create_job(a, asdict(FAST), data)
    first = store.create_job(b, {"way": "demo"}, data, kind="import")
    second = store.create_job(c, {"way": "demo"}, data, kind="import")
    assert store.queue_position(train.id) == 1
    assert [store.queue_position(j.id) for j in (first, second)] == [1, 2]
    assert jobs.estimated_wait(store, first.id) == 0.0
    assert jobs.claim_next(store, 1) is None  # without a lane: the queue is full
    claimed = jobs.claim_next(store, 1, quick_lane=1)
    assert claimed is not None and claimed.id == first.id
    assert jobs.claim_next(store, 1, quick_lane=1) is None  # the lane is taken too
    assert store.queue_position(second.id) == 1
    wait = jobs.estimated_wait(store, second.id)
    assert wait is not None and 0 < wait <= entry("import").typical_s
    store.update_job(first.id, status="finished", finished=time.time())
    assert getattr(jobs.claim_next(store, 1, quick_lane=1), "id", None) == second.id
    store.update_job(second.id, status="finished", finished=time.time())
    assert jobs.claim_next(store, 1, quick_lane=1) is None  # a train waits for its slot
    store.update_job(running.id, status="finished", finished=time.time())
    assert getattr(jobs.claim_next(store, 1, quick_lane=1), "id", None) == train.id


def test_warm_worker_runs_jobs_one_after_another_and_stop_and_a_crash(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("TL_STUDIO_MAX_RUNS", "1")
    store, pid, data = _project(tmp_path)
    supervisor.serve(store, prewarm=True)
    sup = supervisor.running_here(store.workspace)
    assert sup is not None and len(sup.executor.pids()) == 1
    assert supervisor.pump(store) == []  # served here: a page's pump only wakes the supervisor

    first = service.submit_job(store, pid, RunSpec(FAST), data)
    second = service.submit_job(store, pid, RunSpec(FAST), data)
    assert store.queue_position(second.id) in (1, 2)  # behind the first until it starts
    a = wait_for(store, first.id, ("finished", "failed"))
    b = wait_for(store, second.id, ("finished", "failed"))
    assert (a.status, b.status) == ("finished", "finished"), (a.error, b.error)
    assert a.pid is None or a.pid == b.pid  # the same warm process ran both
    assert len(store.epochs(b.id)) == 1
    assert (Path(b.run_dir) / "run.log").read_text().count("Computing on") == 1

    # Stop: a long run ends 'stopped' within about a second of the request once it trains
    long = service.submit_job(store, pid, RunSpec(TrainConfig(epochs=200, batch_size=4)), data)
    _wait_for_steps(store, long.id)
    jobs.request_stop(store, long.id)
    asked = time.monotonic()
    stopped = wait_for(store, long.id, ("stopped", "finished", "failed"), timeout=30)
    assert stopped.status == "stopped"
    assert time.monotonic() - asked < 5

    # A worker killed mid-run: the run is interrupted with a message, the server goes on
    crash = service.submit_job(store, pid, RunSpec(TrainConfig(epochs=200, batch_size=4)), data)
    _wait_for_steps(store, crash.id)
    os.kill(store.job(crash.id).pid, signal.SIGKILL)
    lost = wait_for(store, crash.id, ("interrupted", "failed"), timeout=30)
    assert lost.status == "interrupted"
    assert "signal 9" in lost.message and "Resume" in lost.message
    after = service.submit_job(store, pid, RunSpec(FAST), data)
    assert wait_for(store, after.id, ("finished", "failed")).status == "finished"


def _wait_for_steps(store: Store, run_id: str) -> None:
    deadline = time.monotonic() + 240
    while not store.steps(run_id):
        assert time.monotonic() < deadline, store.job(run_id)
        time.sleep(0.1)


def test_another_process_leaves_the_queue_to_the_server(tmp_path, monkeypatch) -> None:
    store, pid, data = _project(tmp_path)
    (store.workspace / supervisor.RUNTIME_FILE).write_text(f'{{"pid": {os.getppid()}}}')
    run = service.submit_job(store, pid, RunSpec(FAST), data)
    assert store.job(run.id).status == "queued"  # not started by this process
    (store.workspace / supervisor.RUNTIME_FILE).write_text('{"pid": 999999999}')
    assert supervisor.pump(store) == [run.id]  # a server that is gone: start it here


def test_another_process_sees_what_a_process_with_two_stores_writes(tmp_path) -> None:
    """The app server opens the workspace twice (pages and the job supervisor). A second
    Store must not drop the first one's SQLite locks (closing any descriptor of studio.db
    does, under POSIX): another process would then remove the -wal/-shm files this one still
    uses, and the two would stop seeing each other's writes."""
    import subprocess
    import sys

    ws = tmp_path / "ws"
    first = Store(ws)
    first.create_project("server")
    supervisor.serve(first, prewarm=False)  # the supervisor's own Store opens it again
    second = Store(ws)
    second.create_project("pages")
    code = (
        "import sys, time; from pathlib import Path; from tl_core.runs.store import Store; "
        "s = Store(Path(sys.argv[1]))\n"
        "for i in range(10):\n    s.create_project(f'p{i}'); time.sleep(0.3)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(ws)])
    seen = 0
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            with first.transaction() as db:
                seen = max(seen, db.execute("SELECT COUNT(*) FROM projects").fetchone()[0] - 2)
            time.sleep(0.1)
    finally:
        proc.wait(timeout=60)
    assert seen >= 8  # this process saw the other one's projects while it wrote them
