"""Live guesses on the Try page: the webcam, and the class bars of every frame it sends.

The browser sends one small JPEG when the last answer came back; the server predicts it in
this process with the run's cached model (one picture, like a single upload) inside a
fragment, so only the live view reruns. Where the browser has no camera the page falls back
to single pictures with a sentence saying why.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from tl_core.errors import StudioError
from tl_ui.camera import camera, decode_jpeg, problem
from tl_ui.runs import trained_model

__all__ = ["Verdict", "answer_frame", "camera_problem", "live_view", "verdict"]

PROBLEM = "live_camera_problem"

TOP_BARS = 5
FRAME_SIDE = 320  # the long side of a frame the browser sends (the model sees 224 px)
# One live picture at a time in the web server: a second session's frame waits its turn
# instead of splitting the two cores between two forward passes.
_PREDICT = threading.Lock()


@dataclass(frozen=True)
class Verdict:
    """What the page says of one picture: the top class, whether it is sure, the sentence."""

    top: str
    sure: bool
    text: str
    probability: float


def verdict(probs: np.ndarray, classes: list[str], threshold: float) -> Verdict:
    """The top class, or "not sure" when it is below ``threshold`` (as for single pictures)."""
    k = int(np.argmax(probs))
    p = float(probs[k])
    top = classes[k]  # plain text: pages pass it through literal(), the live view sets textContent
    if p >= threshold:
        return Verdict(top, True, f"{top} ({p:.0%})", p)
    return Verdict(
        top,
        False,
        f"Not sure: the best guess is '{top}' at only {p:.0%}. The picture may show "
        "none of your classes.",
        p,
    )


def answer_frame(
    message: dict[str, Any], run_dir: str, temperature: float, threshold: float
) -> dict[str, Any]:
    """The reply to one frame from the browser: bars and verdict, or an error sentence."""
    base = {"id": message.get("id"), "seq": message.get("seq"), "threshold": threshold}
    data = decode_jpeg(message.get("image"))
    if data is None:
        return {"answer": {**base, "error": "That frame was not a picture; the next one may be."}}
    from tl_core.models.device import one_thread

    model = trained_model(run_dir)
    try:  # one picture: one thread is as fast alone and far steadier beside other work
        with _PREDICT, one_thread():
            probs = model.predict([data], temperature=temperature)[0]
    except StudioError as exc:
        return {"answer": {**base, "error": str(exc)}}
    said = verdict(probs, list(model.classes), threshold)
    order = np.argsort(-probs)[:TOP_BARS]
    bars = [[model.classes[int(i)], round(float(probs[i]), 4)] for i in order]
    answer = {**base, "top": said.top, "sure": said.sure, "verdict": said.text, "bars": bars}
    return {"answer": answer}


@st.fragment
def live_view(run_dir: str, temperature: float, threshold: float) -> str:
    """The live camera with its bars; returns the camera's status (see tl_ui.camera)."""
    status = camera(
        "live_camera",
        "live",
        {"side": FRAME_SIDE},
        lambda message: answer_frame(message, run_dir, temperature, threshold),
    )
    said = problem(status)
    if said:
        st.warning(f"{said} Meanwhile, try single pictures below.", icon=":material/videocam_off:")
    if st.session_state.get(PROBLEM) != (status if said else None):
        # the page below the view (single pictures) changes: rerun all of it once
        st.session_state[PROBLEM] = status if said else None
        st.rerun()
    return status


def camera_problem() -> str | None:
    """The status of a live camera that did not start in this session (None: it works)."""
    return st.session_state.get(PROBLEM)
