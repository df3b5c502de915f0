"""The Ray executor on a real local Ray cluster (``ray start --head`` on 127.0.0.1).

The cluster is started once for this file; every test serves its own workspace's queue with
``TL_STUDIO_RAY_ADDRESS`` pointing at it, so the app server's supervisor runs each job as a
Ray task. The workspace is never read by the task: inputs travel through Ray's object store,
events and files come back through the server's actor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import raycluster
from helpers import make_shapes
from jobrunner import wait_for, wait_for_epoch
from raycluster import local_cluster

from tl_core import service
from tl_core.config import RunSpec, TrainConfig
from tl_core.data.dataset import import_folder
from tl_core.runs import jobs, supervisor
from tl_core.runs.ray_executor import RayExecutor
from tl_core.runs.store import Store

os.environ.update(raycluster.ENV)  # set before Ray is imported
ray = pytest.importorskip("ray")  # in the test group; a plain install has no Ray

ENDED = ("finished", "failed", "stopped", "interrupted")


@pytest.fixture(scope="module")
def cluster() -> str:
    """A real one-machine Ray cluster: a head on 127.0.0.1 with 2 CPUs."""
    with local_cluster(num_cpus=2) as address:
        try:
            yield address
        finally:
            supervisor.shutdown_all()
            ray.shutdown()


@pytest.fixture
def served(cluster, tmp_path, monkeypatch) -> tuple[Store, str, Path]:
    """A workspace whose queue this process serves on the cluster, with a small data set."""
    monkeypatch.setenv("TL_STUDIO_RAY_ADDRESS", cluster)
    store, project_id, data = _shapes_project(tmp_path / "ws", tmp_path / "src")
    supervisor.serve(store, prewarm=True)
    sup = supervisor.running_here(store.workspace)
    assert sup is not None and isinstance(sup.executor, RayExecutor)
    return store, project_id, data


def _shapes_project(workspace: Path, src: Path, per_class: int = 12) -> tuple[Store, str, Path]:
    """A workspace with one project holding a small imported set of shapes."""
    store = Store(workspace)
    project = store.create_project("shapes")
    data = store.new_data_dir(project.id)
    import_folder(make_shapes(src, per_class=per_class, size=32), data)
    store.set_data_dir(project.id, data)
    return store, project.id, data


def _executor(store: Store) -> RayExecutor:
    sup = supervisor.running_here(store.workspace)
    assert sup is not None and isinstance(sup.executor, RayExecutor)
    return sup.executor


def test_a_run_on_the_cluster_live_curves_stop_a_killed_worker_and_resume(served, monkeypatch):
    """One run through everything a training run meets on the cluster: its curve grows while
    it trains; a Ray worker killed mid-run (kill -9) leaves it interrupted with its last
    epoch's checkpoint on the server; Resume goes on; Stop acts within about a second;
    Resume again finishes it, with every epoch recorded once and its files on the server."""
    store, pid, data = served
    executor = _executor(store)
    assert executor.capacity() == 1  # 2 CPUs, 2 per job
    monkeypatch.setenv("TL_STUDIO_RAY_CPUS", "1")
    executor._capacity = (0.0, 1, 0.0, 0.0)  # read the cluster again
    assert executor.capacity() == 2  # how many run at once follows what the cluster holds
    monkeypatch.delenv("TL_STUDIO_RAY_CPUS")
    executor._capacity = (0.0, 1, 0.0, 0.0)

    # Enough epochs that the resumed run is still training when Stop is pressed: a Stop that
    # lands after its last epoch (while it scores the best model) rightly leaves it finished.
    config = TrainConfig(epochs=10, batch_size=4, head_epochs=1, trainable_groups=1)
    run = service.submit_job(store, pid, RunSpec(config), data)
    wait_for_epoch(store, run.id, 2)  # (fails if the run ends first)
    folder = Path(run.run_dir)
    assert store.job(run.id).placement.startswith("Ray node")
    deadline = time.monotonic() + 30
    while not (folder / "last.pt").is_file():  # the checkpoint is on the server
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker = executor.worker_pid(run.id)
    assert worker is not None and worker != os.getpid()
    os.kill(worker, signal.SIGKILL)
    lost = wait_for(store, run.id, ENDED, timeout=60)
    assert lost.status == "interrupted", (lost.status, lost.message)
    assert "killed" in lost.message and "saved epoch" in lost.message
    assert 2 <= len(store.epochs(run.id)) <= 6

    service.resume_run(store, run.id)
    deadline = time.monotonic() + 300
    while (now := store.job(run.id)).message != "Training":  # it trains again
        assert now.status not in ENDED and time.monotonic() < deadline, now
        time.sleep(0.05)
    jobs.request_stop(store, run.id)
    asked = time.monotonic()
    stopped = wait_for(store, run.id, ENDED, timeout=30)
    took = time.monotonic() - asked
    print(f"stop on the cluster: {took:.2f} s")
    assert stopped.status == "stopped"
    assert took < 3.0

    service.resume_run(store, run.id)
    done = wait_for(store, run.id, ENDED)
    assert done.status == "finished", done.error
    assert [m.epoch for m in store.epochs(run.id)] == list(range(1, 11))
    for name in ("best.pt", "last.pt", "predictions.json", "run.log"):
        assert (folder / name).is_file(), name
    assert "Computing on" in (folder / "run.log").read_text()
    assert done.result and done.result["val_accuracy"] is not None


def test_recommend_and_export_run_on_the_cluster(served) -> None:
    store, pid, data = served
    project = store.project(pid)
    assert project is not None
    ranking = service.submit_recommend(store, project, ["efficientnet_lite0"])
    assert ranking is not None
    run = service.submit_job(store, pid, RunSpec(TrainConfig(epochs=1, batch_size=16)), data)
    rec = wait_for(store, ranking.id, ENDED)
    assert rec.status == "finished", rec.error
    assert rec.placement and rec.placement.startswith("Ray node")
    assert [r["key"] for r in rec.result["ranking"]] == ["efficientnet_lite0"]
    # The frozen features it computed came back beside the data set.
    assert list((Path(data) / "cache").glob("features-*"))

    trained = wait_for(store, run.id, ENDED)
    assert trained.status == "finished", trained.error
    export = service.submit_export(store, project, trained)
    assert export is not None
    done = wait_for(store, export.id, ENDED)
    assert done.status == "finished", done.error
    bundle = Path(done.result["bundle"])
    assert bundle.is_file() and bundle.parent == Path(done.run_dir)  # on the server
    assert done.result["out"] == str(bundle)  # the node's paths were turned into the server's
    assert done.result["parity_ok"] is True


def test_a_job_bigger_than_any_machine_fails_with_a_message(served, monkeypatch) -> None:
    store, pid, data = served
    monkeypatch.setenv("TL_STUDIO_JOB_MEMORY_GB", "100000")
    run = service.submit_job(store, pid, RunSpec(TrainConfig(epochs=1)), data)
    failed = wait_for(store, run.id, ENDED, timeout=60)
    assert failed.status == "failed"
    assert "memory" in (failed.error or "") and "largest" in (failed.error or "")


_SERVER = """
import sys, time
from pathlib import Path
from tl_core.runs import supervisor
from tl_core.runs.store import Store
supervisor.serve(Store(Path(sys.argv[1])), prewarm=False)
while True:
    time.sleep(1)
"""


def _titles_naming(text: str) -> list[int]:
    """Processes of this machine whose command line names ``text`` (Ray's task titles)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_server_killed_mid_run_leaves_it_interrupted_and_resume_finishes_it(
    served, tmp_path
) -> None:
    """The server goes (kill -9) while its run trains on the cluster: Ray ends the task it
    owned, the next server marks the run interrupted, Resume finishes it, epochs once."""
    store, pid, data = served
    supervisor.shutdown(store.workspace)  # the queue is served by the process below
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(store.workspace)])
    try:
        deadline = time.monotonic() + 120
        while not supervisor.served_elsewhere(store.workspace):  # it serves the queue
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        config = TrainConfig(epochs=6, batch_size=4, head_epochs=1, trainable_groups=1)
        run = service.submit_job(store, pid, RunSpec(config), data)
        wait_for_epoch(store, run.id, 2)
        # The epochs recorded have their checkpoint on the server (sent before them).
        assert (Path(run.run_dir) / "last.pt").is_file()
        assert store.job(run.id).pid == server.pid
        assert _titles_naming(run.id), "the task should run under a title naming the job"
    finally:
        server.kill()
        server.wait()
    recorded = len(store.epochs(run.id))
    deadline = time.monotonic() + 60
    while _titles_naming(run.id):  # Ray ends the tasks of a driver that died
        assert time.monotonic() < deadline, "the orphaned task still runs"
        time.sleep(0.5)
    assert len(store.epochs(run.id)) == recorded  # nobody wrote after the server

    supervisor.serve(store, prewarm=False)  # the server starts again
    lost = wait_for(store, run.id, ENDED, timeout=60)
    assert lost.status == "interrupted"
    service.resume_run(store, run.id)
    done = wait_for(store, run.id, ENDED)
    assert done.status == "finished", done.error
    assert [m.epoch for m in store.epochs(run.id)] == [1, 2, 3, 4, 5, 6]


def test_the_train_page_trains_through_the_ray_executor(cluster, workspace, monkeypatch):
    """A user's Train click with the app pointed at the cluster: the app server serves the
    queue on Ray, the run panel shows the run finished and the Ray node it ran on."""
    from helpers import app_test

    monkeypatch.setenv("TL_STUDIO_RAY_ADDRESS", cluster)
    monkeypatch.setenv("TL_STUDIO_SERVE", "1")  # as the app server does (conftest turns it off)
    store, project_id, _ = _shapes_project(workspace, workspace.parent / "src")
    store.update_settings(project_id, model="efficientnet_lite0", epochs=2)
    at = app_test("app_pages/train.py", project_id)
    assert not at.exception
    at.button(key="start").click().run()
    assert not at.exception
    (run,) = store.runs(project_id)
    sup = supervisor.running_here(workspace)
    assert sup is not None and isinstance(sup.executor, RayExecutor)
    done = wait_for(store, run.id, ENDED)
    assert done.status == "finished", done.error
    at.run()
    texts = " ".join(str(e.value) for e in (*at.success, *at.caption))
    assert "Finished:" in texts
    assert "Ran on Ray node" in texts


def test_a_cluster_setting_without_ray_installed_fails_the_job_with_advice(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as on an install without the ray extra
    monkeypatch.setenv("TL_STUDIO_RAY_ADDRESS", "auto")
    store, project_id, data = _shapes_project(tmp_path / "ws", tmp_path / "src", per_class=4)
    supervisor.serve(store, prewarm=True)
    run = service.submit_job(store, project_id, RunSpec(TrainConfig(epochs=1)), data)
    failed = wait_for(store, run.id, ENDED, timeout=30)
    assert failed.status == "failed"
    assert "uv sync --extra ray" in (failed.error or "")


def test_what_travels_to_a_node_and_back(tmp_path) -> None:
    """A data version travels without its caches (the frozen features travel apart); partial
    writes never travel; node paths in a job's events turn back into the server's."""
    from tl_core.runs import ray_executor as rx

    data = tmp_path / "data-1"
    for rel in (
        "manifest.json",
        "a/1.png",
        "cache/decoded-224-bicubic.u8",
        "cache/features-x-train-1.npz",
        "a/.2.png.123.partial",
        "x.tmp",
    ):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(b"x")
    assert sorted(rel for rel, _ in rx._files(data, "data")) == ["a/1.png", "manifest.json"]
    assert [rel for rel, _ in rx._files(data / "cache", "features")] == ["features-x-train-1.npz"]
    before = rx._signature(data, "data")
    (data / "cache" / "features-y-val-2.npz").write_bytes(b"y")  # caches do not change it
    assert rx._signature(data, "data") == before
    (data / "a" / "3.png").write_bytes(b"z")
    assert rx._signature(data, "data") != before
    rx._unpack(rx._pack(data, "data"), tmp_path / "node")
    assert (tmp_path / "node" / "a" / "1.png").read_bytes() == b"x"
    assert not (tmp_path / "node" / "cache").exists()

    pairs = [("/node/jobs/7/folder", "/ws/jobs/AB"), ("/node/jobs/7/folder2", "/ws/runs/R")]
    event = {"t": "end", "result": {"bundle": "/node/jobs/7/folder2/m.zip", "n": 3}}
    assert rx._remap(event, pairs)["result"] == {"bundle": "/ws/runs/R/m.zip", "n": 3}
