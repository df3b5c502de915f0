"""The server side of the runtime: claim jobs fairly, run them on an executor, record.

One :class:`Supervisor` per workspace and process (the app server's, started by
:func:`serve`), on a background thread. Every tick (a quarter of a second, or at once when
a page pokes it through :func:`pump`) it passes Stop requests on, claims jobs from the fair
queue (:mod:`tl_core.runs.jobs`) while the executor has room, and has what the workers
report written by :mod:`tl_core.runs.recording`: the store has one writer for jobs, and
workers never open it. The file ``runtime.json`` in the workspace names the serving
process, so a command line started beside the app leaves the queue to it. Where no server
serves the workspace (the command line, a test), :func:`pump` starts a lone worker process
per claimed job instead: ``python -m tl_core worker JOB_ID``, the same entry point a user can
run. Either way a crash or an out-of-memory kill never takes the web server down. Nothing
here imports torch.

It also watches that running jobs make progress. The heartbeat it renews says only that
this server owns the job; whether the job works is judged by its events. A job that reports
nothing for longer than its phase's limit is marked stalled (its message says so, and Stop
ends it); one that does not end within ``STOP_GRACE_S`` of a Stop, or stays stalled for
``STALL_END_FACTOR`` times its limit, is ended by its executor from outside.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_core.events import End, Epoch, Event, Progress, Started, Step, describe
from tl_core.runs import jobs
from tl_core.runs.executor import WORKER_ENV, EndReason, Executor, LocalExecutor
from tl_core.runs.kinds import KINDS, resumable
from tl_core.runs.recording import job_spec, record
from tl_core.runs.store import Job, Store

__all__ = [
    "STALLED",
    "Supervisor",
    "is_stalled",
    "make_executor",
    "pump",
    "running_here",
    "serve",
    "served_elsewhere",
    "shutdown_all",
    "supervisor",
    "worker_command",
]

TICK_S = 0.25
HEARTBEAT_S = 10.0  # a running job's heartbeat is renewed this often while its worker lives
RECOVER_S = 2.0
REAP_IDLE_S = 600.0  # workers beyond the warm one leave after this long without work
RUNTIME_FILE = "runtime.json"
# A running job that reports nothing (no progress, step, epoch or log line) for longer than
# its limit is stalled. Between counted events (steps, epochs, progress with a count) the
# limit is STALL_S; after progress without one ("Loading the model", "Training" before its
# first step, "Scoring the best model ...") the job may work for long without a word:
# SLOW_STALL_S.
# A job's own longest gap so far (times STALL_GAP_FACTOR) raises either, so a slow machine
# is not flagged. Environment: TL_STUDIO_STALL_S, TL_STUDIO_SLOW_STALL_S,
# TL_STUDIO_STOP_GRACE_S (tests set them short).
STALL_S = 300.0
SLOW_STALL_S = 900.0
STALL_GAP_FACTOR = 5.0
STALL_END_FACTOR = 3.0  # stalled this many limits with nobody pressing Stop: ended
STOP_GRACE_S = 5.0  # a job not ended this long after its Stop was passed on: ended
STALLED = "Stalled:"  # how a stalled job's message begins

_lock = threading.Lock()
_here: dict[Path, Supervisor] = {}


def _key(workspace: Path) -> Path:
    return Path(workspace).expanduser().resolve()


def _seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ[name]))
    except (KeyError, ValueError):
        return default


def is_stalled(run: Job) -> bool:
    """True when ``run`` is running but has reported nothing for longer than its limit."""
    return run.active and (run.message or "").startswith(STALLED)


def _minutes(seconds: float) -> str:
    minutes = max(1, int(seconds // 60))
    return "a minute" if minutes == 1 and seconds < 120 else f"{minutes} minutes"


def stalled_message(kind: str, silent_s: float, end_after_s: float) -> str:
    """The message of a stalled job: what is wrong, what to do, and what happens else."""
    what = "training" if kind == "train" else "job"
    silent = f"{silent_s:.0f} seconds" if silent_s < 60 else f"over {_minutes(silent_s)}"
    after = f"{end_after_s:.0f} seconds" if end_after_s < 60 else _minutes(end_after_s)
    resume = " (Resume then goes on from its last finished epoch)" if resumable(kind) else ""
    return (
        f"{STALLED} the {what} has reported no progress for {silent}. Press Stop to end "
        f"it{resume}; otherwise it is ended by itself if it stays stuck for {after} more."
    )


@dataclass
class _Progress:
    """What the supervisor knows of a running job's progress (times are monotonic)."""

    kind: str
    last: float = field(default_factory=time.monotonic)  # its latest event
    phase: str = describe(Progress("start"))  # what its latest progress said
    counted: bool = False  # its latest status, step or epoch counted its progress
    longest: dict[bool, float] = field(default_factory=lambda: {True: 0.0, False: 0.0})
    stalled: bool = False
    stop_at: float | None = None  # when its Stop was passed on
    ended: bool = False  # the executor was told to end it

    def limit(self) -> float:
        """How long this job may be silent now before it counts as stalled."""
        base = (
            _seconds("TL_STUDIO_STALL_S", STALL_S)
            if self.counted
            else _seconds("TL_STUDIO_SLOW_STALL_S", SLOW_STALL_S)
        )
        return max(base, STALL_GAP_FACTOR * self.longest[self.counted])

    def quiet(self, now: float) -> bool:
        """Silent for longer than its limit: stalled."""
        return now - self.last > self.limit()

    def lost(self, now: float) -> bool:
        """Stalled for ``STALL_END_FACTOR`` limits: ended, Stop or not."""
        return now - self.last > STALL_END_FACTOR * self.limit()

    def deaf(self, now: float) -> bool:
        """Stop was passed on and the job does not answer. A job that reports counted
        progress reads Stop between two counted events: it is deaf once it has been silent
        for ``STOP_GRACE_S`` (or twice its longest such gap) since the Stop. One in a phase
        without counted events (loading the model, the final scoring) may not read Stop
        until the phase ends: deaf once it is stalled. Any job is deaf once its limit has
        passed since the Stop."""
        if now - (self.stop_at or now) > self.limit():
            return True
        if not self.counted:
            return self.quiet(now)
        grace = max(_seconds("TL_STUDIO_STOP_GRACE_S", STOP_GRACE_S), 2 * self.longest[True])
        return now - max(self.last, self.stop_at or now) > grace

    def heard(self, event: Event, now: float) -> None:
        """An event came: the gap before it counts towards this phase's longest (unless it
        was a stall), then the phase follows the event."""
        gap = now - self.last
        if not self.stalled:
            self.longest[self.counted] = max(self.longest[self.counted], gap)
        self.last = now
        match event:
            case Progress():
                self.phase, self.counted = describe(event), event.counted
            case Step() | Epoch():
                self.counted = True
            case Started():
                self.phase, self.counted = describe(Progress("start")), False


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
        self._local: LocalExecutor | None = None  # for local-only kinds beside a cluster
        self._folders: dict[str, Path] = {}
        self._stopping: set[str] = set()
        self._progress: dict[str, _Progress] = {}
        self._progress_lock = threading.RLock()  # also orders a stall mark and the events
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
        """Where a job of ``kind`` runs: the serving executor, except that kinds that may run
        only here (their entry's ``where``, :mod:`tl_core.runs.kinds`: they read this
        machine's disk, a folder path typed in the app, an upload saved beside the server) run
        on workers of this machine (started on first use) when that executor is not."""
        found = KINDS.get(kind)
        local_only = found is not None and found.where == "local"
        if not local_only or isinstance(self.executor, LocalExecutor):
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
        running = self._running()
        if now - self._recovered > RECOVER_S:
            self._recovered = now
            jobs.recover(self.store, held=set(running))
        for job_id, executor in running.items():
            job = self.store.job(job_id)
            if (job is None or job.stop_requested) and job_id not in self._stopping:
                self._stopping.add(job_id)
                self._watch(job_id, job.kind if job else "").stop_at = now
                executor.stop(job_id)
            self._check(job_id, executor, now)
        self._forget_ended(running)
        if running and now - self._beat > HEARTBEAT_S:
            self._beat = now
            for job_id in running:
                with contextlib.suppress(Exception):
                    self.store.update_job(job_id, heartbeat=time.time())
        self._claim(len(running))
        for executor in self._executors():
            if isinstance(executor, LocalExecutor):
                executor.reap_idle(REAP_IDLE_S)

    def _watch(self, job_id: str, kind: str) -> _Progress:
        """The progress record of ``job_id`` (started now if the job is new to it)."""
        with self._progress_lock:
            progress = self._progress.get(job_id)
            if progress is None:
                progress = self._progress[job_id] = _Progress(kind)
            return progress

    def _forget_ended(self, running: dict[str, Executor]) -> None:
        with self._progress_lock:
            for job_id in [j for j in self._progress if j not in running]:
                del self._progress[job_id]

    def _check(self, job_id: str, executor: Executor, now: float) -> None:
        """End a job that did not answer its Stop or stays stalled for far longer than its
        limit; mark one that reports nothing for longer than its limit stalled."""
        with self._progress_lock:
            progress = self._watch(job_id, "")
            if progress.ended:
                return
            if progress.stop_at is not None:
                reason: EndReason | None = "stop" if progress.deaf(now) else None
            else:
                reason = "stalled" if progress.lost(now) else None
                if reason is None and progress.quiet(now) and not progress.stalled:
                    progress.stalled = True
                    limit = progress.limit()
                    message = stalled_message(
                        progress.kind, now - progress.last, (STALL_END_FACTOR - 1) * limit
                    )
                    with contextlib.suppress(Exception):  # a full disk: the page misses it
                        self.store.update_job(job_id, message=message)
            progress.ended = reason is not None
        if reason is not None:
            executor.end(job_id, reason)

    def _unstall(self, job_id: str, progress: _Progress, event: Event) -> None:
        """Progress came back: the job's message is its phase again (a progress event wrote
        its own already; a Stop asked meanwhile keeps "Stopping")."""
        progress.stalled = False
        if isinstance(event, Progress) or progress.stop_at is not None:
            return
        job = self.store.job(job_id)
        if job is not None and job.active and not job.stop_requested:
            self.store.update_job(job_id, message=progress.phase)

    def _claim(self, busy: int) -> None:
        capacity = self.executor.capacity()
        if capacity != self._slots:  # a cluster grew or shrank
            self._slots = capacity
            self._write_runtime_file(capacity)
        while True:
            job = jobs.claim_next(self.store, capacity, quick_lane=jobs.QUICK_LANE)
            if job is None:
                return
            busy += 1
            threads = max(1, jobs.cpu_count() // busy)
            self._folders[job.id] = Path(job.run_dir)
            with self._progress_lock:
                self._progress[job.id] = _Progress(job.kind)
            try:
                executor = self.executor_for(job.kind)
                executor.start(job_spec(self.store, job, threads), self._on_event)
            except Exception as exc:  # no worker could be started
                failed = End("failed", error=f"Could not start the job: {exc}")
                record(self.store, job.id, Path(job.run_dir), failed)

    def _on_event(self, job_id: str, event: Event) -> None:
        """One event of a running job (typed by its executor): the stall watch hears it,
        the store records it; an end frees the job's slot."""
        folder = self._folders.get(job_id)
        if folder is None:
            job = self.store.job(job_id)
            if job is None:
                return
            folder = self._folders[job_id] = Path(job.run_dir)
        with self._progress_lock:  # a stall is never marked between an event and its record
            progress = self._watch(job_id, "")
            stalled = progress.stalled
            progress.heard(event, time.monotonic())
            try:
                record(self.store, job_id, folder, event)
                if stalled and not isinstance(event, End):
                    self._unstall(job_id, progress, event)
            except Exception:  # a full disk or a removed job: the worker goes on either way
                traceback.print_exc()
            if isinstance(event, End):
                self._progress.pop(job_id, None)
        if isinstance(event, End):
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
    return pid != os.getpid() and jobs.pid_alive(pid)


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


# ---------------------------------------------------------------------------- keeping it moving


def serve(store: Store, prewarm: bool | None = None) -> None:
    """Run this workspace's queue from this process (the app server): warm workers, fair
    claims, every event written here. Idempotent; ``prewarm`` starts a worker at once
    (default: unless ``TL_STUDIO_PREWARM=0``)."""
    supervisor(store.workspace, prewarm).poke()


def pump(store: Store, limit: int | None = None) -> list[str]:
    """Keep the queue moving; return the ids of the jobs this call started.

    In a process that serves the queue (:func:`serve`), this wakes its supervisor. Elsewhere,
    when no server serves this workspace, queued jobs start in lone worker processes.
    """
    here = running_here(store.workspace)
    if here is not None:
        here.poke()
        return []
    jobs.recover(store)
    if served_elsewhere(store.workspace):
        return []
    started = []
    while (run := jobs.claim_next(store, limit or jobs.max_parallel_runs())) is not None:
        _spawn(store, run)
        started.append(run.id)
    return started


def worker_command(store: Store, run_id: str) -> list[str]:
    """The command line of a lone worker for the job ``run_id``."""
    return [sys.executable, "-m", "tl_core", "worker", run_id, "--workspace", str(store.workspace)]


def _spawn(store: Store, run: Job) -> None:
    """A lone worker process for one job (no server is running to give it a warm one)."""
    log = open(Path(run.run_dir) / "worker.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            worker_command(store, run.id),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **WORKER_ENV},
        )
    except OSError as exc:
        store.update_job(run.id, status="failed", error=f"Could not start the job: {exc}")
        return
    finally:
        log.close()
    store.update_job(run.id, pid=proc.pid, heartbeat=time.time())
    # Reap the child when it exits so it never lingers as a zombie.
    threading.Thread(target=proc.wait, daemon=True).start()
