"""The Data page's camera panel: record classes with the webcam, then use the shots.

The browser captures frames at a steady rate while the record button is held (or recording
is toggled on) and sends them in small batches (tl_ui.camera); each batch is kept at once in
the project's own capture folder on this server (tl_core.service.camera_add_frames), so a
refresh loses nothing. "Use these shots" makes them a data version of the project like any
import (tl_core.service.camera_commit), mixed with the images it already has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import streamlit as st

from tl_core import service
from tl_core.errors import DataError, DiskFullError, StudioError
from tl_core.runs.store import Project, Store
from tl_ui.camera import camera, decode_jpeg, problem
from tl_ui.session import active_project, get_store, open_project, project_manifest
from tl_ui.state import state
from tl_ui.text import literal

__all__ = ["BACKGROUND_TIP", "FPS", "camera_panel", "needs_background_class", "save_batch"]

FPS = 8  # frames per second while recording
FRAME_SIDE = 320  # the long side of a captured frame, in pixels
SHOTS_SHOWN = 12  # the strip of latest shots
_CLASS = "cam_class"  # the radio of the class shots go into (a widget key)
_ON = "cam_on"  # the camera is switched on (off until asked: no light, no prompt)
BURSTS = (
    "Shots next to each other are nearly the same picture: the frames of each second of a "
    "recording, and any near-identical shots, go together either to training or to the "
    "validation check, so the check never sees a near-copy of a training picture. Record each "
    "class a few times, from different sides, so both get some."
)
BACKGROUND_TIP = (
    "Tip: record a class called 'nothing' (the empty scene, your hands, the background): it is "
    "the classroom way to teach the model 'none of these'."
)
# Class names that already mean "none of these" (lower case, without spaces or underscores).
_BACKGROUND_NAMES = frozenset(
    {"nothing", "background", "none", "empty", "other", "noobject", "unknown"}
)
PRIVACY = (
    "Shots are kept only in this project, on this server: they are not sent anywhere else, and "
    "deleting the project deletes them."
)


def needs_background_class(classes: Iterable[str]) -> bool:
    """Whether none of ``classes`` reads like a "none of these" class (nothing, background,
    none, empty, other, no object, unknown; any case, with spaces, underscores or dashes, or
    a plural s)."""
    for name in classes:
        squeezed = re.sub(r"[\s_\-]+", "", str(name).casefold())
        if squeezed in _BACKGROUND_NAMES or squeezed.removesuffix("s") in _BACKGROUND_NAMES:
            return False
    return True


def save_batch(
    store: Store, project_id: str, message: dict[str, Any], seen: dict[str, int]
) -> tuple[dict[str, Any], str | None]:
    """Keep one batch of frames from the browser: (the reply, the problem or None).

    The reply acknowledges the batch also when it was refused, so the browser sends the next
    one; ``seen`` (browser instance id: last batch number kept) keeps a batch sent again
    after a lost answer from being kept twice."""
    ack = {"ack": {"id": message.get("id"), "seq": message.get("seq")}}
    source, seq = str(message.get("id")), message.get("seq")
    if not isinstance(seq, int) or seen.get(source, 0) >= seq:
        return ack, None
    frames = [decode_jpeg(f) for f in message.get("frames") or []]
    label = str(message.get("label") or "")
    error = None
    try:
        if any(f is None for f in frames):
            raise DataError("Some camera pictures arrived damaged and were not kept. Record again.")
        if frames:
            recording = str(message.get("recording") or "")
            service.camera_add_frames(store, project_id, label, frames, recording)
    except (DataError, DiskFullError) as exc:
        error = str(exc)
    seen[source] = seq
    return ack, error


def _on_batch(project_id: str, message: dict[str, Any]) -> dict[str, Any]:
    kept = state()
    reply, error = save_batch(get_store(), project_id, message, kept.camera_seen)
    if error:
        kept.camera_error = error  # shown on the next run
    return reply


def _project() -> Project:
    """The session's project, or a new one to record into (then it is in the URL)."""
    project = active_project()
    if project is None:
        project = service.camera_project(get_store(), None)
        open_project(project)
    return project


def _act(what, *args) -> bool:
    """Run one class action; its error as one sentence on the page."""
    try:
        what(get_store(), *args)
    except StudioError as exc:
        st.error(literal(exc))
        return False
    return True


def _classes(project: Project | None, capture) -> str | None:
    """Add, pick, rename and remove classes; returns the class shots go into."""
    names = [c.label for c in capture.classes] if capture else []
    with st.form("cam_add", clear_on_submit=True, border=False):
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        new = c1.text_input("New class", placeholder="e.g. banana", max_chars=80, key="cam_new")
        if c2.form_submit_button("Add class") and new.strip():
            project = project or _project()
            if _act(service.camera_add_class, project.id, new.strip()):
                st.session_state[_CLASS] = new.strip()
                st.rerun()
    if not names:
        st.caption("Add a class for each kind of thing the model should tell apart.")
        return None
    kept = state()
    if kept.camera_next_class in names:  # renamed: the radio follows the class
        st.session_state[_CLASS], kept.camera_next_class = kept.camera_next_class, None
    if st.session_state.get(_CLASS) not in names:
        st.session_state[_CLASS] = names[-1]
    cols = st.columns(min(len(names), 6))
    for k, cls in enumerate(capture.classes):
        cols[k % len(cols)].metric(literal(cls.label), f"{cls.count:,}", help="shots of this class")
    return st.radio("Record into", names, horizontal=True, key=_CLASS, format_func=literal)


def _manage(project: Project, label: str) -> None:
    """Rename or remove the chosen class."""
    with st.popover("Rename or remove this class"):
        new = st.text_input("New name", value=label, max_chars=80, key="cam_rename_" + label)
        renamed = st.button("Rename", key="cam_rename_go_" + label) and new.strip() != label
        if renamed and _act(service.camera_rename_class, project.id, label, new.strip()):
            state().camera_next_class = new.strip()
            st.rerun()
        removed = st.button(f"Remove '{literal(label)}' and its shots", key="cam_remove_" + label)
        if removed and _act(service.camera_remove_class, project.id, label):
            st.rerun()


def _strip(project: Project, cls) -> None:
    """The latest shots of a class, each with a delete button."""
    shots = list(cls.latest)[-SHOTS_SHOWN:]
    if not shots:
        st.caption(f"No shots of '{literal(cls.label)}' yet.")
        return
    st.caption(f"The latest {len(shots)} of {cls.count} shots of '{literal(cls.label)}':")
    per_row = 6
    for start in range(0, len(shots), per_row):
        cols = st.columns(per_row)
        for col, shot in zip(cols, shots[start : start + per_row], strict=False):
            col.image(str(shot), width="stretch")
            gone = col.button("Delete", key=f"cam_del_{cls.label}_{shot.name}")
            if gone and _act(service.camera_delete_shot, project.id, cls.label, shot.name):
                st.rerun()


def _commit(project: Project, total: int) -> None:
    if not st.button(f"Use these {total:,} shots", type="primary", key="cam_commit"):
        return
    with st.spinner("Checking and preparing the shots…"):
        try:
            committed = service.camera_commit(get_store(), project.id)
        except (DataError, DiskFullError) as exc:
            st.error(literal(exc))
            return
    open_project(committed)
    state().camera_done = (  # shown after the whole-page rerun
        f"{total:,} camera shots were checked like any import and added to this project's images."
    )
    st.rerun(scope="app")


def done_notice() -> None:
    """The last commit's one-line summary, once, after the page reran."""
    kept = state()
    done, kept.camera_done = kept.camera_done, None
    if done:
        st.success(done, icon=":material/photo_camera:")


@st.fragment
def camera_panel() -> None:
    """Record classes with the webcam (a fragment: a batch of frames reruns only this)."""
    project = active_project()
    store = get_store()
    capture = service.camera_state(store, project.id) if project else None
    st.caption(
        f"Name a class, then hold the record button while you move the object in front of the "
        f"camera: about {FPS} shots a second. {PRIVACY}"
    )
    st.caption(BURSTS)
    label = _classes(project, capture)
    manifest = project_manifest(project)
    known = [c.label for c in capture.classes] if capture else []
    if needs_background_class(known + (list(manifest.classes) if manifest else [])):
        st.caption(BACKGROUND_TIP)
    on = st.toggle("Camera on", key=_ON)
    if on:
        status = camera(
            "record_camera",
            "record",
            {"label": label or "", "fps": FPS, "side": FRAME_SIDE},
            lambda message: _on_batch(project.id, message) if project else None,
        )
        said = problem(status)
        if said:
            st.warning(f"{said} Meanwhile, add pictures from files instead.")
    kept = state()
    error, kept.camera_error = kept.camera_error, None
    if error:
        st.error(literal(error))
    if project is None or capture is None or not capture.classes:
        return
    chosen = next((c for c in capture.classes if c.label == label), None)
    if chosen is not None:
        _manage(project, chosen.label)
        _strip(project, chosen)
    total = sum(c.count for c in capture.classes)
    if total:
        _commit(project, total)
