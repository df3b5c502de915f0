"""Executors: where a claimed job runs. The first one keeps warm worker processes on this machine.

An :class:`Executor` takes a job (a :class:`~tl_core.config.JobSpec`) and hands its events
back to the caller's ``on_event``; it knows nothing of the store, the queue or the pages.
The :class:`Supervisor` (one per workspace, in the app server's process) is the other half:
it claims jobs from the fair queue while the executor has room, applies every event to the
store (:func:`tl_core.runs.worker.record`), and passes Stop on.

:class:`LocalExecutor` keeps a small pool of long-lived worker processes (torch imported,
recent models loaded). A job goes to an idle worker; a crash or an out-of-memory kill ends
that worker only (its job becomes ``interrupted`` or ``failed`` with a message) and the next
job gets a fresh one. Workers leave after an idle time or a memory ceiling (see
:mod:`tl_core.runs.worker`). Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from tl_core.config import JobSpec

__all__ = ["WORKER_ENV", "Executor", "LocalExecutor", "OnEvent"]

OnEvent = Callable[[str, dict[str, Any]], None]  # (job id, event)

# glibc malloc tuning for the worker: keep freed memory instead of returning it to the OS
# between steps; measured to speed up CPU training and inference (docs/PERFORMANCE.md).
WORKER_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736",
}


class Executor(Protocol):
    """Runs jobs somewhere; reports their events; stops them on request."""

    def capacity(self) -> int:
        """How many jobs may run at once."""
        ...

    def running(self) -> list[str]:
        """The ids of the jobs running now."""
        ...

    def start(self, spec: JobSpec, on_event: OnEvent) -> None:
        """Run ``spec``; every event (``started``, ``status``, ``end``, ...) goes to
        ``on_event``. A job whose worker is lost gets an ``end`` event saying so."""
        ...

    def stop(self, job_id: str) -> None:
        """Ask a running job to stop at its next step."""
        ...

    def shutdown(self) -> None:
        """Stop every worker (their jobs end as interrupted)."""
        ...

    def prewarm(self) -> None:
        """Get a worker ready ahead of the first job (in the background; idempotent)."""
        ...


@dataclass
class _Worker:
    proc: subprocess.Popen[str]
    log: Path
    job: JobSpec | None = None
    on_event: OnEvent | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    idle_since: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: dict[str, Any]) -> bool:
        stdin: IO[str] | None = self.proc.stdin
        if stdin is None:
            return False
        try:
            with self.lock:
                stdin.write(json.dumps(message) + "\n")
                stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True


def _lost_message(kind: str, returncode: int | None) -> str:
    killed = returncode is not None and returncode < 0
    how = (
        "was killed (out of memory, or stopped by the system)"
        if returncode == -signal.SIGKILL
        else f"stopped unexpectedly (signal {-returncode})"
        if killed
        else "stopped unexpectedly"
    )
    what = "training process" if kind == "train" else "process that ran this job"
    return f"The {what} {how}."


class LocalExecutor:
    """A pool of warm worker processes on this machine, at most ``slots`` busy at once."""

    def __init__(self, slots: int, log_dir: Path, keep_warm: int = 1) -> None:
        self.slots = max(1, slots)
        self.keep_warm = keep_warm
        self.log_dir = log_dir
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    # -------------------------------------------------------------- pool
    def _spawn(self) -> _Worker:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = (
            self.log_dir / f"worker-{time.strftime('%Y%m%d-%H%M%S')}-{len(self._workers)}.log"
        )
        from tl_core.runs.worker import POOL_COMMAND

        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, *POOL_COMMAND],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                encoding="utf-8",
                env={**os.environ, **WORKER_ENV},
                start_new_session=True,  # Ctrl-C of the server reaches it through the pipe
            )
        worker = _Worker(proc, log_path)
        threading.Thread(target=self._read, args=(worker,), daemon=True).start()
        self._workers.append(worker)
        return worker

    def prewarm(self) -> None:
        """Start workers until ``keep_warm`` are alive, so a first click finds one ready."""
        with self._lock:
            alive = [w for w in self._workers if w.proc.poll() is None]
            for _ in range(max(0, min(self.keep_warm, self.slots) - len(alive))):
                self._spawn()

    def _read(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None
        for line in worker.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("t")
            if kind == "ready":  # warmed up, or done with its job
                worker.idle_since = time.monotonic()
                worker.ready.set()
                continue
            if kind == "bye":
                break
            job_id = event.pop("id", None)
            if worker.on_event is not None and job_id is not None:
                worker.on_event(job_id, event)
            if kind == "end":
                with self._lock:
                    worker.job, worker.on_event = None, None
        returncode = worker.proc.wait()
        with self._lock:
            job, on_event = worker.job, worker.on_event
            worker.job, worker.on_event = None, None
            if worker in self._workers:
                self._workers.remove(worker)
        if job is not None and on_event is not None:
            status = "interrupted" if job.kind == "train" else "failed"
            message = _lost_message(job.kind, returncode)
            on_event(job.id, {"t": "end", "status": status, "message": message, "error": message})

    # -------------------------------------------------------------- Executor
    def capacity(self) -> int:
        return self.slots

    def running(self) -> list[str]:
        with self._lock:
            return [w.job.id for w in self._workers if w.job is not None]

    def start(self, spec: JobSpec, on_event: OnEvent) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            free = [w for w in self._workers if w.job is None and w.proc.poll() is None]
            free.sort(key=lambda w: not w.ready.is_set())  # warm ones first
            worker = free[0] if free else self._spawn()
            worker.job, worker.on_event = spec, on_event
            worker.ready.clear()
        # If the pipe is broken, the reader sees the worker end and reports the job lost.
        worker.send({"t": "job", "spec": spec.to_dict()})

    def stop(self, job_id: str) -> None:
        with self._lock:
            worker = next((w for w in self._workers if w.job and w.job.id == job_id), None)
        if worker is not None:
            worker.send({"t": "stop", "id": job_id})

    def reap_idle(self, idle_s: float) -> None:
        """End workers idle for longer than ``idle_s``, keeping ``keep_warm`` of them."""
        now = time.monotonic()
        with self._lock:
            idle = [w for w in self._workers if w.job is None and w.ready.is_set()]
            extra = idle[self.keep_warm :]
        for worker in extra:
            if now - worker.idle_since > idle_s:
                worker.send({"t": "quit"})

    def ready_count(self) -> int:
        """Workers started and waiting for a job."""
        with self._lock:
            return sum(1 for w in self._workers if w.job is None and w.ready.is_set())

    def pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._workers if w.proc.poll() is None]

    def shutdown(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._workers)
        for worker in workers:
            worker.send({"t": "quit"})
            with contextlib.suppress(OSError):
                if worker.proc.stdin:
                    worker.proc.stdin.close()
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
