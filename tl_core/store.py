"""The embedded store: a SQLite index of projects, runs and metrics, and files beside it.

Layout under the workspace folder::

    studio.db                       projects, runs, metrics (WAL mode: one writer, many readers)
    projects/<project id>/data-N/   an imported data set (manifest.json + images/)
    runs/<run id>/                  best.pt, last.pt, predictions.json, worker.log

Workers write; pages only read (and ask for a stop). Every write is one short transaction.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_core import diskspace
from tl_core.errors import RunError

ACTIVE = ("starting", "running")
UNFINISHED = ("queued", "starting", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL,
    data_dir TEXT, settings TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, project_id TEXT NOT NULL REFERENCES projects(id),
    created REAL NOT NULL, status TEXT NOT NULL, config TEXT NOT NULL, data_dir TEXT NOT NULL,
    run_dir TEXT NOT NULL, source TEXT NOT NULL DEFAULT 'app', pid INTEGER,
    heartbeat REAL, started REAL, finished REAL, stop_requested INTEGER NOT NULL DEFAULT 0,
    resume INTEGER NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', error TEXT,
    result TEXT, queued_at REAL
);
CREATE INDEX IF NOT EXISTS runs_by_project ON runs(project_id, created);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status, created);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id), kind TEXT NOT NULL, epoch INTEGER NOT NULL,
    step INTEGER NOT NULL, total_steps INTEGER, loss REAL, accuracy REAL, val_loss REAL,
    val_accuracy REAL, lr REAL, elapsed REAL
);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics(run_id, kind, step);
"""


def default_workspace() -> Path:
    """``TL_STUDIO_HOME`` if set, else ~/.tl-studio: shared by the app and the command line."""
    return Path(os.environ.get("TL_STUDIO_HOME") or Path.home() / ".tl-studio").expanduser()


def new_id() -> str:
    """An unguessable id (128 bits), safe in URLs and folder names."""
    return secrets.token_urlsafe(16).replace("-", "a").replace("_", "b")


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    created: float
    data_dir: str | None
    settings: dict[str, Any]


@dataclass(frozen=True)
class Run:
    id: str
    project_id: str
    created: float
    status: str
    config: dict[str, Any]
    data_dir: str
    run_dir: str
    source: str
    pid: int | None
    heartbeat: float | None
    started: float | None
    finished: float | None
    stop_requested: bool
    resume: bool
    message: str
    error: str | None
    result: dict[str, Any] | None
    queued_at: float | None

    @property
    def active(self) -> bool:
        return self.status in UNFINISHED


def _run(row: sqlite3.Row) -> Run:
    d = dict(row)
    d["config"] = json.loads(d["config"])
    d["result"] = json.loads(d["result"]) if d["result"] else None
    d["stop_requested"] = bool(d["stop_requested"])
    d["resume"] = bool(d["resume"])
    return Run(**d)


class Store:
    """All reads and writes of the workspace's SQLite index."""

    def __init__(self, workspace: Path | None = None) -> None:
        self.workspace = Path(workspace or default_workspace())
        with diskspace.guard(self.workspace, diskspace.MB):
            self.workspace.mkdir(parents=True, exist_ok=True)
        self.path = self.workspace / "studio.db"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        # One idle connection for the store's lifetime keeps studio.db's -wal and -shm files in
        # place, so that reads still work when the disk fills up later (opening the database
        # afresh would have to create them).
        with diskspace.guard(self.workspace, diskspace.MB):
            self._keeper = sqlite3.connect(self.path, check_same_thread=False)
            self._keeper.execute("SELECT 1 FROM runs LIMIT 1").fetchall()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection; "database or disk is full" becomes DiskFullError."""
        with diskspace.guard(self.workspace, diskspace.MB):
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            try:
                db.execute("PRAGMA busy_timeout=30000")
                yield db
            finally:
                db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: the caller holds the write lock until the block ends."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ------------------------------------------------------------------ projects

    def create_project(self, name: str = "My project") -> Project:
        pid = new_id()
        folder = self.workspace / "projects" / pid
        with diskspace.guard(self.workspace, diskspace.MB, cleanup=[folder]):
            folder.mkdir(parents=True, exist_ok=True)
        with diskspace.guard(self.workspace, diskspace.MB, cleanup=[folder]), self._connect() as db:
            db.execute(
                "INSERT INTO projects (id, name, created) VALUES (?, ?, ?)",
                (pid, name, time.time()),
            )
        return self.project(pid)  # type: ignore[return-value]

    def project(self, project_id: str) -> Project | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["settings"] = json.loads(d["settings"])
        return Project(**d)

    def project_dir(self, project_id: str) -> Path:
        return self.workspace / "projects" / project_id

    def new_data_dir(self, project_id: str) -> Path:
        """A fresh folder for a new import; earlier data sets stay for the runs that used them."""
        base = self.project_dir(project_id)
        base.mkdir(parents=True, exist_ok=True)
        n = 1 + max((int(p.name.split("-")[1]) for p in base.glob("data-*")), default=0)
        return base / f"data-{n}"

    def set_data_dir(self, project_id: str, data_dir: Path | None) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE projects SET data_dir = ? WHERE id = ?",
                (None if data_dir is None else str(data_dir), project_id),
            )

    def update_settings(self, project_id: str, **changes: Any) -> dict[str, Any]:
        with self.transaction() as db:
            row = db.execute("SELECT settings FROM projects WHERE id = ?", (project_id,)).fetchone()
            settings = {**json.loads(row["settings"]), **changes}
            db.execute(
                "UPDATE projects SET settings = ? WHERE id = ?", (json.dumps(settings), project_id)
            )
        return settings

    # ------------------------------------------------------------------ runs

    def create_run(
        self,
        project_id: str,
        config: dict[str, Any],
        data_dir: Path,
        run_dir: Path | None = None,
        source: str = "app",
        status: str = "queued",
        pid: int | None = None,
    ) -> Run:
        """A new run record and its folder (``run_dir``, or ``runs/<id>`` of the workspace).

        Two runs never share a folder: ``run_dir`` must be new or empty and no other run may
        use it, else RunError. ``pid`` marks a queued run that its own process (the command
        line) starts when its turn comes, instead of a worker.
        """
        rid = new_id()
        folder = (Path(run_dir) if run_dir else self.workspace / "runs" / rid).resolve()
        created = not folder.exists()
        now = time.time()
        with (
            diskspace.guard(folder, diskspace.MB, cleanup=[folder] if created else []),
            self.transaction() as db,
        ):
            owner = db.execute("SELECT id FROM runs WHERE run_dir = ?", (str(folder),)).fetchone()
            if owner is not None:
                raise RunError(
                    f"The folder '{folder}' already holds the run {owner['id']}; two runs "
                    "cannot share a folder. Choose another one."
                )
            if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
                raise RunError(
                    f"The folder '{folder}' is not a new or empty folder; choose another one "
                    "for the run's files."
                )
            db.execute(
                "INSERT INTO runs (id, project_id, created, queued_at, status, config, data_dir,"
                " run_dir, source, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rid,
                    project_id,
                    now,
                    now,
                    status,
                    json.dumps(config),
                    str(data_dir),
                    str(folder),
                    source,
                    pid,
                ),
            )
            folder.mkdir(parents=True, exist_ok=True)  # fails before COMMIT: no record
        return self.run(rid)  # type: ignore[return-value]

    def run(self, run_id: str) -> Run | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _run(row)

    def runs(self, project_id: str | None = None, statuses: tuple[str, ...] = ()) -> list[Run]:
        """Runs, oldest first, filtered by project and status."""
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if project_id is not None:
            sql += " AND project_id = ?"
            args.append(project_id)
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args.extend(statuses)
        with self._connect() as db:
            return [_run(r) for r in db.execute(sql + " ORDER BY created", args)]

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set columns of a run; dicts are stored as JSON."""
        cols = []
        values = []
        for key, value in fields.items():
            cols.append(f"{key} = ?")
            values.append(json.dumps(value) if isinstance(value, dict) else value)
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {', '.join(cols)} WHERE id = ?", (*values, run_id))

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next run to start; None when the run is not waiting."""
        with self._connect() as db:
            row = db.execute(
                "SELECT status, queued_at FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None or row["status"] != "queued":
                return None
            ahead = db.execute(
                "SELECT COUNT(*) FROM runs WHERE status = 'queued' AND queued_at < ?",
                (row["queued_at"],),
            ).fetchone()[0]
        return int(ahead) + 1

    # ------------------------------------------------------------------ metrics

    def add_step(
        self,
        run_id: str,
        epoch: int,
        step: int,
        total_steps: int,
        loss: float,
        accuracy: float,
        lr: float,
        elapsed: float,
    ) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO metrics (run_id, kind, epoch, step, total_steps, loss, accuracy, lr,"
                " elapsed) VALUES (?, 'step', ?, ?, ?, ?, ?, ?, ?)",
                (run_id, epoch, step, total_steps, loss, accuracy, lr, elapsed),
            )
            db.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (now, run_id))

    def add_epoch(
        self,
        run_id: str,
        epoch: int,
        step: int,
        train_loss: float,
        train_accuracy: float,
        val_loss: float,
        val_accuracy: float,
        elapsed: float,
    ) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO metrics (run_id, kind, epoch, step, loss, accuracy, val_loss,"
                " val_accuracy, elapsed) VALUES (?, 'epoch', ?, ?, ?, ?, ?, ?, ?)",
                (run_id, epoch, step, train_loss, train_accuracy, val_loss, val_accuracy, elapsed),
            )

    def metrics(self, run_id: str, kind: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM metrics WHERE run_id = ? AND kind = ? ORDER BY step",
                (run_id, kind),
            )
            return [dict(r) for r in rows]

    def drop_metrics_after(self, run_id: str, epoch: int) -> None:
        """Forget metrics of epochs after ``epoch`` (a resumed run replays them)."""
        with self._connect() as db:
            db.execute("DELETE FROM metrics WHERE run_id = ? AND epoch > ?", (run_id, epoch))
