"""An import that is cut off reads as an import, and never leaves an empty project without a
word: a first import lost to a killed process removes its project at the next start (the
project's link then says why, once); a failed first import stays on the Data page of whoever
opens the project, with the ways to import again."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
from helpers import app_test, wait_until
from PIL import Image

from tl_core import service
from tl_core.runs import endings, jobs, supervisor
from tl_core.runs.store import Store

CUT_OFF = "The import stopped when the server stopped; import the pictures again."


def _pictures(root: Path, per_class: int = 300, size: int = 96) -> Path:
    """Pictures that take the importer a few seconds, so it can be cut off mid-way."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_a_first_import_killed_mid_way_leaves_no_empty_project(tmp_path, monkeypatch) -> None:
    src = _pictures(tmp_path / "src")
    store = Store(tmp_path / "ws")
    monkeypatch.setattr(supervisor, "pump", lambda store, limit=None: [])  # started below
    job = service.submit_import(store, None, "folder", path=src)
    project = store.project(job.project_id)
    assert project is not None and not project.data_dir
    assert jobs.claim_next(store, 1).id == job.id
    with open(tmp_path / "worker.log", "wb") as log:  # the worker the queue would start
        proc = subprocess.Popen(supervisor.worker_command(store, job.id), stdout=log, stderr=log)

    def working():  # its own worker process has started on the pictures
        run = store.job(job.id)
        return run if run.status == "running" and run.pid and run.pid != os.getpid() else None

    run = wait_until(working, 300, 0.05)
    os.kill(run.pid, signal.SIGKILL)  # as the server's machine going down would
    proc.wait()

    assert jobs.recover(store) == [job.id]  # the next start
    assert store.project(project.id) is None
    assert not store.project_dir(project.id).exists()
    assert store.job(job.id) is None and not Path(run.run_dir).exists()
    said = service.import_cut_off(store, project.id)
    assert said is not None and project.name in said and "start the import again" in said
    assert "killed" not in said and "training" not in said.lower()
    assert service.import_cut_off(store, project.id) is None  # said once


def test_a_lost_import_of_a_project_with_images_reads_as_an_import(tmp_path) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project("kept")
    data = store.new_data_dir(project.id)
    data.mkdir()
    store.set_data_dir(project.id, data)
    proc = os.fork()
    if proc == 0:
        os._exit(0)
    os.waitpid(proc, 0)
    job = store.create_job(project.id, {}, data, kind="import", status="running", pid=proc)
    assert jobs.recover(store) == [job.id]
    lost = store.job(job.id)
    assert lost.status == "failed" and lost.error == CUT_OFF and lost.message == CUT_OFF
    assert store.project(project.id) is not None  # its images are still there


def test_a_project_with_other_work_is_not_removed(tmp_path) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project("shots")
    shots = store.project_dir(project.id) / "capture" / "cat"
    shots.mkdir(parents=True)
    (shots / "1.jpg").write_bytes(b"x")
    job = store.create_job(project.id, {}, tmp_path, kind="import", status="failed")
    assert job is not None
    assert not jobs.drop_cut_off_project(store, project.id)
    assert store.project(project.id) is not None


def _app(workspace: Path, monkeypatch, project: str, page: str | None = "app_pages/data.py"):
    import streamlit as st

    monkeypatch.setenv("TL_STUDIO_HOME", str(workspace))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    return app_test(page, project)


def _texts(at) -> str:
    parts = [str(e.value) for kind in (at.error, at.warning, at.info, at.caption) for e in kind]
    return " ".join(parts).replace("\\", "")


def test_the_data_page_says_why_a_project_is_empty_or_gone(tmp_path, monkeypatch) -> None:
    workspace = tmp_path / "ws"
    store = Store(workspace)
    failed = store.create_project("failed first")
    store.create_job(
        failed.id,
        {"way": "folder"},
        tmp_path,
        kind="import",
        status="failed",
    )
    store.update_job(store.runs(failed.id, kind="import")[0].id, error=CUT_OFF)
    at = _app(workspace, monkeypatch, failed.id)  # a new session, not the one that imported
    assert not at.exception
    assert CUT_OFF in _texts(at)
    assert "import them again below" in _texts(at)

    gone = store.create_project("cut off")
    store.create_job(gone.id, {}, tmp_path, kind="import", status="failed")
    assert jobs.drop_cut_off_project(store, gone.id)
    at = _app(workspace, monkeypatch, gone.id, page=None)  # the link opens the Data page
    assert not at.exception
    assert "The import into the project 'cut off' was cut off" in _texts(at)
    assert endings.take_notice(workspace, gone.id) is None  # said once
