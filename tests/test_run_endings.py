"""Every way a job ends is recorded with its true cause: a workspace that turns read-only or a
disk that fills mid-run (real mounts, a real command-line run), memory that runs out, a signal,
a crash, a stall, a server that stopped. The command ends with one ``{"error": ...}`` line and
its documented code; nothing says "killed" that was not.

The real cases mount a bind mount or a tmpfs (root, as on CI) and skip with the reason when
mounting is refused.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import make_shapes

from tl_core import diskspace
from tl_core.events import End, Event, Started
from tl_core.runs import endings, jobs, recording, worker
from tl_core.runs.kinds import NAMES, JobSpec, entry
from tl_core.runs.store import Store

DISK_FULL = "The disk is full:"


# ------------------------------------------------------------------ mounts and the command


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting is refused here (needs root): {proc.stderr.strip()}")


@pytest.fixture
def mounts() -> Iterator[Callable[..., None]]:
    """``mounts(*mount args, target)``: mounts unmounted (newest first) after the test."""
    made: list[str] = []

    def mount(*args: str) -> None:
        _mount(*args)
        made.append(args[-1])

    yield mount
    for target in reversed(made):
        subprocess.run(["umount", "-l", target], check=False)


def _train(workspace: Path, data: Path, epochs: int = 400) -> subprocess.Popen[str]:
    """A small real training run of the command line, slow enough to be cut mid-way."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tl_core",
            "--workspace",
            str(workspace),
            "train",
            "--data",
            str(data),
            "--model",
            "test_efficientnet",
            "--epochs",
            str(epochs),
            "--batch-size",
            "4",
            "--augment",
            "none",
            "--trainable-groups",
            "6",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate: Callable[[], object], proc: subprocess.Popen[str], timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the command ended early: {proc.communicate()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("timed out")


def _saved_epoch(workspace: Path) -> Path | None:
    """The run folder once it holds last.pt (the run is then kept, resumable)."""
    found = list(workspace.glob("runs/*/last.pt"))
    return found[0].parent if found else None


def _ended(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _assert_one_error_line(rc: int, out: str, err: str) -> str:
    """Exit code 2, ``{"error": ...}`` as the one JSON line and the last, no traceback."""
    assert rc == 2, (rc, out, err)
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, err
    last = json.loads(lines[-1])
    assert set(last) == {"error"}, last
    assert sum(1 for line in lines if line.lstrip().startswith("{")) == 1, out
    assert "Traceback" not in err and "Traceback" not in out, err
    assert "killed" not in last["error"]
    return str(last["error"])


def _take_every_free_byte(ballast: Path) -> None:
    """Grow ``ballast`` until its disk has no room left (the run writes meanwhile)."""
    size = 0
    with open(ballast, "wb") as f:
        for _ in range(100):
            free = diskspace.free_bytes(ballast.parent)
            if free < 4096:
                return
            try:
                os.posix_fallocate(f.fileno(), size, free)
            except OSError:  # the run took some of it first: measure again
                continue
            size += free


def _the_run(workspace: Path):
    store = Store(workspace)
    (run,) = store.runs()
    return store, run


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "src", per_class=10, size=32)


def test_a_workspace_that_turns_read_only_mid_run(shapes, tmp_path, mounts) -> None:
    real, where = tmp_path / "real", tmp_path / "mnt"
    real.mkdir()
    where.mkdir()
    mounts("--bind", str(real), str(where))
    workspace = where / "ws"
    proc = _train(workspace, shapes)
    _wait_for(lambda: _saved_epoch(workspace), proc)
    # The workspace turns read-only under the running command: a read-only bind mount of the
    # same folder over it (the one below is busy with the command's open files, so it cannot
    # be remounted read-only itself; every path the command opens now meets this one).
    mounts("--bind", str(real), str(where))
    mounts("-o", "remount,bind,ro", str(where))
    assert not os.access(workspace, os.W_OK)
    error = _assert_one_error_line(*_ended(proc))
    assert "became read-only" in error and str(where) in error

    subprocess.run(["umount", str(where)], check=True)  # writable again
    store, run = _the_run(workspace)
    assert run.status == "running"  # nothing could be written when it ended
    assert jobs.recover(store) == [run.id]  # the next start
    _, run = _the_run(workspace)
    assert run.status == "failed"
    assert run.error is not None and "became read-only" in run.error
    assert "killed" not in f"{run.message} {run.error}"
    assert not (Path(run.run_dir) / endings.NOTE_NAME).exists()


def test_a_disk_that_fills_mid_run(shapes, tmp_path, mounts) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounts("-t", "tmpfs", "-o", "size=65536k", "tmpfs", str(disk))
    workspace = disk / "ws"
    proc = _train(workspace, shapes)
    _wait_for(lambda: _saved_epoch(workspace), proc)
    ballast = disk / "ballast"
    _take_every_free_byte(ballast)  # as another program filling the disk would
    error = _assert_one_error_line(*_ended(proc))
    assert error.startswith(DISK_FULL), error

    ballast.unlink()  # room again; the next start records what the run could not
    store, run = _the_run(workspace)
    jobs.recover(store)
    _, run = _the_run(workspace)
    assert run.status == "failed", (run.status, run.message)
    assert run.error is not None and run.error.startswith(DISK_FULL), run.error
    assert "killed" not in f"{run.message} {run.error}"


# ------------------------------------------------------------------ the worker's side


def _spec(tmp_path: Path, kind: str) -> JobSpec:
    return JobSpec(
        id="j1",
        kind=kind,
        project_id="p",
        params=entry(kind).read({}),
        data_dir=str(tmp_path),
        folder=str(tmp_path),
    )


class _Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def stop_asked(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("raised", "words"),
    [
        (MemoryError(), "ran out of memory"),
        (OSError(30, "Read-only file system"), "became read-only"),
        (sqlite3.OperationalError("attempt to write a readonly database"), "became read-only"),
        (OSError(28, "No space left on device"), DISK_FULL),
        (OSError(122, "Disk quota exceeded"), DISK_FULL),
    ],
)
def test_a_job_that_fails_on_memory_or_storage_says_so_without_a_traceback(
    tmp_path, monkeypatch, capsys, raised, words
) -> None:
    from tl_core.runs import tasks

    def task(spec, ctx):
        raise raised

    monkeypatch.setattr(tasks, "export", task)
    end = worker.execute(
        _spec(tmp_path, "export"), worker.JobContext(_spec(tmp_path, "export"), _Sink())
    )
    assert end.status == "failed" and end.error is not None
    assert words in end.error
    if words != DISK_FULL:
        assert end.error.startswith("The export ")
    assert "Traceback" not in capsys.readouterr().err
    assert "killed" not in end.error


def test_an_end_the_store_cannot_take_is_kept_and_written_later(tmp_path, monkeypatch) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project()
    run = store.create_job(project.id, {}, tmp_path, kind="export", status="starting")
    folder = Path(run.run_dir)
    recording.record(store, run.id, folder, Started(os.getpid()))
    assert (folder / endings.NOTE_NAME).stat().st_size == endings.NOTE_BYTES  # reserved
    real = Store.update_job

    def read_only(self, run_id, **fields):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(Store, "update_job", read_only)
    end = End("failed", "Failed", error="The export stopped.")
    recording.record(store, run.id, folder, end)  # does not raise
    assert store.job(run.id).status == "running"
    assert endings.read_note(folder)["error"] == "The export stopped."
    monkeypatch.setattr(Store, "update_job", real)
    assert recording.flush_pending(store) == [run.id]
    assert store.job(run.id).status == "failed"
    assert store.job(run.id).error == "The export stopped."
    assert not (folder / endings.NOTE_NAME).exists()


# ------------------------------------------------------------------ the sentences


def test_a_lost_worker_is_worded_by_its_kind_and_cause() -> None:
    for kind in NAMES:
        sentences = {
            "oom": endings.lost(kind, -signal.SIGKILL),
            "term": endings.lost(kind, -signal.SIGTERM),
            "crash": endings.lost(kind, 1),
            "gone": endings.lost(kind, 0),
            "none": endings.lost(kind, None),
            "stop": endings.lost(kind, -signal.SIGKILL, "stop"),
            "stalled": endings.lost(kind, -signal.SIGTERM, "stalled"),
        }
        for name, text in sentences.items():
            assert text.startswith(endings.what(kind)), text
            assert "killed" not in text.lower(), text
            assert ("signal 9" in text) == (name == "oom"), text
            assert ("training" in text.lower()) == (kind == "train"), text
        assert "SIGTERM" in sentences["term"]
        assert "exit code 1" in sentences["crash"]
        assert "did not stop when asked" in sentences["stop"]
        assert "stopped making progress" in sentences["stalled"]
        assert sentences["gone"] == sentences["none"]  # an exit that says nothing either way
        assert len(set(sentences.values())) == len(sentences) - 1


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recover_words_a_lost_job_by_its_kind(tmp_path) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project()
    data = store.new_data_dir(project.id)
    data.mkdir()
    store.set_data_dir(project.id, data)  # a project with images: kept whatever is lost
    dead = _dead_pid()
    lost = {
        kind: store.create_job(project.id, {}, data, kind=kind, status="running", pid=dead)
        for kind in NAMES
    }
    (Path(lost["train"].run_dir) / "last.pt").write_bytes(b"x")
    assert sorted(jobs.recover(store)) == sorted(r.id for r in lost.values())
    for kind, run in lost.items():
        run = store.job(run.id)
        text = f"{run.message} {run.error or ''}"
        assert "killed" not in text and "unexpectedly" not in text, text
        assert ("training" in text.lower()) == (kind == "train"), text
        assert run.message.startswith(endings.what(kind)), text
        if kind == "train":
            assert run.status == "interrupted" and "press Resume" in run.message
        else:
            assert run.status == "failed" and run.error == run.message
    assert store.job(lost["import"].id).message == (
        "The import stopped when the server stopped; import the pictures again."
    )
    assert store.project(project.id) is not None


def test_recover_takes_the_end_a_run_noted_when_the_store_was_full(tmp_path) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project()
    run = store.create_job(project.id, {}, tmp_path, status="running", pid=_dead_pid())
    note = endings.EndNote.reserve(Path(run.run_dir))
    assert note is not None
    error = str(diskspace.disk_full_error(tmp_path))
    assert note.write({"status": "failed", "message": "Failed", "error": error})
    note.close()
    assert jobs.recover(store) == [run.id]
    assert store.job(run.id).status == "failed" and store.job(run.id).error == error
