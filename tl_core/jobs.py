"""The job queue: start training workers as subprocesses, at most N at once.

A worker is ``python -m tl_core worker RUN_ID``: the same entry point a user can run, in its
own process, so a crash or an out-of-memory kill never takes the web server down. Nothing here
keeps state in memory: the queue is the ``runs`` table, and any process (a page, a finishing
worker, the command line) may ``pump`` it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tl_core.errors import RunError
from tl_core.store import ACTIVE, Run, Store

# A worker that has not written for this long while its process is gone or hung is interrupted.
STALE_AFTER_S = 600.0

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


def recover(store: Store) -> list[str]:
    """Mark runs whose worker is gone as interrupted; return their ids."""
    now = time.time()
    lost = []
    for run in store.runs(statuses=ACTIVE):
        last_sign = run.heartbeat or run.started or run.created
        if not _pid_alive(run.pid) or now - last_sign > STALE_AFTER_S:
            # A run claimed a moment ago may not have its pid yet: give it a grace period.
            if run.pid is None and now - last_sign < 30:
                continue
            store.update_run(
                run.id,
                status="interrupted",
                pid=None,
                message="The training process stopped unexpectedly (server restart or crash).",
            )
            lost.append(run.id)
    return lost


def _claim_next(store: Store, limit: int) -> Run | None:
    """Atomically move the oldest queued run to 'starting' if fewer than ``limit`` are active."""
    with store.transaction() as db:
        active = db.execute(
            f"SELECT COUNT(*) FROM runs WHERE status IN ({','.join('?' * len(ACTIVE))})", ACTIVE
        ).fetchone()[0]
        if active >= limit:
            return None
        row = db.execute(
            "SELECT id FROM runs WHERE status = 'queued' ORDER BY queued_at LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        now = time.time()
        db.execute(
            "UPDATE runs SET status = 'starting', message = 'Starting', started = ?,"
            " heartbeat = ? WHERE id = ?",
            (now, now, row["id"]),
        )
    return store.run(row["id"])


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
