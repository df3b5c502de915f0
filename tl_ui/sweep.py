"""The Train page's freeze advice and its check: a quick sweep of two or three depths."""

from __future__ import annotations

import streamlit as st

from tl_core import service
from tl_core.analysis import alarms
from tl_core.analysis.advice import (
    SWEEP_EPOCHS,
    FreezeAdvice,
    depth_label,
    sweep_configs,
    sweep_reading,
)
from tl_core.config import TrainConfig
from tl_core.runs import supervisor
from tl_core.runs.store import Project
from tl_ui.alarms import show_alarm
from tl_ui.charts import depth_sweep_figure
from tl_ui.runs import submit_training
from tl_ui.session import get_store
from tl_ui.state import state

POLL_S = 1.0


def use_depth(project_id: str, trainable_groups: int) -> None:
    """Button callback: set the freeze slider (it runs before the slider is drawn again)."""
    st.session_state["trainable_groups"] = trainable_groups  # the slider's widget key
    get_store().update_settings(project_id, trainable_groups=trainable_groups)


def advice_box(project: Project, advice: FreezeAdvice, trainable: int, n_backbone: int) -> None:
    with st.container(border=True):
        st.markdown(
            f":material/lightbulb: **Suggested: {depth_label(advice.trainable_groups, n_backbone)}"
            f".** {advice.reason}"
        )
        if trainable != advice.trainable_groups:
            st.button(
                "Use the suggestion",
                key="use_advice",
                on_click=use_depth,
                args=(project.id, advice.trainable_groups),
            )


def _results(project_id: str, n_backbone: int, head_start: float | None) -> None:
    store = get_store()
    points = service.latest_sweep(store.runs(project_id))
    if not points:
        return
    lines = []
    for p in points:
        name = depth_label(p.trainable_groups, n_backbone)
        if p.accuracy is not None:
            lines.append(f"{name}: **{p.accuracy:.1%}** in {p.seconds or 0:.0f} s")
        else:
            lines.append(f"{name}: {p.status}")
    st.markdown(" · ".join(lines))
    done = [p for p in points if p.accuracy is not None and p.interval is not None]
    if done:
        st.plotly_chart(
            depth_sweep_figure(
                [depth_label(p.trainable_groups, n_backbone) for p in done],
                [p.accuracy or 0.0 for p in done],
                [(p.interval or (0.0, 0.0))[0] for p in done],
                [(p.interval or (0.0, 0.0))[1] for p in done],
                head_start,
            ),
            key="depth_sweep",
            config={"displayModeBar": False},
        )
    reading = sweep_reading(points, n_backbone)
    if reading:
        st.markdown(reading)
        best = max(done, key=lambda p: (p.accuracy or 0.0, -p.trainable_groups))
        gaps = [(best.accuracy or 0.0) - (p.accuracy or 0.0) for p in done if p is not best]
        show_alarm(alarms.too_little_data(best.n_val, best.accuracy or 0.0, gaps))
        st.button(
            f"Train with {depth_label(best.trainable_groups, n_backbone)}",
            key="use_sweep_best",
            on_click=use_depth,
            args=(project_id, best.trainable_groups),
        )
    if any(p.pending for p in points):
        supervisor.pump(store)
    elif state().sweep_polling:
        state().sweep_polling = False
        st.rerun(scope="app")


def sweep_panel(
    project: Project,
    config: TrainConfig,
    advice: FreezeAdvice,
    n_backbone: int,
    busy: bool,
    head_start: float | None,
) -> None:
    """Offer the sweep, and show the newest one's results (refreshing while it runs)."""
    labels = ", ".join(depth_label(d, n_backbone) for d in advice.sweep)
    with st.expander("Not sure? Measure it on your images: a quick sweep"):
        st.markdown(
            f"Trains {len(advice.sweep)} short runs ({min(config.epochs, SWEEP_EPOCHS)} "
            f"epochs each, your other settings unchanged) one after another in the background "
            f"— {labels} — and plots validation accuracy against how much of the network "
            "learns."
        )
        if st.button(
            "Run the quick sweep",
            icon=":material/tune:",
            key="sweep",
            disabled=busy,
            help="A run is already going" if busy else None,
        ):
            for raw in sweep_configs(config, advice.sweep):
                submit_training(project, TrainConfig.from_dict(raw), sweep=str(raw["sweep"]))
            st.rerun()
        points = service.latest_sweep(get_store().runs(project.id))
        active = any(p.pending for p in points)
        if active:
            state().sweep_polling = True
        st.fragment(_results, run_every=POLL_S if active else None)(
            project.id, n_backbone, head_start
        )
