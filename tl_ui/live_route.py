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
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tl_core.errors import StudioError
from tl_core.training.familiarity import UNFAMILIAR
from tl_ui.camera import MAX_FRAME_BYTES

__all__ = [
    "ROUTE",
    "TOKEN_HEADER",
    "Verdict",
    "answer_image",
    "grant",
    "mounted",
    "new_token",
    "routes",
    "verdict",
]

ROUTE = "/api/live-guess"
TOKEN_HEADER = "X-TL-Live"
IDLE_S = 1800.0  # a token unused for this long is forgotten (the page then says: reload)
MAX_GRANTS = 1000  # the oldest go first beyond this many live views
TOP_BARS = 5
# One live picture at a time in the web server: a second session's frame waits its turn
# instead of splitting the two cores between two forward passes.
_PREDICT = threading.Lock()
EXPIRED = "This live view has expired. Reload the page to start it again."
NOT_A_PICTURE = "That frame was not a picture; the next one may be."
TOO_BIG = "That frame was too large to be one camera picture."


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
    if not data:
        return {"threshold": threshold, "error": NOT_A_PICTURE}
    from tl_ui.runs import trained_model

    try:  # a run deleted or damaged since the view was drawn: one sentence, like a bad frame
        model = trained_model(run_dir)  # torch and the rest come with it, one importer at a time
        from tl_core.models.device import one_thread

        # one picture: one thread is as fast alone and far steadier beside other work
        with _PREDICT, one_thread():
            guessed = model.guess([data], temperature=temperature)
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


_GRANTS: OrderedDict[str, _Grant] = OrderedDict()
_LOCK = threading.Lock()
_MOUNTED = False


def new_token() -> str:
    """A token for one live view (kept in its session)."""
    return secrets.token_urlsafe(24)


def grant(
    token: str,
    run_dir: str,
    temperature: float,
    threshold: float,
    unfamiliar_threshold: float | None = None,
) -> None:
    """Let ``token`` ask for guesses of the model of ``run_dir`` (replacing what it had);
    ``unfamiliar_threshold`` None: no unfamiliar check on its answers."""
    with _LOCK:
        _GRANTS[token] = _Grant(
            run_dir, temperature, threshold, time.monotonic(), unfamiliar_threshold
        )
        _GRANTS.move_to_end(token)
        while len(_GRANTS) > MAX_GRANTS:
            _GRANTS.popitem(last=False)


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
    found = _granted(request.headers.get(TOKEN_HEADER, ""))
    if found is None:
        return JSONResponse({"error": EXPIRED}, status_code=403)
    body = await _body(request)
    if body is None:
        return JSONResponse({"error": TOO_BIG}, status_code=413)
    answer = await run_in_threadpool(
        answer_image,
        body,
        found.run_dir,
        found.temperature,
        found.threshold,
        found.unfamiliar_threshold,
    )
    return JSONResponse(answer, headers={"Cache-Control": "no-store"})


def routes() -> list[Route]:
    """The routes ``app.py`` adds to Streamlit's server; from then on :func:`mounted`."""
    global _MOUNTED
    _MOUNTED = True
    return [Route(ROUTE, guess, methods=["POST"])]
