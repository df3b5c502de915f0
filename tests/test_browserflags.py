"""The browser walks start Chromium one way: the flags live in tests/browserflags.py only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import browserflags
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_walk_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "walk, uses",
    [
        ("bench/classroom.py", "FLAGS"),
        ("tests/test_browser.py", "FLAGS"),
        ("tests/test_deep_link_browser.py", "FLAGS"),
        ("tests/test_camera_browser.py", "camera_browser"),  # the flags and the fake camera
        ("bench/live_rate.py", "camera_browser"),
    ],
)
def test_each_walk_uses_the_one_list_of_flags(walk, uses) -> None:
    module = _load(ROOT / walk)
    assert getattr(module, uses) is getattr(browserflags, uses)
    assert module.CHROMIUM == browserflags.CHROMIUM


def test_no_other_file_spells_the_flags_out() -> None:
    flag = '"--disable-' + 'component-update"'  # split: this file does not spell it out
    spelled = [
        str(p.relative_to(ROOT))
        for folder in ("tests", "bench", "tl_core", "tl_ui", "app_pages")
        for p in (ROOT / folder).rglob("*.py")
        if flag in p.read_text(encoding="utf-8")
    ]
    assert spelled == ["tests/browserflags.py"]
