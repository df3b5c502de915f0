"""The exported web page in real Chromium, served by a plain static server: its answers equal
the app's for chosen pictures and the live camera, it fits a phone's screen, a file that is
not a picture gets a plain sentence, and nothing is fetched from anywhere else.

Screenshots land in test-artifacts/web/ (and /work/shots/ when that folder exists).
"""

from __future__ import annotations

import base64
import io
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browserflags import CHROMIUM, FLAGS, ROOT, camera_browser
from helpers import train_shapes
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from tl_core.data.standalone_predict import open_image
from tl_core.export.formats import onnx_model, web_page
from tl_core.export.formats.base import ModelToExport
from tl_core.models.device import ComputePlan
from tl_core.training.inference import load_trained
from tl_ui.live_route import verdict

SHOTS = ROOT / "test-artifacts" / "web"
COPIES = Path("/work/shots")
FP32 = ComputePlan("cpu", None, True, 2)
TEMPERATURE = 1.3
# The page runs model.onnx, which resizes inside itself in float32 where the app resizes with
# Pillow: pixels may differ by one level, so probabilities may differ a little (see
# onnx_model.ONNX_TOLERANCE); the tiny model's differ far less than this.
CLOSE = 1e-4
VERDICTS = {"sure", "not sure", "unfamiliar"}


class _Handler(SimpleHTTPRequestHandler):
    """A static file server, as any web host: WebAssembly and ES modules with their types."""

    extensions_map = {  # noqa: RUF012 - the base class's attribute, extended
        **SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".mjs": "text/javascript",
        ".js": "text/javascript",
    }

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """``folder`` on a free local port (static files only); its URL while the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / name, full_page=True)
    if COPIES.is_dir():
        shutil.copy(SHOTS / name, COPIES / f"web_{name}")


def _middle_gap(values: list[float], low: int, high: int) -> float:
    """The midpoint of the widest gap between sorted ``values`` at ranks low..high: a
    threshold that puts ranks >= the gap's upper end above it, far from every value."""
    v = sorted(values)
    k = max(range(low, high), key=lambda i: v[i + 1] - v[i])
    return (v[k] + v[k + 1]) / 2


def _pictures(folder: Path, val: list[Path]) -> list[Path]:
    """The validation pictures (named after their class), a large one (shrunk to 640 a side
    first, as the app does) and a JPEG turned by its EXIF orientation."""
    folder.mkdir()
    val = [shutil.copy(path, folder / f"{path.parent.name}_{path.name}") for path in val]
    big = folder / "big_square.png"
    Image.open(val[0]).resize((1000, 760), Image.Resampling.NEAREST).save(big)
    turned = folder / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    Image.open(val[1]).resize((96, 64)).save(turned, quality=95, exif=exif)
    return [*map(Path, val), big, turned]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Any]:
    """A tiny model trained on shapes, its bundle's web/ written, and the app's answers."""
    tmp = tmp_path_factory.mktemp("web")
    shapes = train_shapes(tmp)
    trained = load_trained(shapes.run_dir, plan=FP32)
    assert trained.familiarity is not None  # the run has the unfamiliar check
    val = shapes.val
    files = _pictures(tmp / "pictures", val)
    guessed = trained.guess(files, temperature=TEMPERATURE)
    assert guessed.unfamiliarity is not None
    # Thresholds in the widest gaps, so that every kind of answer shows and none is a tie.
    n = len(files)
    far = guessed.unfamiliarity.tolist()
    unfamiliar_at = _middle_gap(far, n // 2, n - 1)
    familiar = [k for k in range(n) if far[k] <= unfamiliar_at]
    tops = [float(guessed.probs[k].max()) for k in familiar]
    not_sure_below = _middle_gap(tops, 0, len(tops) - 1)
    model = ModelToExport(
        trained.net.eval(),
        trained.data_config,
        trained.classes,
        "test model",
        replace(trained.familiarity, threshold=unfamiliar_at),
        temperature=TEMPERATURE,
        not_sure_below=not_sure_below,
    )
    bundle = tmp / "bundle"
    bundle.mkdir()
    onnx_model.PART.write(bundle, model)
    web_page.PART.write(bundle, model)
    assert web_page.offline_check(bundle, model) == ""
    app = {}
    for k, path in enumerate(files):
        said = verdict(guessed.probs[k], trained.classes, not_sure_below, far[k] > unfamiliar_at)
        kind = "unfamiliar" if said.unfamiliar else "sure" if said.sure else "not sure"
        app[path.name] = {"probs": guessed.probs[k], "verdict": kind, "text": said.text}
    assert {a["verdict"] for a in app.values()} == VERDICTS
    return {"bundle": bundle, "files": files, "app": app, "trained": trained, "model": model}


@pytest.fixture(scope="module")
def site_root(exported, tmp_path_factory) -> Path:
    """A static site: the bundle's web/ in a sub-folder."""
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(web_page.web_folder(exported["bundle"]), root / "sorter")
    return root


@pytest.fixture(scope="module")
def site(site_root) -> Iterator[str]:
    with serve_folder(site_root) as url:
        yield url


@contextmanager
def browser_page(width: int = 1100, height: int = 1000, *flags: str) -> Iterator[Page]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*FLAGS, *flags])
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def _open(page: Page, url: str) -> list[str]:
    """Open the page and wait for its model; the URLs it asks for, kept growing."""
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.set_default_timeout(120_000)
    page.goto(f"{url}/sorter/")
    page.wait_for_function("window.tlWebPage && window.tlWebPage.ready")
    return asked


def _answers(page: Page, count: int) -> dict[str, dict[str, Any]]:
    page.wait_for_function(f"document.querySelectorAll('li.result[data-done]').length >= {count}")
    return page.evaluate(
        """() => Object.fromEntries(Array.from(document.querySelectorAll('li.result'), (e) =>
            [e.dataset.file, {verdict: e.dataset.verdict, top: e.dataset.top || null,
             probs: e.dataset.probs ? JSON.parse(e.dataset.probs) : null,
             text: e.querySelector('.answer').textContent}]))"""
    )


def test_chosen_pictures_get_the_apps_answers(exported, site) -> None:
    app, classes = exported["app"], exported["trained"].classes
    with browser_page() as page:
        asked = _open(page, site)
        expect(page.locator("h1")).to_have_text("Sorts pictures into: " + ", ".join(classes))
        page.set_input_files("#files", [str(p) for p in exported["files"]])
        answers = _answers(page, len(exported["files"]))
        _shot(page, "answers.png")
    assert set(answers) == set(app)
    for name, want in app.items():
        got = answers[name]
        assert got["verdict"] == want["verdict"], name
        assert got["text"] == want["text"], name
        assert got["top"] == classes[int(np.argmax(want["probs"]))], name
        assert np.abs(np.array(got["probs"]) - want["probs"]).max() < CLOSE, name
    elsewhere = [u for u in asked if not u.startswith((site, f"blob:{site}", "data:"))]
    assert not elsewhere  # the page, its runtime and its model all come from its own folder


def test_pictures_are_shrunk_as_the_app_does(site, site_root) -> None:
    """The page's own resizing (Pillow's bilinear thumbnail, in JavaScript) gives the app's
    pixels exactly, for a picture shrunk once and one first reduced by whole blocks."""
    rng = np.random.default_rng(1)
    folder = site_root / "large"
    folder.mkdir(exist_ok=True)
    pictures = {}
    for name, (w, h) in {"wide.png": (1237, 701), "huge.png": (3860, 1200)}.items():
        smooth = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 50, h)[:, None, None]
        noise = rng.integers(0, 6, (h, w, 3))
        Image.fromarray((smooth + noise).clip(0, 255).astype(np.uint8)).save(folder / name)
        pictures[name] = np.asarray(open_image(folder / name))
    with browser_page() as page:
        _open(page, site)
        for name, want in pictures.items():
            got = page.evaluate(
                "async (u) => window.tlWebPage.prepare(await (await fetch(u)).blob())",
                f"{site}/large/{name}",
            )
            rgb = np.frombuffer(base64.b64decode(got["rgb"]), np.uint8)
            assert (got["height"], got["width"], 3) == want.shape, name
            assert np.array_equal(rgb.reshape(want.shape), want), name


def test_a_file_that_is_not_a_picture_gets_a_plain_sentence(exported, site, tmp_path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n these are notes, not a picture")
    with browser_page() as page:
        _open(page, site)
        page.set_input_files("#files", [str(bad), str(exported["files"][0])])
        answers = _answers(page, 2)
        _shot(page, "not_a_picture.png")
    assert answers["notes.png"]["verdict"] == "error"
    text = answers["notes.png"]["text"]
    assert text == "This browser cannot open this file as a picture. Try a JPEG or PNG photo."
    assert answers[exported["files"][0].name]["verdict"] in VERDICTS  # the next one still works


def test_the_page_fits_a_phone(exported, site) -> None:
    with browser_page(390, 844) as page:
        _open(page, site)
        page.set_input_files("#files", [str(p) for p in exported["files"][:3]])
        _answers(page, 3)
        _shot(page, "phone.png")
        wide = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        first = page.locator("li.result .answer").first
        expect(first).to_be_visible()
        box = first.bounding_box()
    assert wide <= 0, f"the page scrolls sideways by {wide} px on a phone"
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390


def _write_y4m(path: Path, picture: Path, side: int = 96) -> Path:
    """A still camera video of ``picture`` in the raw YUV 4:2:0 format Chromium reads."""
    rgb = np.asarray(Image.open(picture).convert("RGB").resize((side, side))).astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = (b - y) * 0.564 + 128
    v = (r - y) * 0.713 + 128
    sub = lambda c: c.reshape(side // 2, 2, side // 2, 2).mean(axis=(1, 3))  # noqa: E731
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{side} H{side} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(10):
            f.write(b"FRAME\n")
            for plane in (y, sub(u), sub(v)):
                f.write(plane.clip(0, 255).round().astype(np.uint8).tobytes())
    return path


def test_the_live_camera_answers_as_the_app(exported, site, tmp_path) -> None:
    video = _write_y4m(tmp_path / "camera.y4m", exported["files"][0])
    with camera_browser(video, site) as page:
        _open(page, site)
        page.get_by_role("button", name="Use the camera").click()
        page.wait_for_function("Number(document.getElementById('live-answer').dataset.frames) >= 3")
        _shot(page, "camera.png")
        page.get_by_role("button", name="Stop the camera").click()
        expect(page.locator("#live")).to_be_hidden()
        live = page.evaluate(
            """() => { const box = document.getElementById('live-answer');
                const c = document.getElementById('live-frame');
                return {top: box.dataset.top, probs: JSON.parse(box.dataset.probs),
                        frame: c.toDataURL('image/png')}; }"""
        )
    frame = Image.open(io.BytesIO(base64.b64decode(live["frame"].split(",", 1)[1])))
    frame.convert("RGB").save(tmp_path / "frame.png")
    app = exported["trained"].guess([tmp_path / "frame.png"], temperature=TEMPERATURE)
    assert live["top"] == exported["trained"].classes[int(np.argmax(app.probs[0]))]
    assert np.abs(np.array(live["probs"]) - app.probs[0]).max() < CLOSE


def test_the_camera_needs_a_secure_page(site) -> None:
    """Opened over plain http from another computer's name, the page says why the camera
    cannot start."""
    port = site.rsplit(":", 1)[1]
    with browser_page(1100, 1000, "--host-resolver-rules=MAP sorter.test 127.0.0.1") as page:
        _open(page, f"http://sorter.test:{port}")
        page.get_by_role("button", name="Use the camera").click()
        expect(page.locator("#camera-message")).to_have_text(
            "The camera needs the page to be opened over https (or from this computer)."
        )
