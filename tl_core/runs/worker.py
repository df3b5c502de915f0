"""Run one job to its end: the same code in a warm pool worker, a lone worker and the CLI.

A job runs as :func:`execute` (a :class:`~tl_core.config.JobSpec` in, events out through a
:class:`Sink`); it never opens the store. What it reports is applied to the store by
:func:`record`, in the process that owns the store: the app server for pool workers (the
events travel over the worker's pipe, see :mod:`tl_core.runs.executor`), or the process
itself for ``python -m tl_core train`` and ``python -m tl_core worker JOB_ID``.

A pool worker (:data:`POOL_COMMAND`): it imports torch once, then runs the jobs
it is sent one after another (:func:`serve`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tl_core import diskspace
from tl_core.config import EpochRow, JobSpec, RunSpec, StepRow, TrainConfig
from tl_core.errors import DiskFullError, StudioError
from tl_core.runs import endings, interrupt
from tl_core.runs.store import Run, Store

__all__ = [
    "POOL_COMMAND",
    "STOP_POLL_S",
    "JobContext",
    "Sink",
    "StoreSink",
    "execute",
    "flush_pending",
    "job_spec",
    "record",
    "run_worker",
    "serve",
]

_Row = TypeVar("_Row", StepRow, EpochRow)

POOL_COMMAND = ["-c", "from tl_core.runs.worker import serve; raise SystemExit(serve())"]
STOP_POLL_S = 0.25  # how often the stop flag is read: Stop acts within about a second
PROGRESS_EVERY_S = 0.2  # progress events are thinned to this rate
_COUNTED = re.compile(r"(?P<done>\d+)/(?P<total>\d+)$")  # "Decoding 12/300": a phase's progress
# A pool worker leaves once it has been idle this long or grown past this many MB.
IDLE_EXIT_S = float(os.environ.get("TL_STUDIO_WORKER_IDLE_S", "1800"))
MEMORY_CEILING_MB = float(os.environ.get("TL_STUDIO_WORKER_MAX_MB", "3000"))
WORKER_NICE = 10  # pool workers' scheduling priority below the server's


class Sink(Protocol):
    """Where a running job's events go, and where its stop request comes from."""

    def emit(self, event: dict[str, Any]) -> None: ...

    def stop_asked(self) -> bool: ...


class JobContext:
    """What a job sees of the world: progress, log lines, metrics out; the stop flag in.

    It is also the engine's callbacks object for training jobs (on_status, on_log,
    on_step, on_epoch, should_stop).
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

    def progress(self, done: int, total: int, text: str) -> None:
        now = time.monotonic()
        if done < total and now - self._sent < PROGRESS_EVERY_S:
            return
        self._sent = now
        self.sink.emit(
            {
                "t": "status",
                "message": text,
                "progress": done / max(total, 1),
                "done": done,
                "total": total,
            }
        )

    def on_status(self, message: str) -> None:
        counted = _COUNTED.search(message)
        if counted:
            done, total = int(counted["done"]), int(counted["total"])
            self.progress(done, total, message)
        else:
            self.sink.emit({"t": "status", "message": message, "progress": None})

    def log(self, text: str) -> None:
        self.sink.emit({"t": "log", "text": text})

    on_log = log

    def on_step(self, m: StepRow) -> None:
        self.sink.emit({"t": "step", **asdict(m)})

    def on_epoch(self, m: EpochRow) -> None:
        self.sink.emit({"t": "epoch", **asdict(m)})

    def rewind(self, epoch: int) -> None:
        """A resumed run goes on from ``epoch``: what was recorded after it is replayed."""
        self.sink.emit({"t": "rewind", "epoch": epoch})

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._checked >= STOP_POLL_S:
            self._checked = now
            self._stop = self.sink.stop_asked()
        return self._stop


# ---------------------------------------------------------------------------- the job itself


def _check_disk(folder: Path, n_images: int, n_classes: int, config: TrainConfig) -> None:
    """A first check before the model loads: checkpoints and results must fit.

    The engine checks again before it writes the decoded images, with the model's own sizes.
    """
    from tl_core.models.catalog import get_spec

    params = int(get_spec(config.model).params_m * 1e6)
    need = diskspace.run_need(
        n_images,
        int(n_images * config.val_fraction),
        n_classes,
        0,  # the decoded images: counted by the engine, which knows their size
        params,
        params if config.trainable_groups else 0,
        config.epochs * max(n_images // config.batch_size, 1),
    )
    diskspace.check_free(folder, need)


def _train(spec: JobSpec, ctx: JobContext) -> tuple[str, dict[str, Any]]:
    from tl_core.data import review
    from tl_core.data.dataset import DatasetManifest, split_dataset
    from tl_core.training.engine import fit

    run = RunSpec.from_dict(spec.params)
    manifest = DatasetManifest.load(Path(spec.data_dir))
    _check_disk(Path(spec.folder), len(manifest.items), len(manifest.classes), run.config)
    split = split_dataset(manifest, run.config.val_fraction, run.config.seed)
    if spec.resume:  # last.pt may be older than the last epochs recorded (it is kept every
        # few seconds): they are trained again, so each epoch is recorded once
        from tl_core.training import checkpoint

        last = checkpoint.load(Path(spec.folder) / checkpoint.LAST, "start the run again")
        ctx.rewind(int(last["epoch"]))
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


def _task(spec: JobSpec, ctx: JobContext) -> tuple[str, dict[str, Any]]:
    from tl_core.runs.tasks import STOPPED, TASKS

    task = TASKS.get(spec.kind)
    if task is None:
        raise StudioError(f"This version of the app cannot run '{spec.kind}' jobs.")
    result = task(spec, ctx)
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


def execute(spec: JobSpec, ctx: JobContext) -> dict[str, Any]:
    """Run ``spec`` to its end; return its ``end`` event (status, result, error, message).

    A signal that cut the job short is in ``end["signal"]``: the process should then exit.
    """
    if spec.threads > 0:
        os.environ["TL_STUDIO_THREADS"] = str(spec.threads)
    end: dict[str, Any] = {"t": "end"}
    try:
        status, result = _train(spec, ctx) if spec.kind == "train" else _task(spec, ctx)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM, cut short: last.pt is from before
        interrupt.hold()
        signum = ctx.interrupted or interrupt.signum_of(exc)
        return {
            **end,
            "status": "interrupted",
            "message": interrupt.message(signum, spec.kind),
            "signal": signum,
        }
    except Exception as exc:
        if ctx.interrupted is not None:  # the stop a signal asked for ended it
            interrupt.hold()
            message = interrupt.message(ctx.interrupted, spec.kind)
            return {**end, "status": "interrupted", "message": message, "signal": ctx.interrupted}
        return {**end, "status": "failed", "error": _failure(spec, exc), "message": "Failed"}
    if ctx.interrupted is not None and status == "stopped":  # last.pt saved
        interrupt.hold()
        message = interrupt.message(ctx.interrupted, spec.kind)
        return {**end, "status": "interrupted", "message": message, "signal": ctx.interrupted}
    message = "Finished" if status == "finished" else "Stopped"
    return {**end, "status": status, "result": result, "message": message}


# ---------------------------------------------------------------------------- the store's side


def job_spec(store: Store, job: Run, threads: int = 0) -> JobSpec:
    """What the worker gets for ``job``; a resumed run forgets its cut-off epoch's steps."""
    if job.kind == "train" and job.resume:
        done = [e.epoch for e in store.epochs(job.id)]
        store.drop_metrics_after(job.id, max(done, default=0))
    return JobSpec(
        id=job.id,
        kind=job.kind,
        project_id=job.project_id,
        params=job.config,
        data_dir=job.data_dir,
        folder=job.run_dir,
        resume=job.resume,
        threads=threads,
    )


def _update(store: Store, job_id: str, folder: Path, **fields: Any) -> None:
    """``store.update_run``; on a full disk free the job's temporary files and try once more."""
    try:
        store.update_run(job_id, **fields)
    except DiskFullError:
        diskspace.remove_temporary(folder)
        store.update_run(job_id, **fields)


def _append_log(folder: Path, text: str) -> None:
    with (
        diskspace.guard(folder, len(text) + diskspace.MB),
        open(folder / "run.log", "a", encoding="utf-8") as log,
    ):
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def _row(cls: type[_Row], event: dict[str, Any]) -> _Row:
    """The metric row an event carries (its other keys, like ``t`` or ``is_best``, aside)."""
    return cls(**{f.name: event[f.name] for f in fields(cls)})


def record(store: Store, job_id: str, folder: Path, event: dict[str, Any]) -> None:
    """Apply one event of a running job to the store: the store's one writer for jobs.

    An end the store cannot take is kept and written again with the next event recorded
    here (or by :func:`flush_pending`, which ``jobs.recover`` calls).
    """
    kind, now = event["t"], time.time()
    if endings.PENDING:
        flush_pending(store)
    if kind == "status":
        store.update_run(
            job_id, message=event["message"], progress=event.get("progress"), heartbeat=now
        )
    elif kind == "log":
        _append_log(folder, event["text"])
    elif kind == "rewind":
        store.drop_metrics_after(job_id, int(event["epoch"]))
    elif kind == "step":
        store.add_step(job_id, _row(StepRow, event))
    elif kind == "epoch":
        store.add_epoch(job_id, _row(EpochRow, event))
    elif kind == "started":
        _reserve_note(job_id, folder)
        job = store.run(job_id)
        _update(
            store,
            job_id,
            folder,
            status="running",
            pid=event["pid"],
            heartbeat=now,
            started=(job.started if job else None) or now,
            placement=event.get("placement"),
            message="Preparing",
            progress=None,
            error=None,
        )
    elif kind == "end":
        _record_end(store, job_id, folder, _settle(store, job_id, folder, event), now)


_NOTES: dict[str, endings.EndNote] = {}  # the end notes of the jobs this process records
_notes_lock = threading.Lock()


def _reserve_note(job_id: str, folder: Path) -> None:
    """Reserve the job's end note (see :class:`tl_core.runs.endings.EndNote`)."""
    with _notes_lock:
        if job_id in _NOTES:
            return
    note = endings.EndNote.reserve(folder)
    if note is not None:
        with _notes_lock:
            _NOTES[job_id] = note


def _release_note(job_id: str, folder: Path) -> None:
    """The job's end is in the store: its note goes."""
    with _notes_lock:
        note = _NOTES.pop(job_id, None)
    if note is not None:
        note.close(remove=True)
    else:
        endings.clear_note(folder)


def _end_fields(event: dict[str, Any], now: float) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "status": event["status"],
        "finished": now,
        "message": event.get("message", ""),
        "stop_requested": 0,
        "progress": None,
    }
    if event["status"] == "interrupted":
        fields["pid"] = None
    if "result" in event:
        fields["result"] = event["result"]
    if event.get("error"):
        fields["error"] = event["error"]
    return fields


def _record_end(store: Store, job_id: str, folder: Path, event: dict[str, Any], now: float) -> None:
    """Write the job's end. When the store cannot take it (a full disk, a read-only
    workspace), it is kept to be written again (:func:`flush_pending`) and in the job's end
    note, which the next start reads; this never raises for that."""
    fields = _end_fields(event, now)
    try:
        _update(store, job_id, folder, **fields)
    except (StudioError, OSError, sqlite3.Error):
        endings.keep_pending(store.workspace, job_id, fields)
        with _notes_lock:
            note = _NOTES.get(job_id)
        if note is not None and not note.write(fields):
            note.write({k: v for k, v in fields.items() if k != "result"})
        return
    _release_note(job_id, folder)


def flush_pending(store: Store) -> list[str]:
    """Write the ends this process could not record when they came; return their ids."""

    def write(job_id: str, fields: dict[str, Any]) -> None:
        store.update_run(job_id, **fields)
        job = store.run(job_id)
        _release_note(job_id, Path(job.run_dir) if job else store.workspace)

    if not endings.PENDING:
        return []
    return endings.flush_pending(store.workspace, write)


def _claim_data_dir(store: Store, project_id: str) -> Path:
    """A new, empty ``data-N`` folder of the project (two imports never get the same one)."""
    while True:
        dest = store.new_data_dir(project_id)
        try:
            dest.mkdir()
        except FileExistsError:
            continue
        return dest


def _settle(store: Store, job_id: str, folder: Path, event: dict[str, Any]) -> dict[str, Any]:
    """What a job's end changes beyond its own row; returns the end event to record.

    An import that finished becomes the project's newest data version (its staged folder is
    moved into the project); any other end removes what the import left in its folder.
    """
    import shutil

    from tl_core.runs.tasks import IMPORT_STAGING, IMPORT_UPLOAD

    job = store.run(job_id)
    if job is None or job.kind != "import":
        return event
    staged = folder / IMPORT_STAGING
    dest: Path | None = None
    try:
        if event["status"] == "finished" and (event.get("result") or {}).get("staged"):
            project = store.project(job.project_id)
            if project is None:
                raise StudioError("The project was deleted while its images were imported.")
            dest = _claim_data_dir(store, project.id)
            try:
                os.replace(staged, dest)  # the same disk: a rename, at once
            except OSError:
                shutil.copytree(staged, dest, dirs_exist_ok=True)
            store.set_data_dir(project.id, dest)
            store.update_run(job_id, data_dir=str(dest))
            result = {k: v for k, v in event["result"].items() if k != "staged"}
            event = {**event, "result": {**result, "data_dir": str(dest)}}
    except (OSError, StudioError, sqlite3.Error) as exc:
        if dest is not None:
            shutil.rmtree(dest, ignore_errors=True)
        cause = endings.cause_of(exc, store.workspace)
        if isinstance(exc, StudioError) and cause != "disk_full":
            error = str(exc)
        elif cause is not None:
            error = endings.failure("import", cause, store.project_dir(job.project_id))
        else:
            error = f"The imported images could not be moved into the project ({exc})."
        event = {"t": "end", "status": "failed", "error": error, "message": "Failed"}
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(folder / IMPORT_UPLOAD, ignore_errors=True)
    return event


class StoreSink:
    """Events applied to the store at once: for a job run by the store's own process.

    ``watch`` sees each event after the store has it (the command line's progress bars).
    """

    def __init__(
        self, store: Store, job: Run, watch: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.store = store
        self.job_id = job.id
        self.folder = Path(job.run_dir)
        self.watch = watch

    def emit(self, event: dict[str, Any]) -> None:
        record(self.store, self.job_id, self.folder, event)
        if self.watch is not None:
            self.watch(event)

    def stop_asked(self) -> bool:
        job = self.store.run(self.job_id)
        return job is None or job.stop_requested


def run_worker(
    store: Store, run_id: str, watch: Callable[[dict[str, Any]], None] | None = None
) -> Any:
    """Run the job ``run_id`` in this process; its status and result land in the store.

    ``watch`` sees every event of the job as it is recorded (see :class:`StoreSink`).

    Returns the TrainResult of a training run that ended (None when it failed). A signal
    that cut it short is raised again as :class:`~tl_core.runs.interrupt.Interrupted` once
    the run is marked interrupted.
    """
    job = store.run(run_id)
    if job is None:
        raise StudioError(f"No run with id {run_id}.")
    sink = StoreSink(store, job, watch)
    try:
        sink.emit({"t": "started", "pid": os.getpid(), "placement": placement()})
    except (StudioError, OSError, sqlite3.Error) as exc:
        cause = endings.cause_of(exc, sink.folder)
        if cause is None and not isinstance(exc, StudioError):
            raise
        error = str(exc) if cause is None else endings.failure(job.kind, cause, sink.folder)
        sink.emit({"t": "end", "status": "failed", "error": error, "message": "Failed"})
        return None
    spec = job_spec(store, job)
    ctx = JobContext(spec, sink)
    with interrupt.graceful(ctx.interrupt):
        end = execute(spec, ctx)
    sink.emit(end)
    if end.get("signal"):
        raise interrupt.Interrupted(end["signal"])
    if end["status"] == "failed" or spec.kind != "train":
        return end.get("result") if end["status"] != "failed" else None
    from tl_core.training.engine import TrainResult

    return TrainResult(**end["result"])


# ---------------------------------------------------------------------------- the pool worker


class _PipeSink:
    """Events sent to the server over the worker's pipe; stops come back the same way."""

    def __init__(self, job_id: str, send: Any, stops: set[str]) -> None:
        self.job_id = job_id
        self._send = send
        self._stops = stops

    def emit(self, event: dict[str, Any]) -> None:
        self._send({**event, "id": self.job_id})

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
        sink.emit({"t": "started", "pid": os.getpid(), "placement": placement()})
        ctx = JobContext(spec, sink)
        with interrupt.graceful(ctx.interrupt):
            end = execute(spec, ctx)
        if "*" in stops and end["status"] == "stopped":  # the server went, not the user
            end = {**end, "status": "interrupted", "message": interrupt.message(2)}
        sink.emit(end)
        if end.get("signal") or "*" in stops:
            return 0
        if _rss_mb() > MEMORY_CEILING_MB:
            send({"t": "bye", "reason": f"memory ({_rss_mb():.0f} MB)"})
            return 0
        send({"t": "ready", "pid": os.getpid()})
