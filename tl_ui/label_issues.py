"""The Data page's likely wrong labels: the pictures whose label disagrees most with what
the pretrained features say (confident learning, found by the survey job in the background
after an import), fixed, kept or left out through the label review the next run applies."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core import service
from tl_core.data import review
from tl_core.data.dataset import DatasetManifest
from tl_core.runs.store import Project
from tl_ui.gallery import THUMB_SIDE, pager, show_thumbnail
from tl_ui.jobs import watch
from tl_ui.labeling import survey_loaded
from tl_ui.review import review_widgets
from tl_ui.session import get_store
from tl_ui.text import literal

__all__ = ["label_issues_panel"]

PER_PAGE = 12
GRID = 4


def label_issues_panel(project: Project, manifest: DatasetManifest) -> None:
    """How many labels look wrong, and a review of them, worst first."""
    if len(manifest.classes) < 2:
        return
    st.subheader("Labels that may be wrong")
    store = get_store()
    job = service.submit_survey(store, project, submit=service.label_check_at_import())
    if job is None:
        st.caption("Compare each picture with what the pretrained network sees in it.")
        if st.button("Look for wrong labels", icon=":material/search:"):
            service.submit_survey(store, project)
            st.rerun()
        return
    done = watch(job, "The check of your labels")
    if done is None:
        st.caption("Each picture is compared with what the pretrained network sees in it.")
        return
    survey = survey_loaded(done.run_dir)
    if survey is None:
        st.warning("The check of your labels could not be read; reload the page.")
        return
    rows = [int(r) for r in survey.issue_rows]
    if not rows:
        st.success("No label stands out as wrong: each picture looks like the others of its class.")
        return
    label_of = {i.file: i.label for i in manifest.items}
    st.warning(
        f"**{len(rows):,}** picture(s) look more like another class than their own: a wrong "
        "label, or an unusual picture. Check them below; nothing changes until you save."
    )
    with st.expander(f"Review the {len(rows):,} picture(s), most doubtful first"):
        _review(manifest, survey, rows, label_of)


def _review(manifest: DatasetManifest, survey, rows: list[int], label_of: dict[str, str]) -> None:
    folder = Path(manifest.root)
    corrections = review.load(folder)
    shown = [k for k in pager(len(rows), PER_PAGE, "issues_page", "pictures")]
    with st.form("label_issues_review", border=False):
        grid = st.columns(GRID)
        edits = []
        for j, k in enumerate(shown):
            file = survey.files[rows[k]]
            given, suggested = label_of.get(file, ""), survey.issue_suggested[k]
            with grid[j % GRID]:
                show_thumbnail(folder / file, THUMB_SIDE)
                st.markdown(
                    f"labelled **{literal(given)}**, looks like **{literal(suggested)}** "
                    f"({float(survey.issue_confidence[k]):.0%})"
                )
                edits.append(
                    review_widgets(file, given, manifest.classes, corrections, prefix="issue_")
                )
        if st.form_submit_button("Save review", icon=":material/save:"):
            service.save_review(folder, corrections, edits)
            st.toast("Review saved: the next run uses it.")
    st.caption(f"Your review so far: {corrections.describe()}.")
