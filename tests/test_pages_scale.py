"""The pages at 100 classes and thousands of images: one summary per kind of warning, paged
thumbnails, a ranked confusion view, and batch prediction that reports its progress."""

from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import app_test
from jobrunner import FakeContext
from PIL import Image
from streamlit.testing.v1 import AppTest

from tl_core.data.dataset import MIN_IMAGES_PER_CLASS
from tl_core.runs import tasks
from tl_core.runs.kinds import JobSpec, PredictParams
from tl_core.runs.store import Store
from tl_ui.text import literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from pages_scale import make_manifest

TIMEOUT = 180


def _project(workspace: Path, data_dir: Path) -> str:
    store = Store(workspace)
    project = store.create_project()
    store.set_data_dir(project.id, data_dir)
    return project.id


def _images(at: AppTest) -> list:
    return list(at.image)


# ------------------------------------------------------------------------------ Data page


@pytest.mark.parametrize("few", [0, 1, 37, 60])
def test_data_page_at_100_classes_has_one_warning_per_kind_and_paged_thumbnails(
    workspace, tmp_path, few
) -> None:
    data = make_manifest(tmp_path / "data-1", 100, 30, side=32, few=few, distinct=1)
    start = time.perf_counter()
    at = app_test(project=_project(workspace, data), timeout=TIMEOUT)
    print(f"Data page, 100 classes, {few} small: first draw {time.perf_counter() - start:.2f} s")
    assert not at.exception
    small = [w.value for w in at.warning if f"fewer than {MIN_IMAGES_PER_CLASS}" in w.value]
    single = [w.value for w in at.warning if "has only" in w.value]
    if few == 0:
        assert not small and not single and not at.warning
    elif few == 1:
        assert single == [
            literal("Class 'class 099' has only 5 image(s); at least 10 are recommended.")
        ]
        assert not small
    else:
        assert len(small) == 1 and len(at.warning) == 1, [w.value for w in at.warning]
        assert small[0].startswith(f"{few} classes have fewer than {MIN_IMAGES_PER_CLASS} images")
        listed = next(e for e in at.expander if e.label.startswith(f"The {few} classes"))
        table = listed.dataframe[0].value
        assert len(table) == few and set(table["images"]) == {5}
    assert at.get("plotly_chart")  # the class chart
    # Thumbnails: ten classes a page, each a row of small JPEGs, and a page selector.
    rows = [m.value for m in at.markdown if " images" in m.value and m.value.startswith("**class")]
    assert len(rows) == 10 and rows[0].startswith("**class 000**")
    assert len(_images(at)) == 10
    pager = at.number_input(key="thumb_page")
    assert pager.max == 10
    pager.set_value(10).run()
    rows = [m.value for m in at.markdown if " images" in m.value and m.value.startswith("**class")]
    assert rows[0].startswith("**class 090**") and rows[-1].startswith("**class 099**")
    assert any("Classes 91–100 of 100." in c.value for c in at.caption)
    start = time.perf_counter()
    at.run()
    print(f"Data page, 100 classes: a rerun {time.perf_counter() - start:.2f} s")


def test_thumbnails_are_small_jpegs_read_only_for_the_page_shown(
    workspace, tmp_path, monkeypatch
) -> None:
    from tl_ui import gallery

    data = make_manifest(tmp_path / "data-1", 30, 12, side=400, distinct=2)
    read: list[str] = []
    opened = Image.open

    def spy(path, *args, **kwargs):
        read.append(str(path))
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)  # the page runs in this process: count its reads
    at = app_test(project=_project(workspace, data), timeout=TIMEOUT)
    monkeypatch.setattr(Image, "open", opened)
    assert not at.exception
    thumbs = {Path(p).parent.name for p in read if "/images/" in p}
    assert thumbs == {f"c{c:03d}" for c in range(10)}  # the first page of classes only
    one = gallery.thumbnail(data / "images" / "c000" / "00000.png")
    assert one is not None and one[:2] == b"\xff\xd8" and len(one) < 8_000
    with Image.open(io.BytesIO(one)) as img:
        assert max(img.size) == gallery.THUMB_SIDE


# -------------------------------------------------------------------------- Evaluate page

# (true class, taken for, images): the ranking the page must show, most images first.
CONFUSIONS = [(4, 5, 8), (0, 1, 6), (7, 2, 6), (2, 9, 3), (11, 3, 1)]


def _evaluated_run(workspace: Path, tmp_path: Path, n_classes: int, monkeypatch) -> str:
    """A project with a finished run whose predictions.json holds CONFUSIONS, its saved model
    taken as verified (no model is trained)."""
    from dataclasses import asdict

    from tl_core.analysis.evaluation import Verdict

    per_class = 10
    data = make_manifest(tmp_path / "data-1", n_classes, per_class, side=32, distinct=1)
    manifest = json.loads((data / "manifest.json").read_text())
    classes = manifest["classes"]
    wrong = {}
    for true, pred, count in CONFUSIONS:
        for k in range(count):
            wrong[true * per_class + k] = pred
    rows = []
    for i, item in enumerate(manifest["items"]):
        label = classes.index(item["label"])
        pred = wrong.get(i, label)
        probs = [0.1 / (n_classes - 1)] * n_classes
        probs[pred] = 0.9
        rows.append(
            {
                "file": item["file"],
                "label": label,
                "pred": pred,
                "confidence": 0.9,
                "probs": [round(p, 6) for p in probs],
                "logits": [round(math.log(p), 5) for p in probs],
            }
        )
    project_id = _project(workspace, data)
    store = Store(workspace)
    run = store.create_job(project_id, {"model": "efficientnet_lite0", "epochs": 2}, data)
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run.run_dir) / "predictions.json").write_text(
        json.dumps({"classes": classes, "rows": rows})
    )
    acc = 1 - len(wrong) / len(rows)
    store.update_job(
        run.id,
        status="finished",
        result={"val_accuracy": acc, "best_epoch": 2, "epochs_done": 2, "seconds": 3},
    )
    verdict = Verdict("verified", "The saved model gives its recorded answers again.", len(rows))
    monkeypatch.setattr(tasks, "verify", lambda spec, ctx: asdict(verdict))
    return project_id


@pytest.mark.parametrize("n_classes", [25, 100])
def test_evaluate_page_ranks_the_most_confused_pairs_with_their_images(
    workspace, tmp_path, monkeypatch, n_classes
) -> None:
    project_id = _evaluated_run(workspace, tmp_path, n_classes, monkeypatch)
    at = app_test("app_pages/evaluate.py", project_id, TIMEOUT)
    assert not at.exception, at.exception
    start = time.perf_counter()
    at.run()
    print(f"Evaluate page, {n_classes} classes: a rerun {time.perf_counter() - start:.2f} s")
    ranked = [m.value for m in at.markdown if "taken for" in m.value]
    expected = [
        f"**{rank}.** 'class {t:03d}' taken for 'class {p:03d}': **{n}** image(s), "
        f"{n / 10:.0%} of the 'class {t:03d}' images"
        for rank, (t, p, n) in enumerate(CONFUSIONS, 1)
    ]
    assert ranked == expected
    # Each pair's images: one row of thumbnails per pair (plus the chosen cell's grid).
    assert len(_images(at)) >= len(CONFUSIONS)
    pairs = next(
        e for e in at.expander if e.label == f"All {len(CONFUSIONS)} confused pairs as a table"
    )
    assert list(pairs.dataframe[0].value["images"]) == [n for _, _, n in CONFUSIONS]
    # The full matrix only on demand past 20 classes, and then without per-cell numbers.
    toggle = at.toggle(key="full_matrix")
    assert toggle.value is False
    assert not [c for c in at.get("plotly_chart") if c.key == "confusion"]
    toggle.set_value(True).run()
    assert not at.exception
    (heat,) = [c for c in at.get("plotly_chart") if c.key == "confusion"]
    trace = json.loads(heat.proto.spec)["data"][0]
    assert trace["type"] == "heatmap" and "texttemplate" not in trace
    # The biggest confusion is the cell picked first; per-class scores are a sortable table.
    true = next(s for s in at.selectbox if s.label == "True class")
    assert true.value == 4
    table = next(d.value for d in at.dataframe if "most often taken for" in d.value.columns)
    assert len(table) == n_classes
    assert table.loc[4, "most often taken for"] == "class 005"
    assert table.loc[4, "images taken for it"] == 8


def test_evaluate_page_pages_the_mistakes_and_filters_them_by_class(
    workspace, tmp_path, monkeypatch
) -> None:
    project_id = _evaluated_run(workspace, tmp_path, 100, monkeypatch)
    at = app_test("app_pages/evaluate.py", project_id, TIMEOUT)
    fixes = [s for s in at.selectbox if s.label == "Correct label"]
    total = sum(n for _, _, n in CONFUSIONS)
    assert len(fixes) == 12  # one page of the 24 mistakes
    assert at.number_input(key="mistakes_page").max == math.ceil(total / 12)
    at.selectbox(key="mistakes_class").set_value(4).run()
    assert not at.exception
    assert len([s for s in at.selectbox if s.label == "Correct label"]) == 8
    assert "8 misclassified validation image(s)" in "\n".join(c.value for c in at.caption)


# ------------------------------------------------------------------------------- predict


class _FakePlan:
    def __init__(self, batch: int) -> None:
        self.infer_batch = batch


class _FakeModel:
    """Reads each picture as the real model does; records the batches it was given. Its
    unfamiliarity is how far a picture's grey is from mid-grey (None: a run without the
    unfamiliar check)."""

    def __init__(self, batch: int, checked: bool = True) -> None:
        self.classes = ["dark", "light"]
        self.plan = _FakePlan(batch)
        self.batches: list[int] = []
        self.checked = checked

    def guess(self, images, temperature=1.0, names=None):
        from tl_core.training.inference import Guesses, upright_rgb

        self.batches.append(len(images))
        light = np.asarray(
            [
                float(np.asarray(upright_rgb(image, name)).mean()) / 255
                for image, name in zip(images, names, strict=True)
            ]
        )
        far = np.abs(light - 0.5) / 3 if self.checked else None
        return Guesses(np.stack([1 - light, light], 1), far)


@pytest.mark.parametrize(
    ("count", "batch", "broken", "checked"),
    [(300, 64, (7, 250), True), (130, 16, (), False), (5, 64, (0,), True)],
)
def test_predict_task_scores_hundreds_of_pictures_by_batch_and_reports_progress(
    tmp_path, monkeypatch, count, batch, broken, checked
) -> None:
    from tl_core.analysis import evaluation

    model = _FakeModel(batch, checked)
    monkeypatch.setattr(evaluation, "load_model_checked", lambda run_dir: model)
    inputs = tmp_path / "job" / "inputs"
    inputs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = inputs / f"{i:05d}-pic {i}.png"
        if i in broken:
            path.write_bytes(b"not a picture")
        else:
            shade = int(rng.integers(0, 256))
            Image.new("RGB", (8, 8), (shade, shade, shade)).save(path)
    spec = JobSpec(
        "j",
        "predict",
        "p",
        PredictParams(str(tmp_path), 1.0),
        str(tmp_path),
        str(tmp_path / "job"),
    )
    ctx = FakeContext()
    result = tasks.predict(spec, ctx)
    rows = result["rows"]
    assert [r["name"] for r in rows] == [f"pic {i}.png" for i in range(count)]
    assert [i for i, r in enumerate(rows) if r["error"]] == list(broken)
    assert all(len(r["probs"]) == 2 for r in rows if not r["error"])
    for r in rows:  # each picture's own unfamiliarity, 6 decimals; None where not measured
        if r["error"] or not checked:
            assert r["unfamiliarity"] is None
        else:
            assert r["unfamiliarity"] == pytest.approx(abs(r["probs"][1] - 0.5) / 3, abs=2e-6)
            assert r["unfamiliarity"] == round(r["unfamiliarity"], 6)
    assert json.loads(json.dumps(result)) == result
    batches = math.ceil(count / min(batch, tasks.PREDICT_BATCH))
    done = [d for d, _, _ in ctx.steps]
    assert len(ctx.steps) == batches + 1 and done == sorted(done) and done[-1] == count
    assert all(total == count for _, total, _ in ctx.steps)
    assert max(model.batches) <= min(batch, tasks.PREDICT_BATCH)


def test_a_stopped_predict_task_returns_early(tmp_path, monkeypatch) -> None:
    from tl_core.analysis import evaluation

    monkeypatch.setattr(evaluation, "load_model_checked", lambda run_dir: _FakeModel(8))
    inputs = tmp_path / "job" / "inputs"
    inputs.mkdir(parents=True)
    for i in range(20):
        Image.new("RGB", (8, 8)).save(inputs / f"{i:05d}-p.png")
    spec = JobSpec(
        "j", "predict", "p", PredictParams(str(tmp_path)), str(tmp_path), str(tmp_path / "job")
    )
    assert tasks.predict(spec, FakeContext(stop=True)) == tasks.STOPPED


def _answers_page(count: int, every: int) -> None:
    import numpy as np

    from tl_ui.batch import results_table

    classes = [f"class {c:03d}" for c in range(100)]
    results = []
    for i in range(count):
        if i % every == 0:
            results.append((f"p{i}.jpg", None, f"p{i}.jpg: not a picture"))
        else:
            probs = np.full(100, 0.1 / 99)
            probs[i % 100] = 0.9 if i % 3 else 0.4  # one in three is not sure at 0.5
            probs[(i + 1) % 100] = 0.0 if i % 3 else 0.35
            results.append((f"p{i}.jpg", probs / probs.sum(), None))
    results_table(results, classes, 0.5)


@pytest.mark.parametrize(("count", "every"), [(1000, 97), (300, 10)])
def test_try_page_answers_for_many_pictures_are_summed_filtered_and_sortable(count, every):
    at = AppTest.from_function(_answers_page, args=(count, every), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    unread = len(range(0, count, every))
    summary = at.markdown[0].value
    assert (
        summary.startswith(f"**{count:,} pictures**") and f"{unread} could not be read" in summary
    )
    assert len(at.dataframe[0].value) == count
    at.segmented_control(key="try_filter").set_value("could not be read").run()
    assert len(at.dataframe[0].value) == unread
    at.segmented_control(key="try_filter").set_value("not sure").run()
    table = at.dataframe[0].value
    assert len(table) and set(table["prediction"]) == {"not sure"}
    assert all(note.startswith("best guess class") for note in table["note"])


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        ([[5, 0], [0, 7]], []),
        ([[5, 2], [1, 7]], [(0, 1, 2, 2 / 7), (1, 0, 1, 1 / 8)]),
        # a tie in images: the larger share of its class first, then class order
        ([[8, 2, 0], [0, 2, 2], [2, 0, 8]], [(1, 2, 2, 0.5), (0, 1, 2, 0.2), (2, 0, 2, 0.2)]),
    ],
)
def test_most_confused_pairs_are_ranked_by_images_then_share(matrix, expected) -> None:
    from tl_core.analysis.metrics import most_confused

    found = [(p.true, p.pred, p.count, p.share) for p in most_confused(np.array(matrix))]
    assert found == [(t, p, c, pytest.approx(s)) for t, p, c, s in expected]
    assert len(most_confused(np.array(matrix), 1)) == min(1, len(expected))
