"""What the pretrained model already knows about the user's images, and which model to use.

Both come from frozen features, computed by queue jobs in a worker (``features`` and
``recommend``, tl_core.runs.tasks); the features are cached beside the data set and a finished
job is found again by its key, so a second visit is instant. The page only draws the results.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from tl_core import service
from tl_core.analysis import alarms
from tl_core.analysis.advice import FreezeAdvice, freeze_advice
from tl_core.analysis.readings import (
    DomainGauge,
    Example,
    HeadStart,
    LearningCurve,
    Recommendation,
    offline_models,
    suggested,
    verdict,
)
from tl_core.data.dataset import DatasetManifest, split_dataset
from tl_core.models import catalog
from tl_core.runs.store import Job, Project
from tl_ui.alarms import show_alarm
from tl_ui.charts import TRAIN_COLOR
from tl_ui.jobs import watch
from tl_ui.session import get_store


def _features_job(project: Project, key: str) -> Job | None:
    """The project's frozen-features job for model ``key`` (submitted when there is none)."""
    split = service.split_settings(project)
    return service.submit_features(get_store(), project, key, split.val_fraction, split.seed)


@dataclass(frozen=True)
class FeatureReadings:
    """What a finished features job found, rebuilt from its JSON result."""

    n_train: int
    head_start: HeadStart
    gauge: DomainGauge | None
    curve: LearningCurve
    probe_accuracy: float


def readings(result: dict) -> FeatureReadings:
    """A features job's result as the analysis dataclasses."""
    hs = dict(result["head_start"])
    hs["ncm_ci"] = tuple(hs["ncm_ci"])
    gauge = result.get("gauge")
    if gauge is not None:
        gauge = DomainGauge(
            **{
                **gauge,
                "most_like_imagenet": [Example(**e) for e in gauge["most_like_imagenet"]],
                "least_like_imagenet": [Example(**e) for e in gauge["least_like_imagenet"]],
            }
        )
    return FeatureReadings(
        int(result["n_train"]),
        HeadStart(**hs),
        gauge,
        LearningCurve(**result["curve"]),
        float(result["probe_accuracy"]),
    )


def ranking_from(result: dict) -> list[Recommendation]:
    """A recommend job's result as the ranking it computed."""
    return [Recommendation(**r) for r in result.get("ranking", [])]


def _curve_figure(curve: LearningCurve) -> go.Figure:
    fig = go.Figure(
        go.Scatter(
            x=curve.train_images,
            y=curve.accuracies,
            error_y={"type": "data", "array": curve.spreads, "visible": True},
            mode="lines+markers",
            line={"color": TRAIN_COLOR},
            hovertemplate="%{x:.0f} training images: %{y:.1%}<extra></extra>",
        )
    )
    fig.update_layout(
        height=260,
        margin={"t": 10, "b": 10, "l": 10, "r": 10},
        xaxis_title="training images used",
        yaxis={"title": "validation accuracy", "tickformat": ".0%"},
    )
    return fig


def head_start_panel(project: Project, manifest: DatasetManifest, key: str) -> None:
    """Head start, domain gauge and "would more data help?", for the chosen model."""
    st.subheader("What the pretrained model already knows about your classes")
    done = watch(_features_job(project, key), "Looking at your images with the pretrained model")
    if done is None:
        return
    found = readings(done.result or {})
    hs = found.head_start
    c1, c2, c3 = st.columns(3)
    c1.metric(
        "Sorted right before any training",
        f"{hs.ncm_accuracy:.0%}",
        help="Each image goes to the class whose average pretrained features are nearest "
        f"(nearest class mean; {hs.images} images"
        + (f", {hs.folds}-fold cross-validated" if hs.cross_validated else ", validation split")
        + f"). 95% interval {hs.ncm_ci[0]:.0%}–{hs.ncm_ci[1]:.0%}.",
    )
    c2.metric("Guessing at random", f"{hs.chance:.0%}")
    c3.metric("Always the biggest class", f"{hs.majority:.0%}")
    st.markdown(hs.sentence)
    show_alarm(alarms.too_little_data(hs.images, hs.ncm_accuracy))
    gauge = found.gauge
    if gauge is not None:
        show_alarm(alarms.domain_mismatch(gauge.level, gauge.mean_entropy))
        icon = {"close": ":material/check_circle:", "far": ":material/warning:"}.get(
            gauge.level, ":material/info:"
        )
        verdict = gauge.level or f"{gauge.mean_entropy:.0%} unsure"
        with st.expander(f"How close are your images to everyday photos? {verdict}"):
            st.markdown(f"{icon} {gauge.sentence}")
            st.progress(
                min(max(gauge.mean_entropy, 0.0), 1.0),
                text=f"uncertainty of the ImageNet classifier: {gauge.mean_entropy:.0%}",
            )
            for title, examples in (
                ("Most like ImageNet photos", gauge.most_like_imagenet),
                ("Least like them", gauge.least_like_imagenet),
            ):
                st.caption(title)
                cols = st.columns(max(len(examples), 1))
                for col, ex in zip(cols, examples, strict=False):
                    col.image(str(manifest.root / ex.file), width="stretch")
                    col.caption(f"looks like: {ex.imagenet_class}")
    with st.expander("Would more images help?"):
        curve = found.curve
        st.plotly_chart(_curve_figure(curve), key="learning_curve")
        st.markdown(curve.reading())


def advice_for(
    project: Project, manifest: DatasetManifest, key: str, n_backbone: int
) -> tuple[FreezeAdvice, float | None]:
    """Freeze advice from the data size, the head start and the domain gauge of model ``key``.

    Returns the advice and the head-start accuracy (None when the model's weights still
    need a download, so only the data size speaks).
    """
    n_classes = len(manifest.classes)
    split = service.split_settings(project)
    n_train = len(split_dataset(manifest, split.val_fraction, split.seed).train)
    if catalog.weights_status(catalog.get_spec(key)) == "needs download":
        return freeze_advice(n_train, n_classes, n_backbone), None
    done = watch(_features_job(project, key), "Measuring the head start for the suggestion")
    if done is None:  # until the head start is known, the data size alone speaks
        return freeze_advice(n_train, n_classes, n_backbone), None
    found = readings(done.result or {})
    hs = found.head_start
    level = found.gauge.level if found.gauge is not None else None
    advice = freeze_advice(found.n_train, n_classes, n_backbone, hs.ncm_accuracy, hs.chance, level)
    return advice, hs.ncm_accuracy


def recommend_panel(project: Project, manifest: DatasetManifest) -> None:
    """Rank every model available offline on the user's images; one click picks the suggestion.

    When the leaders are within noise of each other, it says so and suggests the fastest.
    """
    st.subheader("Which model should I use?")
    st.caption(
        "Scores each model that is on this computer with a quick classifier on its frozen "
        "features (cross-validated when the validation set is small), with LogME as a "
        "second opinion. About 10 s per model the first time."
    )
    store = get_store()
    keys = offline_models()
    job = service.submit_recommend(store, project, keys, submit=False)
    if st.button("Compare the models on my images", icon=":material/leaderboard:"):
        job = service.submit_recommend(store, project, keys)
    done = watch(job, "Scoring the models")
    ranking = ranking_from(done.result or {}) if done is not None else []
    if not ranking:
        return
    table = pd.DataFrame(
        [
            {
                "rank": r.rank,
                "model": r.title,
                "accuracy from frozen features": r.probe_accuracy,
                "95% interval": f"{r.ci_low:.1%}–{r.ci_high:.1%}",
                "as good as the best": "yes" if r.tied else "no",
                "LogME": round(r.logme, 3),
                "parameters (M)": r.params_m,
                "images/s on a laptop CPU": r.images_per_s,
            }
            for r in ranking
        ]
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "accuracy from frozen features": st.column_config.ProgressColumn(
                format="percent", min_value=0.0, max_value=1.0
            ),
            "as good as the best": st.column_config.TextColumn(
                help="Within the noise of the images scored: the two models' image-by-image "
                "results differ no more than chance would (McNemar's test, 5% level)."
            ),
        },
    )
    best = suggested(ranking)
    st.markdown(verdict(ranking))
    if (
        best is not None
        and project.typed_settings.model != best.key
        and st.button(f"Use {best.title}", type="primary", key="use_best")
    ):
        get_store().update_settings(project.id, model=best.key)
        st.session_state.pop("model_choice", None)  # a widget key: the radio shows the new one
        st.rerun()
