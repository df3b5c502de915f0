"""Step 2: give labels to the pictures that have none yet, with the map of the pictures and
the model's suggestions; and see how a trained model pulls the classes apart."""

from __future__ import annotations

import streamlit as st

from tl_core import service
from tl_core.runs.store import Job, Project
from tl_ui import labeling
from tl_ui.jobs import watch
from tl_ui.session import active_project, get_store, project_manifest
from tl_ui.text import literal

MAP_WHAT = "The map of your pictures"


def _trained_run(project: Project) -> Job | None:
    """The latest finished run on the project's current pictures, for the trained map."""
    runs = [
        r
        for r in get_store().runs(project.id)
        if r.status == "finished" and r.data_dir == project.data_dir
    ]
    return runs[-1] if runs else None


def _caption(survey_method: str, trained: bool, n: int) -> str:
    where = (
        "your trained model scores for each class"
        if trained
        else "the pretrained network sees, before training"
    )
    return (
        f"{n:,} pictures placed by what {where} ({survey_method}): alike pictures sit "
        "together. Grey: no label yet. Hover a dot to see its picture; draw a box or a "
        "lasso to select pictures."
    )


def _trained_map(project: Project, run: Job) -> None:
    """The same pictures through the trained model: the classes pull apart."""
    st.markdown(
        "The same pictures placed by the trained model's scores for each class: training pulls "
        "the classes apart. Compare this map with the one above."
    )
    done = watch(service.submit_survey(get_store(), project, run=run), MAP_WHAT)
    if done is None:
        return
    survey = labeling.survey_loaded(done.run_dir)
    manifest = project_manifest(project)
    if survey is None or manifest is None:
        st.warning("The map of the trained model could not be read; reload the page.")
        return
    b = labeling.board(manifest, survey)
    labeling.map_panel(b, None, _caption(survey.method, True, len(survey.files)), "trained_map")


def page() -> None:
    project = active_project()
    manifest = project_manifest(project)
    if project is None or manifest is None:
        st.info("First bring your pictures: labelled in class folders, or not labelled yet.")
        st.page_link("app_pages/data.py", label="Go to step 1", icon=":material/arrow_back:")
        return
    done = watch(service.submit_survey(get_store(), project), MAP_WHAT)
    if done is None:
        st.caption(
            "Every picture goes once through the pretrained network; then the map is drawn. "
            "It takes about a minute for 20,000 pictures on a small server."
        )
        return
    survey = labeling.survey_loaded(done.run_dir)
    pictures = {i.file for i in [*manifest.items, *manifest.unlabelled]}
    if survey is None or set(survey.files) != pictures:
        st.warning("The map does not match these pictures; draw it again.")
        if st.button("Draw the map again"):
            service.retry_job(get_store(), done)
            st.rerun()
        return
    b = labeling.board(manifest, survey)
    s = labeling.suggestions_of(b)
    labeling.sidebar_counts(b, s)
    if manifest.unlabelled:
        labeling.classes_panel(b)
    else:
        st.info(
            "Every picture of this data set has its label. The map shows how the pretrained "
            "network sees them; labels that may be wrong are listed on the Data page."
        )
    tab_map, tab_next, tab_sure = st.tabs(["Map", "Label these next", "Confident suggestions"])
    with tab_map:
        labeling.map_panel(b, s, _caption(survey.method, False, len(survey.files)), "label_map")
    with tab_next:
        labeling.next_panel(b, s)
    with tab_sure:
        labeling.confident_panel(b, s)
    labeling.use_labels_panel(project, b)
    run = _trained_run(project)
    if run is not None:
        with st.expander(f"Map with the trained model ({literal(run.id)})"):
            _trained_map(project, run)
    if len(manifest.classes) >= 2:
        st.page_link(
            "app_pages/model.py", label="Next: choose a model", icon=":material/arrow_forward:"
        )


page()
