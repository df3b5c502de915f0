"""Choosing a finished run, and starting a new one, shared by the pages after training."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from tl_core import service
from tl_core.analysis.advice import depth_label
from tl_core.config import TrainConfig
from tl_core.models import catalog
from tl_core.runs.store import Job, Project
from tl_ui.session import active_project, get_store, import_model_stack
from tl_ui.state import state

if TYPE_CHECKING:
    from tl_core.training.inference import TrainedModel


def run_label(run: Job) -> str:
    when = dt.datetime.fromtimestamp(run.created).strftime("%d %b %H:%M")
    acc = (run.result or {}).get("val_accuracy")
    score = f" · {acc:.1%}" if acc is not None else ""
    spec = run.spec
    title = catalog.get_spec(spec.config.model).title
    learn = spec.config.trainable_groups
    what = depth_label(learn)
    fixes = " · reviewed labels" if spec.corrections else ""
    if not spec.config.pretrained:
        fixes += " · from scratch"
    if spec.sweep:
        fixes += " · quick sweep"
    return f"{when} · {title} · {what}{fixes}{score}"


def pick_run(what: str) -> tuple[Project, Job] | None:
    """The project and the finished run the user looks at (newest first), shared by pages."""
    project = active_project()
    runs = [r for r in get_store().runs(project.id) if r.result] if project else []
    runs = [r for r in runs if (Path(r.run_dir) / "predictions.json").exists()]
    if project is None or not runs:
        st.info(f"Train a model first; then {what} here.")
        st.page_link("app_pages/train.py", label="Go to training", icon=":material/arrow_back:")
        return None
    runs.reverse()
    ids = [r.id for r in runs]
    kept = state()
    index = ids.index(kept.chosen_run) if kept.chosen_run in ids else 0
    run = st.selectbox("Trained model", runs, index=index, format_func=run_label)
    kept.chosen_run = run.id  # the same run on every page
    return project, run


def submit_training(
    project: Project, config: TrainConfig, baseline_of: str | None = None, sweep: str | None = None
) -> Job:
    """Queue a run with the project's current label review snapshotted into its record
    (:func:`tl_core.service.submit_training`)."""
    return service.submit_training(get_store(), project, config, baseline_of, sweep)


@st.cache_resource(max_entries=2, show_spinner="Loading the trained model…")
def trained_model(run_dir: str) -> TrainedModel:
    """The run's best model, loaded once per server and shared by sessions.

    Raises ModelLoadError (one sentence) when best.pt is damaged or not this app's.
    """
    import_model_stack()  # not beside the start-up's background import (see there)
    from tl_core.analysis.evaluation import load_model_checked

    return load_model_checked(Path(run_dir))


def forget_model(run_dir: str | Path) -> None:
    """Drop a run's model from :func:`trained_model`'s cache (the run or its project was
    deleted), under each spelling of its folder a page may have loaded it by."""
    for spelling in {str(run_dir), str(Path(run_dir).resolve())}:
        trained_model.clear(spelling)
