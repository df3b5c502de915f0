"""The picture map in a real browser (Playwright + Chromium): hover shows a thumbnail from the
studio's route, and a box, a lasso, a click on the legend and the clear button each reach
Python as the right selection. The test knows every dot's position, so it counts the dots
inside the box and the lasso itself.

A page of its own (written to tmp_path) mounts the map, served as an ``st.App`` with the
thumbnail route (as ``app.py`` serves the studio). Its screenshots land in /work/shots (or
``TL_STUDIO_CAMERA_SHOTS``): picture_map.png (2,000 dots) and picture_map_20k.png.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browserflags import CHROMIUM, FLAGS, serve_app
from PIL import Image
from playwright.sync_api import Page, expect

from tl_ui.picture_map import QUANT, quantise

pytestmark = pytest.mark.browser
expect.set_options(timeout=60_000)

COPIES = Path(os.environ.get("TL_STUDIO_CAMERA_SHOTS", "/work/shots"))
NAMES = ["sneaker", "shirt", "bag"]
CENTRES = [(-2.0, 1.0), (2.0, 1.5), (0.0, -2.0)]
N = 2_000
BIG = 20_000
# milliseconds one full redraw of 20,000 dots may take in headless Chromium without a GPU
# (about 10 on an idle 2-core machine; more while other work shares it)
MAX_DRAW_MS = float(os.environ.get("TL_STUDIO_MAX_MAP_DRAW_MS", "120"))

PAGE = """
import json
from pathlib import Path

import numpy as np
import streamlit as st

from tl_ui.picture_map import ThumbSource, clear_selection, picture_map

st.set_page_config(layout="wide")
ROOT = Path({root!r})
n = int(st.query_params.get("n", {n}))
spec = json.loads((ROOT / f"spec_{{n}}.json").read_text())
xy = np.array(spec["xy"])
groups = spec["groups"]
texts = [f"picture {{i}}: pics/{{i % {n}}}.png" for i in range(n)]
files = [f"pics/{{i % {n}}}.png" for i in range(n)]
st.title("Picture map")
sel = picture_map(
    xy, groups, {names!r}, texts, ThumbSource(ROOT, files), key="map", height=560
)
st.markdown(f"Python sees **{{0 if sel is None else len(sel.indices)}}** selected")
if sel is not None:
    st.caption(f"selection {{sel.id}}: {{sel.indices[:5]}}")
    if st.button("Done with these"):
        clear_selection("map")
        st.rerun()
"""

APP = """
import streamlit as st

from tl_ui import thumb_route

app = st.App("page.py", routes=thumb_route.routes())
"""


def _points(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Three clusters of labelled points and a scatter of unlabelled ones."""
    rng = np.random.default_rng(seed)
    groups = rng.choice([-1, 0, 1, 2], size=n, p=[0.3, 0.25, 0.25, 0.2])
    xy = rng.normal(size=(n, 2)) * 0.7
    for g, centre in enumerate(CENTRES):
        xy[groups == g] += centre
    xy[groups == -1] = rng.uniform(-3.5, 3.5, size=((groups == -1).sum(), 2))
    return xy, groups.tolist()


@pytest.fixture(scope="module")
def map_url(tmp_path_factory) -> Iterator[tuple[str, dict[int, tuple[np.ndarray, list[int]]]]]:
    root = tmp_path_factory.mktemp("map")
    (root / "pics").mkdir()
    rng = np.random.default_rng(3)
    for i in range(N):
        colour = tuple(int(c) for c in rng.integers(30, 230, 3))
        Image.new("RGB", (48, 40), colour).save(root / "pics" / f"{i}.png")
    data = {n: _points(n, seed=n) for n in (N, BIG)}
    for n, (xy, groups) in data.items():
        (root / f"spec_{n}.json").write_text(json.dumps({"xy": xy.tolist(), "groups": groups}))
    (root / "page.py").write_text(PAGE.format(root=str(root), n=N, names=NAMES))
    (root / "map_app.py").write_text(APP)
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    with serve_app(tmp_path_factory.mktemp("ws"), log, script=str(root / "map_app.py")) as url:
        yield url, data


@pytest.fixture
def page() -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: install it with `apt-get install -y chromium`.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 950})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            yield page
            assert not errors, errors  # the map's script ran without an error
        finally:
            browser.close()


class View:
    """Where the map draws the unit square, as the page says (data-view), in page pixels."""

    def __init__(self, page: Page) -> None:
        canvas = page.get_by_test_id("tlmap-canvas")
        box = page.get_by_test_id("tlmap")
        ox, oy, scale = (float(v) for v in (box.get_attribute("data-view") or "").split(","))
        rect = canvas.evaluate(
            "c => { const r = c.getBoundingClientRect(); return [r.left, r.top]; }"
        )
        self.left, self.top = rect
        self.ox, self.oy, self.scale = ox, oy, scale

    def data(self, cx: float, cy: float) -> tuple[float, float]:
        """The unit square's point under page pixel (cx, cy), as the map computes it."""
        px, py = cx - self.left, cy - self.top
        return (px - self.ox) / self.scale, (self.oy - py) / self.scale

    def page_xy(self, x: float, y: float) -> tuple[int, int]:
        """The whole page pixel nearest to the unit square's point (x, y)."""
        return (
            round(self.left + self.ox + x * self.scale),
            round(self.top + self.oy - y * self.scale),
        )


def _unit(xy: np.ndarray) -> np.ndarray:
    """The positions as the browser holds them (16-bit, then 32-bit floats)."""
    return (quantise(xy) / QUANT).astype(np.float32).astype(np.float64)


def _inside(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd rule, as the map's lasso counts (a ray to the right of each point)."""
    inside = np.zeros(len(pts), bool)
    x, y = pts[:, 0], pts[:, 1]
    for (xi, yi), (xj, yj) in zip(poly, np.roll(poly, 1, axis=0), strict=True):
        crosses = (yi > y) != (yj > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = (xj - xi) * (y - yi) / (yj - yi) + xi
        inside ^= crosses & (x < at)
    return inside


def _open(page: Page, url: str, n: int) -> View:
    page.set_default_timeout(60_000)
    page.goto(url)
    box = page.get_by_test_id("tlmap")
    expect(box).to_have_attribute("data-n", str(n))
    expect(box).to_have_attribute("data-drawn", re.compile(r"^[1-9]"))
    expect(page.get_by_text("Python sees 0 selected")).to_be_visible()
    seen = None  # the page's layout settled: the same view twice in a row
    while seen != (seen := box.get_attribute("data-view")):
        time.sleep(0.3)
    return View(page)


def _python_sees(page: Page, count: int) -> None:
    expect(page.get_by_text(f"Python sees {count} selected")).to_be_visible()
    expect(page.get_by_test_id("tlmap-status")).to_have_attribute("data-count", str(count))


def _hover_loads_a_thumbnail(page: Page, view: View, unit: np.ndarray) -> int:
    """Hover a dot with no other near it: the tooltip shows its text and its thumbnail."""
    d = np.hypot(*(unit[:, None, :] - unit[None, :, :]).transpose(2, 0, 1)) * view.scale
    np.fill_diagonal(d, np.inf)
    lonely = int(np.argmax(d.min(axis=1)))
    page.mouse.move(*view.page_xy(*unit[lonely]))
    box = page.get_by_test_id("tlmap")
    expect(box).to_have_attribute("data-hover", str(lonely))
    tip = page.get_by_test_id("tlmap-tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text(f"picture {lonely}: pics/{lonely}.png")
    img = tip.locator("img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [48, 40]  # not enlarged
    assert "/api/thumb/" in (img.get_attribute("src") or "")
    return lonely


def _drag(page: Page, path: list[tuple[int, int]]) -> None:
    page.mouse.move(*path[0])
    page.mouse.down()
    for point in path[1:]:
        page.mouse.move(*point)
    page.mouse.up()


def test_hover_box_lasso_legend_and_clear_reach_python(map_url, page: Page) -> None:
    url, data = map_url
    xy, groups = data[N]
    unit = _unit(xy)
    view = _open(page, url, N)
    _hover_loads_a_thumbnail(page, view, unit)

    # a box over part of the first cluster
    a = view.page_xy(0.12, 0.75)
    b = view.page_xy(0.42, 0.45)
    _drag(page, [a, (a[0] + 20, a[1] + 15), b])
    (x0, y1), (x1, y0) = view.data(*a), view.data(*b)
    in_box = (unit[:, 0] >= x0) & (unit[:, 0] <= x1) & (unit[:, 1] >= y0) & (unit[:, 1] <= y1)
    assert 50 < in_box.sum() < N / 2
    _python_sees(page, int(in_box.sum()))

    # a lasso around the third cluster: 40 whole pixels on an ellipse, each one move
    page.get_by_test_id("tlmap-lasso").click()
    cx, cy = view.page_xy(0.5, 0.25)
    ring = [
        (round(cx + 0.22 * view.scale * np.cos(t)), round(cy + 0.12 * view.scale * np.sin(t)))
        for t in np.linspace(0, 2 * np.pi, 40, endpoint=False)
    ]
    _drag(page, ring)
    poly = np.array([view.data(*p) for p in [*ring, ring[-1]]])
    in_lasso = _inside(poly, unit)
    assert 50 < in_lasso.sum() < N / 2 and in_lasso.sum() != in_box.sum()
    _python_sees(page, int(in_lasso.sum()))
    selected_ids = page.get_by_text(re.compile(r"^selection ")).inner_text()

    # a hover over the selection, for the picture
    _hover_loads_a_thumbnail(page, view, unit)
    COPIES.mkdir(parents=True, exist_ok=True)
    page.get_by_test_id("tlmap").screenshot(path=COPIES / "picture_map.png")

    # a click on the legend selects a label's pictures; the page clears a selection it used
    legend = page.get_by_test_id("tlmap-legend")
    legend.get_by_text(NAMES[1], exact=True).click()
    _python_sees(page, groups.count(1))
    assert page.get_by_text(re.compile(r"^selection ")).inner_text() != selected_ids
    page.get_by_role("button", name="Done with these").click()
    _python_sees(page, 0)
    # ... and the Clear button clears one in the browser
    legend.get_by_text("Unlabelled", exact=True).click()
    _python_sees(page, groups.count(-1))
    page.get_by_test_id("tlmap-clear").click()
    _python_sees(page, 0)


def test_twenty_thousand_points_stay_responsive(map_url, page: Page) -> None:
    url, data = map_url
    xy, groups = data[BIG]
    unit = _unit(xy)
    view = _open(page, f"{url}/?n={BIG}", BIG)
    box = page.get_by_test_id("tlmap")
    cx, cy = view.page_xy(0.5, 0.5)
    page.mouse.move(cx, cy)
    draws = []
    for step in (-240, -240, 240, 240, -120):  # zoom in, out and in again around the middle
        before = int(box.get_attribute("data-drawn") or 0)
        page.mouse.wheel(0, step)
        expect(box).to_have_attribute("data-drawn", re.compile(rf"^(?!{before}$)\d+$"))
        draws.append(float(box.get_attribute("data-draw-ms") or 0))
    assert float(view.scale) < View(page).scale  # zoomed in
    assert max(draws) < MAX_DRAW_MS, draws
    # hovering answers within a frame or two, dot after dot
    view = View(page)
    seen = []
    started = time.monotonic()
    for x in np.linspace(0.35, 0.65, 25):
        page.mouse.move(*view.page_xy(x, 0.5))
        seen.append(box.get_attribute("data-hover"))
    per_move_ms = (time.monotonic() - started) * 1000 / 25
    assert len({s for s in seen if s != "-1"}) >= 5, seen
    # a box over the whole view selects what it shows
    before = int(box.get_attribute("data-drawn") or 0)
    page.get_by_test_id("tlmap-fit").click()
    expect(box).to_have_attribute("data-drawn", re.compile(rf"^(?!{before}$)\d+$"))
    view = View(page)
    a, b = view.page_xy(0.3, 0.7), view.page_xy(0.7, 0.3)
    _drag(page, [a, b])
    (x0, y1), (x1, y0) = view.data(*a), view.data(*b)
    inside = (unit[:, 0] >= x0) & (unit[:, 0] <= x1) & (unit[:, 1] >= y0) & (unit[:, 1] <= y1)
    _python_sees(page, int(inside.sum()))
    page.get_by_test_id("tlmap").screenshot(path=COPIES / "picture_map_20k.png")
    print(
        "picture map, 20,000 dots:",
        json.dumps(
            {"draw_ms": draws, "hover_move_ms": round(per_move_ms, 1), "groups": len(set(groups))}
        ),
    )
