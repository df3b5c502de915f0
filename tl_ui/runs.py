"""Choosing a finished run, and starting a new one, shared by the pages after training."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from tl_core.data import review
from tl_core.models import catalog
from tl_core.runs import jobs
from tl_core.runs.store import Project, Run
from tl_core.training.engine import TrainConfig
from tl_ui.session import active_project, get_store

if TYPE_CHECKING:
    from tl_core.models.inference import TrainedModel


def run_label(run: Run) -> str:
    when = dt.datetime.fromtimestamp(run.created).strftime("%d %b %H:%M")
    acc = (run.result or {}).get("val_accuracy")
    score = f" · {acc:.1%}" if acc is not None else ""
    title = catalog.get_spec(run.config["model"]).title
    learn = int(run.config.get("trainable_groups", 0))
    what = "head only" if learn == 0 else f"last {learn} group(s)"
    fixes = " · reviewed labels" if run.config.get("corrections") else ""
    if not run.config.get("pretrained", True):
        fixes += " · from scratch"
    if run.config.get("sweep"):
        fixes += " · quick sweep"
    return f"{when} · {title} · {what}{fixes}{score}"


def pick_run(what: str) -> tuple[Project, Run] | None:
    """The project and the finished run the user looks at (newest first), shared by pages."""
    project = active_project()
    runs = [r for r in get_store().runs(project.id) if r.result] if project else []
    runs = [r for r in runs if (Path(r.run_dir) / "predictions.json").exists()]
    if project is None or not runs:
        st.info(f"Train a model first; then {what} here.")
        st.page_link("pages/train.py", label="Go to training", icon=":material/arrow_back:")
        return None
    runs.reverse()
    ids = [r.id for r in runs]
    chosen = st.session_state.get("chosen_run")
    index = ids.index(chosen) if chosen in ids else 0
    run = st.selectbox("Trained model", runs, index=index, format_func=run_label)
    st.session_state["chosen_run"] = run.id  # the same run on every page
    return project, run


def submit_training(project: Project, config: TrainConfig, **tags: str) -> Run:
    """Queue a run with the project's current label review snapshotted into its config.

    ``tags`` are stored in the run's config: ``baseline_of`` (the run this one is the
    from-scratch baseline of), ``sweep`` (the id of the depth sweep it belongs to).
    """
    raw = {**asdict(config), **tags}
    if project.data_dir:
        corrections = review.load(Path(project.data_dir))
        if corrections:
            raw["corrections"] = corrections.to_dict()
    return jobs.submit(get_store(), project.id, raw, project.data_dir)


@st.cache_resource(max_entries=2, show_spinner="Loading the trained model…")
def trained_model(run_dir: str) -> TrainedModel:
    """The run's best model, loaded once per server and shared by sessions.

    Raises ModelLoadError (one sentence) when best.pt is damaged or not this app's.
    """
    from tl_core.analysis.evaluation import load_model_checked

    return load_model_checked(Path(run_dir))
