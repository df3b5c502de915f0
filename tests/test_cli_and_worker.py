"""The headless command and the background worker, as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import make_shapes, wait_until

from tl_core import service
from tl_core.config import RunSpec
from tl_core.data.dataset import import_folder
from tl_core.models.facts import model_info
from tl_core.runs import jobs, supervisor
from tl_core.runs.store import Store


def _cli(*args: str, workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tl_core", "--workspace", str(workspace), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "src", per_class=20)


def test_train_command_prints_json_and_the_run_appears_in_the_store(shapes_dir, tmp_path):
    out = tmp_path / "my-run"
    proc = _cli(
        "train",
        "--data",
        str(shapes_dir),
        "--model",
        "test_efficientnet",
        "--trainable-groups",
        "2",
        "--epochs",
        "2",
        "--seed",
        "1",
        "--out",
        str(out),
        workspace=tmp_path / "ws",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["model"] == "test_efficientnet"
    assert summary["trainable_groups"] == 2 and summary["seconds"] > 0
    assert 0 <= summary["val_accuracy"] <= 1
    assert (out / "best.pt").exists() and (out / "predictions.json").exists()
    # a partly fine-tuned run's unfamiliar check: its own pass over the pictures
    assert (out / "familiarity.npz").exists()
    unfamiliar = summary["unfamiliar"]
    assert unfamiliar["threshold"] > 0 and unfamiliar["everyday_pictures_flagged"] is not None
    assert 0 <= unfamiliar["own_validation_flagged"] <= 1
    assert unfamiliar["left_out_classes_auroc"] is not None
    store = Store(tmp_path / "ws")
    run = store.job(summary["run_id"])
    assert run is not None and run.status == "finished" and run.source == "cli"
    assert store.project(summary["project_id"]).data_dir
    assert len(store.epochs(run.id)) == 2


def test_evaluate_command_scores_a_run_and_checks_it_reproduces(shapes_dir, tmp_path):
    ws = tmp_path / "ws"
    proc = _cli(
        "train",
        "--data",
        str(shapes_dir),
        "--model",
        "test_efficientnet",
        "--epochs",
        "2",
        workspace=ws,
    )
    run_dir = json.loads(proc.stdout.strip().splitlines()[-1])["run_dir"]
    proc = _cli("evaluate", run_dir, workspace=ws)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    preds = json.loads((Path(run_dir) / "predictions.json").read_text())["rows"]
    accuracy = sum(r["label"] == r["pred"] for r in preds) / len(preds)
    assert summary["accuracy"] == pytest.approx(accuracy)
    assert summary["ci_low"] <= accuracy <= summary["ci_high"]
    assert 0 <= summary["ece"] <= 1 and summary["parity_ok"] is True
    assert set(summary["per_class"]) == {"square", "disc", "stripes"}
    assert "warning" in summary  # 12 validation images cannot give a tight interval
    assert summary["unfamiliar"]["sentence"].startswith("Pictures of none of your classes")

    other = make_shapes(tmp_path / "more", per_class=5, seed=7)
    proc = _cli("evaluate", run_dir, "--data", str(other), workspace=ws)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and summary["images"] == 15 and summary["parity_ok"] is None

    (other / "zebra").mkdir()
    proc = _cli("evaluate", run_dir, "--data", str(other), workspace=ws)
    assert proc.returncode == 2 and "'zebra' is not one of the model's classes" in proc.stderr
    proc = _cli("evaluate", str(tmp_path), workspace=ws)
    assert proc.returncode == 2 and "best.pt is missing" in proc.stderr


def test_from_scratch_baseline_and_recommend_commands(shapes_dir, tmp_path):
    ws = tmp_path / "ws"
    proc = _cli("train", "--data", str(shapes_dir), "--epochs", "1", "--from-scratch", workspace=ws)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    config = Store(ws).job(summary["run_id"]).config
    assert summary["pretrained"] is False and config["pretrained"] is False
    every = model_info("efficientnet_lite0", 3).n_backbone
    assert config["trainable_groups"] == every and config["head_epochs"] == 0
    assert config["lr"] <= 2e-3

    proc = _cli("recommend", "--data", str(shapes_dir), workspace=ws)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    keys = [r["key"] for r in result["ranking"]]
    assert sorted(keys) == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert lines[0].startswith("1. EfficientNet-Lite")
    # the best is the leader, or the fastest of the models tied with it
    assert result["best"] == keys[0] or keys[0] in result["tied_with"]
    assert all(r["ci_low"] <= r["probe_accuracy"] <= r["ci_high"] for r in result["ranking"])
    accs = [r["probe_accuracy"] for r in result["ranking"]]
    assert accs == sorted(accs, reverse=True) and accs[0] > 0.8  # easy shapes, good features


def test_train_command_with_val_never_trains_on_the_validation_folder(tmp_path):
    train = make_shapes(tmp_path / "train", per_class=10)
    val = make_shapes(tmp_path / "val", per_class=4, seed=1)
    proc = _cli(
        "train",
        "--data",
        str(train),
        "--val",
        str(val),
        "--model",
        "test_resnet",
        "--epochs",
        "1",
        workspace=tmp_path / "ws",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    preds = json.loads((Path(summary["run_dir"]) / "predictions.json").read_text())
    assert len(preds["rows"]) == 12  # exactly the validation folder
    assert summary["train_images"] == 30 and summary["val_images"] == 12
    assert summary["validation"] == "folder"


def test_train_command_explains_bad_input(tmp_path):
    (tmp_path / "only" / "cats").mkdir(parents=True)
    proc = _cli(
        "train",
        "--data",
        str(tmp_path / "only"),
        "--model",
        "test_resnet",
        workspace=tmp_path / "ws",
    )
    assert proc.returncode == 2
    assert "error" in json.loads(proc.stdout.strip().splitlines()[-1])
    assert "Traceback" not in proc.stderr
    assert Store(tmp_path / "ws").runs() == []  # and no project left behind
    assert not any((tmp_path / "ws" / "projects").glob("*"))
    proc = _cli(
        "train", "--data", str(tmp_path), "--model", "nonexistent_net", workspace=tmp_path / "ws"
    )
    assert proc.returncode == 2 and "Choose one of" in proc.stderr


def test_worker_runs_in_background_stops_fast_and_resumes_after_a_crash(
    shapes_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("TL_STUDIO_MAX_RUNS", "1")
    store = Store(tmp_path / "ws")
    project = store.create_project()
    data_dir = store.new_data_dir(project.id)
    import_folder(shapes_dir, data_dir)
    config = {
        "model": "test_efficientnet",
        "epochs": 40,
        "batch_size": 4,
        "augment": "none",
        "pretrained": False,
        "trainable_groups": 6,
    }
    first = service.submit_job(store, project.id, RunSpec.from_dict(config), data_dir)
    one_epoch = RunSpec.from_dict({**config, "epochs": 1})
    second = service.submit_job(store, project.id, one_epoch, data_dir)
    assert store.queue_position(second.id) == 1  # one slot: the second waits its turn

    # Crash the worker mid-run (as an out-of-memory kill would), after one finished epoch.
    wait_until(lambda: len(store.epochs(first.id)) >= 1)
    run = store.job(first.id)
    os.kill(run.pid, signal.SIGKILL)
    wait_until(lambda: not jobs.pid_alive(run.pid))
    assert jobs.recover(store) == [first.id]
    assert store.job(first.id).status == "interrupted"

    # The freed slot goes to the waiting run, which finishes; then resume the first one.
    supervisor.pump(store)
    wait_until(lambda: store.job(second.id).status == "finished", timeout=180)
    epochs_before = len(store.epochs(first.id))
    service.resume_run(store, first.id)
    wait_until(lambda: len(store.epochs(first.id)) > epochs_before, timeout=180)
    assert [e.epoch for e in store.epochs(first.id)] == list(
        range(1, len(store.epochs(first.id)) + 1)
    )

    # Stop takes effect within about a second and keeps the best checkpoint.
    asked = time.monotonic()
    jobs.request_stop(store, first.id)
    wait_until(lambda: store.job(first.id).status == "stopped", timeout=30, interval=0.05)
    assert time.monotonic() - asked < 2.5
    assert (Path(store.job(first.id).run_dir) / "best.pt").exists()
