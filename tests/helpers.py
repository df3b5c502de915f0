"""Data the tests make for themselves."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parent.parent / "studio.py"


def make_shapes(root: Path, per_class: int = 30, size: int = 48, seed: int = 0) -> Path:
    """Three easy classes: bright squares, dark discs, horizontal stripes, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for label in ("square", "disc", "stripes"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = rng.normal(110, 25, (size, size, 3))
            if label == "square":
                img[10:38, 10:38] += 120
            elif label == "disc":
                img[(yy - 24) ** 2 + (xx - 24) ** 2 < 180] -= 90
            else:
                img[(yy // 6) % 2 == 0] += 100
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / label / f"{i}.png")
    return root


def app_test(page: str | None = None, project: str | None = None, timeout: float = 120) -> AppTest:
    """The app after its first run (on ``project`` when given), switched to ``page``."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    if project:
        at.query_params["project"] = project
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    return at


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by its content hash (to show a folder was only read)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def wait_until(predicate: Callable[[], object], timeout: float = 180, interval: float = 0.1):
    """``predicate()``'s first truthy value, asked every ``interval`` s; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out")
