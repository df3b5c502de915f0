"""The job queue: start training workers as subprocesses, at most N at once.

A worker is ``python -m tl_core worker RUN_ID``: the same entry point a user can run, in its
own process, so a crash or an out-of-memory kill never takes the web server down. Nothing here
keeps state in memory: the queue is the ``runs`` table, and any process (a page, a finishing
worker, the command line) may ``pump`` it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tl_core.errors import RunError
from tl_core.runs.store import ACTIVE, UNFINISHED, Run, Store

# A worker that has not written for this long while its process is gone or hung is interrupted.
STALE_AFTER_S = 600.0
# Leftovers of a killed process are removed at start-up once they are this old (seconds): a
# data folder without manifest.json (an import cut off), a ``*.tmp`` file in a run folder.
PARTIAL_IMPORT_AGE_S = 3600.0
TMP_FILE_AGE_S = 120.0
# The settings key that marks a project the command line is still setting up (its pid).
CLI_PENDING = "cli_pid"

# glibc malloc tuning for the worker: keep freed memory instead of returning it to the OS
# between steps; measured to speed up CPU training and inference (docs/PERFORMANCE.md).
WORKER_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736",
}


def max_parallel_runs() -> int:
    """How many runs may train at once: ``TL_STUDIO_MAX_RUNS``, default 1."""
    try:
        return max(1, int(os.environ.get("TL_STUDIO_MAX_RUNS", "1")))
    except ValueError:
        return 1


def submit(
    store: Store,
    project_id: str,
    config: dict[str, Any],
    data_dir: Path,
    start: bool = True,
) -> Run:
    """Queue a run and start it if a slot is free."""
    run = store.create_run(project_id, config, data_dir)
    if start:
        pump(store)
    return store.run(run.id) or run


def submit_job(
    store: Store,
    project_id: str,
    kind: str,
    params: dict[str, Any],
    data_dir: Path | str,
    key: str | None = None,
    inputs: list[tuple[str, bytes]] | None = None,
) -> Run:
    """Queue a job of ``kind`` (config.JOB_KINDS) and start it when its turn comes.

    A job with a ``key`` is computed once: when the project has a job with the same key that
    is waiting, running or finished, that job is returned instead of a new one (a refresh or
    a second tab finds the same job; a second visit is instant). ``inputs`` are files the job
    reads (pictures to predict), written to ``<job folder>/inputs/`` before it is queued.
    """
    if key is not None:
        found = find_job(store, project_id, key)
        if found is not None and found.status in (*UNFINISHED, "finished"):
            return found
    job = store.create_run(
        project_id,
        params,
        Path(data_dir),
        status="held" if inputs else "queued",
        kind=kind,
        key=key,
    )
    if inputs:
        folder = Path(job.run_dir) / "inputs"
        folder.mkdir()
        for i, (name, data) in enumerate(inputs):
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(name).name)
            (folder / f"{i:05d}-{safe}"[:200]).write_bytes(data)
        store.update_run(job.id, status="queued", queued_at=time.time())
    pump(store)
    return store.run(job.id) or job


def find_job(store: Store, project_id: str, key: str) -> Run | None:
    """The project's newest job with ``key`` (any status), or None."""
    found = store.jobs(project_id, key=key)
    return found[-1] if found else None


def _pid_alive(pid: int | None) -> bool:
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


def _has_checkpoint(run: Run) -> bool:
    return (Path(run.run_dir) / "last.pt").exists()


def discard_run(store: Store, run_id: str, remove_folder: bool = True) -> None:
    """Forget a run: its record, its metrics and (by default) its folder."""
    run = store.run(run_id)
    with store.transaction() as db:
        db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
        db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    if run is not None and remove_folder:
        shutil.rmtree(run.run_dir, ignore_errors=True)


def discard_project(store: Store, project_id: str) -> None:
    """Forget a project with everything in it (its runs, their folders, its data)."""
    for run in store.runs(project_id):
        discard_run(store, run.id)
    with store.transaction() as db:
        db.execute("DELETE FROM projects WHERE id = ?", (project_id,))
    shutil.rmtree(store.project_dir(project_id), ignore_errors=True)


def settle_cli_project(store: Store, project_id: str, force: bool = False) -> None:
    """A project the command line was setting up, once its process is gone (or ``force``):
    removed when none of its runs is left, else kept as an ordinary project."""
    project = store.project(project_id)
    pid = project.settings.get(CLI_PENDING) if project else None
    if not pid or not (force or not _pid_alive(int(pid))):
        return
    if store.runs(project_id):
        store.update_settings(project_id, **{CLI_PENDING: None})
    else:
        discard_project(store, project_id)


def recover(store: Store) -> list[str]:
    """Mark runs whose worker is gone as interrupted; return their ids.

    A command-line run whose process is gone before it saved an epoch (still waiting in the
    queue, or killed in its first epoch) is removed: there is nothing to resume. The first
    call in a process also sweeps the leftovers of killed processes (:func:`sweep`).
    """
    now = time.time()
    lost = []
    for run in store.runs(statuses=UNFINISHED):
        if run.status == "queued":  # held by a waiting command-line process?
            if run.pid is not None and not _pid_alive(run.pid):
                discard_run(store, run.id)
                settle_cli_project(store, run.project_id)
            continue
        last_sign = run.heartbeat or run.started or run.created
        if not _pid_alive(run.pid) or now - last_sign > STALE_AFTER_S:
            # A run claimed a moment ago may not have its pid yet: give it a grace period.
            if run.pid is None and now - last_sign < 30:
                continue
            if run.source == "cli" and not run.resume and not _has_checkpoint(run):
                discard_run(store, run.id)
                settle_cli_project(store, run.project_id)
                continue
            store.update_run(
                run.id,
                status="interrupted",
                pid=None,
                message="The command-line run stopped unexpectedly (its process was killed)."
                if run.source == "cli" and not run.resume
                else "The training process stopped unexpectedly (server restart or crash).",
            )
            lost.append(run.id)
    if store.workspace.resolve() not in _swept:
        _swept.add(store.workspace.resolve())
        sweep(store)
    return lost


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
    - ``*.tmp`` files older than ``TMP_FILE_AGE_S`` in the folders of runs not training.
    """
    now = time.time()
    with store.transaction() as db:
        rows = db.execute("SELECT id, data_dir, settings FROM projects").fetchall()
    projects = {r["id"]: (r["data_dir"], json.loads(r["settings"] or "{}")) for r in rows}
    runs = store.runs()
    for project_id in projects:
        settle_cli_project(store, project_id)
    staging = store.workspace / "incoming"
    for folder in staging.glob("*") if staging.is_dir() else []:
        owner = folder.name.split("-", 1)[0]
        if not (owner.isdigit() and _pid_alive(int(owner))):
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
    for run in runs:
        if run.status in ACTIVE:
            continue
        for tmp in Path(run.run_dir).glob("*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > TMP_FILE_AGE_S and tmp.is_file():
                    tmp.unlink()


def _claim_next(store: Store, limit: int, run_id: str | None = None) -> Run | None:
    """Atomically move the oldest queued run to 'starting' if fewer than ``limit`` are active.

    A queued run with a ``pid`` belongs to a waiting command-line process: only that process
    claims it (passing its ``run_id``), when it is the oldest in the queue; until then the
    runs behind it wait too, first come first served.
    """
    with store.transaction() as db:
        active = db.execute(
            f"SELECT COUNT(*) FROM runs WHERE status IN ({','.join('?' * len(ACTIVE))})", ACTIVE
        ).fetchone()[0]
        if active >= limit:
            return None
        row = db.execute(
            "SELECT id, pid FROM runs WHERE status = 'queued' ORDER BY queued_at LIMIT 1"
        ).fetchone()
        if row is None or (row["id"] != run_id if run_id else row["pid"] is not None):
            return None
        now = time.time()
        db.execute(
            "UPDATE runs SET status = 'starting', message = 'Starting', started = ?,"
            " heartbeat = ? WHERE id = ?",
            (now, now, row["id"]),
        )
    return store.run(row["id"])


def wait_for_turn(
    store: Store,
    run_id: str,
    on_wait: Callable[[int], None],
    poll_s: float = 0.5,
    limit: int | None = None,
) -> Run:
    """Block until ``run_id`` (queued with this process's pid) may start; claim it.

    ``on_wait(place)`` is called whenever its place in the queue changes (1: next). Raises
    RunError when the run leaves the queue otherwise (cancelled in the app).
    """
    place = None
    while True:
        recover(store)  # a worker that died frees its slot
        run = _claim_next(store, limit or max_parallel_runs(), run_id)
        if run is not None:
            return run
        now = store.queue_position(run_id)
        if now is None:
            raise RunError("The run was cancelled while it waited in the queue.")
        if now != place:
            place = now
            on_wait(now)
        time.sleep(poll_s)


def worker_command(store: Store, run_id: str) -> list[str]:
    return [sys.executable, "-m", "tl_core", "worker", run_id, "--workspace", str(store.workspace)]


def _spawn(store: Store, run: Run) -> None:
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
        store.update_run(run.id, status="failed", error=f"Could not start training: {exc}")
        return
    finally:
        log.close()
    store.update_run(run.id, pid=proc.pid, heartbeat=time.time())
    # Reap the child when it exits so it never lingers as a zombie.
    threading.Thread(target=proc.wait, daemon=True).start()


def pump(store: Store, limit: int | None = None) -> list[str]:
    """Start queued runs while slots are free; return the ids started."""
    recover(store)
    started = []
    while (run := _claim_next(store, limit or max_parallel_runs())) is not None:
        _spawn(store, run)
        started.append(run.id)
    return started


def request_stop(store: Store, run_id: str) -> None:
    """Ask a run to stop: a waiting run is cancelled, a training one stops within a step."""
    run = store.run(run_id)
    if run is None:
        return
    if run.status == "queued":
        store.update_run(
            run_id, status="stopped", message="Cancelled before it started", finished=time.time()
        )
    elif run.status in ACTIVE:
        store.update_run(run_id, stop_requested=1, message="Stopping")


def resume(store: Store, run_id: str) -> Run:
    """Queue an interrupted or stopped run to continue from its last saved epoch."""
    run = store.run(run_id)
    if run is None:
        raise RunError("This run no longer exists.")
    if run.status not in ("interrupted", "stopped", "failed"):
        raise RunError(f"A {run.status} run cannot be resumed.")
    if not (Path(run.run_dir) / "last.pt").exists():
        raise RunError("This run stopped before finishing its first epoch; start a new run.")
    store.update_run(
        run_id,
        status="queued",
        resume=1,
        stop_requested=0,
        error=None,
        pid=None,
        message="Waiting to resume",
        queued_at=time.time(),
    )
    pump(store)
    return store.run(run_id)  # type: ignore[return-value]
