"""Fixtures shared by several test files (keep this small)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "assets" / "demo" / "fashion_mnist"


@pytest.fixture(autouse=True)
def _no_queue_left_behind(monkeypatch):
    """Pages opened by AppTest leave the queue to the test (tests/jobrunner.py runs jobs in
    the test process); a test that serves it starts no worker ahead of a job, and every
    supervisor a test started is stopped after it."""
    monkeypatch.setenv("TL_STUDIO_SERVE", "0")
    monkeypatch.setenv("TL_STUDIO_PREWARM", "0")
    # The Data page's check of the labels after an import waits for its button (its tests
    # turn it on): a page test would otherwise run the whole survey of its data inline.
    monkeypatch.setenv("TL_STUDIO_LABEL_CHECK", "off")
    from jobrunner import run_job

    from tl_core.runs import supervisor

    real_spawn = supervisor._spawn

    def spawn(store, run) -> None:  # a page's job other than training: done at once, here
        if run.kind == "train":
            real_spawn(store, run)
        else:
            run_job(store, run)

    monkeypatch.setattr(supervisor, "_spawn", spawn)
    yield
    supervisor.shutdown_all()


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """An empty workspace for the app (TL_STUDIO_HOME), offline, with Streamlit's caches clear."""
    import streamlit as st

    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    return tmp_path / "ws"


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The bundled demo set: ``train/<class>/`` and ``val/<class>/`` of 28x28 PNGs."""
    return DEMO_DIR
