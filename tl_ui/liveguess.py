"""Live guesses on the Try page: the webcam, and the class bars of every frame it sends.

The browser sends one small JPEG when the last answer came back and draws the bars itself;
the server predicts it in this process with the run's cached model (one picture, like a
single upload), and with an unfamiliar threshold says "Unfamiliar" for a frame unlike every
training picture. Through ``app.py`` the frames go to the studio's own route
(:mod:`tl_ui.live_route`) and nothing reruns; without it they are trigger values answered
in a fragment, so only the live view reruns. Where the browser has no camera the page falls back
to single pictures with a sentence saying why.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from tl_ui import live_route
from tl_ui.camera import camera, decode_jpeg, problem
from tl_ui.live_route import Verdict, verdict
from tl_ui.state import state

__all__ = ["Verdict", "answer_frame", "camera_problem", "live_view", "verdict"]

FRAME_SIDE = 320  # the long side of a frame the browser sends (the model sees 224 px)


def answer_frame(
    message: dict[str, Any],
    run_dir: str,
    temperature: float,
    threshold: float,
    unfamiliar_threshold: float | None = None,
) -> dict[str, Any]:
    """The reply to one frame sent as a trigger value (where the live route is not served)."""
    data = decode_jpeg(message.get("image"))
    answer = live_route.answer_image(data, run_dir, temperature, threshold, unfamiliar_threshold)
    return {"answer": {"id": message.get("id"), "seq": message.get("seq"), **answer}}


def _direct(
    run_dir: str, temperature: float, threshold: float, unfamiliar_threshold: float | None
) -> dict[str, Any]:
    """What the browser needs to ask the live route itself (nothing when it is not served)."""
    if not live_route.mounted():
        return {}
    kept = state()
    token = kept.live_token or live_route.new_token()
    if not live_route.grant(token, run_dir, temperature, threshold, unfamiliar_threshold):
        # the view's earlier model was deleted: a new view, unless this run is the deleted
        # one (then its frames read "removed")
        token = live_route.new_token()
        live_route.grant(token, run_dir, temperature, threshold, unfamiliar_threshold)
    kept.live_token = token
    return {"endpoint": live_route.ROUTE, "token": token, "header": live_route.TOKEN_HEADER}


@st.fragment
def live_view(
    run_dir: str,
    temperature: float,
    threshold: float,
    unfamiliar_threshold: float | None = None,
) -> str:
    """The live camera with its bars; returns the camera's status (see tl_ui.camera).

    ``unfamiliar_threshold``: frames whose unfamiliarity is above it read "Unfamiliar"
    (None, or a run without the check: no such answer)."""
    status = camera(
        "live_camera",
        "live",
        {"side": FRAME_SIDE, **_direct(run_dir, temperature, threshold, unfamiliar_threshold)},
        lambda message: answer_frame(
            message, run_dir, temperature, threshold, unfamiliar_threshold
        ),
    )
    said = problem(status)
    if said:
        st.warning(f"{said} Meanwhile, try single pictures below.", icon=":material/videocam_off:")
    kept = state()
    if kept.camera_problem != (status if said else None):
        # the page below the view (single pictures) changes: rerun all of it once
        kept.camera_problem = status if said else None
        st.rerun()
    return status


def camera_problem() -> str | None:
    """The status of a live camera that did not start in this session (None: it works)."""
    return state().camera_problem
