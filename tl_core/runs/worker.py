"""The job side: run one job to its end, the same code in a pool worker, a Ray node and the CLI.

A job runs as :func:`execute` (a :class:`~tl_core.runs.kinds.JobSpec` in, events out through
a :class:`Sink`): its kind's task (:mod:`tl_core.runs.kinds`; a training run's is
:func:`train`, the others are in :mod:`tl_core.runs.tasks`) with a :class:`JobContext`. It
never opens the store: what it reports is applied to the store on the server side
(:func:`tl_core.runs.recording.record`), in the process that owns the store: the app server
for pool workers (the events travel over the worker's pipe, see :mod:`tl_core.runs.executor`),
or the process itself for ``python -m tl_core train`` and ``python -m tl_core worker JOB_ID``.

A pool worker (:data:`POOL_COMMAND`): it imports torch once, then runs the jobs
it is sent one after another (:func:`serve`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

from tl_core import diskspace
from tl_core.config import EpochRow, RunSpec, StepRow
from tl_core.errors import DiskFullError, StudioError
from tl_core.events import End, Epoch, Event, Log, Progress, Rewind, Started, Step
from tl_core.runs import endings, interrupt
from tl_core.runs.kinds import JobSpec, entry
from tl_core.runs.tasks import STOPPED

__all__ = [
    "POOL_COMMAND",
    "STOP_POLL_S",
    "JobContext",
    "Sink",
    "execute",
    "placement",
    "serve",
    "train",
    "warm_up",
]

POOL_COMMAND = ["-c", "from tl_core.runs.worker import serve; raise SystemExit(serve())"]
STOP_POLL_S = 0.25  # how often the stop flag is read: Stop acts within about a second
PROGRESS_EVERY_S = 0.2  # progress events are thinned to this rate
# A pool worker leaves once it has been idle this long or grown past this many MB.
IDLE_EXIT_S = float(os.environ.get("TL_STUDIO_WORKER_IDLE_S", "1800"))
MEMORY_CEILING_MB = float(os.environ.get("TL_STUDIO_WORKER_MAX_MB", "3000"))
WORKER_NICE = 10  # pool workers' scheduling priority below the server's


class Sink(Protocol):
    """Where a running job's events go, and where its stop request comes from."""

    def emit(self, event: Event) -> None: ...

    def stop_asked(self) -> bool: ...


class JobContext:
    """What a job sees of the world: progress, log lines, metrics out; the stop flag in.

    It is also the engine's callbacks object for training jobs (on_progress, on_log,
    on_step, on_epoch, on_resume, should_stop).
    """

    def __init__(self, spec: JobSpec, sink: Sink) -> None:
        self.spec = spec
        self.sink = sink
        self._checked = 0.0
        self._sent = 0.0
        self._stop = False
        self.interrupted: int | None = None  # the signal that asked this job to stop

    def interrupt(self, signum: int) -> None:
        """A signal came: stop at the next step; the job is then marked interrupted."""
        self.interrupted = signum
        self._stop = True

    def progress(self, progress: Progress) -> None:
        """Pass ``progress`` on; counted progress at most every ``PROGRESS_EVERY_S`` (a
        phase's last count and every uncounted phase always)."""
        done, total = progress.done, progress.total
        if done is not None and total is not None:
            now = time.monotonic()
            if done < total and now - self._sent < PROGRESS_EVERY_S:
                return
            self._sent = now
        self.sink.emit(progress)

    on_progress = progress

    def log(self, text: str) -> None:
        self.sink.emit(Log(text))

    on_log = log

    def on_step(self, m: StepRow) -> None:
        self.sink.emit(Step(m))

    def on_epoch(self, m: EpochRow) -> None:
        self.sink.emit(Epoch(m))

    def on_resume(self, epoch: int) -> None:
        """A resumed run goes on from ``epoch`` (the one its last.pt holds): what was
        recorded after it is trained again, so each epoch is recorded once."""
        self.sink.emit(Rewind(epoch))

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._checked >= STOP_POLL_S:
            self._checked = now
            self._stop = self.sink.stop_asked()
        return self._stop


# ---------------------------------------------------------------------------- the job itself


def _train(spec: JobSpec, ctx: JobContext) -> tuple[str, dict[str, Any]]:
    from tl_core.data import review
    from tl_core.data.dataset import DatasetManifest, split_dataset
    from tl_core.training.engine import fit

    run: RunSpec = spec.params
    manifest = DatasetManifest.load(Path(spec.data_dir))
    split = split_dataset(manifest, run.config.val_fraction, run.config.seed)
    corrections = review.Corrections.from_dict(run.corrections)
    if corrections:
        split = review.apply(split, corrections, manifest.classes)
        ctx.log(f"Label review applied: {corrections.describe()}.")
    result = fit(
        run.config,
        split,
        manifest.root,
        manifest.classes,
        Path(spec.folder),
        ctx,
        resume=spec.resume,
    )
    return result.status, asdict(result)


def train(spec: JobSpec, ctx: JobContext) -> dict[str, Any]:
    """The task of a training run (the ``train`` entry of :mod:`tl_core.runs.kinds`): the
    engine's fit on the run's split; the result is its TrainResult as a dict, whose
    ``status`` says whether it finished or stopped."""
    return _train(spec, ctx)[1]


def _run_task(spec: JobSpec, ctx: JobContext) -> tuple[str, dict[str, Any]]:
    """The job's status and result: the task of its kind run to its end (UnknownKindError
    for a kind this version does not know)."""
    kind = entry(spec.kind)
    result = kind.load_task()(spec, ctx)
    if kind.reports_status:
        return str(result["status"]), result
    return ("stopped" if result == STOPPED or ctx.should_stop() else "finished"), result


def _log_failure(folder: Path, exc: BaseException) -> None:
    """One line in the run's log for a failure the user's sentence names; none when the
    folder cannot take it."""
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} ended by {type(exc).__name__}: {exc}\n"
    with contextlib.suppress(OSError), open(folder / "run.log", "a", encoding="utf-8") as log:
        log.write(line)


def _failure(spec: JobSpec, exc: BaseException) -> str:
    """The one sentence a failed job leaves for the user."""
    folder = Path(spec.folder)
    if isinstance(exc, StudioError) and not isinstance(exc, DiskFullError):
        return str(exc)
    cause = endings.cause_of(exc, folder)
    if cause is not None:  # a full disk, a read-only folder, no memory: no traceback
        if cause == "disk_full":  # a write no guard covered
            diskspace.remove_temporary(folder)
            if isinstance(exc, DiskFullError):
                return str(exc)
        _log_failure(folder, exc)
        resumable = (folder / "last.pt").exists()
        return endings.failure(spec.kind, cause, folder, resumable)
    if isinstance(exc, StudioError):
        return str(exc)
    print(f"job {spec.id} ({spec.kind}) failed:", file=sys.stderr)
    traceback.print_exc()
    return (
        f"{endings.what(spec.kind)} failed unexpectedly ({type(exc).__name__}: {exc}). "
        f"Details are in {folder / 'worker.log'}."
    )


def execute(spec: JobSpec, ctx: JobContext) -> End:
    """Run ``spec`` to its end; return its end (status, result, error, message).

    A signal that cut the job short is in ``end.signal``: the process should then exit.
    """
    if spec.threads > 0:
        os.environ["TL_STUDIO_THREADS"] = str(spec.threads)
    try:
        status, result = _run_task(spec, ctx)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM, cut short: last.pt is from before
        interrupt.hold()
        signum = ctx.interrupted or interrupt.signum_of(exc)
        return End("interrupted", interrupt.message(signum, spec.kind), signal=signum)
    except Exception as exc:
        if ctx.interrupted is not None:  # the stop a signal asked for ended it
            interrupt.hold()
            message = interrupt.message(ctx.interrupted, spec.kind)
            return End("interrupted", message, signal=ctx.interrupted)
        return End("failed", "Failed", error=_failure(spec, exc))
    if ctx.interrupted is not None and status == "stopped":  # last.pt saved
        interrupt.hold()
        message = interrupt.message(ctx.interrupted, spec.kind)
        return End("interrupted", message, signal=ctx.interrupted)
    return End(status, "Finished" if status == "finished" else "Stopped", result=result)


# ---------------------------------------------------------------------------- the pool worker


class _PipeSink:
    """Events sent to the server over the worker's pipe (their wire form, with the job's
    id); stops come back the same way."""

    def __init__(self, job_id: str, send: Any, stops: set[str]) -> None:
        self.job_id = job_id
        self._send = send
        self._stops = stops

    def emit(self, event: Event) -> None:
        self._send({**event.to_dict(), "id": self.job_id})

    def stop_asked(self) -> bool:
        return self.job_id in self._stops or "*" in self._stops


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):
        return 0.0


def placement(where: str = "this machine") -> str:
    """Where a job runs, for its details: the machine and the device plan."""
    import socket

    from tl_core.models.device import plan_compute

    return f"{where} ({socket.gethostname()}), {plan_compute().describe()}"


def warm_up() -> None:
    """Import what every job needs, so the first job of this worker starts at once."""
    import torch  # noqa: F401

    from tl_core.training import engine  # noqa: F401


def _yield_to_server() -> None:
    """Run below the app server's priority: a page answers at once even while every core
    trains (the jobs lose little: the server needs the CPU only in short bursts)."""
    with contextlib.suppress(AttributeError, OSError):  # Windows, or not allowed
        os.nice(WORKER_NICE)


def serve() -> int:
    """A pool worker: JSON lines in on stdin (``job``, ``stop``, ``quit``), events out.

    Standard output carries only the events; anything printed goes to standard error (the
    worker's log). The worker leaves when its server goes (end of stdin), when it has been
    idle for ``IDLE_EXIT_S``, or after a job that left it above ``MEMORY_CEILING_MB``.
    """
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    interrupt.install("worker")
    _yield_to_server()
    lock = threading.Lock()

    def send(event: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(event) + "\n")
            out.flush()

    inbox: queue.Queue[JobSpec | None] = queue.Queue()
    stops: set[str] = set()

    def read() -> None:
        for line in sys.stdin:
            msg = json.loads(line)
            if msg["t"] == "job":
                inbox.put(JobSpec.from_dict(msg["spec"]))
            elif msg["t"] == "stop":
                stops.add(msg["id"])
            elif msg["t"] == "quit":
                break
        stops.add("*")  # the server is gone or asked us to leave: stop what runs
        inbox.put(None)

    threading.Thread(target=read, daemon=True).start()
    warm_up()
    send({"t": "ready", "pid": os.getpid()})
    while True:
        try:
            spec = inbox.get(timeout=IDLE_EXIT_S)
        except queue.Empty:
            send({"t": "bye", "reason": "idle"})
            return 0
        if spec is None:
            return 0
        sink = _PipeSink(spec.id, send, stops)
        sink.emit(Started(os.getpid(), placement()))
        ctx = JobContext(spec, sink)
        with interrupt.graceful(ctx.interrupt):
            end = execute(spec, ctx)
        if "*" in stops and end.status == "stopped":  # the server went, not the user
            end = replace(end, status="interrupted", message=interrupt.message(2))
        sink.emit(end)
        if end.signal or "*" in stops:
            return 0
        if _rss_mb() > MEMORY_CEILING_MB:
            send({"t": "bye", "reason": f"memory ({_rss_mb():.0f} MB)"})
            return 0
        send({"t": "ready", "pid": os.getpid()})
