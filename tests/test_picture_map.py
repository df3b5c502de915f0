"""The picture map's Python side (tl_ui.picture_map) and its thumbnails' route
(tl_ui.thumb_route): what the browser gets, what comes back, and what the route serves."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient
from streamlit.testing.v1 import AppTest

from tl_ui import picture_map as pm
from tl_ui import thumb_route

MB = 1_000_000


def _decode(payload: dict) -> tuple[np.ndarray, np.ndarray]:
    xy = np.frombuffer(base64.b64decode(payload["xy"]), "<u2").reshape(-1, 2)
    groups = np.frombuffer(base64.b64decode(payload["groups"]), "<i2")
    return xy.astype(np.float64) / pm.QUANT, groups


def _big(n: int, text_len: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    groups = rng.integers(-1, 12, n)
    texts = [
        (f"images/class_{g}/IMG_{i:06d}_" + "é" * text_len)[:text_len] for i, g in enumerate(groups)
    ]
    return rng.normal(size=(n, 2)) * 5, groups, texts


# ------------------------------------------------------------------------------ the payload


def test_positions_are_fitted_to_the_unit_square_keeping_their_shape() -> None:
    xy = np.array([[10.0, 5.0], [30.0, 5.0], [20.0, 10.0]])  # twice as wide as high
    unit = pm.quantise(xy).astype(np.float64) / pm.QUANT
    assert unit[:, 0].min() == 0 and unit[:, 0].max() == 1
    # the same scale on both axes: the height is half the width, centred
    assert unit[:, 1].max() - unit[:, 1].min() == pytest.approx(0.25, abs=2 / pm.QUANT)
    assert (unit[:, 1].max() + unit[:, 1].min()) / 2 == pytest.approx(0.5, abs=2 / pm.QUANT)
    # points already in the unit square, spanning it, stay where they are
    square = np.random.default_rng(1).random((500, 2))
    square[0], square[1] = (0, 0), (1, 1)
    back = pm.quantise(square).astype(np.float64) / pm.QUANT
    assert np.abs(back - square).max() <= 0.5 / pm.QUANT + 1e-12
    with pytest.raises(ValueError, match="not numbers"):
        pm.quantise(np.array([[0.0, np.nan], [1.0, 1.0]]))


def test_the_payload_round_trips_positions_labels_and_texts() -> None:
    xy = np.array([[0.0, 0.0], [1.0, 1.0], [0.25, 0.75], [0.5, 0.5]])
    payload = pm.map_payload(
        xy, [0, -1, 1, 1], ["cat", "dog"], ["a.png", "two\nlines", "c", "d"], "/t/", [3, 9, -2]
    )
    pos, groups = _decode(payload)
    assert np.abs(pos - xy).max() <= 1 / pm.QUANT
    assert groups.tolist() == [0, -1, 1, 1]
    assert payload["texts"].split("\n") == ["a.png", "two lines", "c", "d"]
    assert payload["names"] == ["cat", "dog"] and payload["n"] == 4
    assert payload["colours"] == [pm.group_colour(0), pm.group_colour(1)]
    marked = np.frombuffer(base64.b64decode(payload["highlight"]), "<u4").tolist()
    assert marked == [3]  # out of range left out
    assert payload["thumbs"] == "/t/"
    json.dumps(payload)  # JSON as it is


def test_sig_changes_with_the_dots_only() -> None:
    xy = np.array([[0.0, 0.0], [1.0, 1.0]])
    base = pm.map_payload(xy, [0, 1], ["a", "b"], ["x", "y"])
    assert pm.map_payload(xy, [0, 1], ["a", "b"], ["x", "y"], "/t/", [1])["sig"] == base["sig"]
    assert pm.map_payload(xy, [0, 0], ["a", "b"], ["x", "y"])["sig"] != base["sig"]
    assert pm.map_payload(xy, [0, 1], ["a", "c"], ["x", "y"])["sig"] != base["sig"]
    assert pm.map_payload(xy, [0, 1], ["a", "b"], ["x", "z"])["sig"] != base["sig"]
    moved = np.array([[0.0, 0.0], [1.0, 0.5]])
    assert pm.map_payload(moved, [0, 1], ["a", "b"], ["x", "y"])["sig"] != base["sig"]


@pytest.mark.parametrize("text_len", [40, 400])
def test_twenty_thousand_points_stay_under_two_megabytes(text_len: int) -> None:
    xy, groups, texts = _big(20_000, text_len)
    payload = pm.map_payload(xy, groups, [f"class_{k}" for k in range(12)], texts, "/t/x/")
    size = len(json.dumps(payload))
    assert size < 2 * MB, size
    lines = payload["texts"].split("\n")
    assert len(lines) == 20_000
    assert all(line.startswith("images/class_") for line in lines)  # shortened, not dropped
    assert len(json.dumps(payload["texts"])) <= pm.TEXT_BUDGET


def test_wrong_inputs_are_said_plainly() -> None:
    xy = np.zeros((3, 2))
    with pytest.raises(ValueError, match="3 points but 2 labels"):
        pm.map_payload(xy, [0, 0], ["a"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="outside -1"):
        pm.map_payload(xy, [0, 1, 0], ["a"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="3 points but 1 hover texts"):
        pm.map_payload(xy, [0, 0, -1], ["a"], ["x"])
    with pytest.raises(ValueError, match="one \\(x, y\\) position"):
        pm.map_payload(np.zeros((3, 3)), [0, 0, 0], ["a"], ["x", "y", "z"])


def test_group_colours_are_distinct_and_unlabelled_is_grey() -> None:
    first = [pm.group_colour(k) for k in range(len(pm.PALETTE))]
    assert len(set(first)) == len(first) and pm.UNLABELLED_COLOUR not in first
    assert pm.group_colour(-1) == pm.UNLABELLED_COLOUR
    later = pm.group_colour(len(pm.PALETTE) + 3)
    assert len(later) == 7 and later.startswith("#") and int(later[1:], 16) >= 0


def test_a_selection_from_the_browser_is_checked() -> None:
    found = pm.read_selection({"id": "s1", "indices": [5, 2, 2, 99, -1, True, "3", 0]}, 10)
    assert found == pm.MapSelection([0, 2, 5], "s1")
    assert pm.read_selection({"id": "", "indices": [1]}, 10) is None
    assert pm.read_selection({"id": "x" * 65, "indices": [1]}, 10) is None
    assert pm.read_selection({"id": "s", "indices": "1,2"}, 10) is None
    assert pm.read_selection(None, 10) is None
    assert pm.read_selection({"id": "s", "indices": []}, 10) == pm.MapSelection([], "s")


# ------------------------------------------------------------------------ on a page (AppTest)


def _page() -> None:
    import numpy as np
    import streamlit as st

    from tl_ui.picture_map import ThumbSource, clear_selection, picture_map

    if st.session_state.get("clear"):
        clear_selection("map")
    xy = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.2]])
    thumbs = ThumbSource(st.session_state.get("root", "."), ["a.png", "b.png", "c.png"])
    sel = picture_map(xy, [0, -1, 1], ["cat", "dog"], ["a", "b", "c"], thumbs, key="map")
    st.write("nothing selected" if sel is None else f"{sel.indices} {sel.id}")


def _sent(at: AppTest) -> dict:
    return json.loads(at.get("bidi_component")[0].proto.json)


@pytest.mark.parametrize("served", [False, True])
def test_the_page_gets_the_selection_once_until_it_is_cleared(
    tmp_path, monkeypatch, served
) -> None:
    monkeypatch.setattr(thumb_route, "mounted", lambda: served)
    at = AppTest.from_function(_page)
    at.session_state["root"] = str(tmp_path)
    at.run(timeout=60)
    assert at.markdown[0].value == "nothing selected"
    sent = _sent(at)
    assert sent["selection"] is None and sent["cleared"] == ""
    # thumbnails only from a server that has the route
    assert sent["thumbs"].startswith(thumb_route.PREFIX) if served else sent["thumbs"] == ""
    at.session_state["map"] = {"selection": {"id": "abc", "indices": [2, 0, 7]}}
    at.run(timeout=60)
    assert at.markdown[0].value == "[0, 2] abc"
    assert _sent(at)["selection"] == {"id": "abc", "indices": [0, 2]}  # a new view's marks
    at.session_state["clear"] = True
    at.run(timeout=60)
    assert at.markdown[0].value == "nothing selected"
    assert _sent(at)["cleared"] == "abc"  # the browser drops its marks
    at.session_state["map"] = {"selection": {"id": "def", "indices": [1]}}
    at.session_state["clear"] = False
    at.run(timeout=60)
    assert at.markdown[0].value == "[1] def"  # a new selection counts again


# ------------------------------------------------------------------------------- the route


def _png(path: Path, size: tuple[int, int] = (300, 200), colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def client() -> TestClient:
    return TestClient(Starlette(routes=thumb_route.routes()))


def test_a_granted_token_serves_small_jpegs(tmp_path, client) -> None:
    root = tmp_path / "data"
    _png(root / "images" / "cat" / "0.png", (300, 200))
    _png(root / "images" / "dog" / "1.png", (40, 90), (20, 20, 220))
    token = thumb_route.grant(root, ["images/cat/0.png", str(root / "images/dog/1.png")])
    assert thumb_route.mounted()
    first = client.get(f"{thumb_route.url_prefix(token)}0")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(first.content)) as image:
        assert image.format == "JPEG" and image.size == (thumb_route.SIDE, 85)
        assert image.convert("RGB").getpixel((60, 40))[0] > 150  # the picture's red
    second = client.get(f"{thumb_route.url_prefix(token)}1")
    with Image.open(io.BytesIO(second.content)) as image:
        assert image.size == (40, 90)  # never enlarged
    # the same folder and list: the same token, still valid
    assert thumb_route.grant(root, ["images/cat/0.png", str(root / "images/dog/1.png")]) == token


def test_wrong_tokens_and_indices_are_not_found(tmp_path, client) -> None:
    root = tmp_path / "data"
    _png(root / "a.png")
    token = thumb_route.grant(root, ["a.png"])
    for url in (
        f"/api/thumb/{token}x/0",
        "/api/thumb/nothing/0",
        f"/api/thumb/{token}/1",
        f"/api/thumb/{token}/-1",
        f"/api/thumb/{token}/a",
    ):
        found = client.get(url)
        assert found.status_code == 404, url
        assert found.headers["content-type"] != "image/jpeg"
    assert client.post(f"/api/thumb/{token}/0").status_code == 405


def test_no_file_outside_the_data_folder_is_served(tmp_path, client) -> None:
    root = tmp_path / "data"
    _png(root / "inside.png")
    secret = _png(tmp_path / "secret.png")  # a picture beside the data folder
    os.symlink(secret, root / "link.png")
    names = ["../secret.png", str(secret), "link.png", "sub/../../secret.png", "inside.png"]
    token = thumb_route.grant(root, names)
    codes = [client.get(f"/api/thumb/{token}/{i}").status_code for i in range(len(names))]
    assert codes == [404, 404, 404, 404, 200]


def test_what_is_not_a_picture_is_not_found(tmp_path, client) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.png").write_text("not a picture")
    (root / "folder.png").mkdir()
    token = thumb_route.grant(root, ["notes.png", "folder.png", "missing.png"])
    assert [client.get(f"/api/thumb/{token}/{i}").status_code for i in range(3)] == [404] * 3


def test_tokens_are_forgotten_when_idle_or_too_many(tmp_path, client, monkeypatch) -> None:
    root = tmp_path / "data"
    _png(root / "a.png")
    monkeypatch.setattr(thumb_route, "IDLE_S", 0.05)
    idle = thumb_route.grant(root, ["a.png"])
    time.sleep(0.1)
    assert client.get(f"/api/thumb/{idle}/0").status_code == 404
    fresh = thumb_route.grant(root, ["a.png"])  # a new token for the same list
    monkeypatch.setattr(thumb_route, "IDLE_S", 3600.0)
    assert fresh != idle and client.get(f"/api/thumb/{fresh}/0").status_code == 200
    # at most MAX_FILES_HELD names for all tokens: the least recently used go first
    monkeypatch.setattr(thumb_route, "MAX_FILES_HELD", 4)
    tokens = [thumb_route.grant(root, ["a.png"] * 2 + [f"x{k}"]) for k in range(3)]
    assert client.get(f"/api/thumb/{tokens[0]}/0").status_code == 404
    assert client.get(f"/api/thumb/{tokens[2]}/0").status_code == 200
