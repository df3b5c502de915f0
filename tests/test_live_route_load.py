"""The live route under load, on a real server: a frame of far too many pixels costs the
server neither time nor memory, and one view flooding the route with frames does not hold up
another view's guesses by more than about one frame's time."""

from __future__ import annotations

import io
import statistics
import threading
import time
from pathlib import Path

import pytest
from test_live_route import _jpeg, _post, png_of, run_dir, server

from tl_ui import live_route

__all__ = ["run_dir", "server"]  # the fixtures, shared with test_live_route

BOMB = (9999, 10000)  # a 300 kB PNG that decodes to 300 MB
HEAVY = (2048, 1536)  # the most pixels a frame may have (tl_ui.camera.MAX_FRAME_*)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_of(*BOMB)


@pytest.fixture(scope="module")
def heavy() -> bytes:
    """The heaviest frame the route still decodes: a PNG of :data:`HEAVY` (a gradient, so its
    9 MB of pixels fit in a small file)."""
    from PIL import Image

    image = Image.linear_gradient("L").resize(HEAVY).convert("RGB")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_the_heavy_frame_is_the_largest_the_route_takes(heavy) -> None:
    from tl_ui.camera import MAX_FRAME_BYTES, MAX_FRAME_PIXELS, MAX_FRAME_SIDE, frame_too_large

    assert HEAVY == (MAX_FRAME_SIDE, MAX_FRAME_PIXELS // MAX_FRAME_SIDE)
    assert not frame_too_large(heavy) and len(heavy) < MAX_FRAME_BYTES


@pytest.fixture
def picture(run_dir: Path) -> bytes:
    return _jpeg(next((run_dir.parent / "data").rglob("*.png")))


def _view(run_dir: Path, threshold: float = 0.0) -> str:
    token = live_route.new_token()
    live_route.grant(token, str(run_dir), 1.0, threshold)
    return token


def _timed(port: int, body: bytes, token: str) -> tuple[float, int, dict]:
    start = time.perf_counter()
    status, answer = _post(port, body, token)
    return time.perf_counter() - start, status, answer


def _memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Start counting this process's peak memory (VmHWM) afresh; False where Linux won't."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _memory_kb("VmHWM") <= _memory_kb("VmRSS") + 1024


def test_a_frame_of_far_too_many_pixels_is_refused_before_it_is_decoded(
    server, run_dir, bomb, picture
) -> None:
    token = _view(run_dir)
    assert _post(server, picture, token)[0] == 200  # the model is loaded, the server warm
    assert len(bomb) < 1_000_000
    peak_known = _reset_peak()
    before = _memory_kb("VmRSS")
    took, status, answer = _timed(server, bomb, token)
    assert status == 413 and answer == {"error": live_route.TOO_BIG}
    assert took < 1.0, f"refusing it took {took:.2f} s"  # decoding it takes seconds
    if peak_known:  # decoding it would hold 300 MB at least
        grew = (_memory_kb("VmHWM") - before) / 1024
        assert grew < 100, f"the server grew by {grew:.0f} MB"
    assert _post(server, picture, token)[0] == 200  # the view goes on


def _flood(
    port: int, body: bytes, token: str, senders: int, stop: threading.Event, seen: dict[int, int]
) -> list[threading.Thread]:
    """``senders`` threads posting ``body`` for ``token`` until ``stop``, counting in ``seen``
    the statuses they get."""
    lock = threading.Lock()

    def send() -> None:
        while not stop.is_set():
            status = _post(port, body, token)[0]
            with lock:
                seen[status] = seen.get(status, 0) + 1

    threads = [threading.Thread(target=send, daemon=True) for _ in range(senders)]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.parametrize("kind", ["bomb", "heavy"])
def test_one_view_flooding_the_route_does_not_hold_up_another(
    server, run_dir, picture, bomb, heavy, kind
) -> None:
    """Twenty frames at once from one view, sent again as soon as answered; meanwhile another
    view's frames are answered within about one frame's time of their usual time."""
    body = bomb if kind == "bomb" else heavy
    other, flooder = _view(run_dir), _view(run_dir)
    for _ in range(2):  # warm: the model, the connections, the decoders
        assert _post(server, picture, other)[0] == 200
    alone = [_timed(server, picture, other)[0] for _ in range(5)]
    one_heavy = min(_timed(server, heavy, flooder)[0] for _ in range(3))
    stop = threading.Event()
    seen: dict[int, int] = {}
    threads = _flood(server, body, flooder, 20, stop, seen)
    try:
        deadline = time.monotonic() + 60
        while sum(seen.values()) < 20:
            assert time.monotonic() < deadline, "the flooding view got no answers"
            time.sleep(0.01)
        during = []
        for _ in range(5):
            took, status, answer = _timed(server, picture, other)
            assert status == 200 and len(answer["bars"]) == 3
            during.append(took)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    bound = max(alone) + 3 * one_heavy + 0.5  # a frame of the flood ahead of it, and room
    note = (
        f"alone {statistics.median(alone):.3f} s (max {max(alone):.3f}), one heavy frame "
        f"{one_heavy:.3f} s, during the flood max {max(during):.3f} s; answers {seen}"
    )
    print(note)
    assert max(during) < bound, note
    if kind == "bomb":
        assert set(seen) == {413}, note
    else:  # the flood's frames mostly give way to its own newer ones
        assert seen.get(409, 0) > 0 and seen.get(200, 0) > 0, note
