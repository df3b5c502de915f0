"""The live camera's guesses over plain HTTP: one frame in, its bars out, no rerun.

A guess through Streamlit is a trigger value and a fragment rerun: the rerun, the messages
around it and the browser redrawing the fragment cost several times the 30 ms the model
takes, so the class bars would move only two or three times a second on a 2-core machine.
This module adds one route to the app's own server (``app.py``'s ``st.App``): the browser
POSTs a JPEG to :data:`ROUTE` and gets the answer as JSON, the bars being drawn by the
component itself. The frames go to the server the page came from and nowhere else, and
nothing is kept.

Only a page the studio drew may ask: each live view gets an unguessable token
(:func:`grant`), valid for the run it shows and forgotten after :data:`IDLE_S` unused, so an
access code (``TL_STUDIO_ACCESS_CODE``) guards this route as it guards the pages. When the
app is started without the route (``streamlit run studio.py``) :func:`mounted` is False and
the live view sends frames as trigger values instead, as before.

With an unfamiliar threshold (and a run that has the check, ``familiarity.npz``) the same
pass also says how unlike every training picture the frame is: above the threshold the
answer is "Unfamiliar", whatever the bars say (:mod:`tl_core.training.familiarity`).

One view never holds up another's: a frame whose header states more pixels than a camera
gives is refused before a pixel is decoded (:func:`tl_ui.camera.frame_too_large`); a frame
is decoded beside the others and only the forward pass takes turns, in arrival order; and a
view has one frame at work at a time, a newer one taking the place of the one still
waiting (that one is answered ``{"superseded": true}`` at once). Deleting a project or a
run stops its views for good (:func:`revoke`), and each frame first checks that its run's
model is still there: the next frame reads :data:`REMOVED`.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tl_core.errors import StudioError
from tl_core.training.familiarity import UNFAMILIAR
from tl_ui.camera import MAX_FRAME_BYTES, frame_too_large

__all__ = [
    "ROUTE",
    "TOKEN_HEADER",
    "Verdict",
    "answer_image",
    "grant",
    "mounted",
    "new_token",
    "revoke",
    "revoked",
    "routes",
    "still_there",
    "verdict",
]

ROUTE = "/api/live-guess"
TOKEN_HEADER = "X-TL-Live"
IDLE_S = 1800.0  # a token unused for this long is forgotten (the page then says: reload)
MAX_GRANTS = 1000  # the oldest go first beyond this many live views
TOP_BARS = 5
MODEL_FILE = "best.pt"  # tl_core.training.checkpoint.BEST (importing it here would bring torch)
EXPIRED = "This live view has expired. Reload the page to start it again."
NOT_A_PICTURE = "That frame was not a picture; the next one may be."
TOO_BIG = "That frame was too large to be one camera picture."
REMOVED = "This model was removed; reload the page to choose another one."
SUPERSEDED: dict[str, Any] = {"superseded": True}  # a newer frame of the same view came


class _Turns:
    """One forward pass at a time in the web server, in the order the frames asked (a plain
    lock lets any waiter in next): a second session's frame waits its turn instead of
    splitting the cores between two passes, and never waits behind more than one frame of
    each other view (see :class:`_Views`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._line: deque[object] = deque()

    def __enter__(self) -> None:
        me = object()
        with self._cond:
            self._line.append(me)
            try:
                self._cond.wait_for(lambda: self._line[0] is me)
            except BaseException:
                self._line.remove(me)
                self._cond.notify_all()
                raise

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._line.popleft()
            self._cond.notify_all()


class _Views:
    """One frame at work per live view (decoded, then predicted); at most one more waits, and
    a newer frame of the same view takes its place: a flood of frames from one view holds
    one place in the line for the forward pass, and its newest frame is the one answered."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy: set[str] = set()
        self._waiting: dict[str, list[bool]] = {}  # view -> [superseded] of its waiting frame

    def enter(self, view: str) -> bool:
        """Wait until the view's frame at work is done; False when a newer frame of the view
        came meanwhile (this one is not answered)."""
        me = [False]
        with self._cond:
            older = self._waiting.pop(view, None)
            if older is not None:
                older[0] = True
                self._cond.notify_all()
            if view in self._busy:
                self._waiting[view] = me
                self._cond.wait_for(lambda: me[0] or view not in self._busy)
                if me[0]:
                    return False
                del self._waiting[view]
            self._busy.add(view)
            return True

    def leave(self, view: str) -> None:
        """The view's frame at work is answered: its waiting frame, if any, goes next."""
        with self._cond:
            self._busy.discard(view)
            self._cond.notify_all()


_PREDICT = _Turns()
_VIEWS = _Views()


@dataclass(frozen=True)
class Verdict:
    """What the page says of one picture: the top class, whether it is sure, the sentence."""

    top: str
    sure: bool
    text: str
    probability: float
    unfamiliar: bool = False  # unlike every training picture: no class answer at all


def verdict(
    probs: np.ndarray, classes: list[str], threshold: float, unfamiliar: bool = False
) -> Verdict:
    """The top class, or "not sure" when it is below ``threshold`` (as for single pictures),
    or "unfamiliar" (with the nearest class) when the picture is unlike every training one."""
    k = int(np.argmax(probs))
    p = float(probs[k])
    top = classes[k]  # plain text: pages pass it through literal(), the live view sets textContent
    if unfamiliar:
        return Verdict(top, False, f"{UNFAMILIAR} The nearest is '{top}' ({p:.0%}).", p, True)
    if p >= threshold:
        return Verdict(top, True, f"{top} ({p:.0%})", p)
    return Verdict(
        top,
        False,
        f"Not sure: the best guess is '{top}' at only {p:.0%}. The picture may show "
        "none of your classes.",
        p,
    )


def answer_image(
    data: bytes | None,
    run_dir: str,
    temperature: float,
    threshold: float,
    unfamiliar_threshold: float | None = None,
) -> dict[str, Any]:
    """Bars and verdict for one picture from the camera, or ``error``: one sentence.

    With ``unfamiliar_threshold`` and a run that has the unfamiliar check, the answer says
    whether the picture is unfamiliar (its ``unfamiliarity`` above the threshold); else
    ``unfamiliar`` is False and ``unfamiliarity`` None, as before the check existed."""
    return _respond(data, run_dir, temperature, threshold, unfamiliar_threshold)[1]


def _respond(
    data: bytes | None,
    run_dir: str,
    temperature: float,
    threshold: float,
    unfamiliar_threshold: float | None = None,
    view: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the answer for one frame of ``view`` (None: a frame sent as a
    trigger value, one at a time by its session's script): refused before decoding when too
    large, :data:`REMOVED` when the run's model is gone, :data:`SUPERSEDED` when a newer
    frame of the same view came while it waited."""
    if not data:
        return 200, {"threshold": threshold, "error": NOT_A_PICTURE}
    if not still_there(run_dir):
        revoke([run_dir])
        return 410, {"error": REMOVED}
    if frame_too_large(data):
        return 413, {"error": TOO_BIG}
    if view is not None and not _VIEWS.enter(view):
        return 409, dict(SUPERSEDED)
    try:
        return 200, _guess(data, run_dir, temperature, threshold, unfamiliar_threshold)
    finally:
        if view is not None:
            _VIEWS.leave(view)


def _guess(
    data: bytes,
    run_dir: str,
    temperature: float,
    threshold: float,
    unfamiliar_threshold: float | None,
) -> dict[str, Any]:
    """Decode the frame (beside other views' frames), then its forward pass in turn."""
    from tl_ui.runs import trained_model

    try:  # a run damaged since the view was drawn: one sentence, like a bad frame
        model = trained_model(run_dir)  # torch and the rest come with it, one importer at a time
        from tl_core.models.device import one_thread

        crop = model.tensor(data, "The frame")
        # one picture: one thread is as fast alone and far steadier beside other work
        with _PREDICT, one_thread():
            guessed = model.guess_crops(crop[None], temperature=temperature)
    except StudioError as exc:
        return {"threshold": threshold, "error": str(exc)}
    probs = guessed.probs[0]
    far = guessed.unfamiliarity
    checked = unfamiliar_threshold is not None and far is not None
    score = round(float(far[0]), 4) if checked and far is not None else None
    unfamiliar = bool(guessed.unfamiliar(unfamiliar_threshold)[0])  # False without a check
    said = verdict(probs, list(model.classes), threshold, unfamiliar)
    order = np.argsort(-probs)[:TOP_BARS]
    bars = [[model.classes[int(i)], round(float(probs[i]), 4)] for i in order]
    return {
        "threshold": threshold,
        "unfamiliar_threshold": unfamiliar_threshold if checked else None,
        **{"top": said.top, "sure": said.sure, "verdict": said.text, "bars": bars},
        "unfamiliar": unfamiliar,
        "unfamiliarity": score,
    }


# ------------------------------------------------------------------------------ who may ask


@dataclass
class _Grant:
    run_dir: str
    temperature: float
    threshold: float
    used: float
    unfamiliar_threshold: float | None = None
    key: str = ""  # the run's folder, resolved (what revoke() compares)


_GRANTS: OrderedDict[str, _Grant] = OrderedDict()
_REVOKED: OrderedDict[str, None] = OrderedDict()  # views of a deleted model: REMOVED for good
_GONE: OrderedDict[str, tuple[int, int] | None] = OrderedDict()  # revoked runs: their model
_LOCK = threading.Lock()
_MOUNTED = False


def new_token() -> str:
    """A token for one live view (kept in its session)."""
    return secrets.token_urlsafe(24)


def _key(run_dir: str | Path) -> str:
    return str(Path(run_dir).resolve())


def _model_stamp(run_dir: str | Path) -> tuple[int, int] | None:
    """Which model file the run holds (inode and time), None when it has none."""
    try:
        found = os.stat(Path(run_dir) / MODEL_FILE)
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns


def still_there(run_dir: str | Path) -> bool:
    """Whether the run still has its trained model (one ``stat``: checked for every frame)."""
    return os.path.isfile(Path(run_dir) / MODEL_FILE)


def grant(
    token: str,
    run_dir: str,
    temperature: float,
    threshold: float,
    unfamiliar_threshold: float | None = None,
) -> bool:
    """Let ``token`` ask for guesses of the model of ``run_dir`` (replacing what it had);
    ``unfamiliar_threshold`` None: no unfamiliar check on its answers.

    False, and nothing granted, for a token :func:`revoke` stopped (a new view needs a new
    token) or a run whose model was revoked and not trained again since: that token's frames
    read :data:`REMOVED`."""
    key = _key(run_dir)
    with _LOCK:
        if token in _REVOKED:
            return False
        if key in _GONE:
            if _GONE[key] == _model_stamp(run_dir):
                _REVOKED[token] = None
                _GRANTS.pop(token, None)
                return False
            del _GONE[key]  # a new model in the same folder
        _GRANTS[token] = _Grant(
            run_dir, temperature, threshold, time.monotonic(), unfamiliar_threshold, key
        )
        _GRANTS.move_to_end(token)
        while len(_GRANTS) > MAX_GRANTS:
            _GRANTS.popitem(last=False)
        return True


def revoke(run_dirs: Iterable[str | Path]) -> None:
    """Stop the live views of these runs for good, their project or the runs being deleted:
    their next frames read :data:`REMOVED`, and the runs' models leave the server's cache."""
    folders = list(run_dirs)
    keys = {_key(d): _model_stamp(d) for d in folders}
    with _LOCK:
        for token, found in list(_GRANTS.items()):
            if found.key in keys:
                del _GRANTS[token]
                _REVOKED[token] = None
        _GONE.update(keys)
        for kept in (_REVOKED, _GONE):
            while len(kept) > MAX_GRANTS:
                kept.popitem(last=False)
    from tl_ui.runs import forget_model

    for folder in folders:
        forget_model(folder)


def revoked(token: str) -> bool:
    """Whether ``token``'s view was stopped by :func:`revoke`."""
    with _LOCK:
        return token in _REVOKED


def _granted(token: str) -> _Grant | None:
    now = time.monotonic()
    with _LOCK:
        found = _GRANTS.get(token)
        if found is None:
            return None
        if now - found.used > IDLE_S:
            del _GRANTS[token]
            return None
        found.used = now
        _GRANTS.move_to_end(token)
        return found


def mounted() -> bool:
    """Whether this server answers :data:`ROUTE` (it was started through ``app.py``)."""
    return _MOUNTED


async def _body(request: Request) -> bytes | None:
    """The request's body, or None when it is larger than one camera frame may be."""
    try:
        if int(request.headers.get("content-length") or 0) > MAX_FRAME_BYTES:
            return None
    except ValueError:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FRAME_BYTES:
            return None
    return bytes(body)


async def guess(request: Request) -> JSONResponse:
    """POST :data:`ROUTE`: one JPEG in the body, the token in :data:`TOKEN_HEADER`."""
    token = request.headers.get(TOKEN_HEADER, "")
    if revoked(token):
        return JSONResponse({"error": REMOVED}, status_code=410)
    found = _granted(token)
    if found is None:
        return JSONResponse({"error": EXPIRED}, status_code=403)
    body = await _body(request)
    if body is None:
        return JSONResponse({"error": TOO_BIG}, status_code=413)
    status, answer = await run_in_threadpool(
        _respond,
        body,
        found.run_dir,
        found.temperature,
        found.threshold,
        found.unfamiliar_threshold,
        token,
    )
    return JSONResponse(answer, status_code=status, headers={"Cache-Control": "no-store"})


def routes() -> list[Route]:
    """The routes ``app.py`` adds to Streamlit's server; from then on :func:`mounted`."""
    global _MOUNTED
    _MOUNTED = True
    return [Route(ROUTE, guess, methods=["POST"])]
