"""The camera on the pages (AppTest and the handlers the browser's messages reach): recording
on the Data page, using the shots, live guesses and the fallback on the Try page."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import app_test, make_shapes
from jobrunner import inline_spawn
from PIL import Image
from streamlit.testing.v1 import AppTest

from tl_core import service
from tl_core.data.dataset import import_folder
from tl_core.runs.store import Store
from tl_ui.camera import PROBLEMS, decode_jpeg
from tl_ui.recording import BACKGROUND_TIP, PRIVACY, needs_background_class
from tl_ui.text import literal

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo" / "fashion_mnist"
TIMEOUT = 120
COLOURS = {"sun": (240, 200, 40), "sky": (60, 120, 220), "leaf": (40, 170, 60)}


@pytest.fixture(autouse=True)
def _inline_jobs(monkeypatch) -> list[str]:
    return inline_spawn(monkeypatch)


def jpeg(colour: tuple[int, int, int], k: int = 0, size: tuple[int, int] = (96, 72)) -> bytes:
    """One camera-like frame: a colour with a drifting square and noise (frame ``k``)."""
    rng = np.random.default_rng(k)
    img = np.empty((size[1], size[0], 3), np.float32)
    img[:] = colour
    x = 10 + 3 * k % (size[0] - 30)
    img[20:44, x : x + 24] = 255 - np.asarray(colour)
    img += rng.normal(0, 6, img.shape)
    out = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=85)
    return out.getvalue()


def _record(store: Store, project_id: str, label: str, n: int, recording: str = "a") -> None:
    frames = [jpeg(COLOURS.get(label, (128, 128, 128)), k) for k in range(n)]
    service.camera_add_frames(store, project_id, label, frames, recording)


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption]
    parts += [str(m.value) for m in at.warning] + [str(m.value) for m in at.error]
    parts += [str(m.value) for m in at.info] + [str(m.value) for m in at.success]
    return "\n".join(parts)


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _project_id(at: AppTest) -> str:
    value = at.query_params["project"]
    return value[0] if isinstance(value, list) else value


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


# ---------------------------------------------------------------------------- Data page


@pytest.mark.parametrize("name", ["banana", "red apple", "**bold**"])
def test_a_new_project_records_from_a_tab_beside_the_other_ways_in(workspace, name) -> None:
    at = app_test(timeout=TIMEOUT)
    assert not at.exception
    assert "Record with the camera" in [t.label for t in at.tabs]
    assert PRIVACY in _texts(at)  # where the frames are kept, said on the page
    at.text_input(key="cam_new").input(name)
    _button(at, "Add class").click().run()
    assert not at.exception
    project_id = _project_id(at)  # a project made to record into, in the URL
    state = service.camera_state(Store(workspace), project_id)
    assert [c.label for c in state.classes] == [name]
    assert _metrics(at)[literal(name)] == "0"  # shown as typed (Markdown escaped)
    assert at.radio(key="cam_class").value == name
    assert at.toggle(key="cam_on").value is False  # the camera starts only when asked


def test_counts_latest_shots_delete_rename_and_remove(workspace) -> None:
    store = Store(workspace)
    project = service.camera_project(store, None)
    _record(store, project.id, "sun", 14)
    _record(store, project.id, "sky", 5)
    at = app_test(project=project.id, timeout=TIMEOUT)
    assert not at.exception
    assert _metrics(at) == {"sun": "14", "sky": "5"}
    at.radio(key="cam_class").set_value("sun").run()
    assert "The latest 12 of 14 shots of 'sun'" in _texts(at)
    deletes = [b for b in at.button if b.label == "Delete"]
    assert len(deletes) == 12
    deletes[0].click().run()
    assert not at.exception
    assert _metrics(at)["sun"] == "13"
    at.text_input(key="cam_rename_sun").input("sunshine")
    at.button(key="cam_rename_go_sun").click().run()
    assert not at.exception
    assert {c.label for c in service.camera_state(store, project.id).classes} == {"sunshine", "sky"}
    at.radio(key="cam_class").set_value("sky").run()
    at.button(key="cam_remove_sky").click().run()
    assert not at.exception
    assert [c.label for c in service.camera_state(store, project.id).classes] == ["sunshine"]


@pytest.mark.parametrize(
    ("classes", "needed"),
    [
        ([], True),
        (["banana", "apple"], True),
        (["banana", "nothingness", "other cup", "empty bottle"], True),
        (["banana", "Nothing"], False),
        (["BACKGROUND", "banana"], False),
        (["banana", "no_object"], False),
        (["banana", "No Object"], False),
        (["none"], False),
        (["Empty"], False),
        (["others", "banana"], False),
        (["un-known"], False),
    ],
)
def test_a_none_of_these_class_is_suggested_until_there_is_one(classes, needed) -> None:
    assert needs_background_class(classes) is needed


def test_the_camera_panel_suggests_recording_nothing(workspace) -> None:
    store = Store(workspace)
    project = service.camera_project(store, None)
    _record(store, project.id, "sun", 2)
    at = app_test(project=project.id, timeout=TIMEOUT)
    assert not at.exception
    assert BACKGROUND_TIP in _texts(at)
    at.text_input(key="cam_new").input("no_object")
    _button(at, "Add class").click().run()
    assert not at.exception
    assert BACKGROUND_TIP not in _texts(at)  # the class is there: nothing more to suggest


@pytest.mark.parametrize("name", ["sun", "sky"])
def test_a_duplicate_class_name_is_refused_in_one_sentence(workspace, name) -> None:
    store = Store(workspace)
    project = service.camera_project(store, None)
    _record(store, project.id, "sun", 2)
    _record(store, project.id, "sky", 2)
    at = app_test(project=project.id, timeout=TIMEOUT)
    at.text_input(key="cam_new").input(name)
    _button(at, "Add class").click().run()
    assert not at.exception
    assert at.error and "Traceback" not in at.error[0].value
    assert len(service.camera_state(store, project.id).classes) == 2


def test_using_camera_shots_alone_makes_the_projects_first_data(workspace) -> None:
    store = Store(workspace)
    project = service.camera_project(store, None)
    for label in COLOURS:
        _record(store, project.id, label, 12)
    at = app_test(project=project.id, timeout=TIMEOUT)
    _button(at, "Use these 36 shots").click().run()
    assert not at.exception
    assert "36 camera shots were checked" in _texts(at)
    metrics = _metrics(at)
    assert metrics["Classes"] == "3" and int(metrics["Images"]) >= 30
    assert "near-identical" in _texts(at) or "recording" in _texts(at)  # the split's rule
    assert not service.camera_state(store, project.id).classes  # the shots were used


@pytest.mark.parametrize("joined", ["sneaker", "mug"])
def test_camera_classes_mix_with_uploaded_images(workspace, tmp_path, joined) -> None:
    store = Store(workspace)
    project = store.create_project()
    data = import_folder(DEMO, store.new_data_dir(project.id))
    store.set_data_dir(project.id, data.root)
    at = app_test(project=project.id, timeout=TIMEOUT)
    assert "Record with the camera" in [e.label for e in at.expander]
    assert "Record with the camera" not in [t.label for t in at.tabs]  # the panel is below
    _record(store, project.id, joined, 12)
    at = app_test(project=project.id, timeout=TIMEOUT)
    _button(at, "Use these 12 shots").click().run()
    assert not at.exception
    metrics = _metrics(at)
    classes = 10 if joined == "sneaker" else 11
    assert metrics["Classes"] == str(classes)
    assert int(metrics["Images"]) > 700


# ---------------------------------------------------------------------------- the batches


def _batch(seq: int, frames: list, label: str = "sun", source: str = "tab1") -> dict:
    return {"id": source, "seq": seq, "label": label, "recording": "r1", "frames": frames}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("frames", "label", "kept", "problem"),
    [
        ([_b64(jpeg((240, 200, 40), k)) for k in range(6)], "sun", 6, None),
        ([_b64(jpeg((240, 200, 40), 1))], "a new class", 1, None),
        (["@@not base64@@"], "sun", 0, "damaged"),
        ([_b64(b"this is not a picture")], "sun", 0, "JPEG or PNG"),
        ([_b64(jpeg((240, 200, 40), 1))], "   ", 0, "name"),
    ],
)
def test_a_batch_from_the_browser_is_kept_once_or_refused_in_words(
    workspace, frames, label, kept, problem
) -> None:
    from tl_ui.recording import save_batch

    store = Store(workspace)
    project = service.camera_project(store, None)
    seen: dict[str, int] = {}
    reply, error = save_batch(store, project.id, _batch(1, frames, label), seen)
    assert reply == {"ack": {"id": "tab1", "seq": 1}}  # acknowledged either way
    again, _ = save_batch(store, project.id, _batch(1, frames, label), seen)  # a resend
    assert again == reply
    counts = {c.label: c.count for c in service.camera_state(store, project.id).classes}
    assert sum(counts.values()) == kept
    if problem is None:
        assert error is None
    else:
        assert error and problem.lower() in error.lower() and "Traceback" not in error


def test_batches_of_two_browser_tabs_are_both_kept(workspace) -> None:
    from tl_ui.recording import save_batch

    store = Store(workspace)
    project = service.camera_project(store, None)
    seen: dict[str, int] = {}
    for source in ("tab1", "tab2"):
        frames = [_b64(jpeg((240, 200, 40), k + len(source))) for k in range(3)]
        save_batch(store, project.id, _batch(1, frames, source=source), seen)
    assert service.camera_state(store, project.id).classes[0].count == 6


@pytest.mark.parametrize("text", ["", None, 5, "a" * 4_000_000, "not*base64"])
def test_decode_jpeg_refuses_what_is_not_one_frame(text) -> None:
    assert decode_jpeg(text) is None


# ---------------------------------------------------------------------------- Try page


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, Path]:
    """A one-epoch head-only run on three tiny generated classes: (data dir, run dir)."""
    from tl_core.data.dataset import split_dataset
    from tl_core.training.engine import TrainConfig, fit

    root = tmp_path_factory.mktemp("quick")
    manifest = import_folder(make_shapes(root / "src", per_class=12), root / "data")
    cfg = TrainConfig(model="efficientnet_lite0", epochs=1, trainable_groups=0, batch_size=16)
    fit(cfg, split_dataset(manifest), manifest.root, manifest.classes, root / "run")
    return manifest.root, root / "run"


def _try_page(workspace: Path, quick_run) -> AppTest:
    from dataclasses import asdict

    from tl_core.config import TrainConfig

    data_dir, run_dir = quick_run
    store = Store(workspace)
    project = store.create_project()
    store.set_data_dir(project.id, data_dir)
    cfg = TrainConfig(model="efficientnet_lite0", epochs=1)
    run = store.create_job(project.id, asdict(cfg), data_dir)
    shutil.copytree(run_dir, run.run_dir, dirs_exist_ok=True)
    store.update_job(run.id, status="finished", result={"val_accuracy": 1.0})
    return app_test("app_pages/try_it.py", project.id, TIMEOUT)


@pytest.mark.parametrize("threshold", [0.0, 0.6, 1.0])
def test_a_live_frame_gets_bars_and_the_pages_verdict(quick_run, threshold) -> None:
    from tl_ui.liveguess import answer_frame

    _, run_dir = quick_run
    src = next((quick_run[0]).rglob("*.png"))
    out = io.BytesIO()
    Image.open(src).convert("RGB").resize((320, 240)).save(out, "JPEG")
    message = {"id": "x", "seq": 7, "image": _b64(out.getvalue())}
    answer = answer_frame(message, str(run_dir), 1.0, threshold)["answer"]
    assert answer["id"] == "x" and answer["seq"] == 7 and "error" not in answer
    probs = [p for _, p in answer["bars"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == 3
    assert answer["top"] == answer["bars"][0][0]
    assert answer["sure"] == (probs[0] >= threshold)
    if answer["sure"]:
        assert answer["verdict"].startswith(answer["top"])
    else:
        assert answer["verdict"].startswith("Not sure: the best guess is")


@pytest.mark.parametrize("image", ["", "@@@", _b64(b"GIF89a not really")])
def test_a_bad_live_frame_is_answered_in_words(quick_run, image) -> None:
    from tl_ui.liveguess import answer_frame

    answer = answer_frame({"id": "x", "seq": 1, "image": image}, str(quick_run[1]), 1.0, 0.5)
    assert answer["answer"]["error"] and answer["answer"]["seq"] == 1


def test_the_try_page_opens_on_the_live_camera(workspace, quick_run) -> None:
    at = _try_page(workspace, quick_run)
    assert not at.exception
    assert at.radio(key="try_source").value == "Live camera"
    assert not at.get("file_uploader")  # the live view, no single pictures while it works
    assert "the bars follow what it sees" in _texts(at)


@pytest.mark.parametrize("status", sorted(PROBLEMS))
def test_without_a_camera_the_try_page_falls_back_to_single_pictures(
    workspace, quick_run, status
) -> None:
    at = _try_page(workspace, quick_run)
    at.session_state["live_camera"] = {"camera": status}
    at.run()
    assert not at.exception
    assert any(PROBLEMS[status] in w.value for w in at.warning)
    assert at.get("file_uploader")  # uploads work everywhere (a phone's opens its camera)
    has_photo = bool(at.get("camera_input"))
    assert has_photo == (status in ("denied", "error"))
