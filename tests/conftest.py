"""Fixtures shared by several test files (keep this small)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "assets" / "demo" / "fashion_mnist"


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
