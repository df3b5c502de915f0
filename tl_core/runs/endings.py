"""How a job ended, in words: one sentence for every job kind and every way it can end.

Every place that records an end takes its sentence from here: the worker (a failure it
caught: a full disk, a read-only workspace, memory that ran out), the executor (a worker
process that went away: a signal, a crash, a stall the server ended) and
:func:`tl_core.runs.jobs.recover` (a job found unfinished at the next start). Nothing here
says "killed" unless a signal ended the process, and a sentence never guesses a cause it
cannot know.

An end that cannot be written to the store when it happens (the disk is full, the workspace
became read-only) is kept twice: in memory, to be written again later (:data:`PENDING`), and
in the job's end note, a small file reserved in its folder when the job starts
(:class:`EndNote`): overwriting it needs no new room on the disk, so the next start reads the
true end from it. No torch here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tl_core import diskspace
from tl_core.runs import kinds
from tl_core.runs.kinds import KINDS

__all__ = [
    "NOTE_NAME",
    "PENDING",
    "EndNote",
    "cause_of",
    "clear_note",
    "cli_lost",
    "failure",
    "flush_pending",
    "forget_old_notices",
    "keep_pending",
    "leave_notice",
    "lost",
    "read_note",
    "server_lost",
    "stale",
    "take_notice",
    "what",
]

NOTE_NAME = "end-note.json"
NOTE_BYTES = 8192  # reserved when a job starts; an end's fields are far smaller
NOTICES = "notices"  # in the workspace: what the pages say once about a removed project
NOTICE_DAYS = 7  # a sentence nobody came back for is removed after this long


def what(kind: str) -> str:
    """The job of ``kind`` as the subject of a sentence ("The import"): its registry entry's
    title (:mod:`tl_core.runs.kinds`), "The job" for a kind not known here."""
    entry = KINDS.get(kind)
    return entry.title if entry is not None else "The job"


def _again(kind: str, resumable: bool = False) -> str:
    """What the user does next, after a job of ``kind`` ended before its work was done
    (``resumable``: it left a checkpoint to go on from)."""
    if kinds.resumable(kind):
        return (
            "press Resume to continue from its last saved epoch" if resumable else "start it again"
        )
    if kind == "import":
        return "import the pictures again"
    return "try again"


# ------------------------------------------------------------------------ causes


def _is_read_only(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == sqlite3.SQLITE_READONLY) or (
            "readonly database" in str(exc)
        )
    return False


def _on_read_only_disk(folder: Path) -> bool:
    """Is the file system that holds ``folder`` mounted read-only now?"""
    with contextlib.suppress(OSError, AttributeError):
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    return False


def cause_of(exc: BaseException, folder: Path | None = None) -> str | None:
    """``disk_full``, ``read_only`` or ``memory`` when ``exc`` is one of those ends, else None.

    ``folder`` (where the job writes) lets a storage error that names no cause ("disk I/O
    error") count as read-only when its file system is read-only now.
    """
    if isinstance(exc, MemoryError):
        return "memory"
    if diskspace.is_disk_full(exc):
        return "disk_full"
    if _is_read_only(exc):
        return "read_only"
    storage = isinstance(exc, OSError | sqlite3.Error)
    if storage and folder is not None and _on_read_only_disk(folder):
        return "read_only"
    return None


def _read_only_root(folder: Path) -> Path:
    """The outermost folder above ``folder`` on the same read-only file system (the mount)."""
    here = Path(folder).absolute()
    while here.parent != here and _on_read_only_disk(here.parent):
        if os.stat(here.parent).st_dev != os.stat(here).st_dev:
            break
        here = here.parent
    return here


def failure(kind: str, cause: str, folder: Path, resumable: bool = False) -> str:
    """The sentence for a job of ``kind`` that ended on ``cause`` (see :func:`cause_of`)."""
    subject = what(kind)
    again = _again(kind, resumable)
    if cause == "disk_full":
        return str(diskspace.disk_full_error(folder))
    if cause == "read_only":
        with contextlib.suppress(OSError):
            folder = _read_only_root(folder)
        return (
            f"{subject} stopped because the folder {folder} became read-only (nothing more "
            f"could be saved there); make it writable again, then {again}."
        )
    if cause == "memory":
        advice = "choose a smaller model or batch size or " if kind == "train" else ""
        return f"{subject} ran out of memory; {advice}close other programs, then {again}."
    return f"{subject} stopped unexpectedly; {again}."


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def lost(kind: str, returncode: int | None, reason: str | None = None) -> str:
    """A job whose worker process went away before it reported its end.

    ``returncode`` is the process's (negative: the signal that ended it); ``reason`` is why
    the server ended it, if it did: ``stop`` (Stop was pressed and the job did not stop in
    time) or ``stalled`` (it reported nothing for too long); None when the server did not.
    """
    subject = what(kind)
    again = _again(kind)
    if kinds.resumable(kind):
        again = "press Resume to continue from its last saved epoch, or start it again"
    if reason == "stop":
        return f"{subject} did not stop when asked, so the server ended it; {again}."
    if reason == "stalled":
        return f"{subject} stopped making progress, so the server ended it; {again}."
    if returncode == -signal.SIGKILL:
        return (
            f"{subject} was ended by the system (signal 9, most often because memory ran "
            f"out); {again}."
        )
    if returncode is not None and returncode < 0:
        name = _signal_name(-returncode)
        return f"{subject} was ended by a signal ({name}, {-returncode}); {again}."
    if returncode:
        return (
            f"{subject} stopped because its worker process crashed (exit code {returncode}); "
            f"{again}."
        )
    return f"{subject} stopped because its worker process ended before the job did; {again}."


def server_lost(kind: str, resumable: bool) -> str:
    """A job of the app found unfinished, its process gone, at the next start."""
    return f"{what(kind)} stopped when the server stopped; {_again(kind, resumable)}."


def cli_lost(resumable: bool) -> str:
    """A command-line run found unfinished, its process gone, at the next start."""
    return (
        "The command-line run stopped unexpectedly: its process ended before it could "
        f"record why; {_again('train', resumable)}."
    )


def stale(kind: str, minutes: float, resumable: bool) -> str:
    """A job whose process has reported nothing for ``minutes``."""
    return (
        f"{what(kind)} reported nothing for {minutes:.0f} minutes and was given up; "
        f"{_again(kind, resumable)}."
    )


# ------------------------------------------------------------------------ the end note


def _blank() -> bytes:
    return b" " * NOTE_BYTES


class EndNote:
    """The job's end note: a file of :data:`NOTE_BYTES` reserved in its folder when it starts.

    The file stays open for the job's life, so its end can be written into room the disk
    already gave it (and through a descriptor opened while the folder could still be written).
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def reserve(cls, folder: Path) -> EndNote | None:
        """Reserve the note in ``folder`` (emptied if an earlier start left one); None when
        that cannot be done (a full or read-only disk: the job then has no note)."""
        path = Path(folder) / NOTE_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            try:
                os.posix_fallocate(fd, 0, NOTE_BYTES)
            except (AttributeError, OSError):
                os.pwrite(fd, _blank(), 0)
            os.pwrite(fd, _blank(), 0)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return cls(fd, path)

    def write(self, end: dict[str, Any]) -> bool:
        """Keep ``end`` (status, message, error) in the note; False when it cannot be."""
        data = json.dumps({**end, "noted": time.time()}, default=str).encode()
        if len(data) > NOTE_BYTES:
            return False
        try:
            os.pwrite(self.fd, data + b" " * (NOTE_BYTES - len(data)), 0)
            os.fsync(self.fd)
        except OSError:
            return False
        return True

    def close(self, remove: bool = False) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()


def read_note(folder: Path) -> dict[str, Any] | None:
    """The end kept in ``folder``'s note, or None (no note, or one with nothing in it)."""
    try:
        text = (Path(folder) / NOTE_NAME).read_bytes().strip(b" \x00")
    except OSError:
        return None
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("status"), str) else None


def clear_note(folder: Path) -> None:
    with contextlib.suppress(OSError):
        (Path(folder) / NOTE_NAME).unlink()


# ------------------------------------------------------------------------ ends not yet written

# Ends the store could not take when they came, by workspace and job id: the fields of the
# job's row to write. Written again at the next event of the process and by recover.
PENDING: dict[str, dict[str, dict[str, Any]]] = {}
_pending_lock = threading.Lock()


def keep_pending(workspace: Path, job_id: str, fields: dict[str, Any]) -> None:
    with _pending_lock:
        PENDING.setdefault(str(Path(workspace).resolve()), {})[job_id] = fields


def flush_pending(workspace: Path, write: Callable[[str, dict[str, Any]], None]) -> list[str]:
    """Write the ends kept for ``workspace`` with ``write(job_id, fields)``; return the ids
    written. One that still cannot be written stays kept."""
    key = str(Path(workspace).resolve())
    with _pending_lock:
        kept = dict(PENDING.get(key, {}))
    done = []
    for job_id, fields in kept.items():
        try:
            write(job_id, fields)
        except Exception:  # still full or read-only: kept for the next try
            continue
        done.append(job_id)
    with _pending_lock:
        left = PENDING.get(key, {})
        for job_id in done:
            left.pop(job_id, None)
        if not left:
            PENDING.pop(key, None)
    return done


# ------------------------------------------------------------------------ notices


def leave_notice(workspace: Path, project_id: str, text: str) -> None:
    """Keep a sentence about a removed project for the page that opens its link next."""
    folder = Path(workspace) / NOTICES
    with contextlib.suppress(OSError):
        folder.mkdir(exist_ok=True)
        (folder / f"{project_id}.json").write_text(json.dumps({"text": text}), encoding="utf-8")


def forget_old_notices(workspace: Path) -> None:
    """Remove the sentences left for longer than :data:`NOTICE_DAYS`."""
    folder = Path(workspace) / NOTICES
    for path in folder.glob("*.json") if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > NOTICE_DAYS * 86400:
                path.unlink()


def take_notice(workspace: Path, project_id: str) -> str | None:
    """The sentence left about ``project_id``, removed as it is read (it is said once)."""
    if not project_id or "/" in project_id or project_id.startswith("."):
        return None
    path = Path(workspace) / NOTICES / f"{project_id}.json"
    try:
        text = json.loads(path.read_text(encoding="utf-8")).get("text")
        path.unlink()
    except (OSError, ValueError, AttributeError):
        return None
    return text if isinstance(text, str) else None
