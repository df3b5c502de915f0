"""Executors: where a claimed job runs. The first one keeps warm worker processes on this machine.

An :class:`Executor` takes a job (a :class:`~tl_core.runs.kinds.JobSpec`) and hands its
events back to the caller's ``on_event``, typed (:mod:`tl_core.events`): the wire form a
worker's pipe or the Ray channel carries is read back (:func:`read_event`) where it arrives,
and the ends an executor gives a job itself (its worker lost, or ended from outside) are
:class:`~tl_core.events.End` objects too. It knows nothing of the store, the queue or the
pages. The :class:`~tl_core.runs.supervisor.Supervisor` (one per workspace, in the app
server's process) is the other half: it claims jobs from the fair queue while the executor
has room, has every event applied to the store (:func:`tl_core.runs.recording.record`), and
passes Stop on.

:class:`LocalExecutor` keeps a small pool of long-lived worker processes (torch imported,
recent models loaded). A job goes to an idle worker; a crash or an out-of-memory kill ends
that worker only (its job becomes ``interrupted`` or ``failed`` with a message) and the next
job gets a fresh one. Workers leave after an idle time or a memory ceiling (see
:mod:`tl_core.runs.worker`). A job that does not answer (a stopped or deadlocked process) is
ended from outside on the supervisor's word (:meth:`LocalExecutor.end`): SIGTERM to its
worker's process group, then SIGKILL. Nothing here imports torch.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from tl_core import events
from tl_core.events import End, Event
from tl_core.runs.endings import lost
from tl_core.runs.kinds import JobSpec, resumable

__all__ = [
    "TERM_GRACE_S",
    "WORKER_ENV",
    "EndReason",
    "Executor",
    "LocalExecutor",
    "OnEvent",
    "ended_event",
    "ended_status",
    "lost_end",
    "read_event",
]

OnEvent = Callable[[str, Event], None]  # (job id, event)
# Why a job is ended from outside: Stop was not answered in time, or it reported nothing
# for much longer than its limit (see tl_core.runs.supervisor).
EndReason = Literal["stop", "stalled"]
TERM_GRACE_S = 5.0  # after SIGTERM, a worker that is still there gets SIGKILL

# glibc malloc tuning for the worker: keep freed memory instead of returning it to the OS
# between steps; measured to speed up CPU training and inference (docs/PERFORMANCE.md).
WORKER_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736",
}
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters


def tune_allocator() -> bool:
    """The worker's allocator settings (:data:`WORKER_ENV`) for this running process, for
    commands that train or predict in it (the command line): glibc's ``mallopt`` with the
    same two settings (the trim threshold capped at the 2 GiB ``mallopt`` takes). False where
    the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


class Executor(Protocol):
    """Runs jobs somewhere; reports their events; stops them on request."""

    def capacity(self) -> int:
        """How many jobs may run at once."""
        ...

    def running(self) -> list[str]:
        """The ids of the jobs running now."""
        ...

    def start(self, spec: JobSpec, on_event: OnEvent) -> None:
        """Run ``spec``; every event (Started, Progress, ..., End) goes to ``on_event``.
        A job whose worker is lost gets an End saying so."""
        ...

    def stop(self, job_id: str) -> None:
        """Ask a running job to stop at its next step."""
        ...

    def end(self, job_id: str, reason: EndReason) -> None:
        """End a running job that does not answer, from outside (its process is terminated,
        then killed); its End then says why (``stopped`` when Stop was asked)."""
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
    ending: EndReason | None = None  # ended from outside, and why

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


def term_grace_s() -> float:
    """Seconds between SIGTERM and SIGKILL (``TL_STUDIO_TERM_GRACE_S`` for tests)."""
    try:
        return max(0.0, float(os.environ["TL_STUDIO_TERM_GRACE_S"]))
    except (KeyError, ValueError):
        return TERM_GRACE_S


def read_event(raw: Any) -> Event | None:
    """The typed event a wire form holds (see :func:`tl_core.events.from_dict`); None for
    anything else (a message this version does not know)."""
    if not isinstance(raw, dict):
        return None
    try:
        return events.from_dict(raw)
    except (ValueError, KeyError, TypeError):
        return None


def ended_status(kind: str, reason: EndReason | None) -> str:
    """The status of a job whose process is gone: ``stopped`` when Stop was asked, else
    ``interrupted`` (a resumable kind, training: Resume goes on) or ``failed`` (Try again)."""
    if reason == "stop":
        return "stopped"
    return "interrupted" if resumable(kind) else "failed"


def lost_end(kind: str, returncode: int | None, reason: EndReason | None) -> End:
    """The end of a job whose process went away before it reported its own (``returncode``
    its exit status, when known; ``reason`` why the server ended it, if it did)."""
    status = ended_status(kind, reason)
    message = lost(kind, returncode, reason)
    return End(status, message, error=message if status == "failed" else None)


def ended_event(kind: str, end: End, reason: EndReason) -> End:
    """A job's own end after it was ended from outside: the signal it was sent made it end
    ``interrupted`` (or fail); say why instead. A job that ended by itself meanwhile
    (finished, stopped) keeps its end."""
    if end.status not in ("interrupted", "failed"):
        return end
    why = lost_end(kind, None, reason)
    return replace(end, status=why.status, message=why.message, error=why.error)


def _signal_group(proc: subprocess.Popen[str], signum: int) -> None:
    """Send ``signum`` to the process group ``proc`` leads, while ``proc`` is not reaped."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL (and SIGCONT, so a stopped process dies at once) to ``proc``'s group."""
    _signal_group(proc, signal.SIGKILL)
    _signal_group(proc, signal.SIGCONT)


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
        """The worker's output: its own messages (``ready``, ``bye``) and its job's events,
        typed as they are read and passed on; a worker that ends mid-job ends its job."""
        assert worker.proc.stdout is not None
        for line in worker.proc.stdout:
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            said = raw.get("t") if isinstance(raw, dict) else None
            if said == "ready":  # warmed up, or done with its job
                worker.idle_since = time.monotonic()
                worker.ready.set()
                continue
            if said == "bye":
                break
            job_id = raw.pop("id", None) if isinstance(raw, dict) else None
            event = read_event(raw)
            if event is None:
                continue
            if isinstance(event, End) and worker.ending is not None and worker.job is not None:
                event = ended_event(worker.job.kind, event, worker.ending)
            if worker.on_event is not None and job_id is not None:
                worker.on_event(job_id, event)
            if isinstance(event, End):
                with self._lock:
                    worker.job, worker.on_event = None, None
        returncode = worker.proc.wait()
        with self._lock:
            job, on_event = worker.job, worker.on_event
            worker.job, worker.on_event = None, None
            if worker in self._workers:
                self._workers.remove(worker)
        if job is not None and on_event is not None:
            on_event(job.id, lost_end(job.kind, returncode, worker.ending))

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

    def end(self, job_id: str, reason: EndReason) -> None:
        """SIGTERM to the worker's process group (it was started in a session of its own:
        its helpers go too), then SIGKILL with SIGCONT after ``TERM_GRACE_S`` if it is still
        there. The reader then reports the job's end; the next job gets a fresh worker."""
        with self._lock:
            worker = next((w for w in self._workers if w.job and w.job.id == job_id), None)
            if worker is None or worker.ending is not None:
                return
            worker.ending = reason
        _signal_group(worker.proc, signal.SIGTERM)
        timer = threading.Timer(term_grace_s(), _kill_group, args=(worker.proc,))
        timer.daemon = True
        timer.start()

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
