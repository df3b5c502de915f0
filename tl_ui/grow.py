"""The Data page's "Add images" panel: more pictures for a class, or a new class.

Adding makes a new data version beside the current one (:func:`tl_core.service.grow_data`):
the images already there are kept as they are, only the new ones are checked and prepared,
and earlier runs keep pointing at the data they were trained on.
"""

from __future__ import annotations

import io

import streamlit as st

from tl_core import service
from tl_core.data import dataset as tl_data
from tl_core.errors import DataError, DiskFullError
from tl_core.runs.store import Project
from tl_ui.session import get_store, open_project
from tl_ui.text import literal

# Choices besides the classes; a class name never holds a control character.
NEW_CLASS = "\x00new"
BY_FOLDER = "\x00folders"
_DONE = "grow_done"  # the last addition's summary and warnings, shown after the rerun
_ROUND = "grow_round"  # bumped after each addition: a fresh, empty uploader


def _choice_text(choice: str) -> str:
    if choice == NEW_CLASS:
        return "A new class…"
    if choice == BY_FOLDER:
        return "Each in its class folder (a .zip with one folder per class)"
    return choice


def _source(files: list) -> tl_data.GrowSource:
    """One .zip as an archive; otherwise the pictures as uploaded files."""
    zips = [f for f in files if f.name.lower().endswith(".zip")]
    if zips and len(files) > 1:
        raise DataError("Upload one .zip on its own, or pictures without a .zip.")
    if zips:
        return io.BytesIO(zips[0].getvalue())
    return [(f.name, f.getvalue()) for f in files]


def _add(project: Project, files: list, label: str | None) -> None:
    bar = st.progress(0.0, text="Checking and preparing the new images…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Checking and preparing images: {done}/{total}")

    try:
        project, growth = service.grow_data(get_store(), project, _source(files), label, progress)
    except (DataError, DiskFullError) as exc:
        bar.empty()
        st.error(literal(exc))
        return
    bar.empty()
    st.session_state[_DONE] = {"summary": growth.summary(), "warnings": growth.warnings}
    st.session_state[_ROUND] = st.session_state.get(_ROUND, 0) + 1
    open_project(project)
    st.rerun()


def add_images_panel(project: Project, manifest: tl_data.DatasetManifest) -> None:
    """Add pictures to an existing class or a new one, from uploaded files or a .zip."""
    done = st.session_state.pop(_DONE, None)
    if done:
        st.success(literal(done["summary"]))
        for warning in done["warnings"]:
            st.warning(literal(warning))
    with st.expander("Add images", expanded=False):
        st.caption(
            "Add pictures to a class, or start a new class. The images you have stay as they "
            "are and only the new ones are prepared; new runs use all of them, earlier runs "
            "keep their data."
        )
        choice = st.selectbox(
            "Which class are the new images?",
            [*manifest.classes, NEW_CLASS, BY_FOLDER],
            format_func=_choice_text,
            key="grow_class",
        )
        label: str | None = None
        if choice == NEW_CLASS:
            label = st.text_input("Name of the new class", key="grow_new_class", max_chars=80)
        elif choice != BY_FOLDER:
            label = choice
        files = st.file_uploader(
            "Pictures, or one .zip",
            accept_multiple_files=True,
            key=f"grow_upload_{st.session_state.get(_ROUND, 0)}",
        )
        if not files:
            return
        if label is not None and not label.strip():
            st.info("Type a name for the new class first.")
            return
        if st.button(f"Add {len(files)} file(s)", key="grow_add"):
            _add(project, files, label)
