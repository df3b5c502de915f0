"""Corrupt or foreign files give one plain sentence: predictions.json, best.pt, studio.db.

One workspace with two finished 1-epoch head-only runs (one inside the workspace, one in a
folder of its own) is trained once; each test copies what it damages.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import streamlit as st
import torch
from helpers import app_test, make_shapes
from jobrunner import finish_jobs
from streamlit.testing.v1 import AppTest

from tl_core import cli
from tl_core.analysis.evaluation import ModelLoadError, evaluate_run, load_model_checked, verify_run
from tl_core.analysis.results import PredictionsError, load_predictions
from tl_core.config import StepRow
from tl_core.runs.store import (
    RUN_RECORD,
    Store,
    StoreDamagedError,
    read_run_record,
    repair,
)

ROOT = Path(__file__).resolve().parent.parent


def _main(*args: str) -> tuple[int, str, str]:
    """The command line in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tl_core", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def _one_sentence_error(code: int, stdout: str, stderr: str) -> str:
    """A refusal: non-zero exit, one stderr line, no traceback and no accuracy anywhere."""
    assert code != 0, stdout
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    last = json.loads(stdout.strip().splitlines()[-1])
    assert "accuracy" not in last and "error" in last
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path | str]:
    """A workspace with two finished runs: ``run_dir`` in runs/, ``out_dir`` outside it."""
    base = tmp_path_factory.mktemp("corrupt")
    shapes = make_shapes(base / "shapes", per_class=8, size=32)
    ws = base / "ws"
    common = ("--model", "test_efficientnet", "--epochs", "1", "--trainable-groups", "0")
    code, out, err = _main("--workspace", str(ws), "train", "--data", str(shapes), *common)
    assert code == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    out_dir = base / "elsewhere" / "run"
    code, out, err = _main(
        "--workspace", str(ws), "train", "--data", str(shapes), *common, "--out", str(out_dir)
    )
    assert code == 0, err
    second = json.loads(out.strip().splitlines()[-1])
    return {
        "ws": ws,
        "shapes": shapes,
        "run_dir": Path(first["run_dir"]),
        "run_id": first["run_id"],
        "project_id": first["project_id"],
        "out_dir": out_dir,
        "out_id": second["run_id"],
    }


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the first run's folder (its run.json still names the data set)."""
    return Path(shutil.copytree(trained["run_dir"], tmp_path / "run"))


# ------------------------------------------------------------------------- predictions.json


def _edit(change: Callable[[dict], object]) -> Callable[[str], str]:
    def apply(text: str) -> str:
        raw = json.loads(text)
        replaced = change(raw)
        return json.dumps(raw if replaced is None else replaced)

    return apply


def _row(key: str, value: object, k: int = 0) -> Callable[[str], str]:
    return _edit(lambda raw: raw["rows"][k].__setitem__(key, value))


def _width(raw: dict) -> int:
    return len(raw["classes"])


PREDICTIONS = {
    "truncated": lambda t: t[: len(t) // 2],
    "cut after the first byte": lambda t: t[:1],
    "empty file": lambda t: "",
    "not text": lambda t: "\udcff",
    "a list": lambda t: "[1, 2, 3]",
    "a string": lambda t: '"predictions"',
    "null": lambda t: "null",
    "deeply nested": lambda t: "[" * 100_000 + "]" * 100_000,
    "no classes": _edit(lambda raw: raw.pop("classes")),
    "classes not a list": _edit(lambda raw: raw.__setitem__("classes", "square,disc")),
    "classes not strings": _edit(lambda raw: raw.__setitem__("classes", [0, 1, 2])),
    "one class": _edit(lambda raw: raw.__setitem__("classes", ["square"])),
    "duplicate classes": _edit(lambda raw: raw.__setitem__("classes", ["a", "a", "b"])),
    "one class too many": _edit(lambda raw: raw["classes"].append("extra")),
    "one class too few": _edit(lambda raw: raw["classes"].pop()),
    "no rows": _edit(lambda raw: raw.pop("rows")),
    "rows not a list": _edit(lambda raw: raw.__setitem__("rows", {"a": 1})),
    "no rows at all": _edit(lambda raw: raw.__setitem__("rows", [])),
    "an empty row": _edit(lambda raw: raw["rows"].append({})),
    "a row that is a number": _edit(lambda raw: raw["rows"].append(3)),
    "a row without probs": _edit(lambda raw: raw["rows"][0].pop("probs")),
    "a row without label": _edit(lambda raw: raw["rows"][-1].pop("label")),
    "label out of range": _edit(lambda raw: raw["rows"][0].__setitem__("label", _width(raw))),
    "label far out of range": _row("label", 10**9),
    "negative label": _row("label", -1),
    "label as text": _row("label", "1"),
    "label as float": _row("label", 1.0),
    "label as bool": _row("label", True),
    "label null": _row("label", None),
    "pred out of range": _edit(lambda raw: raw["rows"][1].__setitem__("pred", _width(raw))),
    "pred negative": _row("pred", -2),
    "pred not the top class": _edit(
        lambda raw: raw["rows"][0].__setitem__("pred", (raw["rows"][0]["pred"] + 1) % _width(raw))
    ),
    "probs too short": _edit(lambda raw: raw["rows"][0]["probs"].pop()),
    "probs too long": _edit(lambda raw: raw["rows"][2]["probs"].append(0.0)),
    "probs not a list": _row("probs", 0.9),
    "probs as text": _edit(lambda raw: raw["rows"][0].__setitem__("probs", ["a", "b", "c"])),
    "probs NaN": lambda t: t.replace('"probs": [', '"probs": [NaN, ', 1).replace(
        '"classes": [', '"classes": ["nan-class", ', 1
    ),
    "a probability NaN": _edit(lambda raw: raw["rows"][0]["probs"].__setitem__(0, float("nan"))),
    "a probability infinite": _edit(
        lambda raw: raw["rows"][0]["probs"].__setitem__(1, float("inf"))
    ),
    "a negative probability": _edit(lambda raw: raw["rows"][0]["probs"].__setitem__(0, -0.5)),
    "probs not adding up to 1": _edit(
        lambda raw: raw["rows"][0].__setitem__("probs", [0.9] * _width(raw))
    ),
    "logits too short": _edit(lambda raw: raw["rows"][0]["logits"].pop()),
    "logits NaN": _edit(lambda raw: raw["rows"][0]["logits"].__setitem__(0, float("nan"))),
    "logits not matching probs": _edit(
        lambda raw: raw["rows"][0].__setitem__("logits", [float(i) for i in range(_width(raw))])
    ),
    "confidence not the top probability": _row("confidence", 0.01),
    "file outside the data set": _row("file", "../../../etc/passwd"),
    "absolute file": _row("file", "/etc/passwd"),
    "file not text": _row("file", 7),
}


@pytest.mark.parametrize("damage", PREDICTIONS.values(), ids=PREDICTIONS.keys())
def test_damaged_predictions_give_one_sentence_and_no_score(run_copy, damage) -> None:
    path = run_copy / "predictions.json"
    text = damage(path.read_text())
    if text == "\udcff":
        path.write_bytes(b"\xff\xfe\x00garbage\x80")
    else:
        path.write_text(text)
    for read in (load_predictions, evaluate_run):
        with pytest.raises(PredictionsError) as caught:
            read(run_copy)
        message = str(caught.value)
        assert "\n" not in message and "predictions" in message and "Traceback" not in message
    assert verify_run(run_copy, None).status == "unusable"
    line = _one_sentence_error(*_main("evaluate", str(run_copy)))
    assert "predictions" in line


def test_sound_predictions_are_read_back_unchanged(trained) -> None:
    raw = json.loads((trained["run_dir"] / "predictions.json").read_text())
    preds = load_predictions(trained["run_dir"])
    assert preds is not None and preds.classes == raw["classes"]
    assert preds.labels == [r["label"] for r in raw["rows"]]
    assert preds.probs == [r["probs"] for r in raw["rows"]]


# ------------------------------------------------------------------------------- best.pt


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("this is not a model\n")


def _foreign_state_dict(path: Path) -> None:
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(2)}, path)


def _foreign_with_meta(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    torch.save({"model": {"fc.weight": torch.zeros(3, 3)}, "meta": state["meta"]}, path)


def _a_tensor(path: Path) -> None:
    torch.save(torch.ones(3), path)


def _unknown_model(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["meta"]["config"]["model"] = "a_model_from_elsewhere"
    torch.save(state, path)


def _one_class_more(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["meta"]["classes"] = [*state["meta"]["classes"], "extra"]
    torch.save(state, path)


def _classes_renamed(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["meta"]["classes"] = [f"other-{c}" for c in state["meta"]["classes"]]
    torch.save(state, path)


def _other_weights(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for key, value in state["model"].items():
        if value.is_floating_point() and key.startswith("classifier"):
            state["model"][key] = torch.randn(value.shape, generator=generator) * 3
    torch.save(state, path)


BEST_PT = {
    "random bytes": _random,
    "truncated": _truncated,
    "empty": _empty,
    "a text file": _text,
    "another program's state dict": _foreign_state_dict,
    "wrong keys": _foreign_with_meta,
    "a bare tensor": _a_tensor,
    "an unknown model": _unknown_model,
    "one class more than predictions": _one_class_more,
    "other class names": _classes_renamed,
}


@pytest.mark.parametrize("damage", BEST_PT.values(), ids=BEST_PT.keys())
def test_an_unloadable_best_pt_is_one_sentence_and_no_accuracy(run_copy, damage) -> None:
    damage(run_copy / "best.pt")
    with pytest.raises(ModelLoadError) as caught:
        load_model_checked(run_copy, load_predictions(run_copy))
    assert "\n" not in str(caught.value) and "best.pt" in str(caught.value)
    verdict = verify_run(run_copy, Path("/nonexistent"))
    assert verdict.status == "unusable" and not verdict.verified
    line = _one_sentence_error(*_main("evaluate", str(run_copy)))
    assert "best.pt" in line


def test_a_model_that_does_not_reproduce_its_predictions_gets_no_score(run_copy) -> None:
    _other_weights(run_copy / "best.pt")
    line = _one_sentence_error(*_main("evaluate", str(run_copy)))
    assert "does not reproduce" in line


def test_the_command_line_refuses_a_foreign_best_pt_as_a_process(run_copy) -> None:
    _truncated(run_copy / "best.pt")
    proc = _cli("--workspace", str(run_copy.parent / "ws"), "evaluate", str(run_copy))
    line = _one_sentence_error(proc.returncode, proc.stdout, proc.stderr)
    assert "cannot be read" in line


# ------------------------------------------------------------------- a run folder on its own


def test_a_run_folder_the_workspace_does_not_know_is_verified_through_run_json(
    trained, run_copy, tmp_path
) -> None:
    record = read_run_record(run_copy)
    assert record is not None and record["status"] == "finished" and record["result"]
    assert record["config"]["model"] == "test_efficientnet" and Path(record["data_dir"]).is_dir()
    code, out, err = _main("--workspace", str(tmp_path / "empty-ws"), "evaluate", str(run_copy))
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["verified"] is True and summary["parity_ok"] is True
    assert summary["verdict"] == "verified" and 0 <= summary["accuracy"] <= 1


def test_a_run_folder_moved_without_its_images_says_it_could_not_be_rechecked(
    trained, run_copy, tmp_path
) -> None:
    record = json.loads((run_copy / RUN_RECORD).read_text())
    data_copy = Path(shutil.copytree(record["data_dir"], tmp_path / "data-copy"))
    record["data_dir"] = str(tmp_path / "on-another-machine" / "data-1")
    (run_copy / RUN_RECORD).write_text(json.dumps(record))
    ws = str(tmp_path / "other-ws")
    line = _one_sentence_error(*_main("--workspace", ws, "evaluate", str(run_copy)))
    assert "could not be re-checked" in line and "--data" in line
    # With the run's data set at hand again, the check runs and the score is given.
    code, out, err = _main("--workspace", ws, "evaluate", str(run_copy), "--data", str(data_copy))
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["verified"] is True
    # Some of the validation images gone: not re-checked either.
    preds = load_predictions(run_copy)
    (data_copy / preds.files[0]).unlink()
    line = _one_sentence_error(
        *_main("--workspace", ws, "evaluate", str(run_copy), "--data", str(data_copy))
    )
    assert "1 of the" in line and "missing" in line


# ---------------------------------------------------------------------------- studio.db


def _real_db(ws: Path) -> bytes:
    """A studio.db with rows on several pages (the one there, else a new one), in one file."""
    store = Store(ws)
    project = store.create_project("p")
    for _ in range(0 if (ws / "runs").is_dir() else 8):
        run = store.create_job(project.id, {"model": "m", "pad": "x" * 2000}, ws)
        for k in range(5):
            store.add_step(run.id, StepRow(1, k, 10, 0.5, 0.5, 0.1, 1.0))
    store.close()
    db = sqlite3.connect(store.path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return store.path.read_bytes()


def _db_random(ws: Path) -> None:
    (ws / "studio.db").write_bytes(os.urandom(20_000))


def _db_text(ws: Path) -> None:
    (ws / "studio.db").write_text("projects,runs\nthis is a spreadsheet, not a database\n")


def _db_truncated(ws: Path) -> None:
    data = _real_db(ws)
    (ws / "studio.db").write_bytes(data[: len(data) // 3])


def _db_header_only(ws: Path) -> None:
    (ws / "studio.db").write_bytes(_real_db(ws)[:60])


def _db_empty(ws: Path) -> None:
    _real_db(ws)
    (ws / "studio.db").write_bytes(b"")


def _db_malformed_page(ws: Path) -> None:
    data = bytearray(_real_db(ws))
    page = int.from_bytes(data[16:18], "big")
    for n in (2, 3, 4):  # the b-tree page headers of the tables
        data[n * page - page : n * page - page + 12] = b"\xff" * 12
    (ws / "studio.db").write_bytes(bytes(data))


def _db_foreign(ws: Path) -> None:
    db = sqlite3.connect(ws / "studio.db")
    db.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
    db.execute("INSERT INTO contacts VALUES ('Ada', '123')")
    db.commit()
    db.close()


def _db_foreign_with_runs(ws: Path) -> None:
    db = sqlite3.connect(ws / "studio.db")
    db.execute("CREATE TABLE runs (id TEXT, name TEXT, colour TEXT)")
    db.execute("CREATE TABLE projects (id TEXT, title TEXT)")
    db.commit()
    db.close()


def _db_newer(ws: Path) -> None:
    _real_db(ws)
    db = sqlite3.connect(ws / "studio.db")
    db.execute("PRAGMA user_version = 99")
    db.close()


def _db_bad_json(ws: Path) -> None:
    _real_db(ws)
    db = sqlite3.connect(ws / "studio.db")
    db.execute("UPDATE runs SET config = '{not json'")
    db.execute("UPDATE projects SET settings = '[1, 2'")
    db.commit()
    db.close()


def _db_old_schema_missing_a_required_column(ws: Path) -> None:
    db = sqlite3.connect(ws / "studio.db")
    db.execute("CREATE TABLE projects (id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL)")
    db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, project_id TEXT, created REAL)")
    db.commit()
    db.close()


def _db_folder(ws: Path) -> None:
    (ws / "studio.db").mkdir()


STUDIO_DB = {
    "random bytes": _db_random,
    "a text file": _db_text,
    "truncated": _db_truncated,
    "cut inside the header": _db_header_only,
    "emptied": _db_empty,
    "malformed pages": _db_malformed_page,
    "another program's": _db_foreign,
    "another program's with our table names": _db_foreign_with_runs,
    "a newer version's": _db_newer,
    "rows of damaged JSON": _db_bad_json,
    "an older schema lacking required columns": _db_old_schema_missing_a_required_column,
    "a folder": _db_folder,
}


def _damaged_workspace(ws: Path, damage: Callable[[Path], None]) -> None:
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "projects" / "a-project").mkdir(parents=True, exist_ok=True)
    for name in ("studio.db", "studio.db-wal", "studio.db-shm"):
        path = ws / name
        if path.is_file():
            path.unlink()
    damage(ws)
    for name in ("studio.db-wal", "studio.db-shm"):
        (ws / name).unlink(missing_ok=True)


def _store_error(store: Store) -> str:
    with pytest.raises(StoreDamagedError) as caught:
        store.check()
        store.runs()
        store.project("a-project")
    return str(caught.value)


@pytest.mark.parametrize("damage", STUDIO_DB.values(), ids=STUDIO_DB.keys())
def test_a_damaged_studio_db_is_one_sentence_with_the_way_on(tmp_path, damage) -> None:
    ws = tmp_path / "ws"
    _damaged_workspace(ws, damage)
    ours = damage is _db_bad_json  # our own index, sound as a file: opening it may write
    before = (ws / "studio.db").read_bytes() if (ws / "studio.db").is_file() else None
    before = None if ours else before
    message = _store_error(Store(ws))
    assert "\n" not in message and "studio.db" in message and "tl_core repair" in message
    if before is not None:  # nothing was written into the file (another program's stays theirs)
        assert (ws / "studio.db").read_bytes() == before
    code, out, err = _main("--workspace", str(ws), "train", "--data", str(tmp_path / "nowhere"))
    line = _one_sentence_error(code, out, err)
    assert "repair" in line or "nowhere" in line
    report = repair(ws)
    assert report.moved_to is not None and report.moved_to.name.startswith("studio.db.damaged-")
    if before is not None:
        assert report.moved_to.read_bytes() == before  # kept, not deleted
    store = Store(ws)
    store.check()
    assert [p.id for p in [store.project("a-project")] if p] == ["a-project"]


def test_a_db_of_an_older_version_is_brought_up_to_date(tmp_path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    db = sqlite3.connect(ws / "studio.db")
    db.executescript(
        """
        CREATE TABLE projects (id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL,
            data_dir TEXT);
        CREATE TABLE runs (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, created REAL NOT NULL,
            status TEXT NOT NULL, config TEXT NOT NULL, data_dir TEXT NOT NULL,
            run_dir TEXT NOT NULL, pid INTEGER, heartbeat REAL, started REAL, finished REAL,
            error TEXT, result TEXT);
        INSERT INTO projects VALUES ('p1', 'old', 1.0, NULL);
        INSERT INTO runs VALUES ('r1', 'p1', 2.0, 'finished', '{"model": "m"}', '/d', '/r',
            NULL, NULL, NULL, NULL, NULL, '{"val_accuracy": 0.5}');
        """
    )
    db.close()
    store = Store(ws)
    assert store.project("p1").settings == {}
    (run,) = store.runs()
    assert run.source == "app" and run.message == "" and not run.resume
    assert run.result == {"val_accuracy": 0.5}
    assert store.epochs("r1") == []
    store.update_job("r1", queued_at=3.0)
    assert Store(ws).job("r1").queued_at == 3.0


@pytest.mark.parametrize(
    "damage",
    [_db_random, _db_malformed_page, _db_foreign],
    ids=["random bytes", "malformed pages", "another program's"],
)
def test_run_folder_commands_work_and_repair_rebuilds_the_index(trained, tmp_path, damage):
    ws = Path(shutil.copytree(trained["ws"], tmp_path / "ws"))
    shutil.copytree(trained["ws"], tmp_path / "ws-before")
    _damaged_workspace(ws, damage)
    # A run folder alone still works: evaluate checks it through run.json.
    run_dir = ws / "runs" / trained["run_id"]
    code, out, err = _main("--workspace", str(ws), "evaluate", str(run_dir))
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["verified"] is True

    code, out, err = _main("--workspace", str(ws), "repair")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["repaired"] and summary["runs_added"] == 2 and summary["projects_added"] >= 2
    assert Path(summary["moved_to"]).is_file()
    old, new = Store(tmp_path / "ws-before"), Store(ws)
    for run in old.runs():
        again = new.job(run.id)
        assert again is not None and again.status == run.status == "finished"
        assert again.result == run.result and again.config == run.config
        moved = run.id == trained["run_id"]  # the copy of runs/<id>/ is where it is now
        assert again.run_dir == (str(run_dir.resolve()) if moved else run.run_dir)
        assert again.project_id == run.project_id
        assert new.epochs(run.id) == old.epochs(run.id) and len(new.epochs(run.id)) == 1
        project, before = new.project(run.project_id), old.project(run.project_id)
        assert project.data_dir == before.data_dir and project.settings == before.settings
        assert project.name == before.name
    code, out, _ = _main("--workspace", str(ws), "repair")  # sound now: nothing moved or added
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and not summary["repaired"] and summary["runs_added"] == 0


def test_the_command_line_says_so_and_repairs_as_a_process(trained, tmp_path) -> None:
    ws = Path(shutil.copytree(trained["ws"], tmp_path / "ws"))
    _damaged_workspace(ws, _db_random)
    proc = _cli("--workspace", str(ws), "train", "--data", str(trained["shapes"]))
    line = _one_sentence_error(proc.returncode, proc.stdout, proc.stderr)
    assert "studio.db" in line and "python -m tl_core repair" in line
    proc = _cli("--workspace", str(ws), "repair")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "moved to studio.db.damaged-" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["runs_added"] == 2


def test_export_of_a_run_folder_works_with_a_damaged_index(trained, tmp_path) -> None:
    ws = Path(shutil.copytree(trained["ws"], tmp_path / "ws"))
    _damaged_workspace(ws, _db_random)
    data_dir = read_run_record(trained["run_dir"])["data_dir"]
    code, out, err = _main(
        "--workspace",
        str(ws),
        "export",
        str(ws / "runs" / trained["run_id"]),
        "--out",
        str(tmp_path / "model.zip"),
        "--data",
        data_dir,
        "--format",
        "onnx",
    )
    assert code == 0, err
    assert (tmp_path / "model.zip").is_file() and json.loads(out.splitlines()[-1])["parity_ok"]


def test_repair_rebuilds_a_deleted_index_from_the_folders(trained, tmp_path) -> None:
    ws = Path(shutil.copytree(trained["ws"], tmp_path / "ws"))
    for name in ("studio.db", "studio.db-wal", "studio.db-shm"):
        (ws / name).unlink(missing_ok=True)
    report = repair(ws)
    assert report.moved_to is None and report.runs == 2 and not report.skipped
    assert {r.id for r in Store(ws).runs()} == {trained["run_id"], trained["out_id"]}


def test_unfinished_runs_come_back_interrupted_and_folders_without_a_record_are_listed(
    tmp_path,
) -> None:
    ws = tmp_path / "ws"
    store = Store(ws)
    project = store.create_project("p")
    run = store.create_job(project.id, {"model": "m"}, ws / "data")
    store.update_job(run.id, status="running", pid=1)
    (ws / "runs" / "old-run").mkdir()  # a run folder written before runs described themselves
    _damaged_workspace(ws, _db_text)
    report = repair(ws)
    assert report.runs == 1 and report.skipped == [str((ws / "runs" / "old-run").resolve())]
    assert "1 folder(s) could not be read back" in report.sentence()
    assert Store(ws).job(run.id).status == "interrupted"


# -------------------------------------------------------------------------------- the app


@pytest.fixture
def app_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_resource.clear()
    st.cache_data.clear()

    def use(ws: Path) -> None:
        monkeypatch.setenv("TL_STUDIO_HOME", str(ws))

    return use


def _app(page: str | None = None, project: str | None = None) -> AppTest:
    """The page as a user sees it once the jobs it submitted (the Evaluate page's check of
    the saved model) have run."""
    at = app_test(page, project)
    if page == "app_pages/evaluate.py" and finish_jobs(Path(os.environ["TL_STUDIO_HOME"])):
        at = app_test(page, project)
    return at


@pytest.mark.parametrize(
    "damage",
    [_db_random, _db_truncated, _db_malformed_page, _db_foreign, _db_newer],
    ids=["random bytes", "truncated", "malformed pages", "another program's", "newer"],
)
def test_the_app_shows_the_damage_and_repairs_it(trained, tmp_path, app_env, damage) -> None:
    ws = Path(shutil.copytree(trained["ws"], tmp_path / "ws"))
    _damaged_workspace(ws, damage)
    app_env(ws)
    at = _app(project=trained["project_id"])
    assert not at.exception
    assert any("studio.db" in e.value and "repair" in e.value for e in at.error)
    assert at.button(key="repair_store")
    at.button(key="repair_store").click().run()
    assert not at.exception
    assert any("moved to studio.db.damaged-" in s.value for s in at.success)
    at = _app("app_pages/evaluate.py", trained["project_id"])
    assert not at.exception and not at.error
    labels = [m.label for m in at.metric]
    assert "Validation accuracy" in labels
    assert "reproduces the recorded predictions" in "".join(c.value for c in at.caption)


def _app_run(trained, tmp_path, app_env) -> Path:
    """A workspace of the run folder alone, indexed by repair; returns the run folder."""
    ws = tmp_path / "ws"
    run_dir = Path(shutil.copytree(trained["run_dir"], ws / "runs" / trained["run_id"]))
    repair(ws)
    app_env(ws)
    return run_dir


@pytest.mark.parametrize(
    "damage", [_random, _truncated, _foreign_state_dict, _one_class_more, _other_weights]
)
def test_the_evaluate_page_shows_no_score_for_a_model_it_cannot_trust(
    trained, tmp_path, app_env, damage
) -> None:
    run_dir = _app_run(trained, tmp_path, app_env)
    damage(run_dir / "best.pt")
    at = _app("app_pages/evaluate.py", trained["project_id"])
    assert not at.exception
    assert at.error and "Validation accuracy" not in [m.label for m in at.metric]
    at = _app("app_pages/try_it.py", trained["project_id"])
    assert not at.exception
    if damage is not _other_weights:
        assert at.error and "best.pt" in at.error[0].value


@pytest.mark.parametrize(
    "name", ["truncated", "label out of range", "an empty row", "a probability NaN"]
)
def test_the_pages_show_damaged_predictions_as_one_sentence(
    trained, tmp_path, app_env, name
) -> None:
    run_dir = _app_run(trained, tmp_path, app_env)
    path = run_dir / "predictions.json"
    path.write_text(PREDICTIONS[name](path.read_text()))
    at = _app("app_pages/evaluate.py", trained["project_id"])
    assert not at.exception
    assert at.error and "predictions" in at.error[0].value
    assert "Validation accuracy" not in [m.label for m in at.metric]
    (run_dir / "calibration.json").unlink(missing_ok=True)  # the Try page then needs them
    at = _app("app_pages/try_it.py", trained["project_id"])
    assert not at.exception
    assert at.error and "predictions" in at.error[0].value


def test_the_evaluate_page_says_when_the_images_are_gone(trained, tmp_path, app_env) -> None:
    run_dir = _app_run(trained, tmp_path, app_env)
    store = Store(tmp_path / "ws")
    store.update_job(trained["run_id"], data_dir=str(tmp_path / "gone"))
    assert run_dir.is_dir()
    at = _app("app_pages/evaluate.py", trained["project_id"])
    assert not at.exception
    assert any("could not be re-checked" in w.value for w in at.warning)
    assert "Validation accuracy" not in [m.label for m in at.metric]
