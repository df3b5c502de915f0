"""The embedded store: a SQLite index of projects, runs and metrics, and files beside it.

Layout under the workspace folder::

    studio.db                       projects, runs, metrics (WAL mode: one writer, many readers)
    projects/<project id>/data-N/   an imported data set (manifest.json + images/)
    runs/<run id>/                  best.pt, last.pt, predictions.json, worker.log, run.json

Workers write; pages only read (and ask for a stop). Every write is one short transaction.

The folders describe themselves, so the index can be rebuilt from them (:func:`repair`):
each project folder holds ``project.json`` (id, name, data set, settings) and a pointer
``runs/<run id>.json`` per run; each run folder holds ``run.json`` (id, project, config, data
set, status, result, epoch metrics), rewritten when the run's status changes. The database is
opened, and checked, on first use: a file that is not a database, a damaged one, another
program's or a newer version's raises :class:`StoreDamagedError`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tl_core import diskspace
from tl_core.config import ACTIVE, UNFINISHED, EpochRow, ProjectSettings, RunSpec, StepRow
from tl_core.errors import RunError, StudioError
from tl_core.events import Progress, describe
from tl_core.runs.kinds import KINDS, JobParams, entry, in_quick_lane

_RECORDED_FIELDS = {"status", "result", "error", "finished", "config", "resume"}

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
    result TEXT, queued_at REAL, kind TEXT NOT NULL DEFAULT 'train', key TEXT, progress REAL,
    placement TEXT, phase TEXT, done INTEGER, total INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_project ON runs(project_id, created);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status, created);
CREATE INDEX IF NOT EXISTS runs_by_key ON runs(project_id, key);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id), kind TEXT NOT NULL, epoch INTEGER NOT NULL,
    step INTEGER NOT NULL, total_steps INTEGER, loss REAL, accuracy REAL, val_loss REAL,
    val_accuracy REAL, lr REAL, elapsed REAL
);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics(run_id, kind, step);
"""
SCHEMA_VERSION = 1  # PRAGMA user_version of an index this version writes
DB_NAME = "studio.db"
RUN_RECORD = "run.json"
PROJECT_RECORD = "project.json"
REPAIR_HINT = (
    "run `python -m tl_core repair` (or press Repair in the app) to move it aside and rebuild "
    "the index from the project and run folders"
)


class StoreDamagedError(StudioError):
    """studio.db cannot be used: not a database, damaged, another program's or too new."""


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def _expected_columns() -> dict[str, list[tuple[str, str, int, str | None]]]:
    """(name, type, not null, default) of each column of each table, as _SCHEMA makes them."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        return {
            table: [(r[1], r[2], r[3], r[4]) for r in db.execute(f"PRAGMA table_info({table})")]
            for table in ("projects", "runs", "metrics")
        }
    finally:
        db.close()


_OPENED_HERE: set[str] = set()  # studio.db files this process has open through SQLite


def fair_order(queued: list[Job], active: dict[str, int]) -> list[Job]:
    """Waiting jobs in the order they start: round-robin across projects.

    The next job is the oldest waiting one of the project with the fewest jobs running, ties
    broken by how long that project has waited; so one student's sweep of three runs or
    model comparison never holds the others up, and a project runs more than one job at
    once only when nobody else is waiting.
    """
    running = dict(active)
    waiting: dict[str, list[Job]] = {}
    for job in sorted(queued, key=lambda j: (j.queued_at or j.created, j.created)):
        waiting.setdefault(job.project_id, []).append(job)
    order = []
    while waiting:
        project = min(
            waiting,
            key=lambda p: (running.get(p, 0), waiting[p][0].queued_at or waiting[p][0].created),
        )
        order.append(waiting[project].pop(0))
        running[project] = running.get(project, 0) + 1
        if not waiting[project]:
            del waiting[project]
    return order


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
    settings: dict[str, Any]  # as stored (a JSON object); read it as ``typed_settings``

    @property
    def typed_settings(self) -> ProjectSettings:
        """The typed form of ``settings``: model, preset and the next run's settings."""
        return ProjectSettings.from_dict(self.settings)


@dataclass(frozen=True)
class Job:
    """One row of the store's ``runs`` table: any long job, of one of the registry's kinds
    (:mod:`tl_core.runs.kinds`). A training run is the job of kind ``train``."""

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
    kind: str = "train"  # a job kind (tl_core.runs.kinds): every long job is a row of this table
    key: str | None = None  # what a feature-like job computes: equal keys, equal results
    progress: float | None = None  # 0..1 of the job's current phase, when it knows
    placement: str | None = None  # where it runs or ran: machine (or Ray node) and device
    phase: str | None = None  # the phase its job last reported (tl_core.events.PHASES)
    done: int | None = None  # ... and how far that phase is: done of total, when it counts
    total: int | None = None

    @property
    def active(self) -> bool:
        return self.status in UNFINISHED

    @property
    def reported(self) -> Progress | None:
        """What its job last reported of its phase, while it runs (None before the first
        report of its current start)."""
        if self.status != "running" or self.phase is None:
            return None
        return Progress(self.phase, self.done, self.total)

    @property
    def spec(self) -> RunSpec:
        """The typed form of ``config`` for a training run: settings and tags."""
        return RunSpec.from_dict(self.config)

    @property
    def params(self) -> JobParams:
        """The typed form of ``config`` for a job of any kind (:mod:`tl_core.runs.kinds`);
        UnknownKindError for a kind this version does not know."""
        return entry(self.kind).read(self.config)


def _json(text: str, what: str) -> Any:
    """A JSON column's value; StoreDamagedError when the row holds no valid JSON."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise StoreDamagedError(
            f"The workspace index studio.db holds a damaged {what} (not valid JSON); {REPAIR_HINT}."
        ) from None


def progress_columns(progress: Progress) -> dict[str, Any]:
    """The runs table's columns for what a job reports of its phase: its typed figures, the
    fraction done and the sentence the pages show (:func:`tl_core.events.describe`)."""
    return {
        "phase": progress.phase,
        "done": progress.done,
        "total": progress.total,
        "progress": progress.fraction,
        "message": describe(progress),
    }


def _job(row: sqlite3.Row) -> Job:
    d = dict(row)
    d["config"] = _json(d["config"], "run configuration")
    d["result"] = _json(d["result"], "run result") if d["result"] else None
    d["stop_requested"] = bool(d["stop_requested"])
    d["resume"] = bool(d["resume"])
    return Job(**d)


class Store:
    """All reads and writes of the workspace's SQLite index."""

    def __init__(self, workspace: Path | None = None) -> None:
        """The store of ``workspace``; the database is opened and checked on first use."""
        self.workspace = Path(workspace or default_workspace())
        with diskspace.guard(self.workspace, diskspace.MB):
            self.workspace.mkdir(parents=True, exist_ok=True)
        self.path = self.workspace / DB_NAME
        self._keeper: sqlite3.Connection | None = None
        self._opened = False
        self._open_lock = threading.Lock()

    def close(self) -> None:
        """Let go of the idle connection (the next use opens the index again)."""
        with self._open_lock:
            if self._keeper is not None:
                self._keeper.close()
                self._keeper = None
            self._opened = False

    def check(self) -> None:
        """Open the index now; StoreDamagedError when it cannot be used."""
        with self._connect():
            pass

    def _damaged(self, what: str) -> StoreDamagedError:
        return StoreDamagedError(f"The workspace index {self.path} {what}; {REPAIR_HINT}.")

    def _open(self) -> None:
        """Check the file, create the tables of a new index, add columns an older one lacks."""
        with self._open_lock:
            if self._opened:
                return
            if self.path.is_dir():
                raise self._damaged("is a folder, not a database file")
            size = self.path.stat().st_size if self.path.is_file() else 0
            if self.path.is_file() and size == 0 and self._has_folders():
                raise self._damaged("is empty (cut short to 0 bytes) while projects exist")
            # Reading the header through a file of our own is safe only before this process
            # has the database open: closing any descriptor of a file drops every POSIX lock
            # the process holds on it, so another process would think nobody else has
            # studio.db open and remove its -wal and -shm files under us.
            if size and str(self.path.resolve()) not in _OPENED_HERE:
                try:
                    with open(self.path, "rb") as f:
                        head = f.read(16)
                except OSError as exc:
                    raise self._damaged(f"cannot be read ({exc.strerror or exc})") from None
                if head != b"SQLite format 3\x00":
                    raise self._damaged("is not a database file (another kind of file or damaged)")
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout=30000")
                self._prepare(db)
            except sqlite3.DatabaseError as exc:
                if _is_damage(exc):
                    raise self._damaged("is damaged (cut short or with broken pages)") from None
                if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CANTOPEN:
                    raise self._damaged("cannot be opened") from None
                raise
            finally:
                db.close()
            # One idle connection for the store's lifetime keeps studio.db's -wal and -shm
            # files in place, so that reads still work when the disk fills up later (opening
            # the database afresh would have to create them).
            with diskspace.guard(self.workspace, diskspace.MB):
                self._keeper = sqlite3.connect(self.path, check_same_thread=False)
                self._keeper.execute("SELECT 1 FROM runs LIMIT 1").fetchall()
            _OPENED_HERE.add(str(self.path.resolve()))
            self._opened = True

    def _has_folders(self) -> bool:
        return any(
            any(True for _ in (self.workspace / sub).iterdir())
            for sub in ("projects", "runs")
            if (self.workspace / sub).is_dir()
        )

    def _prepare(self, db: sqlite3.Connection) -> None:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and not {"projects", "runs"} <= tables:
            names = ", ".join(sorted(tables)[:5])
            raise self._damaged(f"is not this app's index (it holds the tables {names})")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise self._damaged("was written by a newer version of this app")
        if tables:
            check = [r[0] for r in db.execute("PRAGMA quick_check")]
            if check != ["ok"]:
                raise self._damaged("is damaged (its integrity check failed)")
        db.execute("BEGIN IMMEDIATE")
        try:
            statements = [t.strip() for t in _SCHEMA.split(";") if t.strip()]
            for stmt in statements:  # tables first, then the columns they lack, then indexes
                if stmt.startswith("CREATE TABLE"):
                    db.execute(stmt)
            self._migrate(db)
            for stmt in statements:
                if not stmt.startswith("CREATE TABLE"):
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Add the columns an index of an older version lacks; refuse unknown ones."""
        for table, expected in _expected_columns().items():
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            known = {c[0] for c in expected}
            extra = sorted(have - known)
            if extra:
                raise self._damaged(
                    f"has columns this version does not know ({table}.{extra[0]}): it was "
                    "written by another version or program"
                )
            for name, kind, notnull, default in expected:
                if name in have:
                    continue
                if notnull and default is None:
                    raise self._damaged(f"is an older index that lacks {table}.{name}")
                sql = f"ALTER TABLE {table} ADD COLUMN {name} {kind}"
                if default is not None:
                    sql += f"{' NOT NULL' if notnull else ''} DEFAULT {default}"
                db.execute(sql)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection; damage is StoreDamagedError, "database or disk is full" DiskFullError."""
        if not self._opened:
            with diskspace.guard(self.workspace, diskspace.MB):
                self._open()
        with diskspace.guard(self.workspace, diskspace.MB):
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            try:
                db.execute("PRAGMA busy_timeout=30000")
                yield db
            except sqlite3.DatabaseError as exc:
                if _is_damage(exc):
                    raise self._damaged("is damaged") from None
                raise
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
        self._write_project_record(pid)
        return self.project(pid)  # type: ignore[return-value]

    def project(self, project_id: str) -> Project | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["settings"] = _json(d["settings"], "project's settings")
        return Project(**d)

    def project_dir(self, project_id: str) -> Path:
        return self.workspace / "projects" / project_id

    def delete_project(self, project_id: str) -> None:
        """Remove a project for good: its rows (runs, jobs, their metrics), its folder (every
        data version with its caches) and the folders of its runs and jobs inside the
        workspace (a run written to a folder of the user's choice keeps that folder).

        RunError while one of its jobs is being started or runs; waiting jobs go with it.
        """
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM projects WHERE id = ?", (project_id,)).fetchone() is None:
                raise RunError("This project no longer exists; reload the page.")
            busy = db.execute(
                f"SELECT COUNT(*) FROM runs WHERE project_id = ? AND status IN "
                f"({','.join('?' * len(ACTIVE))})",
                (project_id, *ACTIVE),
            ).fetchone()[0]
            if busy:
                raise RunError(
                    "A job of this project is still running. Stop it or wait for it to end, "
                    "then delete the project."
                )
            folders = [
                Path(r["run_dir"])
                for r in db.execute("SELECT run_dir FROM runs WHERE project_id = ?", (project_id,))
            ]
            db.execute(
                "DELETE FROM metrics WHERE run_id IN (SELECT id FROM runs WHERE project_id = ?)",
                (project_id,),
            )
            db.execute("DELETE FROM runs WHERE project_id = ?", (project_id,))
            db.execute("DELETE FROM projects WHERE id = ?", (project_id,))
        home = self.workspace.resolve()
        for folder in [self.project_dir(project_id), *folders]:
            folder = folder.resolve()
            if folder != home and folder.is_relative_to(home) and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)

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
        self._write_project_record(project_id)

    def update_settings(self, project_id: str, **changes: Any) -> dict[str, Any]:
        with self.transaction() as db:
            row = db.execute("SELECT settings FROM projects WHERE id = ?", (project_id,)).fetchone()
            settings = {**json.loads(row["settings"]), **changes}
            db.execute(
                "UPDATE projects SET settings = ? WHERE id = ?", (json.dumps(settings), project_id)
            )
        self._write_project_record(project_id)
        return settings

    # ------------------------------------------------------------------ runs

    def create_job(
        self,
        project_id: str,
        config: dict[str, Any],
        data_dir: Path,
        run_dir: Path | None = None,
        source: str = "app",
        status: str = "queued",
        pid: int | None = None,
        kind: str = "train",
        key: str | None = None,
    ) -> Job:
        """A new job record and its folder (``run_dir``, or ``<home>/<id>`` of the workspace,
        its kind's ``home``: ``runs`` for a training run, ``jobs`` for the others).

        Two runs never share a folder: ``run_dir`` must be new or empty and no other run may
        use it, else RunError. ``pid`` marks a queued run that its own process (the command
        line) starts when its turn comes, instead of a worker.
        """
        rid = new_id()
        known = KINDS.get(kind)
        home = known.home if known is not None else "jobs"
        folder = (Path(run_dir) if run_dir else self.workspace / home / rid).resolve()
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
                " run_dir, source, pid, kind, key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    kind,
                    key,
                ),
            )
            folder.mkdir(parents=True, exist_ok=True)  # fails before COMMIT: no record
        if known is not None and known.keeps_record:  # others are recomputed, never repaired
            self._write_run_record(rid, new=True)
        return self.job(rid)  # type: ignore[return-value]

    def job(self, run_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _job(row)

    def runs(
        self,
        project_id: str | None = None,
        statuses: tuple[str, ...] = (),
        kind: str | None = "train",
    ) -> list[Job]:
        """Training runs (or jobs of ``kind``; None: every job), oldest first, filtered by
        project and status."""
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if project_id is not None:
            sql += " AND project_id = ?"
            args.append(project_id)
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args.extend(statuses)
        with self._connect() as db:
            return [_job(r) for r in db.execute(sql + " ORDER BY created", args)]

    def update_job(self, run_id: str, **fields: Any) -> None:
        """Set columns of a run; dicts are stored as JSON."""
        cols = []
        values = []
        for key, value in fields.items():
            cols.append(f"{key} = ?")
            values.append(json.dumps(value) if isinstance(value, dict) else value)
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {', '.join(cols)} WHERE id = ?", (*values, run_id))
        if _RECORDED_FIELDS & fields.keys():
            self._write_run_record(run_id)

    def jobs(
        self,
        project_id: str | None = None,
        statuses: tuple[str, ...] = (),
        kind: str | None = None,
        key: str | None = None,
    ) -> list[Job]:
        """Jobs of every kind (or one), oldest first; ``key`` picks those computing one thing."""
        jobs = self.runs(project_id, statuses, kind)
        return jobs if key is None else [j for j in jobs if j.key == key]

    @staticmethod
    def row_to_job(row: sqlite3.Row) -> Job:
        """A ``runs`` row read through :meth:`transaction`, as a Job."""
        return _job(row)

    def queue_order(self) -> list[Job]:
        """The waiting jobs in the order the fair queue starts them (:func:`fair_order`)."""
        with self._connect() as db:
            queued = [_job(r) for r in db.execute("SELECT * FROM runs WHERE status = 'queued'")]
            active = db.execute(
                "SELECT project_id, COUNT(*) AS n FROM runs WHERE status IN (?, ?)"
                " GROUP BY project_id",
                ACTIVE,
            ).fetchall()
        return fair_order(queued, {r["project_id"]: r["n"] for r in active})

    def queue_position(self, run_id: str) -> int | None:
        """1 for the next job to start; None when the job is not waiting. A job of a kind
        with a quick lane (:mod:`tl_core.runs.kinds`) counts only those ahead of it: the lane
        is its own."""
        order = self.queue_order()
        mine = next((r for r in order if r.id == run_id), None)
        if mine is None:
            return None
        if in_quick_lane(mine.kind):
            order = [r for r in order if in_quick_lane(r.kind)]
        return [r.id for r in order].index(run_id) + 1

    # ------------------------------------------------------------------ self-describing folders

    def _write_project_record(self, project_id: str) -> None:
        """projects/<id>/project.json: what a rebuilt index needs to know of the project."""
        project = self.project(project_id)
        if project is not None:
            _write_json(
                self.project_dir(project_id) / PROJECT_RECORD, {"format": 1, **asdict(project)}
            )

    def _write_run_record(self, run_id: str, new: bool = False) -> None:
        """run.json in the run folder (and, for a new run, a pointer in its project folder)."""
        run = self.job(run_id)
        known = KINDS.get(run.kind) if run is not None else None
        if run is None or known is None or not known.keeps_record:
            return
        epochs = [_epoch_record(run_id, e) for e in self.epochs(run_id)]
        record = {"format": 1, **asdict(run), "epochs": epochs}
        for key in ("pid", "heartbeat", "stop_requested", "phase", "done", "total"):
            record.pop(key)
        _write_json(Path(run.run_dir) / RUN_RECORD, record)
        if new:
            pointer = self.project_dir(run.project_id) / "runs" / f"{run_id}.json"
            _write_json(pointer, {"run_dir": run.run_dir}, make_parent=True)

    # ------------------------------------------------------------------ metrics

    def add_step(self, run_id: str, row: StepRow) -> None:
        """Keep one training step (and count it as the run's heartbeat)."""
        self.add_steps(run_id, [row])

    def add_steps(self, run_id: str, rows: Sequence[StepRow]) -> None:
        """Keep training steps in one transaction (and count it as the run's heartbeat)."""
        with self._connect() as db:
            db.executemany(
                f"INSERT INTO metrics (run_id, kind, {', '.join(_STEP_COLUMNS.values())})"
                f" VALUES (?, 'step', {', '.join('?' * len(_STEP_COLUMNS))})",
                [(run_id, *(getattr(row, f) for f in _STEP_COLUMNS)) for row in rows],
            )
            db.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time(), run_id))

    def add_epoch(self, run_id: str, row: EpochRow) -> None:
        """Keep one finished epoch."""
        with self._connect() as db:
            _insert_epoch(db, run_id, row)

    def steps(self, run_id: str) -> list[StepRow]:
        """The run's training steps, in order."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {', '.join(_STEP_COLUMNS.values())} FROM metrics"
                " WHERE run_id = ? AND kind = 'step' ORDER BY step",
                (run_id,),
            ).fetchall()
        return [StepRow(*r) for r in rows]

    def epochs(self, run_id: str) -> list[EpochRow]:
        """The run's finished epochs, in order."""
        with self._connect() as db:
            return _epoch_rows(db, run_id)

    def training_epochs(self, recent: int = 20) -> dict[str, list[EpochRow]]:
        """Epoch rows, by run id, of the training runs that show how fast training goes here:
        those working or waiting to resume, and the ``recent`` ones that ran last."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT run_id, {', '.join(_EPOCH_COLUMNS.values())} FROM metrics"
                " WHERE kind = 'epoch' AND run_id IN ("
                "  SELECT id FROM runs WHERE kind = 'train' AND (status IN (?, ?)"
                "   OR (status = 'queued' AND resume = 1))"
                "  UNION SELECT * FROM (SELECT id FROM runs WHERE kind = 'train'"
                "   AND status IN ('finished', 'stopped', 'interrupted') AND started IS NOT NULL"
                "   ORDER BY created DESC LIMIT ?))"
                " ORDER BY run_id, step",
                (*ACTIVE, recent),
            ).fetchall()
        found: dict[str, list[EpochRow]] = {}
        for r in rows:
            found.setdefault(r[0], []).append(EpochRow(*r[1:]))
        return found

    def drop_metrics_after(self, run_id: str, epoch: int) -> None:
        """Forget metrics of epochs after ``epoch`` (a resumed run replays them)."""
        with self._connect() as db:
            db.execute("DELETE FROM metrics WHERE run_id = ? AND epoch > ?", (run_id, epoch))


# ---------------------------------------------------------------------- metric rows

# The metrics table's column of each field of a row (one table holds steps and epochs).
_STEP_COLUMNS = {f.name: f.name for f in fields(StepRow)} | {"elapsed_s": "elapsed"}
_EPOCH_COLUMNS = {f.name: f.name for f in fields(EpochRow)} | {
    "train_loss": "loss",
    "train_accuracy": "accuracy",
    "elapsed_s": "elapsed",
}


def _insert_epoch(db: sqlite3.Connection, run_id: str, row: EpochRow) -> None:
    db.execute(
        f"INSERT INTO metrics (run_id, kind, {', '.join(_EPOCH_COLUMNS.values())})"
        f" VALUES (?, 'epoch', {', '.join('?' * len(_EPOCH_COLUMNS))})",
        (run_id, *(getattr(row, f) for f in _EPOCH_COLUMNS)),
    )


def _epoch_rows(db: sqlite3.Connection, run_id: str) -> list[EpochRow]:
    rows = db.execute(
        f"SELECT {', '.join(_EPOCH_COLUMNS.values())} FROM metrics"
        " WHERE run_id = ? AND kind = 'epoch' ORDER BY step",
        (run_id,),
    ).fetchall()
    return [EpochRow(*r) for r in rows]


def _epoch_record(run_id: str, row: EpochRow) -> dict[str, Any]:
    """An epoch as run.json keeps it: the metrics table's row, column by column."""
    return {
        "run_id": run_id,
        "kind": "epoch",
        "epoch": row.epoch,
        "step": row.step,
        "total_steps": None,
        "loss": row.train_loss,
        "accuracy": row.train_accuracy,
        "val_loss": row.val_loss,
        "val_accuracy": row.val_accuracy,
        "lr": None,
        "elapsed": row.elapsed_s,
    }


def _epoch_from_record(raw: Any) -> EpochRow | None:
    """An epoch of run.json as a row; None when it is not one (a damaged or foreign entry)."""
    if not isinstance(raw, dict):
        return None
    values = {f: raw.get(c) for f, c in _EPOCH_COLUMNS.items()}
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values()):
        return None
    return EpochRow(**values)


# ---------------------------------------------------------------------- records and repair


def _write_json(path: Path, value: dict[str, Any], make_parent: bool = False) -> None:
    """Write atomically. A folder that cannot take its record is only harder to rebuild later,
    so a failure here never fails the store operation that asked for it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if make_parent:
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(value, indent=1, default=str), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_run_record(run_dir: Path) -> dict[str, Any] | None:
    """The run folder's run.json, or None when it is missing or not one of ours."""
    record = _read_json(Path(run_dir) / RUN_RECORD)
    if record is None:
        return None
    shape = {
        "id": str,
        "project_id": str,
        "status": str,
        "config": dict,
        "data_dir": str,
        "created": (int, float),
    }
    if not all(isinstance(record.get(k), t) for k, t in shape.items()):
        return None
    return record


@dataclass
class RepairReport:
    """What :func:`repair` did."""

    problem: str | None  # why the old index was moved aside (None: it was sound)
    moved_to: Path | None
    projects: int  # projects added to the index
    runs: int  # runs added to the index
    skipped: list[str] = field(default_factory=list)  # folders that could not be read back

    def sentence(self) -> str:
        start = (
            f"The damaged index was moved to {self.moved_to.name}; "
            if self.moved_to
            else "The index was sound; "
        )
        line = (
            f"{start}{self.projects} project(s) and {self.runs} run(s) were added from their "
            "folders."
        )
        if self.skipped:
            line += f" {len(self.skipped)} folder(s) could not be read back (no run.json)."
        return line

    def summary(self) -> dict[str, Any]:
        return {
            "repaired": self.moved_to is not None,
            "problem": self.problem,
            "moved_to": str(self.moved_to) if self.moved_to else None,
            "projects_added": self.projects,
            "runs_added": self.runs,
            "skipped": self.skipped,
        }


def _move_aside(path: Path) -> Path:
    """studio.db (with its -wal and -shm files) → studio.db.damaged-<timestamp>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    return target


def _run_folders(workspace: Path) -> list[Path]:
    """runs/<id>/ folders and the folders the projects' run pointers name, each once."""
    found: dict[Path, None] = {}
    runs = workspace / "runs"
    if runs.is_dir():
        for folder in sorted(runs.iterdir()):
            if folder.is_dir():
                found[folder.resolve()] = None
    for pointer in sorted((workspace / "projects").glob("*/runs/*.json")):
        target = (_read_json(pointer) or {}).get("run_dir")
        if isinstance(target, str) and Path(target).is_dir():
            found[Path(target).resolve()] = None
    return list(found)


def _project_rows(workspace: Path) -> dict[str, dict[str, Any]]:
    """A row for each project folder: from its project.json, else from its newest data set."""
    rows: dict[str, dict[str, Any]] = {}
    base = workspace / "projects"
    if not base.is_dir():
        return rows
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        record = _read_json(folder / PROJECT_RECORD) or {}
        imports = sorted(
            (p.parent for p in folder.glob("data-*/manifest.json")),
            key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else 0,
        )
        data_dir = record.get("data_dir")
        if not isinstance(data_dir, str):
            data_dir = str(imports[-1]) if imports else None
        settings = record.get("settings")
        created = record.get("created")
        rows[folder.name] = {
            "id": folder.name,
            "name": str(record.get("name") or "Recovered project"),
            "created": float(created)
            if isinstance(created, int | float)
            else folder.stat().st_mtime,
            "data_dir": data_dir,
            "settings": json.dumps(settings if isinstance(settings, dict) else {}),
        }
    return rows


def _read_everything(store: Store) -> None:
    """Open the index and decode every row: StoreDamagedError at the first damage."""
    store.runs()
    with store._connect() as db:
        ids = [r[0] for r in db.execute("SELECT id FROM projects")]
    for pid in ids:
        store.project(pid)


def _insert_projects(
    db: sqlite3.Connection, projects: dict[str, dict[str, Any]], records: list[tuple[Path, dict]]
) -> list[str]:
    """Add the projects the index lacks (also those only a run's record names)."""
    for _, record in records:
        pid = record["project_id"]
        projects.setdefault(
            pid,
            {
                "id": pid,
                "name": "Recovered project",
                "created": float(record["created"]),
                "data_dir": record["data_dir"],
                "settings": json.dumps(record["config"]),
            },
        )
    added = []
    for row in projects.values():
        cur = db.execute(
            "INSERT OR IGNORE INTO projects (id, name, created, data_dir, settings) "
            "VALUES (:id, :name, :created, :data_dir, :settings)",
            row,
        )
        if cur.rowcount:
            added.append(row["id"])
    return added


def _insert_run(db: sqlite3.Connection, folder: Path, record: dict[str, Any]) -> bool:
    """Add one run from its run.json (with its epoch metrics); False when it was there."""
    status = record["status"]
    message = str(record.get("message") or "")
    if status in UNFINISHED:
        status, message = "interrupted", "Interrupted: found unfinished when the index was rebuilt"
    result = record.get("result")
    cur = db.execute(
        "INSERT OR IGNORE INTO runs (id, project_id, created, queued_at, status, config,"
        " data_dir, run_dir, source, started, finished, message, error, result, placement)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record["id"],
            record["project_id"],
            float(record["created"]),
            record.get("queued_at") or float(record["created"]),
            status,
            json.dumps(record["config"]),
            record["data_dir"],
            str(folder),
            str(record.get("source") or "app"),
            record.get("started"),
            record.get("finished"),
            message,
            record.get("error"),
            json.dumps(result) if isinstance(result, dict) else None,
            record.get("placement"),
        ),
    )
    if not cur.rowcount:
        return False
    epochs = record.get("epochs")
    for raw in epochs if isinstance(epochs, list) else []:
        row = _epoch_from_record(raw)
        if row is not None:
            _insert_epoch(db, record["id"], row)
    return True


def repair(workspace: Path | None = None) -> RepairReport:
    """Move a damaged studio.db aside, then add every project and run folder to the index.

    A sound index is kept and only completed with what its folders hold and it lacks (a
    deleted studio.db is rebuilt the same way). Runs that were unfinished become
    ``interrupted``; their step metrics are gone, their epoch metrics come from run.json.
    """
    store = Store(workspace)
    problem = moved = None
    try:
        _read_everything(store)
    except StoreDamagedError as exc:
        problem = str(exc)
        moved = _move_aside(store.path)
        store = Store(store.workspace)
        store.check()
    projects = _project_rows(store.workspace)
    skipped: list[str] = []
    records = []
    for folder in _run_folders(store.workspace):
        record = read_run_record(folder)
        if record is None:
            skipped.append(str(folder))
        else:
            records.append((folder, record))
    with store.transaction() as db:
        added_projects = _insert_projects(db, projects, records)
        added_runs = [r["id"] for folder, r in records if _insert_run(db, folder, r)]
    for pid in added_projects:
        store._write_project_record(pid)
    for rid in added_runs:
        store._write_run_record(rid)  # the run folder may have moved: record where it is now
    return RepairReport(problem, moved, len(added_projects), len(added_runs), skipped)
