"""The webcam in the page: a small Streamlit component (getUserMedia, JPEG frames).

The JavaScript (camera.js, camera.css beside this file, passed inline: no build step, no
CDN) shows the camera and sends what it captures to this app's own server as trigger
values: batches of frames when recording on the Data page, one frame at a time when guessing
live on the Try page. A ``handler`` given by the page answers each message in the widget's
callback, before the (fragment) rerun, and its reply goes back to the browser as the
component's data on that same rerun. The browser reports whether it has a camera in the
state value ``camera``; :data:`PROBLEMS` says in plain words what to do when it has none.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import streamlit as st
from PIL import Image

from tl_ui.state import state

__all__ = [
    "MAX_FRAME_PIXELS",
    "MAX_FRAME_SIDE",
    "PROBLEMS",
    "READY",
    "camera",
    "decode_jpeg",
    "frame_too_large",
    "problem",
]

_HERE = Path(__file__).resolve().parent
_COMPONENT = st.components.v2.component(
    "tl_studio_camera",
    js=(_HERE / "camera.js").read_text(encoding="utf-8"),
    css=(_HERE / "camera.css").read_text(encoding="utf-8"),
)

Mode = Literal["record", "live"]
READY = "ready"
# What the page says when the browser has no camera to give, by the component's status.
PROBLEMS: dict[str, str] = {
    "insecure": (
        "The browser gives this page no camera because its address is not secure (http on a "
        "network address). Open the app at http://localhost:8501 on the computer that has the "
        "camera, or have the studio served over https (Streamlit's server.sslCertFile and "
        "server.sslKeyFile settings)."
    ),
    "denied": (
        "The camera was refused for this page. Allow it in the browser (the camera icon in "
        "the address bar) and reload the page."
    ),
    "none": "No camera was found on this computer. Plug one in and reload the page.",
    "error": (
        "The camera could not be started; another program may be using it. Close it and "
        "reload the page."
    ),
}
MAX_FRAME_BYTES = 2_000_000  # one captured JPEG; the browser sends about 20 kB
# A frame's pixels, read from its header before any is decoded: the browser sends 320 px on
# the long side, a camera gives at most a few megapixels; a small file of many more pixels
# (a PNG of one colour) would take seconds and gigabytes to decode.
MAX_FRAME_SIDE = 2048
MAX_FRAME_PIXELS = 2048 * 1536


def problem(status: str | None) -> str | None:
    """The sentence for a camera that does not work, or None while it works or starts."""
    return PROBLEMS.get(status or "")


def decode_jpeg(text: Any) -> bytes | None:
    """The bytes of one base64 frame from the browser, or None when it is not one."""
    if not isinstance(text, str) or not text or len(text) > MAX_FRAME_BYTES * 4 // 3 + 4:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def frame_too_large(data: bytes) -> bool:
    """Whether a frame's header says it has more pixels than a camera frame can have (over
    :data:`MAX_FRAME_SIDE` a side or :data:`MAX_FRAME_PIXELS` in all), in any format Pillow
    opens; nothing is decoded. False for what is not a picture (decoding it says so)."""
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only
            width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # far above ours
        return True
    except Exception:  # not a picture Pillow knows: its decoding says so in words
        return False
    return max(width, height) > MAX_FRAME_SIDE or width * height > MAX_FRAME_PIXELS


def camera(
    key: str,
    mode: Mode,
    data: dict[str, Any],
    handler: Callable[[dict[str, Any]], dict[str, Any] | None],
    height: int | Literal["content"] = "content",
) -> str:
    """Mount the camera; returns its status (starting, ready, or a key of :data:`PROBLEMS`).

    ``handler`` gets each message the browser sends (a batch of frames in "record" mode,
    one frame in "live" mode) and returns the reply the browser gets in ``data`` (``ack``
    for a batch, ``answer`` for a frame)."""

    def _answer() -> None:
        value = st.session_state.get(key) or {}
        message = value.get("frames" if mode == "record" else "frame")
        if isinstance(message, dict):
            reply = handler(message)
            if reply is not None:
                state().camera_replies[key] = reply

    sent = {"mode": mode, **data, **state().camera_replies.get(key, {})}
    result = _COMPONENT(
        key=key,
        data=sent,
        default={"camera": "starting"},
        height=height,
        on_frames_change=_answer,
        on_frame_change=_answer,
        on_camera_change=lambda: None,
    )
    status = (result or {}).get("camera") if hasattr(result, "get") else None
    return str(status or "starting")
