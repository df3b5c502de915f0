"""Step 4: choose how much of the network learns, press Train, watch it learn."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from tl_core.analysis.advice import depth_label
from tl_core.config import AUGMENT_LEVELS, ProjectSettings
from tl_core.data import review
from tl_core.errors import StudioError
from tl_core.models import catalog
from tl_core.models.facts import ModelInfo, freeze_sentence
from tl_core.runs.store import ACTIVE, Job, Project
from tl_ui.charts import stages_figure
from tl_ui.headstart import advice_for
from tl_ui.live import run_panel
from tl_ui.models import model_info
from tl_ui.runs import submit_training
from tl_ui.session import get_store, project_with_data
from tl_ui.state import state
from tl_ui.sweep import advice_box, sweep_panel
from tl_ui.text import literal

T = TypeVar("T", int, float)

AUGMENT_HELP = {
    "none": "none: the images as they are",
    "light": "light: random crops and mirror images",
    "medium": "medium: stronger crops, colour changes",
    "strong": "strong: heavy random changes (for many epochs)",
}


def _freeze_picker(project_id: str, settings: ProjectSettings, info: ModelInfo) -> int:
    n = info.n_backbone
    current = min(settings.trainable_groups, n)
    trainable = st.select_slider(
        "How much of the network learns",
        options=list(range(n + 1)),
        value=current,
        key="trainable_groups",
        format_func=lambda k: depth_label(k, n),
        help="Layer groups come from the model's own grouping (timm). Frozen groups keep "
        "what they learned on ImageNet; the others adapt to your images.",
    )
    if trainable != settings.trainable_groups:
        get_store().update_settings(project_id, trainable_groups=trainable)
    st.plotly_chart(
        stages_figure(info.groups, trainable), key="stages", config={"displayModeBar": False}
    )
    learn = info.trainable_params(trainable)
    st.markdown(
        f"**{learn:,}** of {info.total_params:,} parameters learn "
        f"({learn / info.total_params:.1%}). {freeze_sentence(trainable, n)}"
    )
    return trainable


def _span(low: T, high: T, value: T) -> tuple[T, T]:
    """A field's (min, max), widened to hold a saved value from outside its usual range (the
    command line accepts any number of epochs), so the page shows it instead of failing."""
    return min(low, value), max(high, value)


def _synced(project_id: str, saved: dict[str, Any]) -> dict[str, str]:
    """Each advanced field's widget key, holding the saved value whenever the setting was
    changed from outside this page since the field last showed it (the command line, a
    second tab), and the user's own value otherwise."""
    keys = {name: f"advanced_{name}_{project_id}" for name in saved}
    seen = state().advanced_seen.setdefault(project_id, {})
    for name, key in keys.items():
        if key not in st.session_state or seen.get(name) != saved[name]:
            st.session_state[key] = saved[name]
            seen[name] = saved[name]
    return keys


def _advanced(project_id: str, settings: ProjectSettings) -> dict[str, Any]:
    """The advanced settings, each saved as soon as it is changed (Enter, a step button or
    leaving the field): the values the summary line and Train use.

    Saved from the fields' values, not from the press of a button, so a change cannot be lost
    to a press the page missed, nor left unsaved by pressing Train straight after typing.
    """
    saved = settings.advanced()
    keys = _synced(project_id, saved)
    now = {name: st.session_state[key] for name, key in keys.items()}
    with st.expander("Advanced settings"):
        st.caption("Each change is saved as soon as you press Enter or leave the field.")
        c1, c2, c3 = st.columns(3)
        c1.number_input(
            "Epochs (passes over your images)",
            *_span(1, 200, int(now["epochs"])),
            key=keys["epochs"],
        )
        c2.number_input(
            "Learning rate",
            *_span(1e-5, 0.5, float(now["lr"])),
            format="%.4f",
            step=0.0005,
            key=keys["lr"],
        )
        c3.number_input(
            "Batch size", *_span(1, 1024, int(now["batch_size"])), key=keys["batch_size"]
        )
        c4, c5 = st.columns(2)
        c4.selectbox(
            "Augmentation", AUGMENT_LEVELS, format_func=AUGMENT_HELP.get, key=keys["augment"]
        )
        c5.number_input(
            "Seed (same seed, same result)", *_span(0, 10_000, int(now["seed"])), key=keys["seed"]
        )
    chosen = {name: st.session_state[key] for name, key in keys.items()}
    changed = {k: v for k, v in chosen.items() if v != saved[k]}
    if changed:
        get_store().update_settings(project_id, **changed)
        state().advanced_seen[project_id].update(changed)
    return chosen


def _watched_run(project: Project) -> Job | None:
    """The run that is training now, else the newest (a sweep queues several at once)."""
    runs = get_store().runs(project.id)
    training = [r for r in runs if r.status in ACTIVE]
    return (training or runs or [None])[-1]


def page() -> None:
    project, manifest = project_with_data()
    if project is None or manifest is None:
        return
    settings = project.typed_settings
    key = settings.model or catalog.DEFAULT_MODEL
    spec = catalog.get_spec(key)
    st.markdown(
        f"Model: **{spec.title}** · {len(manifest.items)} images in {len(manifest.classes)} classes"
    )
    info = model_info(key, len(manifest.classes))
    trainable = _freeze_picker(project.id, settings, info)
    advice, head_start = advice_for(project, manifest, key, info.n_backbone)
    advice_box(project, advice, trainable, info.n_backbone)
    sweep_place = st.container()  # drawn below, once the advanced settings are read
    advanced = _advanced(project.id, settings)
    config = replace(settings.train, **advanced, trainable_groups=trainable, model=key)
    run = _watched_run(project)
    busy = run is not None and run.active
    with sweep_place:
        sweep_panel(project, config, advice, info.n_backbone, busy, head_start)
    head = min(config.head_epochs, config.epochs - 1)  # as the engine's phases() does
    head_text = "epoch" if head == 1 else f"{head} epochs"
    st.caption(
        f"{config.epochs} epochs · learning rate {config.lr:g} · batch {config.batch_size} · "
        f"augmentation {config.augment} · seed {config.seed}"
        + (
            f" · the new head trains alone for the first {head_text},"
            " then the chosen groups join at lower learning rates"
            if trainable and head >= 1
            else ""
        )
    )

    corrections = review.load(Path(project.data_dir)) if project.data_dir else None
    if corrections:
        st.info(
            f"Your label review applies to the next run: {corrections.describe()}. "
            "Change it on the Evaluate page.",
            icon=":material/rule:",
        )
    if st.button(
        "Train",
        type="primary",
        disabled=busy,
        key="start",
        help="A run is already going" if busy else None,
    ):
        try:
            config.validate()
            submit_training(project, config)
        except StudioError as exc:  # bad settings, a full disk
            st.error(literal(exc))
        else:
            st.rerun()
    if run is not None:
        run_panel(run.id)


page()
