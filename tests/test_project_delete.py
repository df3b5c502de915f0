"""Deleting a project: its rows, its data versions with their caches, its run folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import app_test, make_shapes
from jobrunner import inline_spawn

from tl_core import service
from tl_core.data.dataset import import_folder
from tl_core.errors import RunError
from tl_core.runs.store import Store


@pytest.fixture(autouse=True)
def _inline_jobs(monkeypatch) -> list[str]:
    return inline_spawn(monkeypatch)


def _project(store: Store, tmp_path: Path, versions: int = 2) -> tuple[str, list[Path]]:
    """A project with data versions holding cache files, and a run and a job of it."""
    project = store.create_project("Shapes")
    src = make_shapes(tmp_path / "src", per_class=2, size=16)
    dirs = []
    for _ in range(versions):
        data = store.new_data_dir(project.id)
        import_folder(src, data)
        (data / "cache").mkdir(exist_ok=True)  # the import made it already
        (data / "cache" / "decoded-18-bicubic.u8").write_bytes(b"\0" * 1000)
        (data / "cache" / "features-x-pretrained-0.npz").write_bytes(b"\0" * 100)
        dirs.append(data)
    store.set_data_dir(project.id, dirs[-1])
    return project.id, dirs


@pytest.mark.parametrize("status", ["finished", "failed", "queued", "interrupted"])
def test_deleting_a_project_removes_its_rows_data_caches_and_run_folders(tmp_path, status) -> None:
    store = Store(tmp_path / "ws")
    pid, dirs = _project(store, tmp_path)
    other, other_dirs = _project(Store(tmp_path / "ws"), tmp_path / "b", versions=1)
    run = store.create_job(pid, {}, dirs[-1], status=status)
    job = store.create_job(pid, {}, dirs[-1], kind="features", status="finished")
    kept = store.create_job(other, {}, other_dirs[0], status="finished")
    outside = tmp_path / "chosen-by-user"
    own = store.create_job(pid, {}, dirs[-1], run_dir=outside, status="finished")
    store.add_epoch(run.id, _epoch())
    service.delete_project(store, pid)
    assert store.project(pid) is None
    assert store.job(run.id) is None and store.job(job.id) is None and store.job(own.id) is None
    assert store.epochs(run.id) == []
    assert not store.project_dir(pid).exists()
    assert not any(d.exists() for d in dirs)  # every data version and its cache/ folder
    assert not Path(run.run_dir).exists() and not Path(job.run_dir).exists()
    assert outside.is_dir()  # a folder the user chose is theirs
    # Another project is untouched.
    assert store.project(other) is not None and store.job(kept.id) is not None
    assert (other_dirs[0] / "cache" / "decoded-18-bicubic.u8").exists()


@pytest.mark.parametrize("status", ["starting", "running"])
def test_a_project_with_a_running_job_is_not_deleted(tmp_path, status) -> None:
    store = Store(tmp_path / "ws")
    pid, dirs = _project(store, tmp_path, versions=1)
    run = store.create_job(pid, {}, dirs[0], status=status)
    with pytest.raises(RunError, match="still running"):
        service.delete_project(store, pid)
    assert store.project(pid) is not None and store.job(run.id) is not None
    assert (dirs[0] / "cache" / "decoded-18-bicubic.u8").exists()


def test_deleting_an_unknown_project_says_so(tmp_path) -> None:
    with pytest.raises(RunError, match="no longer exists"):
        Store(tmp_path / "ws").delete_project("nope")


def _epoch():
    from tl_core.config import EpochRow

    return EpochRow(1, 1, 0.5, 0.5, 0.5, 0.5, 1.0)


def test_the_sidebar_offers_deletion_behind_a_confirmation(workspace, tmp_path) -> None:
    store = Store(workspace)
    pid, _ = _project(store, tmp_path, versions=1)
    at = app_test(project=pid, timeout=120)
    assert not at.exception
    assert at.sidebar.button(key="delete_project").disabled  # until the box is ticked
    assert not at.sidebar.checkbox(key="delete_project_sure").value


def _control(project_id: str) -> None:
    """The sidebar's control on its own (AppTest keeps the sidebar of the first run only)."""
    import streamlit as st

    from tl_ui.session import delete_control, get_store, repaired_notice

    repaired_notice()
    project = get_store().project(project_id)
    if project is None:
        st.info("no project")
    else:
        delete_control(project)


def _control_app(project_id: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_control, args=(project_id,), default_timeout=60)
    at.query_params["project"] = project_id
    return at.run()


def test_the_control_deletes_the_project_after_confirmation(workspace, tmp_path) -> None:
    store = Store(workspace)
    pid, dirs = _project(store, tmp_path, versions=1)
    at = _control_app(pid)
    assert at.button(key="delete_project").disabled  # until the box is ticked
    at.checkbox(key="delete_project_sure").check().run()
    at.button(key="delete_project").click().run()
    assert not at.exception
    assert Store(workspace).project(pid) is None
    assert not dirs[0].exists()
    assert any("was deleted" in str(m.value) for m in at.success)
    assert "project" not in at.query_params


def test_the_control_says_why_a_busy_project_is_kept(workspace, tmp_path) -> None:
    store = Store(workspace)
    pid, dirs = _project(store, tmp_path, versions=1)
    store.create_job(pid, {}, dirs[0], status="running")
    at = _control_app(pid)
    at.checkbox(key="delete_project_sure").check().run()
    at.button(key="delete_project").click().run()
    assert any("still running" in str(m.value) for m in at.error)
    assert Store(workspace).project(pid) is not None
    assert dirs[0].exists()
