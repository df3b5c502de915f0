"""The live camera's own route (tl_ui.live_route) on a real server: a granted live view gets
each frame's bars as JSON, anything else is refused in one sentence; app.py serves it."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import uvicorn
from helpers import app_test, make_shapes
from PIL import Image
from starlette.applications import Starlette

from tl_core.data.dataset import import_folder
from tl_ui import live_route
from tl_ui.camera import MAX_FRAME_BYTES
from tl_ui.liveguess import answer_frame
from tl_ui.state import KEY as STATE_KEY
from tl_ui.state import StudioState

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A one-epoch head-only run on three tiny generated classes."""
    from tl_core.data.dataset import split_dataset
    from tl_core.training.engine import TrainConfig, fit

    root = tmp_path_factory.mktemp("live")
    manifest = import_folder(make_shapes(root / "src", per_class=12), root / "data")
    cfg = TrainConfig(model="efficientnet_lite0", epochs=1, trainable_groups=0, batch_size=16)
    fit(cfg, split_dataset(manifest), manifest.root, manifest.classes, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """The route on a real uvicorn server (a free port, its own thread): the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = Starlette(routes=live_route.routes())
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    yield port
    srv.should_exit = srv.force_exit = True
    thread.join(10)


def _jpeg(src: Path) -> bytes:
    out = io.BytesIO()
    Image.open(src).convert("RGB").resize((320, 240)).save(out, "JPEG")
    return out.getvalue()


def _post(port: int, body: bytes, token: str | None, chunked: bool = False) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "image/jpeg"}
    if token is not None:
        headers[live_route.TOKEN_HEADER] = token
    if chunked:  # no Content-Length: the size is known only while reading
        conn.putrequest("POST", live_route.ROUTE)
        for k, v in {**headers, "Transfer-Encoding": "chunked"}.items():
            conn.putheader(k, v)
        conn.endheaders()
        for k in range(0, len(body), 65536):
            piece = body[k : k + 65536]
            conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")
    else:
        conn.request("POST", live_route.ROUTE, body=body, headers=headers)
    res = conn.getresponse()
    status, payload = res.status, json.loads(res.read() or b"{}")
    conn.close()
    return status, payload


@pytest.fixture
def picture(run_dir) -> bytes:
    return _jpeg(next((run_dir.parent / "data").rglob("*.png")))


@pytest.mark.parametrize("threshold", [0.0, 0.6, 1.0])
def test_a_granted_view_gets_the_same_answer_as_through_a_rerun(
    server, run_dir, picture, threshold
) -> None:
    import base64

    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, threshold)
    status, answer = _post(server, picture, token)
    assert status == 200 and "error" not in answer
    rerun = answer_frame(
        {"id": "x", "seq": 1, "image": base64.b64encode(picture).decode()},
        str(run_dir),
        1.0,
        threshold,
    )["answer"]
    assert answer["bars"] == rerun["bars"] and answer["verdict"] == rerun["verdict"]
    probs = [p for _, p in answer["bars"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == 3
    assert answer["sure"] == (probs[0] >= threshold) and answer["threshold"] == threshold


def test_a_new_grant_for_the_same_view_changes_its_answers(server, run_dir, picture) -> None:
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, 0.0)
    assert _post(server, picture, token)[1]["sure"] is True
    live_route.grant(token, str(run_dir), 1.0, 1.01)  # the user moved the threshold
    _, answer = _post(server, picture, token)
    assert answer["sure"] is False and answer["verdict"].startswith("Not sure")


# ------------------------------------------------------------------ the unfamiliar check


def _cat() -> bytes:
    """A shipped everyday photo (a cat) as a camera JPEG: like none of the shapes."""
    from tl_core.data.foreign import pictures

    out = io.BytesIO()
    image = dict(pictures())["cat"]
    image.resize((320, 240)).save(out, "JPEG")
    return out.getvalue()


def _validation_pictures(run_dir: Path) -> list[bytes]:
    """The run's validation pictures as they are stored (the rows of its predictions)."""
    rows = json.loads((run_dir / "predictions.json").read_text())["rows"]
    return [(run_dir.parent / "data" / row["file"]).read_bytes() for row in rows]


def _check(run_dir: Path):
    from tl_core.training import familiarity

    found = familiarity.load(run_dir)
    assert found is not None, "training writes the unfamiliar check into the run"
    return found


def test_the_unfamiliar_verdict_wins_and_names_the_nearest_class() -> None:
    import numpy as np

    from tl_core.training.familiarity import UNFAMILIAR

    probs = np.array([0.1, 0.85, 0.05])
    said = live_route.verdict(probs, ["a", "b", "c"], 0.5, unfamiliar=True)
    assert said.unfamiliar and not said.sure and said.top == "b"
    assert said.text.startswith(UNFAMILIAR) and "'b' (85%)" in said.text
    plain = live_route.verdict(probs, ["a", "b", "c"], 0.5)
    assert not plain.unfamiliar and plain.sure and plain.text == "b (85%)"


def test_a_picture_unlike_the_training_pictures_reads_unfamiliar(server, run_dir) -> None:
    from tl_core.training.familiarity import UNFAMILIAR

    check = _check(run_dir)
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, 0.0, check.threshold)
    status, answer = _post(server, _cat(), token)
    assert status == 200 and "error" not in answer
    assert answer["unfamiliar"] is True and answer["sure"] is False  # even at 'Not sure' 0%
    assert answer["unfamiliarity"] > answer["unfamiliar_threshold"] == check.threshold
    assert answer["verdict"].startswith(UNFAMILIAR)
    assert answer["top"] == answer["bars"][0][0] and f"'{answer['top']}'" in answer["verdict"]


def test_its_own_validation_pictures_are_familiar(server, run_dir) -> None:
    import math

    check = _check(run_dir)
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, 0.0, check.threshold)
    answers = [_post(server, picture, token)[1] for picture in _validation_pictures(run_dir)]
    familiar = [a for a in answers if a["unfamiliar"] is False]
    # the threshold accepts that share of the validation pictures, scored in the same pass
    assert len(familiar) >= math.ceil(check.accept * len(answers) - 1e-9) >= 1
    for a in answers:  # (the score is rounded to 4 places in the answer)
        above = a["unfamiliarity"] - check.threshold
        assert (above > -1e-4) if a["unfamiliar"] else (above < 1e-4)
    for a in familiar:
        assert a["sure"] is True and a["verdict"].startswith(a["top"])  # a class answer


def test_without_an_unfamiliar_threshold_the_answer_is_as_before(server, run_dir) -> None:
    check = _check(run_dir)
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, 0.0)
    _, before = _post(server, _cat(), token)
    assert before["unfamiliar"] is False and before["unfamiliarity"] is None
    assert before["unfamiliar_threshold"] is None
    assert before["sure"] is True and before["verdict"].startswith(before["top"])
    live_route.grant(token, str(run_dir), 1.0, 0.0, check.threshold)
    _, checked = _post(server, _cat(), token)
    assert checked["unfamiliar"] is True and checked["bars"] == before["bars"]  # one pass


def test_the_fallback_through_a_rerun_checks_the_same_way(server, run_dir) -> None:
    import base64

    check = _check(run_dir)
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, 0.5, check.threshold)
    _, routed = _post(server, _cat(), token)
    message = {"id": "x", "seq": 1, "image": base64.b64encode(_cat()).decode()}
    rerun = answer_frame(message, str(run_dir), 1.0, 0.5, check.threshold)["answer"]
    assert rerun["unfamiliar"] is True
    for field in ("unfamiliar", "unfamiliarity", "unfamiliar_threshold", "verdict", "bars"):
        assert rerun[field] == routed[field]


def test_a_run_without_the_check_answers_as_before(server, run_dir, tmp_path) -> None:
    import shutil

    from tl_core.training import familiarity

    old = tmp_path / "run"  # as if trained before the check existed
    shutil.copytree(run_dir, old)
    (old / familiarity.FEATURES_FILE).unlink()
    (old / familiarity.REPORT_FILE).unlink()
    token = live_route.new_token()
    live_route.grant(token, str(old), 1.0, 0.0, _check(run_dir).threshold)
    status, answer = _post(server, _cat(), token)
    assert status == 200 and "error" not in answer
    assert answer["unfamiliar"] is False and answer["unfamiliarity"] is None
    assert answer["unfamiliar_threshold"] is None  # the view says the check is off
    assert answer["sure"] is True and answer["verdict"].startswith(answer["top"])


@pytest.mark.parametrize("token", [None, "", "made-up-token"])
def test_a_view_the_studio_did_not_draw_is_refused(server, picture, token) -> None:
    status, answer = _post(server, picture, token)
    assert status == 403 and answer == {"error": live_route.EXPIRED}


def test_a_view_unused_for_too_long_is_forgotten(server, run_dir, picture, monkeypatch) -> None:
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, 0.5)
    assert _post(server, picture, token)[0] == 200
    now = time.monotonic()
    monkeypatch.setattr(live_route.time, "monotonic", lambda: now + live_route.IDLE_S + 1)
    assert _post(server, picture, token)[0] == 403
    monkeypatch.undo()
    assert _post(server, picture, token)[0] == 403  # gone for good, not only late


def test_only_the_latest_views_are_kept(run_dir, monkeypatch) -> None:
    monkeypatch.setattr(live_route, "MAX_GRANTS", 3)
    tokens = [live_route.new_token() for _ in range(5)]
    for t in tokens:
        live_route.grant(t, str(run_dir), 1.0, 0.5)
    kept = [t for t in tokens if live_route._granted(t) is not None]
    assert kept == tokens[-3:]


@pytest.mark.parametrize("chunked", [False, True])
def test_more_than_one_frame_is_refused_before_it_is_read(server, run_dir, chunked) -> None:
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, 0.5)
    status, answer = _post(server, b"\xff" * (MAX_FRAME_BYTES + 1), token, chunked=chunked)
    assert status == 413 and answer == {"error": live_route.TOO_BIG}


@pytest.mark.parametrize("body", [b"", b"GIF89a not really", b"\x00" * 1000])
def test_what_is_not_a_picture_is_answered_in_words(server, run_dir, body) -> None:
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, 0.5)
    status, answer = _post(server, body, token)
    assert status == 200 and answer["error"] and "bars" not in answer


@pytest.mark.parametrize("damage", ["removed", "not_a_checkpoint"])
def test_a_run_gone_since_the_view_was_drawn_is_answered_in_words(
    server, run_dir, picture, tmp_path, damage
) -> None:
    import shutil

    import streamlit as st

    gone = tmp_path / "run"
    shutil.copytree(run_dir, gone)
    if damage == "removed":
        shutil.rmtree(gone)
    else:
        (gone / "best.pt").write_bytes(b"not a checkpoint")
    st.cache_resource.clear()
    token = live_route.new_token()
    live_route.grant(token, str(gone), 1.0, 0.5)
    status, answer = _post(server, picture, token)
    assert status == (410 if damage == "removed" else 200)
    assert answer["error"] and "bars" not in answer
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]


def test_app_py_serves_the_route_beside_the_pages() -> None:
    from streamlit.web.server.app_discovery import discover_asgi_app

    found = discover_asgi_app(ROOT / "app.py")
    assert found.is_asgi_app and found.import_string == "app:app"


def _studio(at) -> StudioState:
    """The session's own state after an AppTest run."""
    found = at.session_state[STATE_KEY]
    assert isinstance(found, StudioState)
    return found


@pytest.mark.parametrize("served", [False, True])
def test_the_live_view_is_granted_only_where_the_route_is_served(
    workspace, run_dir, monkeypatch, served
) -> None:
    import shutil
    from dataclasses import asdict

    from tl_core.config import TrainConfig
    from tl_core.runs.store import Store

    monkeypatch.setattr(live_route, "_MOUNTED", served)
    store = Store(workspace)
    project = store.create_project()
    store.set_data_dir(project.id, run_dir.parent / "data")
    cfg = TrainConfig(model="efficientnet_lite0", epochs=1)
    run = store.create_job(project.id, asdict(cfg), run_dir.parent / "data")
    shutil.copytree(run_dir, run.run_dir, dirs_exist_ok=True)
    store.update_job(run.id, status="finished", result={"val_accuracy": 1.0})
    at = app_test("app_pages/try_it.py", project.id, 120)
    assert not at.exception
    if not served:
        assert _studio(at).live_token is None  # frames go as trigger values
        return
    token = _studio(at).live_token
    found = live_route._granted(token)
    assert found is not None and Path(found.run_dir) == Path(run.run_dir)
    at.run()  # a rerun keeps the same view, and its grant
    assert _studio(at).live_token == token and live_route._granted(token) is not None
    with live_route._LOCK:  # as revoke() does when the model it showed before is deleted
        live_route._GRANTS.pop(token)
        live_route._REVOKED[token] = None
    at.run()  # the view starts afresh under a new token, for the run it shows now
    fresh = _studio(at).live_token
    assert fresh != token and live_route._granted(fresh) is not None
    assert live_route.revoked(token) and live_route._granted(token) is None


STACK_SCRIPT = """
import sys
from pathlib import Path

from tl_ui.session import import_model_stack

heavy = ("torch", "torchvision", "timm")
import_model_stack()
before = {m for m in sys.modules if m.split(".")[0] in heavy}
from tl_core.analysis.evaluation import load_model_checked
from tl_core.analysis.gradcam import heatmap
from tl_core.models.device import one_thread

run = Path(sys.argv[1])
model = load_model_checked(run)
picture = next((run.parent / "data").rglob("*.png"))
with one_thread():
    model.predict([picture.read_bytes()])
heatmap(model, picture, target_class=0)
after = {m for m in sys.modules if m.split(".")[0] in heavy}
print(sorted(after - before))
"""


def test_the_model_stack_holds_every_module_the_server_uses_for_a_model(run_dir) -> None:
    """Pages and the live route use models only after import_model_stack(), whose lock keeps
    two threads from importing torchvision at once (one would get a half-imported module):
    nothing of torch, torchvision or timm may be imported after it, outside the lock."""

    out = _python(STACK_SCRIPT, str(run_dir), timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------- frames larger than a camera's


def png_of(width: int, height: int, rows: int | None = None) -> bytes:
    """A PNG of one colour, built row by row (its pixels are never held here): a few hundred
    kB that decode to ``width * height * 3`` bytes (only its first ``rows`` when given: the
    rest of the file is cut off)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    idat = b"".join(packer.compress(row) for _ in range(height if rows is None else rows))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat + packer.flush())
    return b"\x89PNG\r\n\x1a\n" + chunks + (chunk(b"IEND", b"") if rows is None else b"")


def saved(size: tuple[int, int], fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(out, fmt, **options)
    return out.getvalue()


LARGE_FRAMES = {
    "png 9999x10000": lambda: png_of(9999, 10000),
    "png of 30000x30000, cut off (Pillow's bomb)": lambda: png_of(30000, 30000, rows=10),
    "jpeg 4000x300 (too long a side)": lambda: saved((4000, 300), "JPEG"),
    "png 2000x2000 (too many pixels)": lambda: saved((2000, 2000), "PNG"),
    "gif 2000x2000": lambda: saved((2000, 2000), "GIF"),
    "webp 2000x2000": lambda: saved((2000, 2000), "WEBP"),
    "tiff 2000x2000": lambda: saved((2000, 2000), "TIFF", compression="tiff_deflate"),
}


@pytest.mark.parametrize("kind", list(LARGE_FRAMES))
def test_a_frame_larger_than_a_camera_gives_is_refused_in_one_sentence(
    server, run_dir, kind
) -> None:
    from tl_ui.camera import MAX_FRAME_PIXELS, MAX_FRAME_SIDE

    body = LARGE_FRAMES[kind]()
    assert len(body) <= MAX_FRAME_BYTES  # small files: only their pixels are too many
    if "bomb" not in kind:  # (Pillow refuses to open that one at all)
        with Image.open(io.BytesIO(body)) as header:
            w, h = header.size
        assert max(w, h) > MAX_FRAME_SIDE or w * h > MAX_FRAME_PIXELS
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, 0.5)
    status, answer = _post(server, body, token)
    assert status == 413 and answer == {"error": live_route.TOO_BIG}


def test_the_fallback_through_a_rerun_refuses_them_too(run_dir) -> None:
    import base64

    image = base64.b64encode(LARGE_FRAMES["jpeg 4000x300 (too long a side)"]()).decode()
    answer = answer_frame({"id": "x", "seq": 1, "image": image}, str(run_dir), 1.0, 0.5)
    assert answer["answer"]["error"] == live_route.TOO_BIG and "bars" not in answer["answer"]


@pytest.mark.parametrize(("size", "fmt"), [((1920, 1080), "JPEG"), ((640, 480), "PNG")])
def test_a_frame_of_camera_size_is_answered(server, run_dir, size, fmt) -> None:
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, 0.0)
    status, answer = _post(server, saved(size, fmt), token)
    assert status == 200 and "error" not in answer and len(answer["bars"]) == 3


# ------------------------------------------------------------ one frame at work per view


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_a_waiting_frame_gives_way_to_a_newer_one_of_the_same_view(
    server, run_dir, picture
) -> None:
    """While the forward passes are taken (the test holds the turn), a view's first frame
    waits in the line, its second waits behind it, and its third takes the second's place:
    the second is answered 'superseded' at once, the first and the third get their bars."""
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, 0.0)
    replies: dict[str, tuple[int, dict]] = {}

    def send(name: str) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: replies.update({name: _post(server, picture, token)})
        )
        thread.start()
        return thread

    line = live_route._PREDICT
    with line:
        first = send("first")
        _wait_for(lambda: len(line._line) == 2, "the first frame waits for its turn")
        second = send("second")
        _wait_for(lambda: token in live_route._VIEWS._waiting, "the second frame waits")
        third = send("third")
        second.join(30)
        assert replies["second"] == (409, live_route.SUPERSEDED)  # answered while held
        assert "first" not in replies and "third" not in replies
    for thread in (first, third):
        thread.join(60)
    for name in ("first", "third"):
        status, answer = replies[name]
        assert status == 200 and len(answer["bars"]) == 3


# ----------------------------------------------------------------- a model deleted meanwhile


def _removed(port: int, picture: bytes, token: str) -> bool:
    """Whether the view's next frame is answered "This model was removed" (410)."""
    status, answer = _post(port, picture, token)
    return status == 410 and answer == {"error": live_route.REMOVED}


def _delete_control(project_id: str) -> None:
    """The sidebar's "Delete this project" on its own."""
    from tl_ui.session import delete_control, get_store

    project = get_store().project(project_id)
    if project is not None:
        delete_control(project)


def _project_with_run(workspace: Path, run_dir: Path, folder: Path | None = None):
    """A project of the store with a finished run holding a copy of ``run_dir``'s model (in
    ``folder``, a folder of the user's choice, or the workspace)."""
    import shutil
    from dataclasses import asdict

    from tl_core.config import TrainConfig
    from tl_core.runs.store import Store

    store = Store(workspace)
    project = store.create_project()
    store.set_data_dir(project.id, run_dir.parent / "data")
    cfg = TrainConfig(model="efficientnet_lite0", epochs=1)
    run = store.create_job(project.id, asdict(cfg), run_dir.parent / "data", run_dir=folder)
    shutil.copytree(run_dir, run.run_dir, dirs_exist_ok=True)
    store.update_job(run.id, status="finished", result={"val_accuracy": 1.0})
    return store, project, store.job(run.id)


def test_deleting_a_project_stops_its_live_views_at_once(
    workspace, run_dir, picture, server, tmp_path
) -> None:
    """The run is in a folder of the user's choice, which the deletion keeps: only the
    revocation can stop its views, and its cached model must go too."""
    from streamlit.testing.v1 import AppTest

    from tl_ui.runs import trained_model

    store, project, run = _project_with_run(workspace, run_dir, tmp_path / "chosen")
    tokens = [live_route.new_token() for _ in range(2)]
    for token in tokens:
        live_route.grant(token, run.run_dir, 1.0, 0.0)
        assert _post(server, picture, token)[0] == 200
    cached = trained_model(run.run_dir)
    assert trained_model(run.run_dir) is cached
    at = AppTest.from_function(_delete_control, args=(project.id,), default_timeout=60).run()
    at.checkbox(key="delete_project_sure").check().run()
    at.button(key="delete_project").click().run()
    assert not at.exception and store.project(project.id) is None
    assert Path(run.run_dir, "best.pt").is_file()  # kept: the user's own folder
    for token in tokens:
        assert _removed(server, picture, token)
    assert trained_model(run.run_dir) is not cached  # loaded again, from the kept folder
    # revoked for good: the page granting the same view again does not bring it back
    assert live_route.grant(tokens[0], run.run_dir, 1.0, 0.0) is False
    assert _removed(server, picture, tokens[0])
    fresh = live_route.new_token()
    assert live_route.grant(fresh, run.run_dir, 1.0, 0.0) is False  # nor a new view of it
    assert _removed(server, picture, fresh)


DELETE_ELSEWHERE = {
    "project deleted": "from tl_core import service; service.delete_project(store, run.project_id)",
    "run discarded": "from tl_core.runs import jobs; jobs.discard_run(store, run.id)",
}


@pytest.mark.parametrize("how", list(DELETE_ELSEWHERE))
def test_a_model_deleted_by_another_process_is_answered_removed(
    workspace, run_dir, picture, server, how
) -> None:

    from tl_core.errors import StudioError
    from tl_ui.runs import trained_model

    _, _, run = _project_with_run(workspace, run_dir)
    tokens = [live_route.new_token() for _ in range(2)]
    for token in tokens:
        live_route.grant(token, run.run_dir, 1.0, 0.0)
        assert _post(server, picture, token)[0] == 200  # its model is now cached
    script = (
        "import sys; from tl_core.runs.store import Store; store = Store(sys.argv[1]); "
        f"run = store.job(sys.argv[2]); {DELETE_ELSEWHERE[how]}"
    )
    _python(script, str(workspace), run.id, timeout=120)
    assert not Path(run.run_dir).exists()
    assert _removed(server, picture, tokens[0])
    with pytest.raises(StudioError):  # not answered from the cache any more
        trained_model(run.run_dir)
    # the other view of that run is stopped too, and stays so
    assert _removed(server, picture, tokens[1])
    assert live_route.grant(tokens[1], run.run_dir, 1.0, 0.0) is False


def test_the_route_names_the_model_file_as_training_writes_it() -> None:
    from tl_core.training.checkpoint import BEST

    assert live_route.MODEL_FILE == BEST


def _python(script: str, *args: str, timeout: float) -> CompletedProcess[str]:
    """``script`` run by a fresh Python in the repository (as another process would); it
    must succeed."""
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done
