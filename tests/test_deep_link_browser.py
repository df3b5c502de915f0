"""A fresh server whose first visitor opens a page by its own address (a bookmark, a refresh
after a restart) still runs every page through the studio's navigation (tl_ui.server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from browserflags import CHROMIUM, FLAGS, serve_app
from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.browser

STEPS = [
    "1. Your images",
    "2. Label",
    "3. Choose a model",
    "4. Train",
    "5. Evaluate",
    "6. Try it",
    "7. Export",
]


@pytest.mark.parametrize("first", ["train", "try_it"])
def test_a_first_visit_by_a_pages_address_gets_the_studios_navigation(tmp_path, first) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: install it with `apt-get install -y chromium`.")
    with serve_app(tmp_path / "ws", tmp_path / "streamlit.log") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            for path in (first, "export", ""):  # the first visit, then other sessions
                page = browser.new_page()
                page.goto(f"{url}/{path}")
                nav = page.get_by_test_id("stSidebarNav")
                for step in STEPS:  # the studio's steps, not bare file names
                    expect(nav.get_by_text(step, exact=True)).to_be_visible(timeout=90_000)
                expect(nav.get_by_text("try it", exact=True)).to_have_count(0)
                page.close()
        finally:
            browser.close()
