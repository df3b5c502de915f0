"""A full disk is a message: checked before imports and runs, and every write that still fails
is a DiskFullError, with temporary files removed and the store consistent.

The real cases run on a small tmpfs (mounting one needs root, as on CI); the unit cases
simulate ENOSPC at each write site.
"""

from __future__ import annotations

import errno
import io
import os
import re
import sqlite3
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import app_test, make_shapes
from PIL import Image

from tl_core import diskspace
from tl_core.config import EpochRow, StepRow
from tl_core.data import zipsafe
from tl_core.data.dataset import (
    DatasetManifest,
    import_files,
    import_folder,
    import_zip,
    split_dataset,
)
from tl_core.data.pixelcache import kept_names
from tl_core.errors import DiskFullError
from tl_core.events import Log
from tl_core.models.device import ComputePlan
from tl_core.runs.recording import StoreSink, run_worker
from tl_core.runs.store import Store
from tl_core.training import checkpoint, inputs
from tl_core.training.engine import TrainConfig, fit, write_predictions

CPU = ComputePlan("cpu", None, False, 2)
MESSAGE = re.compile(
    r"^The disk is full: [\d.,]+ MB free, about [\d.,]+ MB needed\. Free some space on the disk "
    r"that holds .+ and try again\.$"
)
CFG = TrainConfig(
    model="test_efficientnet", trainable_groups=1, epochs=2, batch_size=8, pretrained=False
)


def _full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _assert_message(exc: BaseException | str) -> None:
    """The sentence; page text comes Markdown-escaped (tl_ui.text.literal), so unescape it."""
    text = re.sub(r"\\(.)", r"\1", exc) if isinstance(exc, str) else str(exc)
    assert MESSAGE.match(text), text


# ------------------------------------------------------------------- a small disk


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Callable[[str, int], Path]]:
    """``tiny_disk(name, kib)``: a tmpfs of that size, unmounted after the test."""
    mounted: list[Path] = []

    def mount(name: str, kib: int) -> Path:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Take all but ``leave`` bytes of the disk holding ``folder`` with a ballast file."""
    take = diskspace.free_bytes(folder) - leave
    if take > 0:
        with open(folder / "ballast", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, take)


def _noise_images(root: Path, per_class: int = 12, size: int = 64) -> Path:
    """Images that do not compress: their normalised copies are as large as the sources."""
    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def _zip_of(src: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(src.rglob("*.png")):
            zf.write(f, f.relative_to(src).as_posix())
    return buf.getvalue()


def _do_import(how: str, src: Path, dest: Path) -> DatasetManifest:
    if how == "folder":
        return import_folder(src, dest)
    if how == "zip":
        return import_zip(io.BytesIO(_zip_of(src)), dest)
    files = [(f.relative_to(src).as_posix(), f.read_bytes()) for f in sorted(src.rglob("*.png"))]
    return import_files(files, dest)


IMPORTS = ["folder", "zip", "files"]


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix == ".tmp" or ".incoming" in p.parts]


# --------------------------------------------------------------------------- import


@pytest.mark.parametrize("how", IMPORTS)
def test_an_import_too_big_for_the_disk_is_refused_before_it_starts(tiny_disk, tmp_path, how):
    src = _noise_images(tmp_path / "src")
    disk = tiny_disk("ws", 2048)
    _fill(disk, 200 * 1024)
    with pytest.raises(DiskFullError) as info:
        _do_import(how, src, disk / "data-1")
    _assert_message(info.value)
    assert not (disk / "data-1").exists()


@pytest.mark.parametrize("how", IMPORTS)
@pytest.mark.parametrize("free_kib", [40, 150, 300])
def test_an_import_that_runs_out_of_space_midway_leaves_no_data_folder(
    tiny_disk, tmp_path, monkeypatch, how, free_kib
):
    """The estimate said it fits, the disk filled anyway (another program wrote meanwhile)."""
    src = _noise_images(tmp_path / "src")
    disk = tiny_disk("ws", 4096)
    _fill(disk, free_kib * 1024)
    monkeypatch.setattr(diskspace, "check_free", lambda path, needed: None)
    with pytest.raises(DiskFullError) as info:
        _do_import(how, src, disk / "data-1")
    _assert_message(info.value)
    assert not (disk / "data-1").exists()


def test_an_import_that_fits_still_works_on_a_small_disk(tiny_disk, tmp_path) -> None:
    src = make_shapes(tmp_path / "src", per_class=10, size=32)
    disk = tiny_disk("ws", 8192)
    manifest = import_folder(src, disk / "data-1")
    assert len(manifest.items) == 30 and not _leftovers(disk)


# ----------------------------------------------------------------------------- runs


def _workspace_with_data(disk: Path, tmp_path: Path) -> tuple[Store, str, Path]:
    src = make_shapes(tmp_path / "src", per_class=10, size=32)
    store = Store(disk / "ws")
    project = store.create_project()
    data_dir = store.new_data_dir(project.id)
    import_folder(src, data_dir)
    store.set_data_dir(project.id, data_dir)
    return store, project.id, data_dir


def _assert_failed_cleanly(disk: Path, run_id: str) -> None:
    store = Store(disk / "ws")  # the store still opens and lists the run
    runs = store.runs()
    assert [r.id for r in runs] == [run_id]
    assert runs[0].status == "failed"
    _assert_message(runs[0].error)
    assert "Traceback" not in runs[0].error
    assert not _leftovers(disk)
    assert not store.runs(statuses=("queued", "starting", "running"))


def _left_by_runs(root: Path) -> list[str]:
    """The files of a data version's cache beyond those its import made."""
    cache, made = Path(root) / "cache", set(kept_names(Path(root)))
    if not cache.exists():
        return []
    return [p.name for p in cache.iterdir() if f"cache/{p.name}" not in made]


def test_a_run_whose_files_do_not_fit_is_refused_before_it_trains(tiny_disk, tmp_path) -> None:
    disk = tiny_disk("disk", 8192)
    store, project_id, data_dir = _workspace_with_data(disk, tmp_path)
    _fill(disk, 1024 * 1024)  # the import fit; the run's cache and checkpoints do not
    run = store.create_job(project_id, asdict(CFG), data_dir)
    assert run_worker(store, run.id) is None
    _assert_failed_cleanly(disk, run.id)
    assert not (Path(run.run_dir) / "best.pt").exists()
    assert _left_by_runs(data_dir) == []


@pytest.mark.parametrize(
    ("cache", "free_kib"),
    [
        (True, 1200),  # the decoded images do not fit
        (False, 250),  # best.pt does not fit
        (False, 700),  # best.pt fits, last.pt does not
        (False, 1100),  # the checkpoints fit, the next epoch's do not
    ],
)
def test_a_run_that_fills_the_disk_fails_with_the_message_and_no_temporary_files(
    tiny_disk, tmp_path, monkeypatch, cache, free_kib
):
    disk = tiny_disk("disk", 8192)
    store, project_id, data_dir = _workspace_with_data(disk, tmp_path)
    cfg = TrainConfig(**{**asdict(CFG), "cache": cache, "epochs": 3})
    run = store.create_job(project_id, asdict(cfg), data_dir)
    _fill(disk, free_kib * 1024)
    monkeypatch.setattr(diskspace, "check_free", lambda path, needed: None)  # estimate missed
    monkeypatch.setattr("tl_core.training.engine._Checkpoints.__init__.__defaults__", (0.0,))
    assert run_worker(store, run.id) is None
    _assert_failed_cleanly(disk, run.id)


def test_the_status_write_gets_through_after_the_temporary_files_go(
    tiny_disk, tmp_path, monkeypatch
):
    """The database is full too: the worker frees the run's .tmp files and writes again."""
    disk = tiny_disk("disk", 8192)
    store, project_id, data_dir = _workspace_with_data(disk, tmp_path)
    run = store.create_job(project_id, asdict(CFG), data_dir)
    run_dir = Path(run.run_dir)
    calls = {"n": 0}
    real = Store.update_job

    def update_job(self, run_id, **fields):
        if fields.get("status") == "failed" and not calls["n"]:
            calls["n"] += 1
            (run_dir / "last.pt.tmp").write_bytes(b"x")  # the leftover the retry removes
            raise diskspace.disk_full_error(run_dir)
        return real(self, run_id, **fields)

    def full_fit(*args, **kwargs):
        raise diskspace.disk_full_error(run_dir, 10 * diskspace.MB)

    monkeypatch.setattr(Store, "update_job", update_job)
    monkeypatch.setattr("tl_core.training.engine.fit", full_fit)
    assert run_worker(store, run.id) is None
    assert calls["n"] == 1
    _assert_failed_cleanly(disk, run.id)


# -------------------------------------------------------- each write site, simulated


@pytest.fixture
def shapes(tmp_path):
    manifest = import_folder(make_shapes(tmp_path / "src", per_class=10, size=32), tmp_path / "d")
    return manifest, split_dataset(manifest, 0.3, 0)


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_a_checkpoint_write_on_a_full_disk(tmp_path, monkeypatch, name) -> None:
    real = torch.save

    def half_then_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise _full()

    monkeypatch.setattr(torch, "save", half_then_full)
    state = dict.fromkeys(checkpoint.KEYS[name], 0)
    with pytest.raises(DiskFullError) as info:
        checkpoint.save(tmp_path / name, state)
    _assert_message(info.value)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch, "save", real)


def test_predictions_json_on_a_full_disk(tmp_path, monkeypatch, shapes) -> None:
    manifest, split = shapes
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: (_ for _ in ()).throw(_full()))
    n, run = len(split.val), tmp_path / "run"
    run.mkdir()
    with pytest.raises(DiskFullError):
        write_predictions(run, manifest.classes, split.val, torch.zeros(n, 3), torch.zeros(n))
    assert list(run.iterdir()) == []


@pytest.mark.parametrize("where", ["fallocate", "index"])
def test_the_decoded_cache_on_a_full_disk(monkeypatch, shapes, where) -> None:
    manifest, _ = shapes
    if where == "fallocate":

        def no_room(fd, offset, length):
            raise _full()

        monkeypatch.setattr(os, "posix_fallocate", no_room)
    else:
        real = Path.write_text

        def index_fails(self, text, *a, **k):
            if self.suffix == ".json" and "decoded" in self.name:
                raise _full()
            return real(self, text, *a, **k)

        monkeypatch.setattr(Path, "write_text", index_fails)
    with pytest.raises(DiskFullError) as info:
        inputs.decode_all(manifest.root, manifest.items, 40, "bicubic", 10**9)
    _assert_message(info.value)
    assert _left_by_runs(manifest.root) == []


def test_run_log_on_a_full_disk(tmp_path, monkeypatch) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project()
    run = store.create_job(project.id, {}, tmp_path)
    real_open = open

    def full_open(path, *args, **kwargs):
        if str(path).endswith("run.log"):
            raise _full()
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(DiskFullError):
        StoreSink(store, run).emit(Log("hello"))


@pytest.mark.parametrize("site", ["image", "manifest", "zip-member"])
def test_import_writes_on_a_full_disk(tmp_path, monkeypatch, site) -> None:
    src = make_shapes(tmp_path / "src", per_class=10, size=32)
    if site == "image":
        monkeypatch.setattr(Path, "write_bytes", lambda self, d: (_ for _ in ()).throw(_full()))
    elif site == "manifest":
        monkeypatch.setattr(
            Path, "write_text", lambda self, *a, **k: (_ for _ in ()).throw(_full())
        )
    else:
        monkeypatch.setattr(zipsafe.tempfile, "SpooledTemporaryFile", lambda *a, **k: _FullSpool())
    with pytest.raises(DiskFullError) as info:
        if site == "zip-member":
            import_zip(io.BytesIO(_zip_of(src)), tmp_path / "data")
        else:
            import_folder(src, tmp_path / "data")
    _assert_message(info.value)
    assert not (tmp_path / "data").exists()


class _FullSpool(io.BytesIO):
    """A spooled temporary file on a full disk."""

    def write(self, b) -> int:
        raise _full()


class _FullConnection:
    """A SQLite connection whose writes fail as on a full disk."""

    def __init__(self, real: sqlite3.Connection, message: str) -> None:
        self._real = real
        self._message = message

    def execute(self, sql: str, *args):
        if sql.lstrip().split()[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            raise sqlite3.OperationalError(self._message)
        return self._real.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._real, name, value)


@pytest.mark.parametrize("message", ["database or disk is full", "disk is full"])
@pytest.mark.parametrize("write", ["create_project", "update_job", "add_step", "add_epoch"])
def test_store_writes_on_a_full_disk(tmp_path, monkeypatch, message, write) -> None:
    store = Store(tmp_path / "ws")
    project = store.create_project()
    run = store.create_job(project.id, {}, tmp_path)
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda *a, **k: _FullConnection(real_connect(*a, **k), message)
    )
    calls = {
        "create_project": lambda: store.create_project(),
        "update_job": lambda: store.update_job(run.id, status="failed"),
        "add_step": lambda: store.add_step(run.id, StepRow(1, 1, 1, 0.1, 0.5, 0.01, 1.0)),
        "add_epoch": lambda: store.add_epoch(run.id, EpochRow(1, 1, 0.1, 0.5, 0.1, 0.5, 1.0)),
    }
    with pytest.raises(DiskFullError) as info:
        calls[write]()
    _assert_message(info.value)
    monkeypatch.setattr(sqlite3, "connect", real_connect)
    assert Store(tmp_path / "ws").job(run.id).status == "queued"


def test_other_store_errors_are_not_called_a_full_disk(tmp_path, monkeypatch) -> None:
    store = Store(tmp_path / "ws")
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda *a, **k: _FullConnection(real_connect(*a, **k), "locked")
    )
    with pytest.raises(sqlite3.OperationalError):
        store.create_project()


def test_engine_checks_free_space_before_it_writes_the_decoded_images(
    shapes, tmp_path, monkeypatch
) -> None:
    manifest, split = shapes
    asked: list[int] = []

    def no_room(path, needed):
        asked.append(needed)
        raise diskspace.disk_full_error(path, needed)

    monkeypatch.setattr(diskspace, "check_free", no_room)
    with pytest.raises(DiskFullError):
        fit(CFG, split, manifest.root, manifest.classes, tmp_path / "run", plan=CPU)
    side = 168  # test_efficientnet's cached side
    assert asked and asked[0] >= len(manifest.items) * 3 * side * side
    assert _left_by_runs(manifest.root) == []


def test_estimates() -> None:
    assert (
        diskspace.import_need(10, 10**9) == 10 * diskspace.IMAGE_CAP_BYTES + diskspace.MARGIN_BYTES
    )
    assert diskspace.import_need(10, 1000) == 1000 + diskspace.MARGIN_BYTES
    frozen = diskspace.run_need(100, 20, 3, 0, 10**6, 10**4, 100)
    tuned = diskspace.run_need(100, 20, 3, 0, 10**6, 10**6, 100)
    assert 3 * 4 * 10**6 < frozen < tuned
    assert (
        diskspace.run_need(100, 20, 3, 100, 0, 0, 0) - diskspace.run_need(100, 20, 3, 0, 0, 0, 0)
        == 100 * 3 * 100 * 100
    )


# ------------------------------------------------------------------------- the app


def _app(workspace: Path, monkeypatch, page: str | None = None, project: str | None = None):
    import streamlit as st

    monkeypatch.setenv("TL_STUDIO_HOME", str(workspace))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    return app_test(page, project)


@pytest.mark.parametrize("free_kib", [0, 300])
def test_the_data_page_says_the_disk_is_full(tiny_disk, monkeypatch, free_kib) -> None:
    disk = tiny_disk("disk", 2048)
    at = _app(disk / "ws", monkeypatch)
    assert not at.exception
    _fill(disk, free_kib * 1024)
    at.button(key="use_demo").click().run()
    assert not at.exception
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1, errors
    _assert_message(errors[0])
    assert not list((disk / "ws").glob("projects/*/data-*"))


def test_the_train_page_says_the_disk_is_full(tiny_disk, tmp_path, monkeypatch) -> None:
    from tl_core.runs import supervisor

    spawned: list[str] = []
    monkeypatch.setattr(
        supervisor,
        "_spawn",
        lambda store, run: spawned.append(run.id) if run.kind == "train" else None,
    )
    disk = tiny_disk("disk", 8192)
    store, project_id, _ = _workspace_with_data(disk, tmp_path)
    store.update_settings(project_id, model="test_efficientnet")
    at = _app(disk / "ws", monkeypatch, "app_pages/train.py", project_id)
    assert not at.exception
    _fill(disk, 0)
    at.button(key="start").click().run()
    assert not at.exception
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1, errors
    _assert_message(errors[0])
    assert spawned == []
    (disk / "ballast").unlink()
    assert Store(disk / "ws").runs() == []  # no half-made run record


def test_the_train_page_shows_a_run_that_failed_on_a_full_disk(tiny_disk, tmp_path, monkeypatch):
    disk = tiny_disk("disk", 8192)
    store, project_id, data_dir = _workspace_with_data(disk, tmp_path)
    store.update_settings(project_id, model="test_efficientnet")
    run = store.create_job(project_id, asdict(CFG), data_dir)
    _fill(disk, 1024 * 1024)
    run_worker(store, run.id)
    (disk / "ballast").unlink()
    at = _app(disk / "ws", monkeypatch, "app_pages/train.py", project_id)
    assert not at.exception
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1, errors
    _assert_message(errors[0])
