"""The server side's record of a job: the store's one writer for what a job reports.

Every event a job sends (through a pool worker's pipe or a Ray node's channel, read back
typed by its executor, or directly in the process that owns the store) is applied here
(:func:`record`, by the event's type): its progress, log lines, steps and epochs, its start
and its end. An end also settles what the job changes beyond its
own row (:func:`settle`: an import that finished becomes the project's newest data version).
An end the store cannot take (a full disk, a read-only workspace) is kept to be written
again (:func:`flush_pending`) and in the job's end note. :func:`run_worker` runs one job in
the process that owns the store (the command line, a lone worker), recording as it goes.

Runs in the app server (or the command line); nothing here imports torch.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tl_core import diskspace
from tl_core.config import StepRow
from tl_core.errors import DiskFullError, StudioError
from tl_core.events import End, Epoch, Event, Log, Progress, Rewind, Started, Step
from tl_core.runs import endings, interrupt
from tl_core.runs.kinds import JobSpec, entry
from tl_core.runs.store import Job, Store, progress_columns
from tl_core.runs.tasks import IMPORT_STAGING, IMPORT_UPLOAD
from tl_core.runs.worker import JobContext, execute, placement

__all__ = ["StoreSink", "flush_pending", "job_spec", "record", "run_worker", "settle"]


def job_spec(store: Store, job: Job, threads: int = 0) -> JobSpec:
    """What the worker gets for ``job``: its row with the typed parameters of its kind
    (UnknownKindError for a kind this version does not know); a resumed run forgets its
    cut-off epoch's steps."""
    kind = entry(job.kind)
    params = kind.read(job.config)
    if kind.resumable and job.resume:
        done = [e.epoch for e in store.epochs(job.id)]
        store.drop_metrics_after(job.id, max(done, default=0))
    return JobSpec(
        id=job.id,
        kind=job.kind,
        project_id=job.project_id,
        params=params,
        data_dir=job.data_dir,
        folder=job.run_dir,
        resume=job.resume,
        threads=threads,
    )


def _update(store: Store, job_id: str, folder: Path, **fields: Any) -> None:
    """``store.update_job``; on a full disk free the job's temporary files and try once more."""
    try:
        store.update_job(job_id, **fields)
    except DiskFullError:
        diskspace.remove_temporary(folder)
        store.update_job(job_id, **fields)


def _append_log(folder: Path, text: str) -> None:
    with (
        diskspace.guard(folder, len(text) + diskspace.MB),
        open(folder / "run.log", "a", encoding="utf-8") as log,
    ):
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


STEPS_EVERY_S = 0.5  # how long a job run in the store's own process keeps steps to write


def record(store: Store, job_id: str, folder: Path, event: Event) -> None:
    """Apply one event of a running job to the store: the store's one writer for jobs.

    An end the store cannot take is kept and written again with the next event recorded
    here (or by :func:`flush_pending`, which ``jobs.recover`` calls).
    """
    now = time.time()
    if endings.PENDING:
        flush_pending(store)
    match event:
        case Progress():
            store.update_job(job_id, heartbeat=now, **progress_columns(event))
        case Log():
            _append_log(folder, event.text)
        case Rewind():
            store.drop_metrics_after(job_id, event.epoch)
        case Step():
            store.add_step(job_id, event.row)
        case Epoch():
            store.add_epoch(job_id, event.row)
        case Started():
            _record_start(store, job_id, folder, event, now)
        case End():
            _record_end(store, job_id, folder, settle(store, job_id, folder, event), now)


def _record_start(store: Store, job_id: str, folder: Path, started: Started, now: float) -> None:
    """The job's process took it: running, where, since when (a resumed run keeps its first
    start); its end note is reserved."""
    _reserve_note(job_id, folder)
    job = store.job(job_id)
    _update(
        store,
        job_id,
        folder,
        status="running",
        pid=started.pid,
        heartbeat=now,
        started=(job.started if job else None) or now,
        placement=started.placement,
        error=None,
        **progress_columns(Progress("start")),
    )


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


def _end_fields(end: End, now: float) -> dict[str, Any]:
    """The store's fields of ``end``: a result or an error only when it has one (an end
    without a result leaves the one recorded before in place)."""
    fields: dict[str, Any] = {
        "status": end.status,
        "finished": now,
        "message": end.message,
        "stop_requested": 0,
        "progress": None,
    }
    if end.status == "interrupted":
        fields["pid"] = None
    if end.result is not None:
        fields["result"] = end.result
    if end.error:
        fields["error"] = end.error
    return fields


def _record_end(store: Store, job_id: str, folder: Path, end: End, now: float) -> None:
    """Write the job's end. When the store cannot take it (a full disk, a read-only
    workspace), it is kept to be written again (:func:`flush_pending`) and in the job's end
    note, which the next start reads; this never raises for that."""
    fields = _end_fields(end, now)
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
        store.update_job(job_id, **fields)
        job = store.job(job_id)
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


def settle(store: Store, job_id: str, folder: Path, end: End) -> End:
    """What a job's end changes beyond its own row; returns the end to record.

    An import that finished becomes the project's newest data version (its staged folder is
    moved into the project); any other end removes what the import left in its folder.
    """
    job = store.job(job_id)
    if job is None or job.kind != "import":
        return end
    staged = folder / IMPORT_STAGING
    dest: Path | None = None
    try:
        if end.status == "finished" and end.result and end.result.get("staged"):
            project = store.project(job.project_id)
            if project is None:
                raise StudioError("The project was deleted while its images were imported.")
            dest = _claim_data_dir(store, project.id)
            try:
                os.replace(staged, dest)  # the same disk: a rename, at once
            except OSError:
                shutil.copytree(staged, dest, dirs_exist_ok=True)
            store.set_data_dir(project.id, dest)
            store.update_job(job_id, data_dir=str(dest))
            result = {k: v for k, v in end.result.items() if k != "staged"}
            end = replace(end, result={**result, "data_dir": str(dest)})
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
        end = End("failed", "Failed", error=error)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(folder / IMPORT_UPLOAD, ignore_errors=True)
    return end


class StoreSink:
    """Events applied to the store at once: for a job run by the store's own process.

    Training steps are kept a moment and written together (:data:`STEPS_EVERY_S`, or before
    any other event), one transaction instead of one a step; ``watch`` sees each event as
    it comes (the command line's progress bars).
    """

    def __init__(
        self, store: Store, job: Job, watch: Callable[[Event], None] | None = None
    ) -> None:
        self.store = store
        self.job_id = job.id
        self.folder = Path(job.run_dir)
        self.watch = watch
        self._steps: list[StepRow] = []
        self._since = 0.0

    def emit(self, event: Event) -> None:
        if isinstance(event, Step):
            if not self._steps:
                self._since = time.monotonic()
            self._steps.append(event.row)
            if time.monotonic() - self._since >= STEPS_EVERY_S:
                self._flush_steps()
        else:
            self._flush_steps()
            record(self.store, self.job_id, self.folder, event)
        if self.watch is not None:
            self.watch(event)

    def _flush_steps(self) -> None:
        if self._steps:
            rows, self._steps = self._steps, []
            self.store.add_steps(self.job_id, rows)

    def stop_asked(self) -> bool:
        job = self.store.job(self.job_id)
        return job is None or job.stop_requested


def run_worker(store: Store, run_id: str, watch: Callable[[Event], None] | None = None) -> Any:
    """Run the job ``run_id`` in this process; its status and result land in the store.

    ``watch`` sees every event of the job as it is recorded (see :class:`StoreSink`).

    Returns the TrainResult of a training run that ended (None when it failed). A signal
    that cut it short is raised again as :class:`~tl_core.runs.interrupt.Interrupted` once
    the run is marked interrupted.
    """
    job = store.job(run_id)
    if job is None:
        raise StudioError(f"No run with id {run_id}.")
    sink = StoreSink(store, job, watch)
    try:
        sink.emit(Started(os.getpid(), placement()))
        spec = job_spec(store, job)
    except (StudioError, OSError, sqlite3.Error) as exc:
        cause = endings.cause_of(exc, sink.folder)
        if cause is None and not isinstance(exc, StudioError):
            raise
        error = str(exc) if cause is None else endings.failure(job.kind, cause, sink.folder)
        sink.emit(End("failed", "Failed", error=error))
        return None
    ctx = JobContext(spec, sink)
    with interrupt.graceful(ctx.interrupt):
        end = execute(spec, ctx)
    sink.emit(end)
    if end.signal:
        raise interrupt.Interrupted(end.signal)
    if end.status == "failed" or spec.kind != "train":
        return end.result if end.status != "failed" else None
    from tl_core.training.engine import TrainResult

    return TrainResult(**(end.result or {}))
