"""A hung worker: a real warm worker training a real run is frozen with SIGSTOP.

The server renews a running job's heartbeat while its process lives, so a frozen worker
looks alive; what shows it is that its job reports nothing. With short limits set through
the environment, each test freezes the worker mid-run and checks what the supervisor does:
it marks the run stalled; Stop ends it within seconds as ``stopped``; nobody pressing Stop
ends it by itself as ``interrupted``; progress coming back (SIGCONT) clears the mark. In
every case the slot and the project are free afterwards and Resume finishes the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import make_shapes
from jobrunner import wait_for

from tl_core import service
from tl_core.config import RunSpec, TrainConfig
from tl_core.data.dataset import import_folder
from tl_core.runs import jobs, supervisor
from tl_core.runs.endings import lost
from tl_core.runs.executor import LocalExecutor
from tl_core.runs.store import Job, Store

ENDED = ("finished", "failed", "stopped", "interrupted")
# Two phases: the first epoch (the head alone) ends its phase, so last.pt is written at once;
# from the second epoch on the job reports a step every fraction of a second.
CONFIG = TrainConfig(epochs=10, batch_size=4, head_epochs=1, trainable_groups=1)
FAST = TrainConfig(epochs=1, batch_size=16, head_epochs=1)
STALL_S = 3.0  # the limit between counted events in these tests (the default is minutes)


@pytest.fixture
def served(tmp_path, monkeypatch) -> tuple[Store, str, Path]:
    """A workspace served by this process with one warm worker and short limits."""
    monkeypatch.setenv("TL_STUDIO_MAX_RUNS", "1")
    monkeypatch.setenv("TL_STUDIO_STALL_S", str(STALL_S))
    monkeypatch.setenv("TL_STUDIO_STOP_GRACE_S", "1")
    monkeypatch.setenv("TL_STUDIO_TERM_GRACE_S", "1")
    store = Store(tmp_path / "ws")
    project = store.create_project("shapes")
    data = store.new_data_dir(project.id)
    import_folder(make_shapes(tmp_path / "src", per_class=12, size=32), data)
    store.set_data_dir(project.id, data)
    supervisor.serve(store, prewarm=True)
    return store, project.id, data


def _executor(store: Store) -> LocalExecutor:
    sup = supervisor.running_here(store.workspace)
    assert sup is not None and isinstance(sup.executor, LocalExecutor)
    return sup.executor


def _until(store: Store, run_id: str, test, what: str, timeout: float = 120) -> Job:
    """The run once ``test(run)`` holds (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        run = store.job(run_id)
        assert run is not None
        if test(run):
            return run
        assert time.monotonic() < deadline, f"{what}: {run.status} {run.message!r}"
        time.sleep(0.1)


@contextlib.contextmanager
def _frozen_mid_run(store: Store, project_id: str, data: Path) -> Iterator[tuple[Job, int]]:
    """A run trained past its first epoch (last.pt on disk), its worker then SIGSTOPped;
    the worker is let go again on the way out if it is still there."""
    run = service.submit_job(store, project_id, RunSpec(CONFIG), data)
    _until(store, run.id, lambda r: len(store.epochs(r.id)) >= 2 or r.status in ENDED, "epochs")
    running = store.job(run.id)
    assert running is not None and running.status == "running", running
    assert (Path(run.run_dir) / "last.pt").is_file()
    assert running.pid is not None and running.pid in _executor(store).pids()
    os.kill(running.pid, signal.SIGSTOP)
    try:
        yield running, running.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(running.pid, signal.SIGCONT)


def _stalled(run: Job) -> bool:
    return run.message.startswith(supervisor.STALLED)


def _next_job_runs_and_resume_finishes(store: Store, project_id: str, data: Path, run: Job):
    """The slot and the project are free: a new job of the same project runs to its end on a
    fresh worker; then Resume finishes the run, every epoch recorded once."""
    after = service.submit_job(store, project_id, RunSpec(FAST), data)
    done = wait_for(store, after.id, ENDED)
    assert done.status == "finished", (done.status, done.error)
    service.resume_run(store, run.id)
    resumed = wait_for(store, run.id, ENDED)
    assert resumed.status == "finished", (resumed.status, resumed.message, resumed.error)
    assert [e.epoch for e in store.epochs(run.id)] == list(range(1, CONFIG.epochs + 1))


def test_a_frozen_worker_is_marked_stalled_and_stop_ends_it(served) -> None:
    store, project_id, data = served
    with _frozen_mid_run(store, project_id, data) as (run, pid):
        frozen_at = time.monotonic()
        stalled = _until(store, run.id, _stalled, "marked stalled", timeout=90)
        print(f"marked stalled after {time.monotonic() - frozen_at:.1f} s")
        assert stalled.status == "running"
        assert "Press Stop" in stalled.message
        assert supervisor.is_stalled(stalled)
        assert store.job(run.id).heartbeat is not None
        jobs.request_stop(store, run.id)
        asked = time.monotonic()
        ended = wait_for(store, run.id, ENDED, timeout=60)
        took = time.monotonic() - asked
        print(f"stopped {took:.1f} s after Stop")
    assert ended.status == "stopped", (ended.status, ended.message)
    assert ended.message == lost("train", -signal.SIGKILL, "stop")
    assert took < 20
    assert pid not in _executor(store).pids()  # the frozen worker is gone
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    _next_job_runs_and_resume_finishes(store, project_id, data, ended)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_frozen_worker_nobody_stops_is_ended_by_itself_as_interrupted(served) -> None:
    store, project_id, data = served
    with _frozen_mid_run(store, project_id, data) as (run, pid):
        frozen_at = time.monotonic()
        _until(store, run.id, _stalled, "marked stalled", timeout=90)
        marked = time.monotonic() - frozen_at
        ended = wait_for(store, run.id, ENDED, timeout=180)
        print(f"marked after {marked:.1f} s, ended after {time.monotonic() - frozen_at:.1f} s")
    assert ended.status == "interrupted", (ended.status, ended.message)
    assert ended.message == lost("train", -signal.SIGKILL, "stalled")
    assert pid not in _executor(store).pids()
    _next_job_runs_and_resume_finishes(store, project_id, data, ended)


def test_progress_coming_back_clears_the_stall(served) -> None:
    store, project_id, data = served
    with _frozen_mid_run(store, project_id, data) as (run, pid):
        _until(store, run.id, _stalled, "marked stalled", timeout=90)
        epochs = len(store.epochs(run.id))
        os.kill(pid, signal.SIGCONT)
        back = _until(store, run.id, lambda r: not _stalled(r), "the mark cleared", timeout=30)
    assert (back.status, back.message) == ("running", "Training")  # its phase again
    done = wait_for(store, run.id, ENDED)
    assert done.status == "finished", (done.status, done.message, done.error)
    assert len(store.epochs(run.id)) == CONFIG.epochs > epochs  # it trained on after the stall
    assert done.pid is None or done.pid == pid  # the same worker, never ended
    assert pid in _executor(store).pids()


def test_a_frozen_ray_worker_is_marked_stalled_and_stop_ends_it(tmp_path, monkeypatch) -> None:
    """The same on a real one-machine Ray cluster: the Ray worker running the task is
    SIGSTOPped; the run is marked stalled, Stop cancels the task by force (Ray kills its
    worker), the run ends ``stopped`` and Resume finishes it on the cluster."""
    import raycluster

    os.environ.update(raycluster.ENV)  # before Ray is imported
    ray = pytest.importorskip("ray")
    from tl_core.runs.ray_executor import RayExecutor

    monkeypatch.setenv("TL_STUDIO_STALL_S", str(STALL_S))
    monkeypatch.setenv("TL_STUDIO_STOP_GRACE_S", "1")
    with raycluster.local_cluster(num_cpus=2) as address:
        monkeypatch.setenv("TL_STUDIO_RAY_ADDRESS", address)
        store = Store(tmp_path / "ws")
        project = store.create_project("shapes")
        data = store.new_data_dir(project.id)
        import_folder(make_shapes(tmp_path / "src", per_class=12, size=32), data)
        store.set_data_dir(project.id, data)
        try:
            supervisor.serve(store, prewarm=True)
            sup = supervisor.running_here(store.workspace)
            assert sup is not None and isinstance(sup.executor, RayExecutor)
            run = service.submit_job(store, project.id, RunSpec(CONFIG), data)
            _until(store, run.id, lambda r: len(store.epochs(r.id)) >= 2, "epochs", timeout=300)
            assert (Path(run.run_dir) / "last.pt").is_file()
            pid = sup.executor.worker_pid(run.id)
            assert pid is not None and pid != os.getpid()
            os.kill(pid, signal.SIGSTOP)
            try:
                stalled = _until(store, run.id, _stalled, "marked stalled", timeout=90)
                assert stalled.status == "running"
                jobs.request_stop(store, run.id)
                asked = time.monotonic()
                ended = wait_for(store, run.id, ENDED, timeout=90)
                took = time.monotonic() - asked
                print(f"stopped on the cluster {took:.1f} s after Stop")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            assert ended.status == "stopped", (ended.status, ended.message)
            assert ended.message == lost("train", None, "stop")
            assert took < 40
            assert sup.executor.running() == []
            service.resume_run(store, run.id)
            done = wait_for(store, run.id, ENDED, timeout=300)
            assert done.status == "finished", (done.status, done.message, done.error)
            assert [e.epoch for e in store.epochs(run.id)] == list(range(1, CONFIG.epochs + 1))
        finally:
            supervisor.shutdown_all()
            ray.shutdown()


def _panel(run_id: str) -> None:
    from tl_ui.live import run_panel

    run_panel(run_id)


def test_the_training_panel_says_a_stalled_run_seems_stuck(workspace, tmp_path) -> None:
    """The Train page's panel of a stalled run: a warning with the supervisor's sentence,
    not a progress bar that looks as if the run went on; progress back: the bar again."""
    from streamlit.testing.v1 import AppTest

    store = Store(workspace)
    project = store.create_project("shapes")
    data = store.new_data_dir(project.id)
    run = store.create_job(project.id, asdict(FAST), data, status="running")
    said = supervisor.stalled_message("train", 320, 600)
    store.update_job(run.id, message=said)
    at = AppTest.from_function(_panel, args=(run.id,), default_timeout=60).run()
    assert not at.exception
    assert [w.value for w in at.warning] == [
        f"Training seems stuck: {said[len('Stalled:') :].strip()}"
    ]
    assert "Press Stop" in at.warning[0].value

    store.update_job(run.id, message="Training")
    at = AppTest.from_function(_panel, args=(run.id,), default_timeout=60).run()
    assert not at.exception and not at.warning
