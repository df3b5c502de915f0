"""Fixtures shared by several test files (keep this small)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "assets" / "demo" / "fashion_mnist"


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The bundled demo set: ``train/<class>/`` and ``val/<class>/`` of 28x28 PNGs."""
    return DEMO_DIR
