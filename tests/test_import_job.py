"""Import as a job: the ways in, its progress and Stop, nothing left behind, where it runs."""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import app_test, make_shapes
from jobrunner import FakeContext

from tl_core import service
from tl_core.data import neardup
from tl_core.data.dataset import MAX_IMPORT_MB, DatasetManifest, import_folder
from tl_core.data.pixelcache import kept_names
from tl_core.events import End, Event, Progress
from tl_core.models.catalog import DEFAULT_MODEL, get_spec
from tl_core.runs import jobs, recording, supervisor, tasks, worker
from tl_core.runs.kinds import JobSpec
from tl_core.runs.store import Job, Store
from tl_ui.importing import FOLDER_IMPORT_ENV, folder_import_setting

TIMEOUT = 120


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "ws")


@pytest.fixture
def shapes(tmp_path) -> Path:
    return make_shapes(tmp_path / "shapes", per_class=12, size=32)


def _zip_bytes(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.rglob("*.png")):
            zf.write(f, f"photos/{f.relative_to(folder)}")
    return buf.getvalue()


class _ChunksOnly(io.BytesIO):
    """An upload that may only be read in chunks: a whole second copy in memory fails."""

    def read(self, n: int | None = -1) -> bytes:
        assert n is not None and 0 < n <= 1024 * 1024, "read whole"
        return super().read(n)

    def getvalue(self) -> bytes:
        raise AssertionError("getvalue copies the whole upload")


def _source(way: str, folder: Path, tmp_path: Path) -> dict[str, Any]:
    """submit_import's arguments for ``way`` importing ``folder``."""
    if way == "folder":
        return {"path": str(folder)}
    if way == "zip-path":
        archive = tmp_path / "photos.zip"
        archive.write_bytes(_zip_bytes(folder))
        return {"path": str(archive)}
    if way == "zip":
        return {"upload": _ChunksOnly(_zip_bytes(folder))}
    files = sorted(folder.rglob("*.png"))
    return {
        "upload": [
            (f"/{folder.name}/{f.relative_to(folder)}", _ChunksOnly(f.read_bytes())) for f in files
        ]
    }


def _way(way: str) -> str:
    return "folder" if way == "zip-path" else way


def _leftovers(store: Store, job: Job) -> list[str]:
    """What an ended import left: its upload, its staged data, temporary files."""
    folder = Path(job.run_dir)
    found = [p.name for p in (folder / "upload", folder / "data") if p.exists()]
    found += [str(p) for p in store.workspace.rglob("*.tmp")]
    found += [str(p) for p in store.workspace.rglob(".incoming")]
    return found


def _old_data(store: Store, project_id: str, tmp_path: Path) -> None:
    """The project's images before the import: a small set in data-1."""
    dest = store.project_dir(project_id) / "data-1"
    import_folder(make_shapes(tmp_path / "old", per_class=3, size=16), dest)
    store.set_data_dir(project_id, dest)


# ------------------------------------------------------------------------ the job finishes


@pytest.mark.parametrize("way", ["folder", "zip-path", "zip", "files"])
def test_an_import_job_points_the_project_at_its_new_data(
    store, shapes, tmp_path, way, monkeypatch
) -> None:
    job = service.submit_import(store, None, _way(way), **_source(way, shapes, tmp_path))
    job = store.job(job.id)  # run in this process by the test's queue (conftest)
    assert job.kind == "import" and job.status == "finished", job.error
    project = store.project(job.project_id)
    assert project.settings["model"]  # a new project, ready for the next steps
    assert Path(project.data_dir).name == "data-1"
    assert Path(project.data_dir).parent == store.project_dir(project.id)
    manifest = DatasetManifest.load(Path(project.data_dir))
    assert len(manifest.items) == 36 and manifest.classes == ["disc", "square", "stripes"]
    assert job.result["images"] == 36 and job.result["data_dir"] == project.data_dir
    assert job.data_dir == project.data_dir
    assert _leftovers(store, job) == []
    # the near-duplicate search ran in the job, not later in the web server
    calls = []
    monkeypatch.setattr(neardup, "_find_pairs", lambda *a, **k: calls.append(a) or [])
    assert neardup.manifest_pairs(manifest) is not None and calls == []


def test_a_second_import_is_a_new_version_and_the_old_one_stays(store, shapes, demo_dir):
    first = store.job(service.submit_import(store, None, "demo", path=demo_dir).id)
    project = store.project(first.project_id)
    second = store.job(service.submit_import(store, project, "folder", path=shapes).id)
    assert second.status == "finished"
    now = store.project(project.id)
    assert Path(now.data_dir).name == "data-2" and (Path(first.data_dir) / "manifest.json").exists()


def test_the_demo_set_is_decoded_once_per_workspace_then_linked(store, shapes, monkeypatch):
    """A class importing the bundled set: the first import decodes it, later ones (other
    projects) link that import, equal to a fresh one and independent of the first project;
    a changed folder is imported afresh."""
    from tl_core.data import ingest

    owners: dict[Path, str] = {}

    def imported(path: Path) -> DatasetManifest:
        job = store.job(service.submit_import(store, None, "demo", path=path).id)
        assert job.status == "finished", job.error
        manifest = DatasetManifest.load(Path(store.project(job.project_id).data_dir))
        owners[manifest.root] = job.project_id
        return manifest

    first = imported(shapes)
    decoded: list[Any] = []
    real = ingest._prepare_and_encode
    monkeypatch.setattr(
        ingest, "_prepare_and_encode", lambda *args: decoded.append(1) or real(*args)
    )
    second = imported(shapes)
    assert decoded == [] and second.root != first.root
    assert [(i.file, i.sha256, i.label) for i in second.items] == [
        (i.file, i.sha256, i.label) for i in first.items
    ]
    assert (second.root / neardup.CACHE_NAME).is_file()
    a, b = first.root / first.items[0].file, second.root / second.items[0].file
    assert a.stat().st_ino == b.stat().st_ino  # linked, not copied
    made = kept_names(first.root)  # and what the import made with them: the model's squares
    assert f"cache/{get_spec(DEFAULT_MODEL).square.stem}.u8" in made
    for name in made:
        assert (first.root / name).stat().st_ino == (second.root / name).stat().st_ino
    service.delete_project(store, owners[first.root])
    assert not first.root.exists()
    assert b.is_file() and DatasetManifest.load(second.root).items == second.items
    make_shapes(shapes.parent / "more", per_class=1, size=32, seed=7)
    shutil.copy(shapes.parent / "more" / "disc" / "0.png", shapes / "disc" / "extra.png")
    third = imported(shapes)
    assert decoded and len(third.items) == len(first.items) + 1


def test_the_page_finds_the_job_under_way_instead_of_starting_another(store, shapes, monkeypatch):
    monkeypatch.setattr(supervisor, "_spawn", lambda store, run: None)  # it waits: no worker
    job = service.submit_import(store, None, "folder", path=shapes)
    project = store.project(job.project_id)
    assert service.submit_import(store, project, "folder", path=shapes).id == job.id
    assert service.active_import(store, project.id).id == job.id


# ------------------------------------------------------------------------ progress and Stop


def test_progress_says_counts_speed_and_time_left(monkeypatch) -> None:
    clock = iter([100.0, 102.0, 104.0])
    monkeypatch.setattr(tasks.time, "monotonic", lambda: next(clock))
    ctx = FakeContext()
    report = tasks._import_reporter(ctx)
    report(200, 1000)  # 200 images in 2 s: 100 images/s, 800 left
    report(1000, 1000)
    assert ctx.steps[0][:2] == (200, 1000)
    assert "200/1,000" in ctx.steps[0][2] and "100 images/s" in ctx.steps[0][2]
    assert "about 8 s left" in ctx.steps[0][2]
    assert "left" not in ctx.steps[1][2]


class _StopMidway(recording.StoreSink):
    """The store's sink, and the user presses Stop once a share of the images is in."""

    def emit(self, event: Event) -> None:
        super().emit(event)
        if isinstance(event, Progress) and (event.fraction or 0) > 0.2:
            jobs.request_stop(self.store, self.job_id)


def _run_here(store: Store, job: Job, sink_cls=recording.StoreSink) -> Job:
    """The job through the worker's own code (execute, then the end recorded)."""
    job = jobs.claim_next(store, 10) or job
    sink = sink_cls(store, job)
    spec = recording.job_spec(store, job)
    sink.emit(worker.execute(spec, worker.JobContext(spec, sink)))
    return store.job(job.id)


@pytest.mark.parametrize("had_data", [False, True])
@pytest.mark.parametrize("way", ["folder", "zip", "files"])
def test_stop_mid_import_leaves_nothing_and_keeps_the_old_data(
    store, tmp_path, monkeypatch, way, had_data
) -> None:
    monkeypatch.setattr(supervisor, "_spawn", lambda store, run: None)
    monkeypatch.setattr(worker, "STOP_POLL_S", 0.0)  # the flag is read at every image
    monkeypatch.setattr(worker, "PROGRESS_EVERY_S", 0.0)
    big = make_shapes(tmp_path / "big", per_class=60, size=32)
    project = store.create_project()
    if had_data:
        _old_data(store, project.id, tmp_path)
    before = store.project(project.id).data_dir
    job = service.submit_import(store, project, way, **_source(way, big, tmp_path))
    job = _run_here(store, job, _StopMidway)
    assert job.status == "stopped"
    assert store.project(project.id).data_dir == before
    versions = sorted(p.name for p in store.project_dir(project.id).glob("data-*"))
    assert versions == (["data-1"] if had_data else [])
    assert _leftovers(store, job) == []


# ------------------------------------------------------------------------ failures


def _unreadable(tmp_path: Path) -> str:
    folder = make_shapes(tmp_path / "locked", per_class=3, size=16)
    folder.chmod(0)  # and for a test run as root, whom no mode stops: see _no_entry
    return str(folder)


def _one_class(tmp_path: Path) -> str:
    """A folder holding one class folder (and nothing unlabelled)."""
    root = make_shapes(tmp_path / "one", per_class=3, size=16)
    for other in ("square", "stripes"):
        shutil.rmtree(root / other)
    return str(root)


def _flat(tmp_path: Path) -> str:
    folder = tmp_path / "flat"
    folder.mkdir()
    for f in sorted(make_shapes(tmp_path / "some", per_class=3, size=16).rglob("*.png"))[:5]:
        shutil.copy(f, folder / f"{f.parent.name}-{f.name}")
    return str(folder)


def _a_file(tmp_path: Path) -> str:
    (tmp_path / "notes.txt").write_text("hello")
    return str(tmp_path / "notes.txt")


def _empty(tmp_path: Path) -> str:
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


def _no_entry(monkeypatch) -> None:
    """Folders whose mode forbids reading cannot be listed, even by root."""
    real = os.scandir

    def scandir(path: Any = "."):
        if os.path.isdir(path) and not os.stat(path).st_mode & 0o444:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


PATH_CASES = {
    "missing": (lambda t: str(t / "nowhere" / "photos"), "does not exist"),
    "a file": (_a_file, "is a file, not a folder"),
    "relative": (lambda t: "photos/cats", "not a full path"),
    "blank": (lambda t: "   ", "Type the path"),
    "empty folder": (_empty, "is empty"),
    "one class": (_one_class, "Only one class was found (only 'disc')"),
    "unreadable": (_unreadable, "cannot be opened"),
}


@pytest.mark.parametrize("case", list(PATH_CASES))
@pytest.mark.parametrize("had_data", [False, True])
def test_a_failing_import_says_why_and_changes_nothing(
    store, tmp_path, monkeypatch, case, had_data
) -> None:
    _no_entry(monkeypatch)
    make, says = PATH_CASES[case]
    project = store.create_project()
    if had_data:
        _old_data(store, project.id, tmp_path)
    before = store.project(project.id).data_dir
    job = store.job(service.submit_import(store, project, "folder", path=make(tmp_path)).id)
    assert job.status == "failed" and says in job.error, job.error
    assert "Traceback" not in job.error and len(job.error) < 400
    assert store.project(project.id).data_dir == before
    versions = sorted(p.name for p in store.project_dir(project.id).glob("data-*"))
    assert versions == (["data-1"] if had_data else [])
    assert _leftovers(store, job) == []


def test_a_folder_without_class_folders_comes_in_as_unlabelled_pictures(
    store, tmp_path, monkeypatch
) -> None:
    _no_entry(monkeypatch)
    project = store.create_project()
    job = store.job(service.submit_import(store, project, "folder", path=_flat(tmp_path)).id)
    assert job.status == "finished", job.error
    assert (job.result["images"], job.result["unlabelled"], job.result["classes"]) == (0, 5, 0)
    manifest = DatasetManifest.load(Path(store.project(project.id).data_dir))
    assert manifest.items == [] and len(manifest.unlabelled) == 5
    assert all((manifest.root / i.file).is_file() for i in manifest.unlabelled)


@pytest.mark.parametrize(
    "way,upload,says",
    [
        ("zip", io.BytesIO(b"not a zip at all"), "not a .zip"),
        ("zip", io.BytesIO(b"PK\x05\x06" + bytes(18)), "empty"),
        (
            "files",
            [("a/x.png", io.BytesIO(b"not a picture")), ("b/y.png", io.BytesIO(b""))],
            "used",
        ),
        ("files", [], "empty"),
    ],
)
def test_a_failing_upload_leaves_nothing(store, way, upload, says) -> None:
    job = store.job(service.submit_import(store, None, way, upload=upload).id)
    assert job.status == "failed" and says in job.error, job.error
    assert store.project(job.project_id).data_dir is None
    assert not list(store.project_dir(job.project_id).glob("data-*"))
    assert _leftovers(store, job) == []


def test_a_worker_killed_mid_import_leaves_nothing(store, shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "_spawn", lambda store, run: None)
    job = service.submit_import(store, None, "zip", upload=io.BytesIO(_zip_bytes(shapes)))
    job = store.job(job.id)  # claimed, its worker not started
    (Path(job.run_dir) / "data" / "images").mkdir(parents=True)  # half made
    lost = End("failed", "x", error="The process stopped.")
    recording.record(store, job.id, Path(job.run_dir), lost)  # what the executor reports
    assert _leftovers(store, store.job(job.id)) == []
    assert store.project(job.project_id).data_dir is None


def test_a_server_restart_sweeps_what_a_cut_off_import_left(store, shapes, monkeypatch):
    monkeypatch.setattr(supervisor, "_spawn", lambda store, run: None)
    job = service.submit_import(store, None, "zip", upload=io.BytesIO(_zip_bytes(shapes)))
    (Path(job.run_dir) / "data").mkdir()
    store.update_job(job.id, status="interrupted")
    held = store.create_job(job.project_id, {"way": "zip"}, Path(""), status="held", kind="import")
    (Path(held.run_dir) / "upload").mkdir()
    jobs.sweep(store)
    assert _leftovers(store, store.job(job.id)) == []
    assert store.job(held.id) is not None  # its upload may still be arriving
    store.update_job(held.id, created=time.time() - jobs.PARTIAL_IMPORT_AGE_S - 1)
    jobs.sweep(store)
    assert store.job(held.id) is None and not Path(held.run_dir).exists()


# ------------------------------------------------------------------------ where it runs


class _Recorder:
    """An executor that only records what it was given (a cluster, or this machine's)."""

    made: ClassVar[list[_Recorder]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.kinds: list[str] = []
        _Recorder.made.append(self)

    def capacity(self) -> int:
        return 4

    def running(self) -> list[str]:
        return []

    def start(self, spec: JobSpec, on_event) -> None:
        self.kinds.append(spec.kind)

    def stop(self, job_id: str) -> None: ...

    def shutdown(self) -> None: ...

    def prewarm(self) -> None: ...

    def reap_idle(self, idle_s: float) -> None: ...


class _Local(_Recorder):
    """This machine's workers."""


class _Cluster(_Recorder):
    """A cluster's executor (not a LocalExecutor)."""


def test_imports_run_on_this_machine_beside_a_cluster(store, shapes, monkeypatch) -> None:
    """A folder path is on the server's disk: with a cluster executor, import jobs go to
    this machine's workers; other jobs still go to the cluster."""
    _Recorder.made = []
    monkeypatch.setattr(supervisor, "LocalExecutor", _Local)
    cluster = _Cluster()
    project = store.create_project()
    for kind in ("import", "features", "import"):
        store.create_job(project.id, {"way": "folder", "path": str(shapes)}, shapes, kind=kind)
    sup = supervisor.Supervisor(store.workspace, executor=cluster)
    try:
        deadline = time.monotonic() + 20
        while (
            time.monotonic() < deadline
            and len(cluster.kinds) + sum(len(r.kinds) for r in _Recorder.made if r is not cluster)
            < 3
        ):
            sup.poke()
            time.sleep(0.05)
    finally:
        sup.close()
    local = [r for r in _Recorder.made if r is not cluster]
    assert cluster.kinds == ["features"]
    assert len(local) == 1 and local[0].kinds == ["import", "import"]


def test_with_local_workers_imports_use_the_same_pool(store) -> None:
    pool = supervisor.LocalExecutor(1, store.workspace / "logs")
    sup = supervisor.Supervisor.__new__(supervisor.Supervisor)
    sup.executor, sup._local, sup.store = pool, None, store
    assert sup.executor_for("import") is pool and sup.executor_for("train") is pool


# ------------------------------------------------------------------------ the setting


@pytest.mark.parametrize(
    "address,setting,on",
    [
        ("localhost", None, True),
        ("127.0.0.1", "", True),
        ("::1", None, True),
        ("0.0.0.0", None, False),
        ("", None, False),  # Streamlit's default: every interface
        (None, None, False),
        ("192.168.1.20", None, False),
        ("0.0.0.0", "on", True),
        ("0.0.0.0", "ON", True),
        ("localhost", "off", False),
        ("localhost", "0", False),
        ("localhost", "maybe", True),  # not a value: by the address
    ],
)
def test_folder_import_is_on_only_for_this_computer(address, setting, on) -> None:
    allowed, why = folder_import_setting(address, setting)
    assert allowed is on
    if not on:
        assert FOLDER_IMPORT_ENV in why  # says how to turn it on


# ------------------------------------------------------------------------ the page


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption]
    parts += [str(m.value) for m in at.warning] + [str(m.value) for m in at.error]
    parts += [str(m.value) for m in at.info]
    return "\n".join(parts)


def _project_id(at) -> str:
    value = at.query_params["project"]
    return value[0] if isinstance(value, list) else value


@pytest.mark.parametrize("name", ["shapes", "my photos (2024)"])
def test_page_imports_a_folder_on_this_computer(workspace, tmp_path, monkeypatch, name) -> None:
    monkeypatch.setenv(FOLDER_IMPORT_ENV, "on")
    folder = make_shapes(tmp_path / name, per_class=12, size=32)
    at = app_test(timeout=TIMEOUT)
    at.text_input(key="import_path").input(str(folder)).run()
    at.button(key="import_path_go").click().run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Images"] == "36"
    job = Store(workspace).jobs(_project_id(at), kind="import")[-1]
    assert job.status == "finished"  # the project's model: its inputs are made at import
    assert job.config == {"way": "folder", "path": str(folder), "model": DEFAULT_MODEL}


@pytest.mark.parametrize("setting,address", [("off", "localhost"), ("", "0.0.0.0")])
def test_page_explains_when_folder_import_is_off(workspace, monkeypatch, setting, address):
    import streamlit as st

    monkeypatch.setenv(FOLDER_IMPORT_ENV, setting)
    monkeypatch.setattr(st, "get_option", lambda key: address if key == "server.address" else None)
    at = app_test(timeout=TIMEOUT)
    assert not at.exception
    assert not [t for t in at.text_input if t.key == "import_path"]
    assert f"{FOLDER_IMPORT_ENV}=on" in _texts(at)


def test_page_imports_a_folder_of_unlabelled_pictures(workspace, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(FOLDER_IMPORT_ENV, "on")
    at = app_test(timeout=TIMEOUT)
    at.text_input(key="import_path").input(_flat(tmp_path)).run()
    at.button(key="import_path_go").click().run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Not labelled yet"] == "5"
    assert "**5** picture(s) have no label yet" in _texts(at)
    assert Store(workspace).project(_project_id(at)).data_dir is not None


@pytest.mark.parametrize("case", ["missing", "a file", "one class"])
def test_page_shows_why_a_folder_did_not_import(workspace, tmp_path, monkeypatch, case) -> None:
    monkeypatch.setenv(FOLDER_IMPORT_ENV, "on")
    make, says = PATH_CASES[case]
    at = app_test(timeout=TIMEOUT)
    at.text_input(key="import_path").input(make(tmp_path)).run()
    at.button(key="import_path_go").click().run()
    assert not at.exception
    assert any(says in str(e.value) for e in at.error), _texts(at)
    assert "Nothing was kept" in _texts(at)
    assert Store(workspace).project(_project_id(at)).data_dir is None
    assert [t for t in at.text_input if t.key == "import_path"]  # the ways in are still there


def test_page_uploaders_accept_what_the_importer_accepts(workspace) -> None:
    at = app_test(timeout=TIMEOUT)
    folder, archive = at.file_uploader
    assert folder.accept_directory and folder.allowed_type == []  # any file: contents decide
    assert archive.allowed_type == [".zip"]
    for uploader in (folder, archive):
        assert uploader.proto.max_upload_size_mb == MAX_IMPORT_MB


@pytest.mark.parametrize("way", ["files", "zip"])
def test_page_uploads_become_an_import_job(workspace, tmp_path, way) -> None:
    shapes = make_shapes(tmp_path / "up", per_class=12, size=32)
    at = app_test(timeout=TIMEOUT)
    folder, archive = at.file_uploader
    if way == "files":
        files = [
            (f"up/{f.relative_to(shapes)}", f.read_bytes(), "image/png")
            for f in sorted(shapes.rglob("*.png"))
        ]
        folder.set_value(files).run()
        at.button(key="import_dir").click().run()
    else:
        archive.set_value(("photos.zip", _zip_bytes(shapes), "application/zip")).run()
        at.button(key="import_zip").click().run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Images"] == "36"
    job = Store(workspace).jobs(_project_id(at), kind="import")[-1]
    assert job.status == "finished" and _leftovers(Store(workspace), job) == []


def _running_import(workspace: Path) -> tuple[str, Job]:
    store = Store(workspace)
    project = store.create_project()
    job = store.create_job(project.id, {"way": "folder", "path": "/x"}, Path(""), kind="import")
    store.update_job(
        job.id,
        status="running",
        pid=os.getpid(),
        heartbeat=time.time(),
        progress=0.4,
        message="Checking and preparing images: 400/1,000 · 80 images/s · about 8 s left",
    )
    return project.id, store.job(job.id)


def test_page_shows_the_import_under_way_in_every_tab_and_stops_it(workspace) -> None:
    project_id, job = _running_import(workspace)
    tabs = [app_test(project=project_id, timeout=TIMEOUT) for _ in range(2)]  # two tabs
    for at in tabs:
        assert not at.exception
        bars = at.get("progress")
        assert bars, "no progress bar"
        text = bars[0].proto.text
        assert "400/1,000" in text and "images/s" in text and "left" in text
        assert not [b for b in at.button if b.key == "use_demo"]  # no second import meanwhile
    tabs[1].button(key=f"stop_job_{job.id}").click().run()
    assert Store(workspace).job(job.id).stop_requested


def test_a_thread_safe_data_dir_claim(store) -> None:
    """Two imports of one project ending at once get two versions."""
    project = store.create_project()
    got: list[Path] = []
    threads = [
        threading.Thread(target=lambda: got.append(recording._claim_data_dir(store, project.id)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 4


@pytest.mark.parametrize("way", ["zip", "files"])
def test_an_upload_that_does_not_fit_on_the_disk_leaves_no_job(store, shapes, monkeypatch, way):
    from tl_core import diskspace
    from tl_core.errors import DiskFullError

    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 1000)
    upload = _source(way, shapes, shapes.parent)["upload"]
    with pytest.raises(DiskFullError):
        service.submit_import(store, None, way, upload=upload)
    assert store.runs(kind="import") == []
    assert not (store.workspace / "jobs").exists() or not any((store.workspace / "jobs").iterdir())
