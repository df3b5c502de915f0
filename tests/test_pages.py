"""Page tests with Streamlit's AppTest: each wizard step renders, guards and writes the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tl_core import jobs
from tl_core.data import import_folder
from tl_core.store import Store

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo" / "fashion_mnist"
TIMEOUT = 120


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    return tmp_path / "ws"


@pytest.fixture(scope="module")
def demo_import(tmp_path_factory) -> Path:
    """The demo set imported once; tests copy the project row pointing at it."""
    dest = tmp_path_factory.mktemp("demo") / "data-1"
    import_folder(DEMO, dest)
    return dest


def _project_with_data(workspace: Path, data_dir: Path, **settings) -> str:
    store = Store(workspace)
    project = store.create_project()
    store.set_data_dir(project.id, data_dir)
    if settings:
        store.update_settings(project.id, **settings)
    return project.id


def _app(page: str | None = None, project: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if project:
        at.query_params["project"] = project
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    return at


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
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "700" and metrics["Classes"] == "10"
    assert "tshirt_top" in _texts(at)


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
    at = _app("pages/model.py", project_id)
    assert not at.exception
    radio = at.radio(key="model_choice")
    assert radio.value == "efficientnet_lite0"
    labels = radio.options  # AppTest reports the formatted labels
    assert any("ready offline" in label for label in labels)
    assert any("downloads on first use" in label for label in labels)
    assert {m.label: m.value for m in at.metric}["Input size"] == "224×224 px"


def test_choosing_a_hub_model_offline_gives_a_clear_message(workspace, demo_import) -> None:
    project_id = _project_with_data(workspace, demo_import)
    at = _app("pages/model.py", project_id)
    radio = at.radio(key="model_choice")
    radio.set_value(next(o for o in radio.options if o.startswith("ResNet-50"))).run()
    assert "one-time download" in _texts(at)
    at.button(key="download").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and "ready offline" in errors[0]
    assert Store(workspace).project(project_id).settings["model"] == "resnet50"


def test_pages_guard_against_missing_data(workspace) -> None:
    for page in ("pages/model.py", "pages/train.py", "pages/results.py"):
        at = _app(page)
        assert not at.exception
        assert at.info, page


def test_train_page_shows_the_freeze_plan_and_queues_a_run(workspace, demo_import, monkeypatch):
    spawned: list[str] = []
    monkeypatch.setattr(jobs, "_spawn", lambda store, run: spawned.append(run.id))
    project_id = _project_with_data(workspace, demo_import, model="efficientnet_lite0")
    at = _app("pages/train.py", project_id)
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


def test_results_page_shows_accuracy_and_confusion_matrix(workspace, demo_import) -> None:
    project_id = _project_with_data(workspace, demo_import, model="efficientnet_lite0")
    store = Store(workspace)
    run = store.create_run(
        project_id, {"model": "efficientnet_lite0", "epochs": 1}, demo_import, status="finished"
    )
    classes = ["a", "b"]
    rows = [
        {"file": "x.png", "label": 0, "pred": 0, "confidence": 0.9, "probs": [0.9, 0.1]},
        {"file": "y.png", "label": 1, "pred": 0, "confidence": 0.6, "probs": [0.6, 0.4]},
    ]
    (Path(run.run_dir) / "predictions.json").write_text(
        json.dumps({"classes": classes, "rows": rows})
    )
    store.update_run(
        run.id,
        result={
            "val_accuracy": 0.5,
            "best_epoch": 1,
            "epochs_done": 1,
            "seconds": 3.0,
            "trainable_params": 10,
        },
    )
    at = _app("pages/results.py", project_id)
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Validation accuracy"] == "50.0%"
    assert "1 of 2 validation images" in _texts(at)


def test_an_interrupted_run_offers_resume(workspace, demo_import, monkeypatch) -> None:
    spawned: list[str] = []
    monkeypatch.setattr(jobs, "_spawn", lambda store, run: spawned.append(run.id))
    project_id = _project_with_data(workspace, demo_import, model="efficientnet_lite0")
    store = Store(workspace)
    run = store.create_run(
        project_id, {"model": "efficientnet_lite0", "epochs": 3}, demo_import, status="running"
    )
    (Path(run.run_dir) / "last.pt").write_bytes(b"checkpoint")
    store.update_run(run.id, pid=None, heartbeat=1.0)  # its worker vanished long ago
    jobs.recover(store)  # what the server does when it starts
    at = _app("pages/train.py", project_id)
    assert not at.exception
    assert "Resume continues from the last finished epoch" in _texts(at)
    at.button(key=f"resume_{run.id}").click().run()
    assert store.run(run.id).status == "starting" and store.run(run.id).resume
    assert spawned == [run.id]
