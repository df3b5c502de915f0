"""Every job kind on Ray worker nodes that cannot see the server's disk, over 127.0.0.1 only.

One cluster for the file: a head that runs no task (``--num-cpus=0``) and two worker nodes,
each in a mount namespace of its own where the folder holding the workspace and the
pictures' source does not exist (an empty tmpfs covers it: tests/raycluster.py). The test
process is the app server: it imports the pictures and serves the queue on the cluster; a
job that read the workspace instead of what travels through Ray would fail there.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import raycluster
from helpers import make_shapes
from jobrunner import wait_for, wait_for_epoch

from tl_core import service
from tl_core.config import RunSpec, TrainConfig
from tl_core.data.dataset import import_folder
from tl_core.runs import supervisor
from tl_core.runs.ray_executor import RayExecutor
from tl_core.runs.store import Job, Store

raycluster.loopback_only()  # set before Ray is imported
ray = pytest.importorskip("ray")  # in the test group; a plain install has no Ray

ENDED = ("finished", "failed", "stopped", "interrupted")
WORKERS = ("tl-worker-1", "tl-worker-2")
PLACED = re.compile(r"Ray node (tl-worker-[12]) \(127\.0\.0\.1\), ")
TINY = {"model": "test_efficientnet", "pretrained": False, "batch_size": 8}


@dataclass
class Cluster:
    head: raycluster.RayNode
    workers: dict[str, raycluster.RayNode]
    server: Path  # what the worker nodes cannot see: the workspace and the pictures' source


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """The head (no CPUs: no task runs there) and two worker nodes that cannot see
    ``server``, all on 127.0.0.1."""
    why = raycluster.can_hide()
    assert why is None, f"These tests hide the workspace from the Ray nodes, but {why}."
    server = tmp_path_factory.mktemp("server")
    with contextlib.ExitStack() as stack:
        head = stack.enter_context(raycluster.head_node(num_cpus=0))
        workers = stack.enter_context(
            raycluster.worker_nodes(head.address, WORKERS, 2, hidden=[server])
        )
        try:
            yield Cluster(head, workers, server)
        finally:
            supervisor.shutdown_all()
            ray.shutdown()


@dataclass
class Served:
    store: Store
    project_id: str
    data: Path
    source: Path  # the pictures it was imported from
    executor: RayExecutor


@pytest.fixture(scope="module")
def workspace(cluster: Cluster) -> tuple[Store, str, Path, Path]:
    """The server's workspace with one project of small imported shapes (tiny model)."""
    store = Store(cluster.server / "ws")
    project = store.create_project("shapes")
    data = store.new_data_dir(project.id)
    source = make_shapes(cluster.server / "src", per_class=10, size=32)
    import_folder(source, data)
    store.set_data_dir(project.id, data)
    store.update_settings(project.id, model="test_efficientnet")
    return store, project.id, data, source


@pytest.fixture
def served(cluster: Cluster, workspace, monkeypatch) -> Served:
    """This process serves the workspace's queue on the cluster, connected to it."""
    monkeypatch.setenv("TL_STUDIO_RAY_ADDRESS", cluster.head.address)
    store, project_id, data, source = workspace
    supervisor.serve(store, prewarm=False)
    sup = supervisor.running_here(store.workspace)
    assert sup is not None and isinstance(sup.executor, RayExecutor)
    sup.executor.capacity()  # connects
    deadline = time.monotonic() + 60
    while len(alive := [n for n in ray.nodes() if n["Alive"]]) < 1 + len(cluster.workers):
        assert time.monotonic() < deadline, ray.nodes()
        time.sleep(0.25)
    assert sum(n["Resources"].get("CPU", 0) for n in alive) == 2 * len(cluster.workers)
    return Served(store, project_id, data, source, sup.executor)


def _node_of(job: Job) -> str:
    """The worker node a job ran on, from its placement line (never the head)."""
    found = PLACED.match(job.placement or "")
    assert found, f"{job.kind} ran on {job.placement!r}, not on a worker node"
    return found.group(1)


def _finished(store: Store, job: Job | None, timeout: float = 240) -> Job:
    assert job is not None
    done = wait_for(store, job.id, ENDED, timeout=timeout)
    assert done.status == "finished", (done.kind, done.status, done.message, done.error)
    _node_of(done)
    return done


def _mounts(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def _probe(node_name: str, paths: list[str]) -> dict[str, object]:
    """A Ray task on the node ``node_name``, asking for a CPU like a job: what it sees of
    ``paths``, its node's name and its mount namespace."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def look(paths: list[str]) -> dict[str, object]:  # by value: the node cannot import this
        import os

        import ray

        here = ray.get_runtime_context().get_node_id()
        name = next(n["NodeName"] for n in ray.nodes() if n["NodeID"] == here)
        seen = [p for p in paths if os.path.exists(p)]
        return {"node": name, "seen": seen, "mnt": os.readlink("/proc/self/ns/mnt")}

    node_id = next(n["NodeID"] for n in ray.nodes() if n["NodeName"] == node_name)
    task = ray.remote(num_cpus=1, max_retries=0)(look).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
    )
    return ray.get(task.remote(paths), timeout=120)


def test_the_worker_nodes_cannot_see_the_workspace(cluster, served) -> None:
    """On each worker node the workspace and the pictures' source do not exist (their
    folder is empty there); the head offers no CPU, so no job can run where the files are."""
    ws = served.store.workspace
    paths = [str(ws), str(served.data), str(served.source)]
    assert all(Path(p).exists() for p in paths)  # here, on the server
    head = next(n for n in ray.nodes() if n["NodeName"] == "127.0.0.1")
    assert head["Resources"].get("CPU", 0) == 0
    for name, node in cluster.workers.items():
        seen = _probe(name, paths)
        assert seen["node"] == name and seen["seen"] == []
        assert seen["mnt"] == _mounts(node.process.pid) != _mounts(os.getpid())
        there = Path(f"/proc/{node.process.pid}/root{cluster.server}")
        assert there.is_dir() and not list(there.iterdir())  # the empty tmpfs over it
        for pid in node.pids():  # every process of the node, its worker processes too
            assert not Path(f"/proc/{pid}/root{ws}").exists()


def test_every_job_kind_runs_on_a_worker_node(served) -> None:
    """Features (the head start), training (frozen and fine-tuned), the model comparison,
    the survey, the check, the export and a batch prediction: each finishes on a worker
    node, and what it made is on the server."""
    store, pid, data = served.store, served.project_id, served.data
    project = store.project(pid)
    assert project is not None
    frozen = TrainConfig(epochs=2, trainable_groups=0, **TINY)
    tuned = TrainConfig(epochs=2, trainable_groups=2, **TINY)
    trained = service.submit_job(store, pid, RunSpec(tuned), data)
    features = service.submit_features(store, project, "test_efficientnet", 0.2, 0)
    head_only = service.submit_job(store, pid, RunSpec(frozen), data)
    ranking = service.submit_recommend(store, project, ["test_efficientnet"])
    survey = service.submit_survey(store, project)

    trained = _finished(store, trained)
    assert (Path(trained.run_dir) / "best.pt").is_file()
    assert trained.result and trained.result["val_accuracy"] is not None
    assert [m.epoch for m in store.epochs(trained.id)] == [1, 2]
    features = _finished(store, features)
    assert features.result and features.result["model"] == "test_efficientnet"
    assert list((data / "cache").glob("features-*"))  # came back beside the data set
    head_only = _finished(store, head_only)
    assert (Path(head_only.run_dir) / "best.pt").is_file()
    ranking = _finished(store, ranking)
    assert [r["key"] for r in ranking.result["ranking"]] == ["test_efficientnet"]
    survey = _finished(store, survey)
    assert service.survey_of(survey) is not None

    verify = service.submit_verify(store, trained)
    export = service.submit_export(store, project, trained)
    some = sorted((served.source / "disc").glob("*.png"))[:4]
    pictures = [(f.name, f.read_bytes()) for f in some]
    predict = service.submit_predict(store, trained, pictures, 1.0)
    by_run = service.submit_survey(store, project, trained)

    verify = _finished(store, verify)
    assert verify.result["status"] == "verified"  # the pictures travelled with the job
    export = _finished(store, export)
    bundle = Path(export.result["bundle"])
    assert bundle.is_file() and bundle.parent == Path(export.run_dir)  # on the server
    assert export.result["parity_ok"] is True
    predict = _finished(store, predict)
    assert [r["name"] for r in predict.result["rows"]] == [name for name, _ in pictures]
    assert all(r["error"] is None for r in predict.result["rows"])
    by_run = _finished(store, by_run)
    assert service.survey_of(by_run) is not None
    every = [trained, features, head_only, ranking, survey, verify, export, predict, by_run]
    print(sorted((job.kind, _node_of(job)) for job in every))


def test_ray_listens_and_connects_on_127_0_0_1_only(cluster, served) -> None:
    """Every TCP socket of the cluster's processes (head, worker nodes, their worker
    processes) and of the driver (this process) is bound to 127.0.0.1 and, when connected,
    talks to 127.0.0.1: nothing listens on all addresses, nothing goes out."""
    with socket.socket() as everywhere:  # the check sees a socket open to all addresses
        everywhere.bind(("0.0.0.0", 0))
        everywhere.listen()
        port = everywhere.getsockname()[1]
        mine = raycluster.sockets_of([os.getpid()])
        assert any(s.local == ("0.0.0.0", port) and not s.loopback() for s in mine)
    for name in cluster.workers:  # a worker process on each node, connected to the driver
        assert _probe(name, [])["node"] == name
    nodes = {"head": cluster.head, **cluster.workers}
    pids = {pid: name for name, node in nodes.items() for pid in node.pids()}
    pids[os.getpid()] = "driver"
    found = raycluster.sockets_of(pids)
    wide = [(pids[s.pid], _title(s.pid), s) for s in found if not s.loopback()]
    assert not wide, wide
    listening = {(pids[s.pid], _title(s.pid)) for s in found if s.state == "LISTEN"}
    for name in nodes:  # each node's raylet listens (on 127.0.0.1), the head's GCS too
        assert (name, "raylet") in listening, listening
    assert ("head", "gcs_server") in listening
    assert any(who == "driver" for who, _ in listening)  # its own gRPC server
    connected = [s for s in found if s.state == "ESTABLISHED"]
    assert {pids[s.pid] for s in connected} == {"driver", "head", *cluster.workers}
    print(f"{len(found)} sockets, {len(listening)} listening, all on 127.0.0.1")


def _title(pid: int) -> str:
    """A process's name as ``ss -p`` shows it."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def test_a_worker_node_killed_mid_run_and_resume_finishes_on_the_other(cluster, served) -> None:
    """The node training a run is killed (SIGKILL to its process group): the run ends
    interrupted with its last epoch's checkpoint on the server; Resume finishes it on the
    other node, every epoch recorded once."""
    store, pid, data = served.store, served.project_id, served.data
    # Enough epochs (a tenth of a second each) that it still trains when the node goes.
    config = TrainConfig(epochs=40, trainable_groups=1, head_epochs=1, **{**TINY, "batch_size": 4})
    run = service.submit_job(store, pid, RunSpec(config), data)
    wait_for_epoch(store, run.id, 2)
    first = _node_of(store.job(run.id))
    node = cluster.workers[first]
    worker = served.executor.worker_pid(run.id)
    assert worker is not None and worker in node.pids()  # the job's own process
    assert _mounts(worker) == _mounts(node.process.pid)
    assert not Path(f"/proc/{worker}/root{store.workspace}").exists()
    assert (Path(run.run_dir) / "last.pt").is_file()
    # The server's mailbox (an actor) is kept on its own node, the head: not on this one.
    assert any(b"_Channel" in _cmdline(p) for p in cluster.head.pids())

    node.kill()
    lost = wait_for(store, run.id, ENDED, timeout=90)
    assert lost.status == "interrupted", (lost.status, lost.message)
    assert "saved epoch" in lost.message
    recorded = len(store.epochs(run.id))
    assert 2 <= recorded < config.epochs

    service.resume_run(store, run.id)
    done = wait_for(store, run.id, ENDED, timeout=240)
    assert done.status == "finished", (done.status, done.message, done.error)
    second = _node_of(done)
    assert second != first
    assert [m.epoch for m in store.epochs(run.id)] == list(range(1, config.epochs + 1))
    for name in ("best.pt", "last.pt", "predictions.json"):
        assert (Path(run.run_dir) / name).is_file(), name
    print(f"interrupted on {first} after {recorded} epochs, finished on {second}")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
