"""The Data page's "Add images" panel: more pictures for a class, or a new class.

Adding is an import job (:func:`tl_core.service.submit_grow`) that makes a new data version
beside the current one: the images already there are linked as they are, only the new ones are
checked and prepared (in a worker), and earlier runs keep pointing at the data they were
trained on.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from tl_core import service
from tl_core.data import dataset as tl_data
from tl_core.errors import DataError, DiskFullError
from tl_core.runs.store import Project
from tl_ui import importing
from tl_ui.session import get_store
from tl_ui.state import state
from tl_ui.text import literal

# Choices besides the classes; a class name never holds a control character.
NEW_CLASS = "\x00new"
BY_FOLDER = "\x00folders"


def _choice_text(choice: str) -> str:
    if choice == NEW_CLASS:
        return "A new class…"
    if choice == BY_FOLDER:
        return "Each in its class folder (a .zip with one folder per class)"
    return choice


def _upload(files: list) -> Any:
    """One .zip as an archive; otherwise the pictures as uploaded files."""
    zips = [f for f in files if f.name.lower().endswith(".zip")]
    if zips and len(files) > 1:
        raise DataError("Upload one .zip on its own, or pictures without a .zip.")
    return zips[0] if zips else [(f.name, f) for f in files]


def _add(project: Project, files: list, label: str | None) -> None:
    """Queue the addition (a job: the worker prepares the new images) and rerun to watch it."""
    try:
        job = service.submit_grow(get_store(), project, _upload(files), label)
    except (DataError, DiskFullError) as exc:
        st.error(literal(exc))
        return
    importing.remember(job)
    kept = state()
    kept.grow_job = job.id
    kept.grow_round += 1  # a fresh, empty uploader
    st.rerun()


def _added_note() -> None:
    """The summary and warnings of the addition this session made, once it finished."""
    kept = state()
    job = get_store().job(kept.grow_job) if kept.grow_job else None
    if job is None or job.status != "finished":
        return
    kept.grow_job = None
    result = job.result or {}
    st.success(literal(result.get("summary") or "The images were added."))
    for warning in result.get("warnings") or []:
        st.warning(literal(tl_data.DataWarning.from_json(warning).text))


def add_images_panel(
    project: Project, manifest: tl_data.DatasetManifest, busy: bool = False
) -> None:
    """Add pictures to an existing class or a new one, from uploaded files or a .zip; while
    an import or addition is ``busy`` (its panel is above), nothing new is offered."""
    _added_note()
    with st.expander("Add images", expanded=False):
        if busy:
            st.caption("Images are being imported or added (above); add more when it is done.")
            return
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
            key=f"grow_upload_{state().grow_round}",
        )
        if not files:
            return
        if label is not None and not label.strip():
            st.info("Type a name for the new class first.")
            return
        if st.button(f"Add {len(files)} file(s)", key="grow_add"):
            _add(project, files, label)
