"""Page tests with Streamlit's AppTest: each wizard step renders, guards and writes the store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import app_test
from jobrunner import inline_spawn, run_job
from streamlit.testing.v1 import AppTest

from tl_core.config import EpochRow, SplitSettings
from tl_core.data.dataset import import_folder
from tl_core.runs import jobs, supervisor
from tl_core.runs.store import Store
from tl_ui.text import literal

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo" / "fashion_mnist"
TIMEOUT = 120


@pytest.fixture(scope="module")
def demo_import(tmp_path_factory) -> Path:
    """The demo set imported once; tests copy the project row pointing at it."""
    dest = tmp_path_factory.mktemp("demo") / "data-1"
    import_folder(DEMO, dest)
    return dest


@pytest.fixture(autouse=True)
def _inline_jobs(monkeypatch) -> list[str]:
    """No worker processes: jobs that are not training runs run at once, in the test."""
    return inline_spawn(monkeypatch)


def _project_with_data(workspace: Path, data_dir: Path, **settings) -> str:
    store = Store(workspace)
    project = store.create_project()
    store.set_data_dir(project.id, data_dir)
    if settings:
        store.update_settings(project.id, **settings)
    return project.id


def _app(page: str | None = None, project: str | None = None) -> AppTest:
    return app_test(page, project, TIMEOUT)


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption]
    parts += [str(m.value) for m in at.warning] + [str(m.value) for m in at.error]
    parts += [str(m.value) for m in at.info] + [str(m.value) for m in at.success]
    return "\n".join(parts)


def test_data_page_imports_the_demo_set_and_puts_the_project_in_the_url(workspace) -> None:
    at = _app()
    assert not at.exception
    at.button(key="use_demo").click().run()
    assert not at.exception
    project_id = at.query_params["project"]
    project_id = project_id[0] if isinstance(project_id, list) else project_id
    project = Store(workspace).project(project_id)
    assert project is not None and project.data_dir
    (job,) = Store(workspace).jobs(project_id, kind="import")  # a job, not the web server
    assert job.status == "finished" and job.result["data_dir"] == project.data_dir
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "700" and metrics["Classes"] == "10"
    assert "tshirt\\_top" in _texts(at)  # names are shown literally (Markdown escaped)


def test_a_refresh_with_the_project_link_returns_to_the_same_data(workspace, demo_import):
    project_id = _project_with_data(workspace, demo_import)
    at = _app(project=project_id)
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Images"] == "700"
    assert any("?project=" + project_id in c.value for c in at.sidebar.code)


def test_unknown_project_link_is_explained(workspace) -> None:
    at = _app(project="not-a-real-project")
    assert "unknown" in _texts(at)


def test_model_page_lists_offline_and_hub_models(workspace, demo_import) -> None:
    project_id = _project_with_data(workspace, demo_import)
    at = _app("app_pages/model.py", project_id)
    assert not at.exception
    radio = at.radio(key="model_choice")
    assert radio.value == "efficientnet_lite0"
    labels = radio.options  # AppTest reports the formatted labels
    assert any("ready offline" in label for label in labels)
    assert any("downloads on first use" in label for label in labels)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Input size"] == "224×224 px"
    # The head start: far above guessing on the demo set (10 classes, 10% by chance).
    assert metrics["Guessing at random"] == "10%"
    assert int(metrics["Sorted right before any training"].rstrip("%")) > 50
    assert "Before any training" in _texts(at)


def test_choosing_a_hub_model_offline_gives_a_clear_message(workspace, demo_import) -> None:
    project_id = _project_with_data(workspace, demo_import)
    at = _app("app_pages/model.py", project_id)
    radio = at.radio(key="model_choice")
    radio.set_value(next(o for o in radio.options if o.startswith("ResNet-50"))).run()
    assert "one-time download" in _texts(at)
    at.button(key="download").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and "ready offline" in errors[0]
    assert Store(workspace).project(project_id).settings["model"] == "resnet50"


def test_pages_guard_against_missing_data(workspace) -> None:
    for page in (
        "app_pages/model.py",
        "app_pages/train.py",
        "app_pages/evaluate.py",
        "app_pages/try_it.py",
    ):
        at = _app(page)
        assert not at.exception
        assert at.info, page


def test_train_page_shows_the_freeze_plan_and_queues_a_run(workspace, demo_import, monkeypatch):
    spawned = inline_spawn(monkeypatch)
    project_id = _project_with_data(workspace, demo_import, model="efficientnet_lite0")
    at = _app("app_pages/train.py", project_id)
    assert not at.exception
    assert "only the new last layer learns" in _texts(at).lower()
    at.select_slider(key="trainable_groups").set_value(2).run()
    assert "last 2" in _texts(at)
    assert Store(workspace).project(project_id).settings["trainable_groups"] == 2
    at.button(key="start").click().run()
    assert not at.exception
    runs = Store(workspace).runs(project_id)
    assert len(runs) == 1 and runs[0].config["trainable_groups"] == 2
    assert spawned == [runs[0].id]
    assert at.button(key="start").disabled  # one run at a time per project
    assert at.button(key=f"stop_{runs[0].id}")


def _field(at: AppTest, label: str):
    return next(w for w in at.number_input if w.label == label)


def test_advanced_settings_are_saved_from_the_fields_without_a_save_press(
    workspace, demo_import, monkeypatch
):
    """Each advanced field is saved from its value: the summary shows it, and Train pressed
    in the same interaction as the change trains with it (no separate press to lose)."""
    spawned = inline_spawn(monkeypatch)
    project_id = _project_with_data(workspace, demo_import, model="efficientnet_lite0")
    at = _app("app_pages/train.py", project_id)
    assert not at.exception
    assert not [b for b in at.button if b.label == "Save settings"]
    _field(at, "Epochs (passes over your images)").set_value(5).run()
    _field(at, "Epochs (passes over your images)").set_value(3).run()  # the same field again
    _field(at, "Batch size").set_value(16).run()
    at.selectbox[0].set_value("light").run()
    settings = Store(workspace).project(project_id).settings
    assert (settings["epochs"], settings["batch_size"], settings["augment"]) == (3, 16, "light")
    assert "3 epochs · learning rate 0.01 · batch 16 · augmentation light" in _texts(at)

    _field(at, "Seed (same seed, same result)").set_value(7)
    at.button(key="start").click().run()  # changed and pressed at once
    assert not at.exception
    runs = Store(workspace).runs(project_id)
    assert len(runs) == 1 and spawned == [runs[0].id]
    assert (runs[0].config["seed"], runs[0].config["epochs"]) == (7, 3)


def test_advanced_settings_changed_elsewhere_are_shown_not_overwritten(workspace, demo_import):
    """A setting saved from outside the page (the command line, another tab) is what the
    page shows next, even outside the fields' usual ranges, and the page keeps it."""
    project_id = _project_with_data(workspace, demo_import, model="efficientnet_lite0")
    at = _app("app_pages/train.py", project_id)
    _field(at, "Epochs (passes over your images)").set_value(4).run()
    store = Store(workspace)
    store.update_settings(project_id, epochs=500, lr=0.7, batch_size=1024, seed=20_000)
    at.run()
    assert not at.exception
    assert _field(at, "Epochs (passes over your images)").value == 500
    assert _field(at, "Learning rate").value == 0.7
    assert "500 epochs · learning rate 0.7 · batch 1024" in _texts(at)
    at.run()
    settings = store.project(project_id).settings
    assert (settings["epochs"], settings["lr"], settings["batch_size"]) == (500, 0.7, 1024)
    assert settings["seed"] == 20_000


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A real 2-epoch run on its own import of the demo set: (data dir, run dir, result)."""
    from dataclasses import asdict

    from tl_core.data.dataset import split_dataset
    from tl_core.training.engine import TrainConfig, fit

    root = tmp_path_factory.mktemp("trained")
    manifest = import_folder(DEMO, root / "data")
    cfg = TrainConfig(model="efficientnet_lite0", epochs=2)
    result = fit(cfg, split_dataset(manifest), manifest.root, manifest.classes, root / "run")
    return manifest.root, root / "run", {"config": asdict(cfg), "result": asdict(result)}


def _register_run(store: Store, project_id: str, config: dict, data_dir: Path, files: Path):
    """A run record in its own new folder, holding a copy of an already trained run's files."""
    run = store.create_job(project_id, config, data_dir)
    shutil.copytree(files, run.run_dir, dirs_exist_ok=True)
    return run


def _project_with_run(workspace: Path, trained) -> tuple[str, str]:
    data_dir, run_dir, raw = trained
    project_id = _project_with_data(workspace, data_dir, model="efficientnet_lite0")
    store = Store(workspace)
    run = _register_run(store, project_id, raw["config"], data_dir, run_dir)
    store.update_job(run.id, status="finished", result=raw["result"])
    return project_id, run.id


def test_evaluate_page_shows_accuracy_interval_classes_and_calibration(workspace, trained):
    project_id, _ = _project_with_run(workspace, trained)
    at = _app("app_pages/evaluate.py", project_id)
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Validation accuracy"] == f"{trained[2]['result']['val_accuracy']:.1%}"
    low, high = (float(v.strip(" %")) for v in metrics["95% confidence interval"].split("–"))
    assert low < float(metrics["Validation accuracy"].rstrip("%")) < high
    assert "Temperature" in metrics and "After calibration" in metrics
    assert len(at.dataframe) >= 1  # the per-class table
    cell_true = next(s for s in at.selectbox if s.label == "True class")
    cell_pred = next(s for s in at.selectbox if s.label == "Predicted as")
    assert cell_true.value != cell_pred.value  # the biggest confusion is shown first
    assert "misclassified validation image(s), most confidently wrong first" in _texts(at)
    # the unfamiliar check's own tab: its measured sentence, the chart and the left-out AUROC
    from tl_core.training import familiarity

    report = familiarity.load_report(trained[1])
    assert "Pictures of none of your classes" in [t.label for t in at.tabs]
    assert report is not None and report.sentence() in _texts(at)
    assert metrics["A new class told apart (left-out AUROC)"] == f"{report.left_out_auroc:.2f}"
    assert at.get("plotly_chart")


def test_evaluate_page_raises_the_overfitting_alarm(workspace, trained) -> None:
    project_id, run_id = _project_with_run(workspace, trained)
    at = _app("app_pages/evaluate.py", project_id)
    assert "memorising" not in _texts(at)  # no epoch curves recorded: nothing to say
    store = Store(workspace)
    for epoch, (acc, val_acc) in enumerate([(0.7, 0.65), (0.95, 0.7), (1.0, 0.7)], 1):
        store.add_epoch(
            run_id, EpochRow(epoch, epoch * 10, 1 - acc, acc, 0.9, val_acc, float(epoch))
        )
    at = _app("app_pages/evaluate.py", project_id)
    assert "The model is memorising your training images" in _texts(at)


def test_one_click_baseline_from_scratch_and_the_two_curve_chart(
    workspace, trained, monkeypatch
) -> None:
    spawned = inline_spawn(monkeypatch)
    project_id, run_id = _project_with_run(workspace, trained)
    store = Store(workspace)
    for epoch, acc in enumerate([0.78, 0.8], 1):
        store.add_epoch(run_id, EpochRow(epoch, epoch * 10, 0.6, acc, 0.6, acc, float(epoch)))
    at = _app("app_pages/evaluate.py", project_id)
    next(b for b in at.button if b.label == "Train the same from scratch").click().run()
    assert not at.exception
    baseline = Store(workspace).runs(project_id)[-1]
    assert spawned == [baseline.id] and baseline.config["baseline_of"] == run_id
    assert baseline.config["pretrained"] is False and baseline.config["head_epochs"] == 0
    for epoch, acc in enumerate([0.2, 0.35], 1):
        store.add_epoch(baseline.id, EpochRow(epoch, epoch * 10, 2.0, acc, 2.0, acc, float(epoch)))
    store.update_job(baseline.id, status="finished")
    at = _app("app_pages/evaluate.py", project_id)
    text = _texts(at)
    assert "78% with the pretrained start against 20% from scratch." in text
    assert "Higher end" in text and "Faster rise" in text
    train = _app("app_pages/train.py", project_id)  # the baseline's own panel draws both curves
    assert not train.exception
    assert "The pretrained start against this run from random weights" in _texts(train)


def test_reviewing_mistakes_stores_corrections_and_retrains_with_them(
    workspace, trained, monkeypatch
):
    spawned = inline_spawn(monkeypatch)
    data_dir = trained[0]
    project_id, _ = _project_with_run(workspace, trained)
    at = _app("app_pages/evaluate.py", project_id)
    fixes = [s for s in at.selectbox if s.label == "Correct label"]
    leave_out = [c for c in at.checkbox if c.label == "Leave out"]
    fixes[0].set_value(fixes[0].options[1])
    leave_out[1].check()
    at.button(key=next(b.key for b in at.button if b.label == "Save review")).click().run()
    assert not at.exception
    saved = json.loads((data_dir / "corrections.json").read_text())
    assert len(saved["relabel"]) == 1 and len(saved["exclude"]) == 1
    assert "1 label(s) fixed, 1 image(s) left out" in _texts(at)
    next(b for b in at.button if b.label == "Retrain with these changes").click().run()
    runs = Store(workspace).runs(project_id)
    assert runs[-1].config["corrections"] == saved and spawned == [runs[-1].id]
    train = _app("app_pages/train.py", project_id)
    assert "Your label review applies to the next run" in str([i.value for i in train.info])
    (data_dir / "corrections.json").unlink()


def test_try_page_uses_the_calibrated_threshold(workspace, trained) -> None:
    from tl_core.analysis.evaluation import load_calibration

    project_id, _ = _project_with_run(workspace, trained)
    at = _app("app_pages/try_it.py", project_id)
    assert not at.exception
    expected = round(load_calibration(trained[1]).threshold, 2)
    assert at.slider[0].value == pytest.approx(expected)
    calibration = load_calibration(trained[1])
    note = "calibrated on the validation images" if calibration.calibrated else "as trained"
    assert f"Probabilities are {note}" in _texts(at)


FOREIGN_CAT = ROOT / "tl_core" / "data" / "foreign" / "cat.jpg"


def _try_upload(at: AppTest, *pictures: Path) -> AppTest:
    """The Try page with ``pictures`` dropped on its uploader."""
    at.radio(key="try_source").set_value("Upload").run()
    files = [
        (p.name, p.read_bytes(), "image/jpeg" if p.suffix == ".jpg" else "image/png")
        for p in pictures
    ]
    return at.file_uploader(key="try_upload").set_value(files).run()


def _unfamiliar_said(at: AppTest) -> bool:
    from tl_core.training.familiarity import UNFAMILIAR

    return any(str(w.value).startswith(literal(UNFAMILIAR)) for w in at.warning)


def test_try_page_calls_a_picture_of_none_of_the_classes_unfamiliar(workspace, trained) -> None:
    from tl_core.training import familiarity
    from tl_core.training.inference import load_trained

    data_dir, run_dir, _ = trained
    model = load_trained(run_dir)
    fam = model.familiarity
    assert fam is not None
    rows = json.loads((run_dir / "predictions.json").read_text())["rows"]
    val = [data_dir / r["file"] for r in rows[::5]]  # 40 validation pictures of every class
    far = model.guess(val).unfamiliarity
    familiar, odd = val[int(far.argmin())], val[int(far.argmax())]
    assert fam.threshold_at(0.8) < far.max() - 1e-3  # so the strictest choice flags it
    project_id, run_id = _project_with_run(workspace, trained)
    at = _try_upload(_app("app_pages/try_it.py", project_id), FOREIGN_CAT)
    assert not at.exception
    assert at.select_slider(key=f"try_unfamiliar_{run_id}").value == familiarity.ACCEPT
    assert _unfamiliar_said(at) and "The nearest is" in _texts(at)
    assert "if it had to choose" in _texts(at)
    at = _try_upload(at, familiar)
    assert not _unfamiliar_said(at)
    # the control moves the threshold: a validation picture flagged by the strictest choice
    # passes when every validation picture is let through; "off" lets even the cat through
    at = _try_upload(at, odd)
    at.select_slider(key=f"try_unfamiliar_{run_id}").set_value(0.8).run()
    assert _unfamiliar_said(at)
    at.select_slider(key=f"try_unfamiliar_{run_id}").set_value(1.0).run()
    assert not _unfamiliar_said(at)
    at = _try_upload(at, FOREIGN_CAT)
    at.select_slider(key=f"try_unfamiliar_{run_id}").set_value("off").run()
    assert not at.exception and not _unfamiliar_said(at)
    at.switch_page("app_pages/export.py").run()
    at.switch_page("app_pages/try_it.py").run()  # the choice outlives a visit to another page
    assert at.select_slider(key=f"try_unfamiliar_{run_id}").value == "off"
    # many pictures, a job: the cat is "unfamiliar" with its nearest class, the other is not
    at.select_slider(key=f"try_unfamiliar_{run_id}").set_value(0.95).run()
    at = _try_upload(at, FOREIGN_CAT, familiar)
    assert not at.exception
    table = at.dataframe[0].value.set_index("file")
    assert table.loc["cat.jpg", "prediction"] == "unfamiliar"
    assert table.loc["cat.jpg", "nearest_class"] in model.classes
    assert table.loc[familiar.name, "prediction"] != "unfamiliar"
    assert "; 1 unfamiliar (like none of your classes)." in _texts(at)


def test_a_run_trained_before_the_unfamiliar_check_says_so(workspace, trained) -> None:
    from tl_core.training import familiarity

    project_id, run_id = _project_with_run(workspace, trained)
    run_dir = Path(Store(workspace).job(run_id).run_dir)
    (run_dir / familiarity.FEATURES_FILE).unlink()
    (run_dir / familiarity.REPORT_FILE).unlink()
    at = _try_upload(_app("app_pages/try_it.py", project_id), FOREIGN_CAT)
    assert not at.exception
    assert "trained before the unfamiliar check existed" in _texts(at)
    assert not at.get("select_slider") and not _unfamiliar_said(at)
    at.switch_page("app_pages/evaluate.py").run()
    assert not at.exception
    assert "trained before the unfamiliar check existed; train it again" in _texts(at)
    assert "A new class told apart (left-out AUROC)" not in [m.label for m in at.metric]


def test_an_interrupted_run_offers_resume(workspace, demo_import, monkeypatch) -> None:
    spawned = inline_spawn(monkeypatch)
    project_id = _project_with_data(workspace, demo_import, model="efficientnet_lite0")
    store = Store(workspace)
    run = store.create_job(
        project_id, {"model": "efficientnet_lite0", "epochs": 3}, demo_import, status="running"
    )
    (Path(run.run_dir) / "last.pt").write_bytes(b"checkpoint")
    store.update_job(run.id, pid=None, heartbeat=1.0)  # its worker vanished long ago
    jobs.recover(store)  # what the server does when it starts
    at = _app("app_pages/train.py", project_id)
    assert not at.exception
    assert "Resume continues from the last finished epoch" in _texts(at)
    at.button(key=f"resume_{run.id}").click().run()
    assert store.job(run.id).status == "starting" and store.job(run.id).resume
    assert spawned == [run.id]


def test_train_page_suggests_a_depth_and_runs_a_quick_sweep(workspace, demo_import, monkeypatch):
    from tl_core.analysis.advice import SWEEP_EPOCHS

    monkeypatch.setenv("TL_STUDIO_MAX_RUNS", "1")  # one slot: the sweep's runs queue up
    spawned = inline_spawn(monkeypatch)
    project_id = _project_with_data(workspace, demo_import, model="efficientnet_lite0")
    at = _app("app_pages/train.py", project_id)
    assert not at.exception
    advice = next(m.value for m in at.markdown if "Suggested:" in m.value)
    # 500 training images in 10 classes, a head start far above chance: a shallow depth.
    assert "(50 per class)" in advice and "sorted right before any training" in advice
    at.button(key="use_advice").click().run()
    suggested = Store(workspace).project(project_id).settings["trainable_groups"]
    assert at.select_slider(key="trainable_groups").value == suggested
    assert 0 <= suggested <= 2 and not any(b.key == "use_advice" for b in at.button)

    at.button(key="sweep").click().run()
    assert not at.exception
    store = Store(workspace)
    runs = store.runs(project_id)
    depths = [r.config["trainable_groups"] for r in runs]
    assert len(runs) == 3 and 0 in depths and suggested in depths
    assert {r.config["epochs"] for r in runs} == {SWEEP_EPOCHS}
    assert len({r.config["sweep"] for r in runs}) == 1
    assert spawned == [runs[0].id]  # one at a time: the others wait in the queue
    assert at.button(key="sweep").disabled and at.button(key="start").disabled

    for run, acc in zip(runs, (0.84, 0.86, 0.70), strict=True):
        Path(run.run_dir).mkdir(parents=True, exist_ok=True)
        rows = [{"file": str(i)} for i in range(200)]
        (Path(run.run_dir) / "predictions.json").write_text(json.dumps({"rows": rows}))
        store.update_job(run.id, status="finished", result={"val_accuracy": acc, "seconds": 9})
    at = _app("app_pages/train.py", project_id)
    assert not at.exception
    text = _texts(at)
    assert "Best in this sweep:" in text and "(86%)" in text
    assert "Too few validation images to judge" in text  # 84% vs 86% on 200 images
    assert len(at.get("plotly_chart")) >= 2  # the layer groups and the sweep
    best = runs[1].config["trainable_groups"]
    at.button(key="use_sweep_best").click().run()
    assert Store(workspace).project(project_id).settings["trainable_groups"] == best


def test_model_page_raises_the_domain_alarm_on_images_unlike_photos(workspace, tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    src = tmp_path / "noise"
    for label in ("a", "b"):
        (src / label).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(src / label / f"{i}.png")
    manifest = import_folder(src, tmp_path / "data")
    project_id = _project_with_data(workspace, manifest.root)
    at = _app("app_pages/model.py", project_id)
    assert not at.exception
    text = _texts(at)
    assert "Your images are far from what the model saw before" in text
    assert "Too few validation images to judge" in text  # 24 images: one number says little


def test_evaluate_page_holds_the_run_against_scratch_and_frozen_features(workspace, trained):
    from tl_core.analysis import transfer
    from tl_core.data.dataset import DatasetManifest, split_dataset

    data_dir, run_dir, raw = trained
    project_id = _project_with_data(workspace, data_dir, model="efficientnet_lite0")
    store = Store(workspace)
    config = {**raw["config"], "trainable_groups": 2}  # as if two groups had learned
    run = _register_run(store, project_id, config, data_dir, run_dir)
    store.update_job(run.id, status="finished", result=raw["result"])
    scratch = store.create_job(
        project_id, {**config, "pretrained": False, "baseline_of": run.id}, data_dir
    )
    store.update_job(scratch.id, status="finished", result={"val_accuracy": 0.995})
    at = _app("app_pages/evaluate.py", project_id)  # the baseline has no predictions: not listed
    assert not at.exception
    text = _texts(at)
    assert "The pretrained start is not helping" in text
    assert "Training from scratch reached 100%" in text or "reached 99%" in text
    manifest = DatasetManifest.load(data_dir)
    frozen, _ = transfer.probe_accuracy(
        transfer.frozen_features(manifest, split_dataset(manifest), "efficientnet_lite0")
    )
    assert f"frozen pretrained features alone reaches {frozen:.0%}" in text


def test_train_page_advises_from_the_data_size_alone_before_a_download(workspace, demo_import):
    project_id = _project_with_data(workspace, demo_import, model="resnet50")
    at = _app("app_pages/train.py", project_id)
    assert not at.exception
    advice = next(m.value for m in at.markdown if "Suggested:" in m.value)
    assert "(50 per class)" in advice and "sorted right" not in advice


# ---------------------------------------------------------------------------- jobs of the queue


def test_importing_the_service_does_not_load_torch() -> None:
    import subprocess
    import sys

    code = "import sys, tl_core.service; print('torch' in sys.modules, 'streamlit' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["False", "False"]


def _occupy_the_slot(store: Store, project_id: str, data_dir: Path, **config) -> str:
    """A training run that holds the only slot (its worker: this live process)."""
    import os
    import time

    run = store.create_job(
        project_id, {"model": "efficientnet_lite0", **config}, data_dir, status="running"
    )
    store.update_job(run.id, pid=os.getpid(), heartbeat=time.time(), message="Training")
    return run.id


@pytest.mark.parametrize("wait", [None, 42.0, 300.0])
def test_a_waiting_features_job_shows_its_place_wait_and_stop(
    workspace, demo_import, monkeypatch, wait
) -> None:
    from tl_core.runs import jobs as job_queue

    monkeypatch.setenv("TL_STUDIO_MAX_RUNS", "1")
    if wait is not None:
        monkeypatch.setattr(job_queue, "estimated_wait", lambda s, i: wait, raising=False)
    else:
        monkeypatch.delattr(job_queue, "estimated_wait", raising=False)
    project_id = _project_with_data(workspace, demo_import)
    store = Store(workspace)
    _occupy_the_slot(store, project_id, demo_import)
    at = _app("app_pages/model.py", project_id)
    assert not at.exception
    (job,) = store.jobs(project_id, kind="features")
    assert job.status == "queued"
    info = " ".join(str(i.value) for i in at.info)
    assert "place 1 in the queue" in info
    if wait == 42.0:
        assert "about 42 s" in info
    elif wait == 300.0:
        assert "about 5 min" in info
    else:
        assert "about" not in info
    assert "Sorted right before any training" not in [m.label for m in at.metric]
    again = _app("app_pages/model.py", project_id)  # a refresh or a second tab: the same job
    assert [j.id for j in store.jobs(project_id, kind="features")] == [job.id]
    again.button(key=f"stop_job_{job.id}").click().run()
    assert store.job(job.id).status == "stopped"


@pytest.mark.parametrize(
    "error", ["The images could not be read; import them again.", "Out of memory; close others."]
)
def test_a_failed_features_job_shows_its_error_and_can_be_tried_again(
    workspace, demo_import, error
) -> None:
    from tl_core import service

    project_id = _project_with_data(workspace, demo_import)
    store = Store(workspace)
    key = service.features_key(str(demo_import), "efficientnet_lite0", 0.2, 0)
    failed = store.create_job(
        project_id, {"model": "efficientnet_lite0"}, demo_import, kind="features", key=key
    )
    store.update_job(failed.id, status="failed", error=error)
    at = _app("app_pages/model.py", project_id)
    assert not at.exception
    assert error in [e.value for e in at.error]
    assert len(store.jobs(project_id, kind="features")) == 1  # not started again by itself
    at.button(key=f"retry_job_{failed.id}").click().run()
    assert not at.exception
    newest = store.jobs(project_id, kind="features")[-1]
    assert newest.id != failed.id and newest.status == "finished"
    assert "Sorted right before any training" in [m.label for m in at.metric]


@pytest.mark.parametrize("epochs_done,total", [(20, 20), (3, 20), (0, 5)])
def test_sidebar_and_run_panel_say_the_same(workspace, demo_import, epochs_done, total) -> None:
    from tl_ui.session import run_state

    project_id = _project_with_data(workspace, demo_import)
    store = Store(workspace)
    run_id = _occupy_the_slot(store, project_id, demo_import, epochs=total)
    for epoch in range(1, epochs_done + 1):
        store.add_epoch(run_id, EpochRow(epoch, epoch * 10, 0.5, 0.8, 0.5, 0.8, float(epoch)))
    at = _app("app_pages/train.py", project_id)
    assert not at.exception
    state = run_state(store, store.job(run_id))
    assert f"epoch {min(epochs_done + 1, total)}/{total}" in state
    home = _app(project=project_id)  # AppTest keeps the sidebar of the first page only
    assert f"Training: {state}" in " ".join(m.value for m in home.sidebar.markdown)
    progress = [p.proto.text for p in at.get("progress")]
    assert any(t.startswith(state) for t in progress), progress


def test_evaluate_page_waits_for_its_model_check_then_shows_scores(
    workspace, trained, monkeypatch
) -> None:
    monkeypatch.setattr(supervisor, "_spawn", lambda store, run: None)  # no worker picks it up
    project_id, _run_id = _project_with_run(workspace, trained)
    store = Store(workspace)
    at = _app("app_pages/evaluate.py", project_id)
    assert not at.exception
    (check,) = store.jobs(project_id, kind="verify")
    assert "Validation accuracy" not in [m.label for m in at.metric]  # no score before it
    assert at.button(key=f"stop_job_{check.id}")
    run_job(store, store.job(check.id))
    at = _app("app_pages/evaluate.py", project_id)
    assert not at.exception
    assert "Validation accuracy" in [m.label for m in at.metric]
    assert [j.id for j in store.jobs(project_id, kind="verify")] == [check.id]  # reused


def test_evaluate_page_shows_a_failed_model_check(workspace, trained, monkeypatch) -> None:
    from tl_core import service

    monkeypatch.setattr(supervisor, "_spawn", lambda store, run: None)
    project_id, run_id = _project_with_run(workspace, trained)
    store = Store(workspace)
    service.submit_verify(store, store.job(run_id))
    (check,) = store.jobs(project_id, kind="verify")
    store.update_job(check.id, status="failed", error="The check could not run; try again.")
    at = _app("app_pages/evaluate.py", project_id)
    assert "The check could not run; try again." in [e.value for e in at.error]
    assert "Validation accuracy" not in [m.label for m in at.metric]


def test_export_page_builds_the_bundle_as_a_job_and_a_second_visit_finds_it(
    workspace, trained, monkeypatch
) -> None:
    monkeypatch.setattr(supervisor, "_spawn", lambda store, run: None)  # the worker: run_job below
    project_id, _run_id = _project_with_run(workspace, trained)
    store = Store(workspace)
    at = _app("app_pages/export.py", project_id)
    assert not at.exception
    assert not store.jobs(project_id, kind="export")  # nothing until asked
    at.button(key="build_bundle").click().run()
    assert not at.exception
    (job,) = store.jobs(project_id, kind="export")
    assert at.button(key=f"stop_job_{job.id}")  # building: progress and Stop
    job = run_job(store, store.job(job.id))
    assert job.status == "finished" and Path(job.result["bundle"]).is_file()
    assert Path(job.result["bundle"]).parent == Path(job.run_dir)
    again = _app("app_pages/export.py", project_id)  # another visit: the same bundle, at once
    assert not again.exception
    assert "Parity check passed" in _texts(again)
    assert any(b.label.startswith("Download") for b in again.get("download_button"))
    assert again.button(key="build_bundle").label == "Build it again"
    assert [j.id for j in store.jobs(project_id, kind="export")] == [job.id]
    table = again.dataframe[0].value
    assert list(table["format"])[:3] == [
        "timm / PyTorch (safetensors)",
        "ONNX (full precision)",
        "ONNX, 8-bit (small, fast)",
    ]
    assert "Web page (phone or computer, no server)" in list(table["format"])
    assert any(
        b.label.startswith("Download the web page alone") for b in again.get("download_button")
    )
    # A bundle built before the formats table: the page asks for a new build.
    older = {k: v for k, v in job.result.items() if k not in ("table", "web")}
    store.update_job(job.id, result=older)
    old = _app("app_pages/export.py", project_id)
    assert not old.exception and "build it again to get them" in _texts(old)


@pytest.mark.parametrize("count", [2, 5])
def test_many_pictures_are_predicted_in_one_job_and_the_same_pictures_reuse_it(
    workspace, trained, count
) -> None:
    from tl_core import service

    data_dir = trained[0]
    _project_id, run_id = _project_with_run(workspace, trained)
    store = Store(workspace)
    files = sorted(data_dir.rglob("*.png"))[:count]
    pictures = [(f"pic{i}.png", f.read_bytes()) for i, f in enumerate(files)]
    pictures.append(("broken.png", b"not a picture"))
    job = service.submit_predict(store, store.job(run_id), pictures, 1.0)
    assert job.status == "finished"
    rows = job.result["rows"]
    assert [r["name"] for r in rows] == [n for n, _ in pictures]
    assert all(r["probs"] is not None for r in rows[:-1]) and rows[-1]["error"]
    assert all(isinstance(r["unfamiliarity"], float) for r in rows[:-1])  # the run has the check
    assert rows[-1]["unfamiliarity"] is None
    assert service.submit_predict(store, store.job(run_id), pictures, 1.0).id == job.id


@pytest.mark.parametrize("which", ["demo", "shapes"])
def test_features_task_returns_what_the_pages_rebuild(demo_import, tmp_path, which) -> None:
    from helpers import make_shapes
    from jobrunner import FakeContext

    from tl_core.runs import tasks
    from tl_core.runs.kinds import FeaturesParams, JobSpec
    from tl_ui.headstart import readings

    if which == "demo":
        data, classes, n_train = demo_import, 10, 500
    else:  # no validation folder, few images: the head start is cross-validated
        data = import_folder(make_shapes(tmp_path / "src", per_class=12), tmp_path / "d").root
        classes, n_train = 3, 30
    params = FeaturesParams("efficientnet_lite0", SplitSettings(0.2, 0))
    spec = JobSpec("j", "features", "p", params, str(data), str(tmp_path))
    ctx = FakeContext()
    result = tasks.features(spec, ctx)
    assert json.loads(json.dumps(result)) == result  # JSON as it is stored
    found = readings(result)
    assert found.head_start.chance == pytest.approx(1 / classes) and found.n_train == n_train
    assert found.head_start.cross_validated == (which == "shapes")
    assert 1 / classes < found.probe_accuracy <= 1.0 and found.curve.reading()
    assert ctx.steps and ctx.steps[-1][2]


@pytest.mark.parametrize("kind", ["features", "recommend"])
def test_a_stopped_task_returns_early(demo_import, tmp_path, kind) -> None:
    import shutil as sh

    from jobrunner import FakeContext

    from tl_core.runs.kinds import JobSpec, entry
    from tl_core.runs.tasks import STOPPED

    data = tmp_path / "data"  # a copy: no cached features, so the pass must start
    sh.copytree(demo_import, data)
    for cached in data.rglob("*.npz"):
        cached.unlink()
    raw = {"model": "efficientnet_lite0", "keys": ["efficientnet_lite0"]}
    spec = JobSpec("j", kind, "p", entry(kind).read(raw), str(data), str(tmp_path))
    assert entry(kind).load_task()(spec, FakeContext(stop=True)) == STOPPED
