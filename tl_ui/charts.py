"""Plotly figures for the pages: pure functions of plain data, testable without Streamlit."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tl_core.config import EpochRow, StepRow

TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#ff7f0e"
FROZEN_COLOR = "#b0bec5"
TRAINABLE_COLOR = "#ff9800"
HEAD_COLOR = "#2e7d32"


LABELLED_BARS = 30  # above this many classes the bars carry no numbers (hover shows them)
LABELLED_CELLS = 20  # above this many classes the confusion matrix cells carry no numbers


def class_counts_figure(counts: dict[str, int], min_recommended: int) -> go.Figure:
    """Images per class as bars; classes under the recommended count in red. Past
    LABELLED_BARS classes the numbers move from the bars into the hover text."""
    names = list(counts)
    values = [counts[n] for n in names]
    colors = ["#c62828" if v < min_recommended else TRAIN_COLOR for v in values]
    labelled = len(names) <= LABELLED_BARS
    fig = go.Figure(
        go.Bar(
            x=names,
            y=values,
            marker_color=colors,
            text=values if labelled else None,
            textposition="outside" if labelled else "none",
            hovertemplate="%{x}: %{y} images<extra></extra>",
        )
    )
    fig.add_hline(
        y=min_recommended,
        line_dash="dot",
        line_color="#c62828",
        annotation_text=f"{min_recommended} recommended",
        annotation_position="top left",
    )
    fig.update_layout(
        height=300,
        margin={"t": 30, "b": 10, "l": 10, "r": 10},
        yaxis_title="images",
        xaxis_title=None,
        xaxis={"showticklabels": labelled or len(names) <= 2 * LABELLED_BARS},
        bargap=0.1 if labelled else 0.02,
    )
    return fig


def _smooth(values: Sequence[float], alpha: float = 0.15) -> list[float]:
    """Exponential moving average, bias-corrected so the first points are not pulled to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = alpha * v + (1 - alpha) * avg
        out.append(avg / (1 - (1 - alpha) ** i))
    return out


def curves_figure(
    steps: Sequence[StepRow], epochs: Sequence[EpochRow], total_epochs: int
) -> go.Figure:
    """Loss and accuracy against epochs: training per step (smoothed), validation per epoch."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("Loss (lower is better)", "Accuracy (higher is better)")
    )
    if steps:
        per_epoch = max(1, steps[-1].total_steps) / max(1, total_epochs)
        x = [s.step / per_epoch for s in steps]
        for col, raw in ((1, [s.loss for s in steps]), (2, [s.accuracy for s in steps])):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=raw,
                    mode="lines",
                    line={"color": TRAIN_COLOR, "width": 1},
                    opacity=0.25,
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=_smooth(raw),
                    mode="lines",
                    name="training",
                    line={"color": TRAIN_COLOR, "width": 2},
                    legendgroup="train",
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
    if epochs:
        x = [e.epoch for e in epochs]
        for col, y in ((1, [e.val_loss for e in epochs]), (2, [e.val_accuracy for e in epochs])):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name="validation",
                    line={"color": VAL_COLOR, "width": 2},
                    legendgroup="val",
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="epoch", range=[0, total_epochs + 0.05])
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    fig.update_layout(
        height=340,
        margin={"t": 40, "b": 10, "l": 10, "r": 10},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def stages_figure(groups: Sequence[tuple[str, int]], trainable_groups: int) -> go.Figure:
    """The network as a row of blocks, input on the left: grey frozen, orange learning."""
    n_backbone = len(groups) - 1
    first_trainable = n_backbone - trainable_groups
    colors, labels = [], []
    for i in range(len(groups)):
        if i == n_backbone:
            colors.append(HEAD_COLOR)
            labels.append("new head")
        elif i >= first_trainable:
            colors.append(TRAINABLE_COLOR)
            labels.append("learns")
        else:
            colors.append(FROZEN_COLOR)
            labels.append("frozen")
    fig = go.Figure(
        go.Bar(
            x=[1] * len(groups),
            y=[""] * len(groups),
            orientation="h",
            marker_color=colors,
            marker_line={"color": "white", "width": 3},
            text=[str(i + 1) for i in range(len(groups))],
            textposition="inside",
            insidetextanchor="middle",
            customdata=[
                [name, f"{p:,}", lab] for (name, p), lab in zip(groups, labels, strict=True)
            ],
            hovertemplate="group %{text}: %{customdata[0]}<br>%{customdata[1]} parameters"
            "<br>%{customdata[2]}<extra></extra>",
        )
    )
    fig.update_layout(
        barmode="stack",
        height=90,
        showlegend=False,
        margin={"t": 5, "b": 25, "l": 5, "r": 5},
        xaxis={
            "visible": True,
            "showticklabels": False,
            "showgrid": False,
            "title": "input image  →  layer groups  →  prediction",
        },
        yaxis={"visible": False},
    )
    return fig


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> go.Figure:
    """Rows: true class; columns: predicted class; the diagonal is correct.

    Up to LABELLED_CELLS classes each cell shows its count; beyond, the counts are in the
    hover text only and the height stops growing, so a large matrix stays a readable map.
    """
    n = len(classes)
    labelled = n <= LABELLED_CELLS
    cells = (
        {"text": [[str(v) for v in row] for row in matrix], "texttemplate": "%{text}"}
        if labelled
        else {}
    )
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(classes),
            y=list(classes),
            colorscale="Blues",
            showscale=not labelled,
            hovertemplate="true: %{y}<br>predicted: %{x}<br>%{z} image(s)<extra></extra>",
            xgap=1 if labelled else 0,
            ygap=1 if labelled else 0,
            **cells,
        )
    )
    fig.update_layout(
        height=max(320, 40 * n + 120) if labelled else min(900, 8 * n + 200),
        margin={"t": 10, "b": 10, "l": 10, "r": 10},
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis={"autorange": "reversed", "showticklabels": n <= 3 * LABELLED_CELLS},
        xaxis={"showticklabels": n <= 3 * LABELLED_CELLS},
    )
    return fig


def reliability_figure(
    curves: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[int], str]],
) -> go.Figure:
    """Reliability diagram: per confidence bin, how often the model was right.

    ``curves``: (name, mean confidence per bin, accuracy per bin, count per bin, colour);
    empty bins are left out. On the diagonal, "90% sure" means right 9 times in 10.
    """
    fig = go.Figure(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"color": "#9e9e9e", "dash": "dot"},
            name="perfectly calibrated",
            hoverinfo="skip",
        )
    )
    for name, conf, acc, count, color in curves:
        keep = [i for i, c in enumerate(count) if c > 0]
        fig.add_trace(
            go.Scatter(
                x=[conf[i] for i in keep],
                y=[acc[i] for i in keep],
                mode="lines+markers",
                name=name,
                line={"color": color},
                marker={"size": [6 + min(count[i], 60) / 4 for i in keep]},
                customdata=[count[i] for i in keep],
                hovertemplate="said %{x:.0%} sure<br>right %{y:.0%} of the time"
                "<br>%{customdata} image(s)<extra></extra>",
            )
        )
    fig.update_layout(
        height=360,
        margin={"t": 10, "b": 10, "l": 10, "r": 10},
        xaxis={"title": "how sure the model said it was", "range": [0, 1.02], "tickformat": ".0%"},
        yaxis={"title": "how often it was right", "range": [0, 1.02], "tickformat": ".0%"},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def top_classes_figure(
    classes: Sequence[str],
    probs: Sequence[float],
    threshold: float,
    top: int = 5,
    unfamiliar: bool = False,
) -> go.Figure:
    """The most likely classes as horizontal bars, with the "not sure" threshold marked; all
    grey for an ``unfamiliar`` picture (the guesses it would make if it had to choose)."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])[:top]
    sure = probs[order[0]] >= threshold and not unfamiliar if order else False
    colors = [TRAIN_COLOR if (sure and k == 0) else FROZEN_COLOR for k in range(len(order))]
    fig = go.Figure(
        go.Bar(
            x=[probs[i] for i in order],
            y=[classes[i] for i in order],
            orientation="h",
            marker_color=colors,
            text=[f"{probs[i]:.0%}" for i in order],
            textposition="outside",
            hovertemplate="%{y}: %{x:.1%}<extra></extra>",
        )
    )
    fig.add_vline(
        x=threshold,
        line_dash="dot",
        line_color="#c62828",
        annotation_text="not sure below",
        annotation_position="top",
    )
    fig.update_layout(
        height=60 + 36 * len(order),
        margin={"t": 30, "b": 10, "l": 10, "r": 30},
        xaxis={"range": [0, 1.1], "tickformat": ".0%", "title": None},
        yaxis={"autorange": "reversed"},
        showlegend=False,
    )
    return fig


def comparison_figure(transfer: Sequence[EpochRow], scratch: Sequence[EpochRow]) -> go.Figure:
    """Validation accuracy per epoch: the pretrained start against learning from scratch."""
    fig = go.Figure()
    for name, rows, color in (
        ("pretrained start", transfer, TRAIN_COLOR),
        ("from scratch", scratch, VAL_COLOR),
    ):
        fig.add_trace(
            go.Scatter(
                x=[r.epoch for r in rows],
                y=[r.val_accuracy for r in rows],
                mode="lines+markers",
                name=name,
                line={"color": color, "width": 2},
                hovertemplate=f"{name}<br>epoch %{{x}}: %{{y:.1%}}<extra></extra>",
            )
        )
    fig.update_layout(
        height=320,
        margin={"t": 10, "b": 10, "l": 10, "r": 10},
        xaxis_title="epoch",
        yaxis={"title": "validation accuracy", "tickformat": ".0%", "range": [0, 1.02]},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def depth_sweep_figure(
    labels: Sequence[str],
    accuracies: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    frozen_accuracy: float | None = None,
) -> go.Figure:
    """Validation accuracy against how much of the network learns, with 95% intervals."""
    fig = go.Figure(
        go.Scatter(
            x=list(labels),
            y=list(accuracies),
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [h - a for a, h in zip(accuracies, highs, strict=True)],
                "arrayminus": [a - lo for a, lo in zip(accuracies, lows, strict=True)],
            },
            mode="lines+markers",
            name="short run",
            line={"color": TRAIN_COLOR, "width": 2},
            marker={"size": 10},
            hovertemplate="%{x}: %{y:.1%}<extra></extra>",
        )
    )
    if frozen_accuracy is not None:
        fig.add_hline(
            y=frozen_accuracy,
            line={"dash": "dot", "color": FROZEN_COLOR},
            annotation_text="before any training",
            annotation_position="bottom left",
        )
    fig.update_layout(
        height=300,
        margin={"t": 10, "b": 10, "l": 10, "r": 10},
        xaxis={"title": "how much of the network learns", "type": "category"},
        yaxis={"title": "validation accuracy", "tickformat": ".0%"},
        showlegend=False,
    )
    return fig


UNFAMILIAR_COLOR = "#6a1b9a"  # pictures of none of the classes, rightly flagged
MISTAKE_COLOR = "#c62828"  # the user's own pictures, flagged by mistake


def unfamiliar_figure(
    everyday: float | None, left_out: Sequence[tuple[str, float]], own: float
) -> go.Figure:
    """How often the unfamiliar check flags pictures of none of the classes: the shipped
    everyday pictures, each class when left out of training (least noticed first), and the
    user's own validation pictures (flagged by mistake), as horizontal bars of shares."""
    rows = [] if everyday is None else [("everyday pictures", everyday, UNFAMILIAR_COLOR)]
    rows += [
        (f"'{name}' if it were new", share, VAL_COLOR)
        for name, share in sorted(left_out, key=lambda c: c[1])
    ]
    rows.append(("your own pictures (by mistake)", own, MISTAKE_COLOR))
    labelled = len(left_out) <= 3 * LABELLED_BARS
    fig = go.Figure(
        go.Bar(
            x=[share for _, share, _ in rows],
            y=[label for label, _, _ in rows],
            orientation="h",
            marker_color=[color for _, _, color in rows],
            text=[f"{share:.0%}" for _, share, _ in rows] if labelled else None,
            textposition="outside" if labelled else "none",
            hovertemplate="%{y}: %{x:.0%} flagged unfamiliar<extra></extra>",
        )
    )
    fig.update_layout(
        height=min(900, 60 + 26 * len(rows)),
        margin={"t": 10, "b": 10, "l": 10, "r": 30},
        xaxis={"range": [0, 1.1], "tickformat": ".0%", "title": "flagged unfamiliar"},
        yaxis={"autorange": "reversed", "showticklabels": labelled},
        showlegend=False,
        bargap=0.2 if labelled else 0.02,
    )
    return fig
