"""Run the queue's jobs on a Ray cluster: the same jobs, on any node, with no shared disk.

Chosen with ``TL_STUDIO_RAY_ADDRESS`` (``auto``, ``HOST:PORT`` of a head started with
``ray start --head``, or ``ray://HOST:10001``); without it jobs run in local worker
processes (:class:`~tl_core.runs.executor.LocalExecutor`). The app server stays the one
owner of the store and the workspace:

- a job's inputs travel through Ray's object store: its data version (the imported images and
  the cached frozen features, not the decoded-image cache, which the node rebuilds), its own
  folder (``last.pt`` to resume from, the pictures of a batch prediction) and the trained
  run it reads (export, verify, predict), each packed once as a tar archive;
- a Ray task (:func:`_run_on_node`) unpacks them into a scratch folder of its node, runs
  :func:`~tl_core.runs.worker.execute` there, and sends every event (its wire form) and every
  file it writes (checkpoints each epoch, results) back through a small actor owned by the
  server and kept on the server's own node, so that no other node takes it along when it
  leaves (:class:`_Channel`); the server reads each event back typed and writes the files
  into the workspace as they arrive;
- Stop goes the other way through the same actor, read every quarter of a second; a job
  that does not answer (its worker stopped or deadlocked) is ended on the supervisor's word
  with ``ray.cancel(force=True)``, which kills its worker process (:meth:`RayExecutor.end`);
- a worker process or node that dies ends its job as ``interrupted`` (training; the last
  epoch's checkpoint is already on the server, so Resume continues on any node) or
  ``failed``; tasks are never retried by Ray, so nothing trains twice into one run. When the
  server itself goes, Ray ends the tasks it owns and the next start marks their runs
  interrupted (their recorded pid is the server's).

Each job asks Ray for one GPU when the cluster has any, CPUs otherwise
(``TL_STUDIO_RAY_CPUS`` per job, default 2, 4 beside a GPU), and for the memory it is
expected to need; how many run at once follows what the cluster holds. Nothing here imports
torch; Ray is imported on first use (the optional ``ray`` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tl_core.errors import StudioError
from tl_core.events import End, Epoch, Event, Started
from tl_core.runs.executor import EndReason, OnEvent, ended_event, lost_end, read_event
from tl_core.runs.kinds import JobSpec, ReadsRun, entry, resumable

__all__ = ["RAY_ADDRESS_ENV", "RayExecutor", "ray_address"]

RAY_ADDRESS_ENV = "TL_STUDIO_RAY_ADDRESS"
DRAIN_S = 0.2  # how often the server collects events and files from the cluster
SYNC_S = 1.0  # how often a running job sends the files it wrote
CAPACITY_S = 5.0  # how often the cluster's size is read again
JOB_MEMORY_GB = 2.5  # what one job is expected to take, unless TL_STUDIO_JOB_MEMORY_GB says
SCRATCH = "tl-studio-ray"  # the nodes' scratch folder, under their temporary directory
KEEP_DATA = 4  # data versions a node keeps unpacked for the next job
# A job ended from outside whose task Ray has not reported ended this long after the forced
# cancel (a node that does not answer) is ended here, so its slot is free.
GIVE_UP_S = 30.0
# Paths that never travel: partial writes, and the data version's caches (its images travel
# once per node; the decoded-image cache is rebuilt there, the frozen features travel apart).
_NEVER = (".tmp", ".partial")


def ray_address() -> str | None:
    """The Ray cluster jobs run on, or None for this machine's own workers."""
    value = os.environ.get(RAY_ADDRESS_ENV, "").strip()
    return value or None


class RayUnavailableError(StudioError):
    """The cluster named by TL_STUDIO_RAY_ADDRESS cannot be used."""


def _import_ray() -> Any:
    # The nodes run their own installed environment: Ray must not re-create the server's
    # (it would, for a server started with `uv run`, build a new environment per worker).
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            f"{RAY_ADDRESS_ENV} is set but Ray is not installed here: install the app with "
            "the ray extra (uv sync --extra ray), or unset the setting to train on this machine."
        ) from None
    with contextlib.suppress(ImportError, AttributeError):  # Ray imported before the setting
        from ray._private import ray_constants

        if os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] == "0":
            ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
    return ray


# ---------------------------------------------------------------------------- files in transit


def _travels(rel: str, root: str) -> bool:
    if rel.endswith(_NEVER) or "/." in f"/{rel}":
        return False
    if root == "data":
        return not rel.startswith("cache/")
    if root == "features":  # the data version's cache folder: its frozen features only
        return rel.startswith("features-")
    return True


def _files(root: Path, name: str) -> Iterator[tuple[str, Path]]:
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        if name == "data" and Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != "cache"]
        for filename in filenames:
            path = Path(dirpath) / filename
            rel = path.relative_to(root).as_posix()
            if _travels(rel, name):
                yield rel, path


def _signature(root: Path, name: str) -> str:
    """Names, sizes and times of what would travel: equal signatures, equal archives."""
    digest = hashlib.sha1(str(root).encode())
    for rel, path in sorted(_files(root, name)):
        with contextlib.suppress(OSError):
            st = path.stat()
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _pack(root: Path, name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel, path in sorted(_files(root, name)):
            with contextlib.suppress(OSError):
                tar.add(path, arcname=rel, recursive=False)
    return buf.getvalue()


def _unpack(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")


def _write_atomic(path: Path, data: bytes, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_bytes(data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    tmp.replace(path)


def _remap(value: Any, pairs: list[tuple[str, str]]) -> Any:
    """``value`` with every path prefix of ``pairs`` (from, to) replaced in its strings."""
    if not pairs:
        return value
    text = json.dumps(value)
    for old, new in sorted(pairs, key=lambda pair: -len(pair[0])):  # the longest path first
        if old:
            text = text.replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])
    return json.loads(text)


# ---------------------------------------------------------------------------- on the node


class _Channel:
    """The server's mailbox on the cluster: events (their wire form) and files in, stop
    requests out."""

    def __init__(self) -> None:
        self._messages: list[tuple[str, str, Any]] = []
        self._stops: set[str] = set()

    def emit(self, job_id: str, event: dict[str, Any]) -> None:
        self._messages.append((job_id, "event", event))

    def put_file(self, job_id: str, root: str, rel: str, data: bytes, mtime: float) -> None:
        self._messages.append((job_id, "file", (root, rel, data, mtime)))

    def flush(self) -> bool:
        """Called last by a task: everything it sent before is in the mailbox."""
        return True

    def drain(self) -> list[tuple[str, str, Any]]:
        messages, self._messages = self._messages, []
        return messages

    def stop(self, job_id: str) -> None:
        self._stops.add(job_id)

    def stopped(self, job_id: str) -> bool:
        return job_id in self._stops

    def forget(self, job_id: str) -> None:
        self._stops.discard(job_id)


class _NodeSink:
    """A job's events on a node: to the channel, with the node's paths turned back into the
    server's (a result naming the bundle it wrote names it where the server keeps it).

    The files an epoch wrote (last.pt, best.pt) are sent before its epoch event: the server
    never records an epoch whose checkpoint it does not have yet.
    """

    def __init__(self, job_id: str, channel: Any, back: list[tuple[str, str]]) -> None:
        self.job_id = job_id
        self.channel = channel
        self.back = back
        self.syncer: _Syncer | None = None

    def emit(self, event: Event) -> None:
        if isinstance(event, Epoch) and self.syncer is not None:
            self.syncer.look()
        self.channel.emit.remote(self.job_id, _remap(event.to_dict(), self.back))

    def stop_asked(self) -> bool:
        import ray

        try:
            return bool(ray.get(self.channel.stopped.remote(self.job_id), timeout=10))
        except Exception:  # the server is gone: stop; Ray ends this task anyway
            return True


class _Syncer:
    """Sends the files a job writes (new or changed since the last look) to the server: all
    of its own folder, and the frozen features it computes for the data version."""

    def __init__(self, job_id: str, channel: Any, roots: dict[str, Path]) -> None:
        self.job_id = job_id
        self.channel = channel
        self.roots = {k: v for k, v in roots.items() if k in ("folder", "features")}
        self.seen: dict[tuple[str, str], tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._look(send=False)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> _Syncer:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._done.wait(SYNC_S):
            with contextlib.suppress(Exception):
                self.look()

    def look(self) -> None:
        """Send what changed since the last look (from any thread)."""
        self._look(send=True)

    def _look(self, send: bool) -> None:
        with self._lock:
            self._look_locked(send)

    def _look_locked(self, send: bool) -> None:
        for name, root in self.roots.items():
            for rel, path in _files(root, name):
                try:
                    st = path.stat()
                    stamp = (st.st_size, st.st_mtime_ns)
                    if self.seen.get((name, rel)) == stamp:
                        continue
                    data = path.read_bytes() if send else b""
                except OSError:  # replaced or removed meanwhile: the next look sends it
                    continue
                self.seen[name, rel] = stamp
                if send:
                    self.channel.put_file.remote(self.job_id, name, rel, data, st.st_mtime)

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=30)
        self.look()


def _node_data(key: str, ref: list[Any], base: Path) -> Path:
    """The data version ``key`` unpacked on this node (once; later jobs reuse it)."""
    import ray

    folder = base / "data" / key
    if not (folder / ".complete").exists():
        tmp = base / "data" / f".{key}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _unpack(ray.get(ref[0]), tmp)
        (tmp / ".complete").touch()
        try:
            tmp.rename(folder)
        except OSError:  # another job unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    os.utime(folder)
    kept = sorted((base / "data").glob("[!.]*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in kept[KEEP_DATA:]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _placement(plan: str) -> str:
    """Where the job runs: the node's name (the one given with ``ray start --node-name``,
    else its host's), its address and the compute plan."""
    import ray

    try:
        ip = ray.util.get_node_ip_address()
    except Exception:
        ip = "?"
    name = socket.gethostname()
    with contextlib.suppress(Exception):  # the host's name is enough when this fails
        here = ray.get_runtime_context().get_node_id()
        given = next(n.get("NodeName", "") for n in ray.nodes() if n["NodeID"] == here)
        if given and given != ip:  # Ray names a node by its address unless told otherwise
            name = given
    return f"Ray node {name} ({ip}), {plan}"


def _warm_up() -> int:
    from tl_core.runs.worker import warm_up

    warm_up()
    return os.getpid()


def _run_on_node(
    spec_raw: dict[str, Any],
    inputs: dict[str, Any],
    channel: Any,
) -> dict[str, Any]:
    """The Ray task: one job on whichever node Ray chose. Returns the wire form of its End."""
    import ray

    from tl_core.models.device import plan_compute
    from tl_core.runs.worker import JobContext, execute

    spec = JobSpec.from_dict(spec_raw)
    kind = entry(spec.kind)
    base = Path(tempfile.gettempdir()) / SCRATCH
    work = base / "jobs" / f"{spec.id}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    archives, server = inputs["archives"], inputs["paths"]
    roots: dict[str, Path] = {}
    if "data" in archives:
        # Unpacked once per node and data version; its caches (decoded images, features)
        # stay there for the next job of the same data, as on one machine.
        roots["data"] = _node_data(inputs["keys"]["data"], archives["data"], base)
        roots["features"] = roots["data"] / "cache"
    for name in ("folder", "source"):
        roots[name] = work / name
        roots[name].mkdir(parents=True, exist_ok=True)
    for name in ("features", "folder", "source"):
        if name in archives and name in roots:
            _unpack(ray.get(archives[name][0]), roots[name])
    there = [(server[n], str(p)) for n, p in roots.items() if n in server]
    back = [(str(p), server[n]) for n, p in roots.items() if n in server]
    local = replace(
        spec,
        data_dir=str(roots.get("data", work / "no-data")),
        folder=str(roots["folder"]),
        params=kind.read(_remap(spec.params.to_dict(), there)),
        threads=max(1, int(inputs["threads"])),
    )
    os.environ["TL_STUDIO_THREADS"] = str(local.threads)
    sink = _NodeSink(spec.id, channel, back)
    placement = _placement(plan_compute().describe())
    sink.emit(Started(os.getpid(), placement))
    syncer = sink.syncer = _Syncer(spec.id, channel, roots).start()
    try:
        end = execute(local, JobContext(local, sink))
    finally:
        syncer.close()
        ray.get(channel.flush.remote(), timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    return _remap(end.to_dict(), back)


# ---------------------------------------------------------------------------- on the server


@dataclass
class _Job:
    spec: JobSpec
    on_event: OnEvent
    ref: Any
    paths: dict[str, Path]
    pid: int | None = None  # the Ray worker process's, on its node
    ending: EndReason | None = None  # ended from outside, and why
    ending_at: float = 0.0  # when (monotonic)


def _lost(kind: str, exc: BaseException) -> End:
    """The end of a job whose Ray worker is gone: interrupted (training) or failed."""
    name = type(exc).__name__
    if "NodeDied" in name:
        why = "the machine running it left the Ray cluster"
    elif "OutOfMemory" in name:
        why = "its machine ran out of memory"
    else:
        why = "the Ray worker process running it was killed or crashed"
    if resumable(kind):
        message = f"The training stopped: {why}. Its last saved epoch is kept on the server."
        return End("interrupted", message)
    message = f"The job stopped: {why}. Press Try again."
    return End("failed", "Failed", error=message)


def _ended(job: _Job) -> End:
    """The end of a job whose task was cancelled by force (see :meth:`RayExecutor.end`)."""
    return lost_end(job.spec.kind, None, job.ending)


def _on_this_node(ray: Any) -> dict[str, Any]:
    """Options that keep an actor on the server's own node: Ray would place the server's
    mailbox on any node, and every job's events would go with that node if it left."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # no node of its own (a Ray Client connection): Ray chooses
        return {}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}


class RayExecutor:
    """Jobs as Ray tasks on the cluster at ``address``; events and files come back here."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._ray: Any = None
        self._channel: Any = None
        self._jobs: dict[str, _Job] = {}
        self._archives: dict[tuple[str, str], tuple[str, Any]] = {}
        self._lock = threading.Lock()
        self._capacity = (0.0, 1, 0.0, 0.0)  # (read at, jobs at once, largest node's GB, GPUs)
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._connecting = threading.Lock()
        self._task: Any = None
        self._warming = False

    # ---------------------------------------------------------------- connection
    def _connect(self) -> Any:
        with self._connecting:
            if self._ray is None:
                self._open()
        return self._ray

    def prewarm(self) -> None:
        """Connect and start a worker process on the cluster with torch and the engine
        imported, in the background, so a first click finds one ready (Ray reuses it)."""
        if self._warming:
            return
        self._warming = True

        def warm() -> None:
            try:
                ray = self._connect()
                ray.remote(num_cpus=0, max_retries=0)(_warm_up).remote()
            except BaseException:  # the first job's start says what is wrong
                return

        threading.Thread(target=warm, name="tl-studio-ray-warm", daemon=True).start()

    def _open(self) -> None:
        ray = _import_ray()
        import tl_core

        try:
            if not ray.is_initialized():
                ray.init(
                    address=self.address,
                    namespace="tl-studio",
                    log_to_driver=False,
                    # The nodes run this server's code: they need only the dependencies.
                    runtime_env={"py_modules": [str(Path(tl_core.__file__).parent)]},
                    configure_logging=False,
                )
            channel = ray.remote(num_cpus=0, max_restarts=0)(_Channel)
            channel = channel.options(**_on_this_node(ray)).remote()
            ray.get(channel.flush.remote(), timeout=60)
        except Exception as exc:
            raise RayUnavailableError(
                f"Could not reach the Ray cluster at {self.address} ({type(exc).__name__}: "
                f"{exc}). Start it (ray start --head) or fix {RAY_ADDRESS_ENV}."
            ) from None
        self._ray, self._channel = ray, channel
        self._task = ray.remote(_run_on_node)
        self._thread = threading.Thread(target=self._loop, name="tl-studio-ray", daemon=True)
        self._thread.start()

    def _cluster(self) -> tuple[int, float, float]:
        """(jobs at once, the largest node's memory in GB, GPUs), read every few seconds."""
        read_at, slots, biggest, gpus = self._capacity
        if time.monotonic() - read_at < CAPACITY_S:
            return slots, biggest, gpus
        ray = self._connect()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        gpus = sum(n["Resources"].get("GPU", 0.0) for n in nodes)
        biggest = max((n["Resources"].get("memory", 0.0) for n in nodes), default=0.0) / 1e9
        if gpus >= 1:
            slots = int(gpus)
        else:
            per_job = self._cpus(0.0, nodes)
            slots = sum(int(n["Resources"].get("CPU", 0.0) // per_job) for n in nodes)
        self._capacity = (time.monotonic(), max(1, slots), biggest, gpus)
        return max(1, slots), biggest, gpus

    @staticmethod
    def _cpus(gpus: float, nodes: list[dict[str, Any]]) -> int:
        default = 4 if gpus >= 1 else 2
        try:
            want = max(1, int(os.environ["TL_STUDIO_RAY_CPUS"]))
        except (KeyError, ValueError):
            want = default
        largest = max((int(n["Resources"].get("CPU", 1)) for n in nodes), default=1)
        return max(1, min(want, largest))

    # ---------------------------------------------------------------- inputs
    def _archive(self, name: str, root: Path) -> tuple[str, list[Any]] | None:
        """The packed ``root`` in the object store (reused while the files are the same)."""
        if not root.is_dir():
            return None
        key = _signature(root, name)
        with self._lock:
            cached = self._archives.get((name, str(root)))
        if cached is not None and cached[0] == key:
            return key, [cached[1]]
        ref = self._ray.put(_pack(root, name))
        with self._lock:
            self._archives[name, str(root)] = (key, ref)
            if len(self._archives) > 32:  # forget the oldest archives
                for old in list(self._archives)[:-32]:
                    self._archives.pop(old, None)
        return key, [ref]

    def _inputs(self, spec: JobSpec, threads: int) -> tuple[dict[str, Any], dict[str, Path]]:
        """What travels with ``spec``: the folders its kind ships (``ships`` in
        :mod:`tl_core.runs.kinds`), packed; and where each is on the server."""
        data = Path(spec.data_dir)
        where = {"data": data, "features": data / "cache", "folder": Path(spec.folder)}
        if isinstance(spec.params, ReadsRun) and spec.params.run_dir:
            where["source"] = Path(spec.params.run_dir)
        paths = {name: where[name] for name in entry(spec.kind).ships if name in where}
        archives: dict[str, list[Any]] = {}
        keys: dict[str, str] = {}
        for name, root in paths.items():
            packed = self._archive(name, root)
            if packed is not None:
                keys[name], archives[name] = packed
        inputs = {
            "paths": {n: str(p) for n, p in paths.items()},
            "archives": archives,
            "keys": keys,
            "threads": threads,
        }
        return inputs, paths

    # ---------------------------------------------------------------- Executor
    def capacity(self) -> int:
        try:
            return self._cluster()[0]
        except RayUnavailableError:  # one job is claimed; its start fails with the message
            return 1

    def running(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def start(self, spec: JobSpec, on_event: OnEvent) -> None:
        ray = self._connect()
        _, biggest, gpus = self._cluster()
        need_gb = float(os.environ.get("TL_STUDIO_JOB_MEMORY_GB", JOB_MEMORY_GB))
        if biggest and need_gb > biggest:
            message = (
                f"This job needs about {need_gb:.1f} GB of memory, more than any machine of the "
                f"Ray cluster offers (the largest: {biggest:.1f} GB). Use fewer or smaller "
                "images, or add a machine with more memory to the cluster."
            )
            on_event(spec.id, End("failed", error=message))
            return
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        use_gpu = gpus >= 1 and entry(spec.kind).gpu
        cpus = self._cpus(gpus if use_gpu else 0.0, nodes)
        inputs, paths = self._inputs(spec, cpus)
        self._ray.get(self._channel.forget.remote(spec.id))
        task = self._task.options(
            num_cpus=cpus,
            num_gpus=1 if use_gpu else 0,
            memory=int(need_gb * 1e9),
            max_retries=0,  # a lost worker ends the job: Resume decides, never a silent rerun
            retry_exceptions=False,
            name=f"tl-studio {spec.kind} {spec.id}",
        )
        ref = task.remote(spec.to_dict(), inputs, self._channel)
        with self._lock:
            self._jobs[spec.id] = _Job(spec, on_event, ref, paths)

    def stop(self, job_id: str) -> None:
        if self._channel is not None:
            self._channel.stop.remote(job_id)

    def end(self, job_id: str, reason: EndReason) -> None:
        """Cancel the job's task by force: Ray kills its worker process (a stopped or stuck
        one too, within seconds); the end then says why. If Ray has not reported the task's
        end ``GIVE_UP_S`` later, the job is ended here."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.ending is not None:
                return
            job.ending, job.ending_at = reason, time.monotonic()
        with contextlib.suppress(Exception):
            self._ray.cancel(job.ref, force=True)

    def worker_pid(self, job_id: str) -> int | None:
        """The process id of the Ray worker running ``job_id`` on its node, once it started."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job.pid if job else None

    def shutdown(self) -> None:
        self._closed.set()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self.stop(job.spec.id)
        deadline = time.monotonic() + 5
        while self.running() and time.monotonic() < deadline:
            time.sleep(DRAIN_S)
        for job in list(self._jobs.values()):
            with contextlib.suppress(Exception):
                self._ray.cancel(job.ref, force=True)
            self._finish(job, End("interrupted", "Server stopped"))
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ---------------------------------------------------------------- events back
    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._drain()
                self._reap()
            except Exception:  # a bad round must not end the loop: log it, go on
                traceback.print_exc()
            self._closed.wait(DRAIN_S)

    def _drain(self) -> None:
        for job_id, what, payload in self._ray.get(self._channel.drain.remote(), timeout=60):
            with self._lock:
                job = self._jobs.get(job_id)
            if job is None:
                continue
            if what == "file":
                root, rel, data, mtime = payload
                if root in job.paths:
                    _write_atomic(job.paths[root] / rel, data, mtime)
                continue
            event = read_event(payload)
            if isinstance(event, Started):
                job.pid = event.pid
                # The run's recorded pid is this server's: if the server goes, so do its
                # tasks, and the next start marks the run interrupted.
                event = replace(event, pid=os.getpid())
            if event is not None and not isinstance(event, End):  # the task returns its end
                job.on_event(job_id, event)

    def _reap(self) -> None:
        with self._lock:
            refs = {job.ref: job for job in self._jobs.values()}
        if not refs:
            return
        done, _ = self._ray.wait(list(refs), num_returns=len(refs), timeout=0)
        self._give_up([job for ref, job in refs.items() if ref not in done])
        if not done:
            return
        self._drain()  # what the task sent before it returned comes first
        for ref in done:
            job = refs[ref]
            try:
                raw = self._ray.get(ref)
            except Exception as exc:
                end = _lost(job.spec.kind, exc) if job.ending is None else _ended(job)
            else:
                end = End.from_dict(raw)
                if job.ending is not None:
                    end = ended_event(job.spec.kind, end, job.ending)
            self._finish(job, end)

    def _give_up(self, waiting: list[_Job]) -> None:
        """End here the jobs ended from outside whose task Ray still has not reported."""
        now = time.monotonic()
        for job in waiting:
            if job.ending is not None and now - job.ending_at > GIVE_UP_S:
                self._finish(job, _ended(job))

    def _finish(self, job: _Job, end: End) -> None:
        with self._lock:
            if self._jobs.pop(job.spec.id, None) is None:
                return
        if self._channel is not None:
            with contextlib.suppress(Exception):
                self._channel.forget.remote(job.spec.id)
        job.on_event(job.spec.id, end)
