"""One real-browser walk through the whole wizard on the demo set (Playwright + Chromium).

Screenshots land in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browserflags import CHROMIUM, FLAGS, ROOT, serve_app
from playwright.sync_api import Page, expect, sync_playwright

SHOTS = ROOT / "test-artifacts"
DEMO = ROOT / "assets" / "demo" / "fashion_mnist"

pytestmark = pytest.mark.browser
expect.set_options(timeout=90_000)  # the first page that touches a model imports torch


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, workspace: Path) -> Iterator[str]:
    with serve_app(workspace, tmp_path_factory.mktemp("log") / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url) -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: install it with `apt-get install -y chromium`.")
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def _go(page: Page, label: str) -> None:
    """Open the wizard step ``label``; a click that a rerun of the page it left undid (a
    run's end refreshes the whole page) is made again."""
    heading = page.get_by_role("heading", name=re.compile(rf"^\d\. {label}"), level=1)
    for _ in range(3):
        page.get_by_role("link", name=re.compile(label)).first.click()
        try:
            expect(heading).to_be_visible(timeout=30_000)
            return
        except AssertionError:
            continue
    expect(heading).to_be_visible()


def _idle(page: Page) -> None:
    """Wait until the script run the last click started has finished."""
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=120_000)


def _run_ended(page: Page) -> None:
    """Wait for the whole-page refresh that follows the end of a run (Train is enabled again);
    a click on another page before it can be undone by that refresh."""
    train = page.get_by_test_id("stMain").get_by_role("button", name="Train", exact=True)
    expect(train).to_be_enabled(timeout=60_000)
    _idle(page)


def _predict_py_matches_the_app(bundle: Path, tmp_path: Path, workspace: Path) -> None:
    """The bundle's predict.py, run alone on the demo's validation pictures, in both formats,
    gives the app's answer for every picture the app scored."""
    from tl_core.analysis.results import load_predictions
    from tl_core.data.dataset import DatasetManifest
    from tl_core.runs.store import Store

    store = Store(workspace)
    run = [r for r in store.runs() if r.result and r.config.get("pretrained", True)][-1]
    preds = load_predictions(Path(run.run_dir))
    source = {i.file: i.source for i in DatasetManifest.load(Path(run.data_dir)).items}
    app = {
        source[f].removeprefix("val/"): preds.classes[p]
        for f, p in zip(preds.files, preds.preds, strict=True)
    }
    for fmt in ("onnx", "safetensors"):
        out = tmp_path / f"{fmt}.csv"
        subprocess.run(
            [sys.executable, "predict.py", str(DEMO / "val"), "--format", fmt, "--out", str(out)],
            cwd=bundle,
            check=True,
            timeout=600,
        )
        with out.open() as f:
            rows = list(csv.DictReader(f))
        exported = {row["file"]: row["nearest_class"] for row in rows}
        assert len(app) == 200 and all(exported[name] == label for name, label in app.items()), fmt
        # the prediction is the class, or "unfamiliar" for the few validation pictures the
        # threshold (chosen to accept 95% of them) leaves out
        assert all(row["prediction"] in (row["nearest_class"], "unfamiliar") for row in rows)
        unfamiliar = sum(row["prediction"] == "unfamiliar" for row in rows)
        assert 0 < unfamiliar <= 0.06 * len(rows), (fmt, unfamiliar)


def test_walk_the_wizard_on_the_demo_set(
    page: Page, app_url: str, workspace: Path, tmp_path: Path
) -> None:
    page.goto(app_url)
    expect(page.get_by_text("1. Your images").first).to_be_visible()
    page.get_by_role("button", name="Use the demo set").click()
    expect(page.get_by_text("A few images of each class")).to_be_visible(timeout=120_000)
    expect(page.get_by_text("tshirt_top").first).to_be_visible()
    assert "project=" in page.url
    expect(page.locator(".js-plotly-plot")).to_have_count(1)  # the class counts chart
    expect(page.get_by_role("img").last).to_be_visible()
    page.screenshot(path=SHOTS / "1-data.png", full_page=True)

    _go(page, "Choose a model")
    expect(page.get_by_text("EfficientNet-Lite0").first).to_be_visible()
    expect(page.get_by_text("ready offline").first).to_be_visible()
    expect(page.get_by_text("downloads on first use").first).to_be_visible()
    expect(page.get_by_text("Input size")).to_be_visible(timeout=120_000)
    expect(page.get_by_text("Sorted right before any training")).to_be_visible(timeout=120_000)
    page.get_by_role("button", name="Compare the models on my images").click()
    # a clear winner, or the leaders within noise of each other and the fastest of them named
    verdict = re.compile("Best on your images:|as good as each other on your images")
    expect(page.get_by_text(verdict)).to_be_visible(timeout=180_000)
    expect(page.get_by_test_id("stDataFrame")).to_be_visible()
    page.screenshot(path=SHOTS / "2-model.png", full_page=True)

    _go(page, "Train")
    expect(page.get_by_text("parameters learn")).to_be_visible(timeout=120_000)
    slider = page.get_by_role("slider").first
    slider.focus()
    page.keyboard.press("ArrowRight")  # let the last layer group learn too
    expect(page.get_by_text("last 1 group").first).to_be_visible()
    _idle(page)
    page.get_by_text("Advanced settings").click()
    epochs = page.get_by_label("Epochs (passes over your images)")
    epochs.fill("2")
    epochs.press("Enter")  # saved as it is entered: no separate press
    expect(page.get_by_text("2 epochs ·")).to_be_visible()
    expect(page.get_by_text("Suggested:")).to_be_visible()
    page.screenshot(path=SHOTS / "3-train-ready.png", full_page=True)

    # The freeze advice, measured: three short runs in the queue, one after another.
    page.get_by_text("Not sure? Measure it on your images").click()
    page.get_by_role("button", name="Run the quick sweep").click()
    expect(page.get_by_text(re.compile(r"^Best in this sweep: "))).to_be_visible(timeout=600_000)
    _run_ended(page)
    page.screenshot(path=SHOTS / "3-sweep.png", full_page=True)

    page.get_by_role("button", name="Train", exact=True).click()
    clicked = time.monotonic()
    expect(page.get_by_test_id("stMain").get_by_role("button", name="Stop")).to_be_visible(
        timeout=60_000
    )
    expect(page.get_by_text(re.compile(r"step \d+/\d+"))).to_be_visible(timeout=120_000)
    first_step = time.monotonic() - clicked
    # the first epoch's point: the panel moves on to epoch 2 (or the run is already done)
    expect(
        page.get_by_text(re.compile(r"epoch 2/2|Finished: .* validation accuracy")).first
    ).to_be_visible(timeout=120_000)
    first_point = time.monotonic() - clicked
    # the layer groups, the sweep and the live curves
    expect(page.locator(".js-plotly-plot")).to_have_count(3, timeout=60_000)
    page.screenshot(path=SHOTS / "4-training.png", full_page=True)

    page.reload()  # a refresh mid-run finds the same run still going
    expect(page.get_by_test_id("stMain").get_by_role("button", name="Stop")).to_be_visible(
        timeout=60_000
    )
    expect(page.get_by_text(re.compile(r"step \d+/\d+"))).to_be_visible()

    expect(page.get_by_text(re.compile(r"Finished: .* validation accuracy"))).to_be_visible(
        timeout=600_000
    )
    finish = time.monotonic() - clicked
    timings = {
        "click_to_first_step_s": round(first_step, 1),
        "click_to_first_point_s": round(first_point, 1),
        "click_to_finish_s": round(finish, 1),
        "note": "last group learning, 2 epochs, a page refresh mid-run",
    }
    print("browser walk timings:", json.dumps(timings))
    (SHOTS / "timings.json").write_text(json.dumps(timings))
    _run_ended(page)
    page.screenshot(path=SHOTS / "5-finished.png", full_page=True)

    _go(page, "Evaluate")  # scores appear once the check of the saved model (a job) is done
    expect(page.get_by_text("Validation accuracy", exact=True)).to_be_visible(timeout=180_000)
    expect(page.get_by_text("95% confidence interval")).to_be_visible()
    # the run let one group learn: it is held against the frozen features alone
    expect(page.get_by_text("A classifier on the frozen pretrained features alone")).to_be_visible(
        timeout=120_000
    )
    _idle(page)
    page.screenshot(path=SHOTS / "6-evaluate.png", full_page=True)
    page.get_by_role("tab", name="Confusion matrix").click()
    expect(page.get_by_text(re.compile(r"image\(s\): true '"))).to_be_visible()
    page.screenshot(path=SHOTS / "7-confusion.png", full_page=True)
    page.get_by_role("tab", name="Mistakes").click()
    expect(page.get_by_text("most confidently wrong first")).to_be_visible()
    page.get_by_text("Show what the model looked at").click()
    expect(page.get_by_text("Heat maps: red marks")).to_be_visible(timeout=120_000)
    page.screenshot(path=SHOTS / "8-mistakes-gradcam.png", full_page=True)
    page.get_by_role("tab", name="Calibration").click()
    expect(page.get_by_text("Calibration error as trained")).to_be_visible()
    page.screenshot(path=SHOTS / "9-calibration.png", full_page=True)

    # The same run from random weights, then both curves on one chart. It trains the whole
    # network (about a minute on two quiet cores; several on a machine shared with other work).
    page.get_by_role("tab", name="Learning curves").click()
    page.get_by_role("button", name="Train the same from scratch").click()
    expect(page.get_by_text(re.compile(r"Finished: .* validation accuracy"))).to_be_visible(
        timeout=600_000
    )
    expect(page.get_by_text("The pretrained start against this run from random")).to_be_visible()
    _run_ended(page)
    page.screenshot(path=SHOTS / "9a-scratch-on-train.png", full_page=True)
    _go(page, "Evaluate")
    expect(page.get_by_text("How much is the pretrained start worth here?")).to_be_visible()
    expect(page.get_by_text("Higher end")).to_be_visible(timeout=60_000)
    page.screenshot(path=SHOTS / "9b-versus-scratch.png", full_page=True)

    _go(page, "Try it")
    page.get_by_test_id("stRadio").get_by_text("Upload", exact=True).click()  # not the live view
    picture = next((DEMO / "val" / "sneaker").iterdir())
    page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(picture)
    expect(page.get_by_text("not sure below")).to_be_visible(timeout=60_000)  # the bar chart
    expect(page.locator(".js-plotly-plot")).to_have_count(1)
    page.screenshot(path=SHOTS / "10-try.png", full_page=True)

    _go(page, "Export")
    page.get_by_role("button", name="Build the bundle").click()
    expect(page.get_by_text("Parity check passed")).to_be_visible(timeout=600_000)  # every format
    page.screenshot(path=SHOTS / "11-export.png", full_page=True)
    with page.expect_download() as download:
        page.get_by_role("button", name=re.compile(r"^Download .*\.zip")).click()
    bundle = tmp_path / "bundle"
    with zipfile.ZipFile(download.value.path()) as zf:
        zf.extractall(bundle)
    _predict_py_matches_the_app(bundle, tmp_path, workspace)


def test_uploads_a_folder_and_explains_a_bad_zip(page: Page, app_url: str, tmp_path) -> None:
    """The two upload paths a user takes, in a fresh project: a broken .zip is explained and
    changes nothing; a folder chosen with the browser's directory picker imports."""
    from helpers import make_shapes

    empty_zip = tmp_path / "photos.zip"
    with zipfile.ZipFile(empty_zip, "w"):
        pass
    page.goto(app_url)  # no ?project=: a new visitor
    page.get_by_role("tab", name="Upload a .zip").click()
    page.locator("[data-testid='stFileUploaderDropzoneInput']").nth(1).set_input_files(empty_zip)
    page.get_by_role("button", name="Import the zip").click()
    expect(page.get_by_text("The .zip file is empty")).to_be_visible()
    # the import job's project keeps no images from it
    assert "project=" not in page.url or "Images: not yet" in page.content()

    folder = make_shapes(tmp_path / "my shapes", per_class=12)
    page.get_by_role("tab", name="Upload a folder").click()
    page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(folder)
    page.get_by_role("button", name=re.compile(r"Import 36 files")).click()
    expect(page.get_by_text("A few images of each class")).to_be_visible()
    expect(page.get_by_text("stripes").first).to_be_visible()
    expect(page.locator(".js-plotly-plot")).to_have_count(1)
    expect(page.get_by_test_id("stMetricValue").first).to_have_text("36")
    page.screenshot(path=SHOTS / "12-folder-upload.png", full_page=True)


LABEL_CLASSES = ("trouser", "sneaker", "bag", "dress")


def _unlabelled_folder(root: Path, per_class: int = 25) -> Path:
    """Demo pictures of four classes in one folder, no class folders: the class is only in
    each file's name, which the test reads to answer as the user would."""
    import shutil

    root.mkdir(parents=True)
    for cls in LABEL_CLASSES:
        for f in sorted((DEMO / "train" / cls).glob("*.png"))[:per_class]:
            shutil.copy(f, root / f"{cls}-{f.name}")
    return root


def _survey(workspace: Path, files: list[str], trained: bool = False):
    """The survey of these pictures (other tests' projects share the workspace)."""
    from tl_core.labeling import survey

    found = [survey.load(p) for p in sorted(workspace.rglob(survey.FILE_NAME))]
    return next(
        s
        for s in reversed(found)
        if s is not None and s.trained == trained and sorted(s.files) == sorted(files)
    )


def _pick(page: Page, label: str, option: str) -> None:
    """Choose ``option`` in the select box whose label holds ``label``."""
    _choose(page, page.get_by_role("combobox", name=label).first, option)


def _choose(page: Page, combo, option: str) -> None:
    combo.click()
    page.keyboard.type(option)
    page.keyboard.press("Enter")
    expect(combo).to_have_value(option)


def _answer_the_form(page: Page, button: str) -> tuple[int, int]:
    """Set every picture's select box to the true class (read from the picture's name), then
    press ``button``; (boxes whose preselected class was right, boxes)."""
    combos = page.get_by_test_id("stMain").get_by_role("combobox")
    right = total = 0
    for combo in combos.all():
        label = (combo.get_attribute("aria-label") or "").replace("\\", "")  # markdown escapes
        name = label.split(" · ")[0].strip()
        if not name.endswith(".png") or "-" not in name:
            continue
        truth, total = name.split("-")[0], total + 1
        if combo.input_value() == truth:
            right += 1
        else:
            _choose(page, combo, truth)
    page.get_by_role("button", name=button).click()
    _idle(page)
    return right, total


def test_label_an_unlabelled_folder_from_the_map_and_the_suggestions_then_train(
    page: Page, app_url: str, workspace: Path, tmp_path: Path
) -> None:
    """Import a folder with no class folders, name the classes, label three pictures of each
    on the map, then the batches the page offers, make the labels the data, train, evaluate,
    and see the map of the trained model."""
    from test_picture_map_browser import View, _unit

    from tl_core.data.dataset import DatasetManifest
    from tl_core.runs.store import Store

    folder = _unlabelled_folder(tmp_path / "camera roll")
    page.goto(app_url)  # a new visitor
    page.get_by_role("tab", name="Use a folder on this computer").click()
    path_box = page.get_by_role("textbox", name="Folder on this computer")
    path_box.fill(str(folder))
    path_box.press("Enter")
    page.get_by_role("button", name="Import the folder").click()
    expect(page.get_by_text("have no label yet")).to_be_visible(timeout=120_000)
    page.screenshot(path=SHOTS / "13-unlabelled-data.png", full_page=True)

    _go(page, "Label")
    mapbox = page.get_by_test_id("tlmap")
    expect(mapbox).to_have_attribute("data-drawn", re.compile(r"^[1-9]"), timeout=300_000)
    for cls in LABEL_CLASSES:
        page.get_by_role("textbox", name="New class").fill(cls)
        page.get_by_role("button", name="Add class").click()
        _idle(page)
    expect(page.get_by_text(re.compile(r"^Classes: "))).to_contain_text("dress 0")
    found = re.search(r"project=([^&]+)", page.url)
    assert found, page.url
    project = Store(workspace).project(found.group(1))
    assert project is not None and project.data_dir
    pool = DatasetManifest.load(Path(project.data_dir)).unlabelled
    source = {i.file: Path(i.source).name for i in pool}
    s = _survey(workspace, list(source))
    truth = np.array([source[f].split("-")[0] for f in s.files])  # as the user would know
    unit = _unit(s.xy)
    for cls in LABEL_CLASSES:  # three pictures of each class, clicked on the map
        _idle(page)
        mapbox.scroll_into_view_if_needed()  # clicks land in the window only
        seen = None  # the page's layout settled: the same view twice in a row
        while seen != (seen := mapbox.get_attribute("data-view")):
            time.sleep(0.5)
        view = View(page)
        px = np.stack([np.array(view.page_xy(*p)) for p in unit]).astype(float)
        d = np.hypot(*(px[:, None, :] - px[None, :, :]).transpose(2, 0, 1))
        np.fill_diagonal(d, np.inf)
        lonely = np.flatnonzero((truth == cls) & (d.min(axis=1) > 5))[:3]
        assert len(lonely) == 3, cls
        status = page.get_by_test_id("tlmap-status")
        for k, row in enumerate(lonely):
            if k:  # the page grew with the selection: where the map is now
                mapbox.scroll_into_view_if_needed()
                while seen != (seen := mapbox.get_attribute("data-view")):
                    time.sleep(0.5)
                page.keyboard.down("Shift")  # adds to the selection
            page.mouse.click(*View(page).page_xy(*unit[row]))
            page.keyboard.up("Shift")
            expect(status).to_have_attribute("data-count", str(k + 1))
            _idle(page)  # the page's rerun with the selection, before the next click
        expect(page.get_by_text("3 picture(s) selected")).to_be_visible()
        _pick(page, "Label them as", cls)
        page.get_by_role("button", name="Label them", exact=True).click()
        _idle(page)
    expect(page.get_by_test_id("stSidebar").get_by_text("12", exact=True)).to_be_visible()
    page.screenshot(path=SHOTS / "14-label-map.png", full_page=True)

    right = total = 0
    for _ in range(2):  # two batches the page chose, answered with the truth
        page.get_by_role("tab", name="Label these next").click()
        r, t = _answer_the_form(page, "Save these labels")
        right, total = right + r, total + t
    assert total == 24, total
    page.get_by_role("tab", name="Label these next").click()
    page.screenshot(path=SHOTS / "15-label-next.png", full_page=True)
    page.get_by_role("tab", name="Confident suggestions").click()
    accept = page.get_by_role("button", name="Accept this page")
    if accept.count():
        r, t = _answer_the_form(page, "Accept this page")
        print(f"confident page: {r} of {t} suggestions right")
        assert t and r >= 0.9 * t
    page.screenshot(path=SHOTS / "16-label-confident.png", full_page=True)
    print(f"label-next batches: {right} of {total} preselected guesses right")

    page.get_by_role("button", name="Use these labels for training").click()
    _idle(page)
    _go(page, "Train")
    page.get_by_role("button", name="Train", exact=True).click()
    expect(page.get_by_text(re.compile(r"Finished: .* validation accuracy"))).to_be_visible(
        timeout=600_000
    )
    _run_ended(page)
    _go(page, "Evaluate")
    expect(page.get_by_text("Validation accuracy", exact=True)).to_be_visible(timeout=180_000)
    page.screenshot(path=SHOTS / "17-label-evaluate.png", full_page=True)
    _go(page, "Label")
    page.get_by_text("Map with the trained model").click()
    trained = page.get_by_test_id("tlmap").last
    expect(trained).to_have_attribute("data-drawn", re.compile(r"^[1-9]"), timeout=300_000)
    expect(page.get_by_test_id("tlmap")).to_have_count(2)
    trained.scroll_into_view_if_needed()
    page.get_by_test_id("stExpander").last.screenshot(path=SHOTS / "18-label-trained-map.png")
    before, after = _survey(workspace, s.files), _survey(workspace, s.files, trained=True)
    assert after.files == before.files and after.trained
    print(
        "classes apart (silhouette of the labelled pictures on the map): pretrained "
        f"{_apart(before, truth):.2f}, trained {_apart(after, truth):.2f}"
    )


def _apart(s, truth: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(s.xy, truth))
