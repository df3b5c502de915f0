"""The app server's side of the runtime: claim jobs fairly, run them on an executor, record.

One :class:`Supervisor` per workspace and process, on a background thread. Every tick
(a quarter of a second, or at once when a page pokes it) it passes Stop requests on, claims
jobs from the fair queue while the executor has room, and writes what the workers report:
the store has one writer for jobs, and workers never open it. The file ``runtime.json`` in
the workspace names the serving process, so a command line started beside the app leaves
the queue to it. Nothing here imports torch.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from tl_core.runs import jobs
from tl_core.runs.executor import Executor, LocalExecutor
from tl_core.runs.store import Store
from tl_core.runs.worker import job_spec, record

__all__ = [
    "Supervisor",
    "make_executor",
    "running_here",
    "served_elsewhere",
    "shutdown_all",
    "supervisor",
]

TICK_S = 0.25
HEARTBEAT_S = 10.0  # a running job's heartbeat is renewed this often while its worker lives
RECOVER_S = 2.0
REAP_IDLE_S = 600.0  # workers beyond the warm one leave after this long without work
RUNTIME_FILE = "runtime.json"
# Jobs that read this machine's disk (a folder path typed in the app, an upload saved beside
# the server) run on this machine's workers even when the executor is a cluster.
LOCAL_KINDS = frozenset({"import"})

_lock = threading.Lock()
_here: dict[Path, Supervisor] = {}


def _key(workspace: Path) -> Path:
    return Path(workspace).expanduser().resolve()


def make_executor(workspace: Path) -> Executor:
    """A Ray cluster's executor when ``TL_STUDIO_RAY_ADDRESS`` names one, else warm local
    worker processes (at most ``TL_STUDIO_MAX_RUNS`` at once)."""
    from tl_core.runs.ray_executor import RayExecutor, ray_address

    address = ray_address()
    if address is not None:
        return RayExecutor(address)
    return LocalExecutor(jobs.max_parallel_runs(), workspace / "logs" / "workers")


class Supervisor:
    """Claims, starts, watches and records the jobs of one workspace."""

    def __init__(self, workspace: Path, executor: Executor | None = None) -> None:
        self.store = Store(workspace)
        self.executor = executor or make_executor(self.store.workspace)
        self._local: LocalExecutor | None = None  # for LOCAL_KINDS beside a cluster
        self._folders: dict[str, Path] = {}
        self._stopping: set[str] = set()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._beat = 0.0
        self._recovered = 0.0
        self._since = time.time()
        self._slots: int | None = None
        self._write_runtime_file()
        self._thread = threading.Thread(target=self._loop, name="tl-studio-jobs", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- public
    def poke(self) -> None:
        """Look at the queue now instead of at the next tick."""
        self._wake.set()

    def close(self) -> None:
        """Stop claiming, end the workers (their jobs end interrupted) and forget the file."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=5)
        for executor in self._executors():
            executor.shutdown()
        with contextlib.suppress(OSError):
            path = self.store.workspace / RUNTIME_FILE
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        self.store.close()

    # ---------------------------------------------------------------- executors
    def _executors(self) -> list[Executor]:
        return [self.executor] + ([self._local] if self._local is not None else [])

    def executor_for(self, kind: str) -> Executor:
        """Where a job of ``kind`` runs: the serving executor, except that LOCAL_KINDS run
        on workers of this machine (started on first use) when that executor is not."""
        if kind not in LOCAL_KINDS or isinstance(self.executor, LocalExecutor):
            return self.executor
        if self._local is None:
            log_dir = self.store.workspace / "logs" / "workers"
            self._local = LocalExecutor(jobs.max_parallel_runs(), log_dir, keep_warm=0)
        return self._local

    def _running(self) -> dict[str, Executor]:
        return {job_id: ex for ex in self._executors() for job_id in ex.running()}

    # ---------------------------------------------------------------- the loop
    def _write_runtime_file(self, slots: int | None = None) -> None:
        """Name this process as the queue's server, with how many jobs its executor runs at
        once (the waiting pages' estimates use it)."""
        path = self.store.workspace / RUNTIME_FILE
        self.store.workspace.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        record: dict[str, Any] = {"pid": os.getpid(), "since": self._since}
        if slots is not None:
            record["slots"] = slots
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                self._tick()
            except Exception:  # a bad tick must not end the queue: log it and go on
                traceback.print_exc()

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._recovered > RECOVER_S:
            self._recovered = now
            jobs.recover(self.store)
        running = self._running()
        for job_id, executor in running.items():
            job = self.store.run(job_id)
            if (job is None or job.stop_requested) and job_id not in self._stopping:
                self._stopping.add(job_id)
                executor.stop(job_id)
        if running and now - self._beat > HEARTBEAT_S:
            self._beat = now
            for job_id in running:
                with contextlib.suppress(Exception):
                    self.store.update_run(job_id, heartbeat=time.time())
        self._claim(len(running))
        for executor in self._executors():
            if isinstance(executor, LocalExecutor):
                executor.reap_idle(REAP_IDLE_S)

    def _claim(self, busy: int) -> None:
        capacity = self.executor.capacity()
        if capacity != self._slots:  # a cluster grew or shrank
            self._slots = capacity
            self._write_runtime_file(capacity)
        while True:
            job = jobs._claim_next(self.store, capacity, quick_lane=jobs.QUICK_LANE)
            if job is None:
                return
            busy += 1
            threads = max(1, jobs.cpu_count() // busy)
            self._folders[job.id] = Path(job.run_dir)
            try:
                executor = self.executor_for(job.kind)
                executor.start(job_spec(self.store, job, threads), self._on_event)
            except Exception as exc:  # no worker could be started
                record(
                    self.store,
                    job.id,
                    Path(job.run_dir),
                    {"t": "end", "status": "failed", "error": f"Could not start the job: {exc}"},
                )

    def _on_event(self, job_id: str, event: dict[str, Any]) -> None:
        folder = self._folders.get(job_id)
        if folder is None:
            job = self.store.run(job_id)
            if job is None:
                return
            folder = self._folders[job_id] = Path(job.run_dir)
        try:
            record(self.store, job_id, folder, event)
        except Exception:  # a full disk or a removed job: the worker goes on either way
            traceback.print_exc()
        if event.get("t") == "end":
            self._folders.pop(job_id, None)
            self._stopping.discard(job_id)
            self.poke()  # a slot is free


def supervisor(workspace: Path, prewarm: bool | None = None) -> Supervisor:
    """This process's supervisor of ``workspace``, started on first use."""
    key = _key(workspace)
    with _lock:
        sup = _here.get(key)
        if sup is None:
            sup = _here[key] = Supervisor(key)
    if prewarm is None:
        prewarm = os.environ.get("TL_STUDIO_PREWARM", "1") != "0"
    if prewarm:
        sup.executor.prewarm()
    return sup


def running_here(workspace: Path) -> Supervisor | None:
    """The supervisor of ``workspace`` in this process, if it serves the queue."""
    return _here.get(_key(workspace))


def served_elsewhere(workspace: Path) -> bool:
    """True when another live process (the app server) serves ``workspace``'s queue."""
    try:
        pid = int(json.loads((_key(workspace) / RUNTIME_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return pid != os.getpid() and jobs._pid_alive(pid)


def shutdown(workspace: Path) -> None:
    """Stop serving ``workspace`` in this process."""
    with _lock:
        sup = _here.pop(_key(workspace), None)
    if sup is not None:
        sup.close()


@atexit.register
def shutdown_all() -> None:
    """Stop every supervisor of this process (at exit; tests call it between workspaces)."""
    for key in list(_here):
        shutdown(key)
