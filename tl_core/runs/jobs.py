"""The job queue: every long job (training, feature work, export, batch prediction) waits
here, in the store's ``runs`` table, and starts when the fair queue gives it a slot.

Store work only, no processes: submitting (:func:`submit`, with typed parameters whose kind
is their entry in :mod:`tl_core.runs.kinds`), claiming (:func:`claim_next`), Stop and Resume
requests, recovering the jobs whose process is gone (:func:`recover`), the waiting pages'
estimates (:func:`estimated_wait`) and the clean-up of what killed processes left
(:func:`sweep`). Who then runs a claimed job is the server side's business
(:mod:`tl_core.runs.supervisor`: its :func:`~tl_core.runs.supervisor.pump` keeps the queue
moving after a submit).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_core.config import EpochRow
from tl_core.errors import RunError
from tl_core.runs import endings
from tl_core.runs.kinds import KINDS, JobParams, entry_for, in_quick_lane, resumable
from tl_core.runs.recording import flush_pending
from tl_core.runs.store import ACTIVE, UNFINISHED, Job, Store, fair_order

# A worker that has not written for this long while its process is gone or hung is interrupted.
STALE_AFTER_S = 600.0
# Leftovers of a killed process are removed at start-up once they are this old (seconds): a
# data folder without manifest.json (an import cut off), a ``*.tmp`` file in a run folder.
PARTIAL_IMPORT_AGE_S = 3600.0
TMP_FILE_AGE_S = 120.0
# The settings key that marks a project the command line is still setting up (its pid).
CLI_PENDING = "cli_pid"

JOB_MEMORY_GB = 2.5  # what one worker with a model and a data set may take
# Short jobs a page waits on before anything else can happen (a student's first images: the
# kinds whose lane is "quick" in tl_core.runs.kinds) have a lane of this many beside the
# queue's slots, so they never wait behind other projects' long runs.
QUICK_LANE = 1


def cpu_count() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def _available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        return int(info.get("MemAvailable", info["MemTotal"])) / 1e6
    except (OSError, KeyError, ValueError, IndexError):
        return 8.0


def machine_slots() -> int:
    """How many jobs this machine holds at once: a share of the cores (at least two, so a
    quick job need not wait behind a long one) as far as the memory allows."""
    by_cores = max(2, cpu_count() // 4)
    by_memory = int(_available_gb() // JOB_MEMORY_GB)
    return max(1, min(by_cores, by_memory))


def max_parallel_runs() -> int:
    """How many jobs may run at once: ``TL_STUDIO_MAX_RUNS``, default :func:`machine_slots`."""
    try:
        return max(1, int(os.environ["TL_STUDIO_MAX_RUNS"]))
    except (KeyError, ValueError):
        return machine_slots()


def serving_slots(workspace: Path) -> int:
    """How many jobs run at once: what the serving process's executor holds (a cluster's
    size, written in ``runtime.json``), else :func:`max_parallel_runs`."""
    try:
        record = json.loads((Path(workspace) / "runtime.json").read_text())
        return max(1, int(record["slots"]))
    except (OSError, ValueError, KeyError, TypeError):
        return max_parallel_runs()


def submit(
    store: Store,
    project_id: str,
    params: JobParams,
    data_dir: Path | str,
    key: str | None = None,
    prepare: Callable[[Path], None] | None = None,
) -> Job:
    """Queue a job with ``params`` (its kind: their entry in :mod:`tl_core.runs.kinds`); the
    caller then keeps the queue moving (:func:`tl_core.runs.supervisor.pump`).

    A job with a ``key`` is computed once: when the project has a job with the same key that
    is waiting, running or finished, that job is returned instead of a new one (a refresh or
    a second tab finds the same job; a second visit is instant). ``prepare(folder)`` writes
    what the job reads into its folder (pictures to predict, an upload to import) while it is
    held; if it raises, the job is removed and the error raised again.
    """
    if key is not None:
        found = find_job(store, project_id, key)
        if found is not None and found.status in (*UNFINISHED, "finished"):
            return found
    job = store.create_job(
        project_id,
        params.to_dict(),
        Path(data_dir),
        status="held" if prepare else "queued",
        kind=entry_for(params).name,
        key=key,
    )
    if prepare is not None:
        try:
            prepare(Path(job.run_dir))
        except BaseException:
            discard_run(store, job.id)
            raise
        store.update_job(job.id, status="queued", queued_at=time.time())
    return store.job(job.id) or job


def write_inputs(folder: Path, inputs: list[tuple[str, bytes]]) -> None:
    """Files a job reads (pictures to predict), written to ``<folder>/inputs/`` in order."""
    inbox = folder / "inputs"
    inbox.mkdir()
    for i, (name, data) in enumerate(inputs):
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(name).name)
        (inbox / f"{i:05d}-{safe}"[:200]).write_bytes(data)


def find_job(store: Store, project_id: str, key: str) -> Job | None:
    """The project's newest job with ``key`` (any status), or None."""
    found = store.jobs(project_id, key=key)
    return found[-1] if found else None


def pid_alive(pid: int | None) -> bool:
    """True while the process ``pid`` runs (an exited child not reaped yet does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child that nobody reaped yet is a zombie: not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _has_checkpoint(run: Job) -> bool:
    return (Path(run.run_dir) / "last.pt").exists()


def discard_run(store: Store, run_id: str, remove_folder: bool = True) -> None:
    """Forget a run: its record, its metrics and (by default) its folder."""
    run = store.job(run_id)
    with store.transaction() as db:
        db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
        db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    if run is not None and remove_folder:
        shutil.rmtree(run.run_dir, ignore_errors=True)


def discard_project(store: Store, project_id: str) -> None:
    """Forget a project with everything in it (its runs, their folders, its data)."""
    for run in store.runs(project_id, kind=None):
        discard_run(store, run.id)
    with store.transaction() as db:
        db.execute("DELETE FROM projects WHERE id = ?", (project_id,))
    shutil.rmtree(store.project_dir(project_id), ignore_errors=True)


def settle_cli_project(store: Store, project_id: str, force: bool = False) -> None:
    """A project the command line was setting up, once its process is gone (or ``force``):
    removed when none of its runs is left, else kept as an ordinary project."""
    project = store.project(project_id)
    pid = project.settings.get(CLI_PENDING) if project else None
    if not pid or not (force or not pid_alive(int(pid))):
        return
    if store.runs(project_id):
        store.update_settings(project_id, **{CLI_PENDING: None})
    else:
        discard_project(store, project_id)


def recover(store: Store, held: Collection[str] = ()) -> list[str]:
    """Record the end of the jobs whose worker is gone; return their ids.

    ``held``: jobs this process's executors still hold. Their end comes from the executor
    (a worker killed from outside is gone a moment before its reader reports why), so they
    are left to it.

    Ends this process could not write when they came (a full disk, a read-only workspace)
    are written first. A job whose end note holds its end (written when the store could not
    take it) gets that end; any other gets a sentence for its kind that says what is known:
    the server stopped, the command-line process ended, or nothing was heard for
    ``STALE_AFTER_S`` (:mod:`tl_core.runs.endings`). Training runs become ``interrupted``
    (Resume goes on from ``last.pt``), other jobs ``failed`` (Try again).

    A command-line run whose process is gone before it saved an epoch (still waiting in the
    queue, or ended in its first epoch) is removed: there is nothing to resume. A project
    whose first import was cut off is removed too, with a sentence for the page that opens
    its link (:func:`drop_cut_off_project`). The first call in a process also sweeps the
    leftovers of killed processes (:func:`sweep`).
    """
    flush_pending(store)
    now = time.time()
    lost = []
    for run in store.runs(statuses=UNFINISHED, kind=None):
        if run.id in held:
            continue
        if run.status == "queued":  # held by a waiting command-line process?
            if run.pid is not None and not pid_alive(run.pid):
                discard_run(store, run.id)
                settle_cli_project(store, run.project_id)
            continue
        last_sign = run.heartbeat or run.started or run.created
        gone = not pid_alive(run.pid)
        if gone or now - last_sign > STALE_AFTER_S:
            # A run claimed a moment ago may not have its pid yet: give it a grace period.
            if run.pid is None and now - last_sign < 30:
                continue
            if run.source == "cli" and not run.resume and not _has_checkpoint(run):
                discard_run(store, run.id)
                settle_cli_project(store, run.project_id)
                continue
            _record_lost(store, run, gone, now)
            lost.append(run.id)
            if run.kind == "import":
                drop_cut_off_project(store, run.project_id)
    if store.workspace.resolve() not in _swept:
        _swept.add(store.workspace.resolve())
        sweep(store)
    return lost


def _noted_end(run: Job, noted: dict[str, Any]) -> dict[str, Any]:
    """The fields of the end kept in ``run``'s end note, as the store takes them."""
    keys = ("status", "message", "error", "result", "finished")
    fields = {k: noted[k] for k in keys if k in noted}
    if fields["status"] == "finished" and "result" not in fields:  # too large for the note
        message = endings.failure(run.kind, "disk_full", Path(run.run_dir))
        fields.update(status="failed", message="Failed", error=message)
    return {**fields, "pid": None, "stop_requested": 0, "progress": None}


def _record_lost(store: Store, run: Job, gone: bool, now: float) -> None:
    """Record the end of ``run``, whose process is gone (or silent): its note's, else the
    sentence for what is known."""
    folder = Path(run.run_dir)
    noted = endings.read_note(folder) if gone else None
    if noted is not None:
        store.update_job(run.id, **_noted_end(run, noted))
        endings.clear_note(folder)
        return
    from_checkpoint = resumable(run.kind) and _has_checkpoint(run)
    if not gone:
        message = endings.stale(run.kind, STALE_AFTER_S / 60, from_checkpoint)
    elif run.source == "cli" and not run.resume:
        message = endings.cli_lost(from_checkpoint)
    else:
        message = endings.server_lost(run.kind, from_checkpoint)
    fields: dict[str, Any] = {"pid": None, "message": message, "progress": None}
    if resumable(run.kind):
        fields["status"] = "interrupted"
    else:
        fields.update(status="failed", error=message, finished=now, stop_requested=0)
    store.update_job(run.id, **fields)
    endings.clear_note(folder)


def _holds_captures(store: Store, project_id: str) -> bool:
    """Does the project keep camera shots not yet imported?"""
    from tl_core.data.camera import CAPTURE_FOLDER

    shots = store.project_dir(project_id) / CAPTURE_FOLDER
    return shots.is_dir() and any(shots.rglob("*"))


def drop_cut_off_project(store: Store, project_id: str) -> bool:
    """Remove a project whose only import was cut off, leaving a sentence about it for the
    page that opens its link (:func:`tl_core.runs.endings.take_notice`); True when removed.

    A project with images, with a job of another kind or with camera shots is kept.
    """
    project = store.project(project_id)
    if project is None or project.data_dir or project.settings.get(CLI_PENDING):
        return False
    runs = store.runs(project_id, kind=None)
    if any(r.kind != "import" or r.status in (*UNFINISHED, "finished") for r in runs):
        return False
    if _holds_captures(store, project_id):
        return False
    endings.leave_notice(
        store.workspace,
        project_id,
        f"The import into the project '{project.name}' was cut off when the server stopped, "
        "so the empty project was removed; start the import again.",
    )
    discard_project(store, project_id)
    return True


_swept: set[Path] = set()


def _newest_change(folder: Path) -> float:
    """The latest modification time of ``folder`` or any folder inside it."""
    newest = 0.0
    for dirpath, _, _ in os.walk(folder):
        with contextlib.suppress(OSError):
            newest = max(newest, os.stat(dirpath).st_mtime)
    return newest


def sweep(store: Store) -> None:
    """Remove what a killed process left behind; never anything of a live run or import.

    - projects the command line was setting up when its process died (no run survives);
    - staging folders of command-line imports whose process is gone;
    - ``data-N`` folders without manifest.json that nothing uses and nothing has written to
      for ``PARTIAL_IMPORT_AGE_S`` (an import cut off);
    - ``*.tmp`` files older than ``TMP_FILE_AGE_S`` in the folders of runs not training;
    - the upload and the half-made data set of an import job that ended, and an import whose
      upload was cut off (held for ``PARTIAL_IMPORT_AGE_S``).
    """
    now = time.time()
    with store.transaction() as db:
        rows = db.execute("SELECT id, data_dir, settings FROM projects").fetchall()
    projects = {r["id"]: (r["data_dir"], json.loads(r["settings"] or "{}")) for r in rows}
    runs = store.runs(kind=None)
    for project_id in projects:
        settle_cli_project(store, project_id)
    staging = store.workspace / "incoming"
    for folder in staging.glob("*") if staging.is_dir() else []:
        owner = folder.name.split("-", 1)[0]
        if not (owner.isdigit() and pid_alive(int(owner))):
            shutil.rmtree(folder, ignore_errors=True)
    used = {str(Path(d).resolve()) for d, _ in projects.values() if d}
    used |= {str(Path(r.data_dir).resolve()) for r in runs}
    for data_dir in (store.workspace / "projects").glob("*/data-*"):
        if (
            data_dir.is_dir()
            and not (data_dir / "manifest.json").exists()
            and str(data_dir.resolve()) not in used
            and now - _newest_change(data_dir) > PARTIAL_IMPORT_AGE_S
        ):
            shutil.rmtree(data_dir, ignore_errors=True)
    endings.forget_old_notices(store.workspace)
    for run in runs:
        if run.status in ACTIVE:
            continue
        if run.kind == "import" and run.status == "held":  # its upload was cut off
            if now - run.created > PARTIAL_IMPORT_AGE_S:
                discard_run(store, run.id)
            continue
        if run.kind == "import" and run.status != "queued":
            for left in ("upload", "data"):  # what an import cut off left in its folder
                shutil.rmtree(Path(run.run_dir) / left, ignore_errors=True)
        for tmp in Path(run.run_dir).glob("*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > TMP_FILE_AGE_S and tmp.is_file():
                    tmp.unlink()


def claim_next(
    store: Store, limit: int, run_id: str | None = None, quick_lane: int = 0
) -> Job | None:
    """Atomically move the next job of the fair queue to 'starting' if fewer than ``limit``
    are active (:func:`~tl_core.runs.store.fair_order`); with the ``limit`` reached, a job of
    a kind with a quick lane still starts while fewer than ``quick_lane`` of them run.

    A queued job with a ``pid`` belongs to a waiting command-line process: only that process
    claims it (passing its ``run_id``), when its turn comes; until then nothing else starts.
    """
    with store.transaction() as db:
        rows = db.execute(
            "SELECT project_id, kind FROM runs WHERE status IN (?, ?)", ACTIVE
        ).fetchall()
        active: dict[str, int] = {}
        for project_id, _ in rows:
            active[project_id] = active.get(project_id, 0) + 1
        quick = sum(1 for _, kind in rows if in_quick_lane(kind))
        full = len(rows) >= limit
        if full and (quick >= quick_lane or len(rows) >= limit + quick_lane):
            return None
        queued = [
            store.row_to_job(r) for r in db.execute("SELECT * FROM runs WHERE status = 'queued'")
        ]
        order = fair_order(queued, active)
        if full:
            order = [job for job in order if in_quick_lane(job.kind)]
        if not order:
            return None
        nxt = order[0]
        if nxt.id != run_id if run_id else nxt.pid is not None:
            return None
        now = time.time()
        db.execute(
            "UPDATE runs SET status = 'starting', message = 'Starting', started = ?,"
            " heartbeat = ?, pid = ? WHERE id = ?",
            (now, now, nxt.pid or os.getpid(), nxt.id),
        )
    return store.job(nxt.id)


def _durations(store: Store) -> dict[str, float]:
    """The median duration of the last finished jobs of each kind (seconds)."""
    with store.transaction() as db:
        rows = db.execute(
            "SELECT kind, finished - started AS took FROM runs WHERE status = 'finished'"
            " AND started IS NOT NULL AND finished IS NOT NULL ORDER BY finished DESC LIMIT 200"
        ).fetchall()
    took: dict[str, list[float]] = {}
    for row in rows:
        took.setdefault(row["kind"], []).append(max(0.0, float(row["took"])))
    typical = {kind.name: kind.typical_s for kind in KINDS.values()}
    for kind, values in took.items():
        values.sort()
        typical[kind] = values[len(values) // 2]
    return typical


@dataclass(frozen=True)
class _Speed:
    """How fast training goes in this workspace: the first epoch of a start (with the
    start-up: loading the model, decoding, the pass through the frozen layers) and each
    epoch after it, in seconds."""

    first_s: float
    epoch_s: float

    def run_s(self, epochs: int) -> float:
        return self.first_s + self.epoch_s * max(epochs - 1, 0)


def _latest_start(rows: list[EpochRow]) -> list[EpochRow]:
    """The epochs since the run last started: a resumed run's clock starts again."""
    start = len(rows) - 1
    while start > 0 and rows[start - 1].elapsed_s < rows[start].elapsed_s:
        start -= 1
    return rows[start:]


def _epoch_s(rows: list[EpochRow]) -> float | None:
    """Seconds per epoch after the first of the latest start; None with fewer than two."""
    part = _latest_start(rows)
    if len(part) < 2:
        return None
    return (part[-1].elapsed_s - part[0].elapsed_s) / max(part[-1].epoch - part[0].epoch, 1)


def _speed(epochs: dict[str, list[EpochRow]]) -> _Speed | None:
    """The median speed over the runs with epoch rows; None before any epoch ended."""
    firsts = sorted(_latest_start(rows)[0].elapsed_s for rows in epochs.values() if rows)
    if not firsts:
        return None
    first = firsts[len(firsts) // 2]
    rates = sorted(r for rows in epochs.values() if (r := _epoch_s(rows)) is not None)
    return _Speed(first, rates[len(rates) // 2] if rates else first)


def _left_s(
    job: Job, epochs: list[EpochRow], speed: _Speed | None, typical: dict[str, float], now: float
) -> float:
    """Seconds until the working ``job`` frees its slot, from what it has told so far."""
    elapsed = now - (job.started or now)
    if job.kind == "train":
        total = job.spec.config.epochs
        if epochs:  # per epoch of its own (or of the workspace) times the epochs left
            own = _epoch_s(epochs)
            per = own if own is not None else speed.epoch_s if speed else epochs[-1].elapsed_s
            return max(1.0, per * (total - epochs[-1].epoch))
        if speed is not None:
            return max(1.0, speed.run_s(total) - elapsed)
    elif job.progress:  # a job that counts its work: elapsed / fraction done
        return max(1.0, elapsed / min(job.progress, 1.0) - elapsed)
    return max(1.0, typical.get(job.kind, 60.0) - elapsed)


def _takes_s(
    job: Job, epochs: list[EpochRow], speed: _Speed | None, typical: dict[str, float]
) -> float:
    """Seconds the waiting ``job`` will run: a training run by its epochs (those left, when
    it resumes) at the workspace's speed, other jobs their kind's measured duration."""
    if job.kind == "train" and speed is not None:
        done = epochs[-1].epoch if job.resume and epochs else 0
        return speed.run_s(job.spec.config.epochs - done)
    return typical.get(job.kind, 60.0)


def estimated_wait(store: Store, run_id: str) -> float | None:
    """Seconds until the waiting job ``run_id`` starts; None when it is not waiting.

    Each working job frees its slot after what it has told so far says it still needs: a
    training run its seconds per epoch times the epochs left, a job that reports a fraction
    done its elapsed time / that fraction. Each job ahead then takes the earliest free slot
    for as long as it will run: a training run its epochs at the speed epochs have run in
    this workspace; a job of another kind (or a training run before any epoch ended here)
    its kind's median measured duration, else a typical guess.
    """
    order = store.queue_order()
    ids = [j.id for j in order]
    if run_id not in ids:
        return None
    typical = _durations(store)
    epochs = store.training_epochs()
    speed = _speed(epochs)
    now = time.time()
    active = store.runs(statuses=ACTIVE, kind=None)
    limit = serving_slots(store.workspace)
    if in_quick_lane(order[ids.index(run_id)].kind):  # at the latest, its lane takes it
        order = [j for j in order if in_quick_lane(j.kind)]
        active = [j for j in active if in_quick_lane(j.kind)]
        limit = QUICK_LANE
    slots = [_left_s(j, epochs.get(j.id, []), speed, typical, now) for j in active]
    slots = sorted(slots)[:limit]
    slots += [0.0] * (limit - len(slots))
    for job in order:
        free = min(slots)
        if job.id == run_id:
            return free
        slots[slots.index(free)] = free + _takes_s(job, epochs.get(job.id, []), speed, typical)
    return None


def wait_for_turn(
    store: Store,
    run_id: str,
    on_wait: Callable[[int], None],
    poll_s: float = 0.5,
    limit: int | None = None,
) -> Job:
    """Block until ``run_id`` (queued with this process's pid) may start; claim it.

    ``on_wait(place)`` is called whenever its place in the queue changes (1: next). Raises
    RunError when the run leaves the queue otherwise (cancelled in the app).
    """
    place = None
    while True:
        recover(store)  # a worker that died frees its slot
        run = claim_next(store, limit or max_parallel_runs(), run_id)
        if run is not None:
            return run
        now = store.queue_position(run_id)
        if now is None:
            raise RunError("The run was cancelled while it waited in the queue.")
        if now != place:
            place = now
            on_wait(now)
        time.sleep(poll_s)


def request_stop(store: Store, run_id: str) -> None:
    """Ask a run to stop: a waiting run is cancelled, a training one stops within a step."""
    run = store.job(run_id)
    if run is None:
        return
    if run.status == "queued":
        store.update_job(
            run_id, status="stopped", message="Cancelled before it started", finished=time.time()
        )
    elif run.status in ACTIVE:
        store.update_job(run_id, stop_requested=1, message="Stopping")


def resume(store: Store, run_id: str) -> Job:
    """Queue an interrupted or stopped run to continue from its last saved epoch (the caller
    then keeps the queue moving)."""
    run = store.job(run_id)
    if run is None:
        raise RunError("This run no longer exists.")
    if run.status not in ("interrupted", "stopped", "failed"):
        raise RunError(f"A {run.status} run cannot be resumed.")
    if not (Path(run.run_dir) / "last.pt").exists():
        raise RunError("This run stopped before finishing its first epoch; start a new run.")
    store.update_job(
        run_id,
        status="queued",
        resume=1,
        stop_requested=0,
        error=None,
        pid=None,
        message="Waiting to resume",
        queued_at=time.time(),
    )
    return store.job(run_id)  # type: ignore[return-value]
