"""The Export page in a real browser: every format built, the formats table, the web page's
download, and its address and QR code when the app is reached from another machine; that
address opens the page, which answers a picture in the browser."""

from __future__ import annotations

import io
import json
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from browserflags import CHROMIUM, FLAGS, ROOT, serve_app
from helpers import make_shapes
from playwright.sync_api import expect, sync_playwright

from tl_core import cli

pytestmark = pytest.mark.browser
SHOTS = ROOT / "test-artifacts"
HOST = "studio.test"  # the name other machines would use; the browser maps it to 127.0.0.1


def _trained_project(tmp: Path) -> str:
    """A workspace with one EfficientNet-Lite0 run on shapes; the project's id."""
    src = make_shapes(tmp / "src", per_class=10, size=48)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        args = ["--workspace", str(tmp / "ws"), "train", "--quiet", "--data", str(src)]
        args += ["--model", "efficientnet_lite0", "--epochs", "1", "--out", str(tmp / "run")]
        code = cli.main(args)
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue().strip().splitlines()[-1])["project_id"]


def test_the_export_page_offers_every_format_and_shares_the_web_page(tmp_path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: install it with `apt-get install -y chromium`.")
    SHOTS.mkdir(exist_ok=True)
    project = _trained_project(tmp_path)
    picture = next((tmp_path / "src" / "disc").iterdir())
    with serve_app(tmp_path / "ws", tmp_path / "streamlit.log") as url, sync_playwright() as pw:
        port = url.rsplit(":", 1)[1]
        rules = f"--host-resolver-rules=MAP {HOST} 127.0.0.1"
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*FLAGS, rules])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(f"http://{HOST}:{port}/export?project={project}")
            page.get_by_role("button", name="Build the bundle").click()
            try:
                expect(page.get_by_text("Parity check passed")).to_be_visible(timeout=400_000)
            finally:
                page.screenshot(path=SHOTS / "export-formats.png", full_page=True)
            table = page.get_by_test_id("stDataFrame")
            expect(table).to_be_visible()
            link = page.get_by_role("link", name=f"http://{HOST}:{port}/model/")
            expect(link).to_be_visible(timeout=30_000)
            qr = page.get_by_test_id("stImage").filter(has_text="Scan to open the page")
            expect(qr.locator("img")).to_be_visible()
            expect(page.get_by_text("not open the camera")).to_be_visible()  # http, not https
            qr.scroll_into_view_if_needed()
            page.screenshot(path=SHOTS / "export-share.png")
            page.screenshot(path=SHOTS / "export-formats.png", full_page=True)
            with page.expect_download() as download:
                page.get_by_role("button", name="Download the web page alone").click()
            with zipfile.ZipFile(download.value.path()) as zf:
                names = set(zf.namelist())
            assert {"web/index.html", "web/model.onnx", "web/model.json"} <= names
            assert any(n.startswith("web/ort/") and n.endswith(".wasm") for n in names)

            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.goto(link.get_attribute("href") or "")
            expect(phone.get_by_role("heading", name="Sorts pictures into")).to_be_visible(
                timeout=60_000
            )
            expect(phone.get_by_role("status")).to_contain_text("Ready", timeout=60_000)
            phone.set_input_files("#files", picture)
            answer = phone.locator("[data-top]").first
            expect(answer).to_be_visible(timeout=60_000)
            assert answer.get_attribute("data-top") in ("disc", "square", "stripes")
            phone.screenshot(path=SHOTS / "export-shared-page.png", full_page=True)
        finally:
            browser.close()
