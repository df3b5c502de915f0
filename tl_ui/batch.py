"""The Try page's answers for many pictures: a summary line, a filter, a sortable table, a CSV.

A table of a thousand rows is drawn by Streamlit's data grid, which scrolls and sorts them in
the browser; the filter narrows it to the pictures that need a look.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import streamlit as st

from tl_ui.text import literal

# One picture's answer: (name, probabilities or None, error or None, unfamiliarity or None);
# the unfamiliarity may be left off (a run without the unfamiliar check).
Answer = (
    tuple[str, np.ndarray | None, str | None, float | None]
    | tuple[str, np.ndarray | None, str | None]
)

UNFAMILIAR = "unfamiliar"  # the prediction of a picture unlike every training picture
NOT_SURE = "not sure"
UNREAD = "could not be read"


def answers_frame(
    results: Sequence[Answer],
    classes: list[str],
    threshold: float,
    unfamiliar_threshold: float | None = None,
) -> pd.DataFrame:
    """One row per picture: its answer ("unfamiliar" above ``unfamiliar_threshold``, "not
    sure" below ``threshold``, else the class), the nearest class, its probability, the
    unfamiliarity and a note; what the table shows and the CSV holds."""
    rows = []
    for name, probs, error, *rest in results:
        far = rest[0] if rest else None
        if error or probs is None:
            rows.append(
                {
                    "file": name,
                    "prediction": "",
                    "nearest_class": "",
                    "probability": None,
                    "unfamiliarity": None,
                    "note": error,
                }
            )
            continue
        top = int(probs.argmax())
        best = classes[top]
        sure = probs[top] >= threshold
        flagged = (
            far is not None and unfamiliar_threshold is not None and far > unfamiliar_threshold
        )
        if flagged:
            prediction, note = UNFAMILIAR, "unlike every training picture"
        elif sure:
            prediction, note = best, ""
        else:
            prediction, note = NOT_SURE, f"best guess {best}"
        rows.append(
            {
                "file": name,
                "prediction": prediction,
                "nearest_class": best,
                "probability": float(probs[top]),
                "unfamiliarity": None if far is None else float(far),
                "note": note,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["file", "prediction", "nearest_class", "probability", "unfamiliarity", "note"],
    )


def results_table(
    results: Sequence[Answer],
    classes: list[str],
    threshold: float,
    unfamiliar_threshold: float | None = None,
) -> None:
    """Many pictures' answers: how many of each, then one sortable row per picture,
    filtered by kind, and the CSV. ``unfamiliar_threshold`` None: no unfamiliar check."""
    table = answers_frame(results, classes, threshold, unfamiliar_threshold)
    far = table["unfamiliarity"].astype(float)
    checked = unfamiliar_threshold is not None and bool(far.notna().any())
    flagged = far > unfamiliar_threshold if checked else pd.Series(False, index=table.index)
    unread = table["probability"].isna()
    answers = table.loc[~unread & ~flagged, "prediction"].value_counts()
    st.markdown(
        f"**{len(results):,} pictures**: "
        + ", ".join(f"{n:,} {literal(str(label))}" for label, n in answers.head(5).items())
        + (f" and {len(answers) - 5:,} more answers" if len(answers) > 5 else "")
        + (
            f"; {int(flagged.sum()):,} {UNFAMILIAR} (like none of your classes)"
            if flagged.any()
            else ""
        )
        + (f"; {int(unread.sum()):,} could not be read" if unread.any() else "")
        + "."
    )
    show = st.segmented_control(
        "Show",
        ["all", NOT_SURE, *([UNFAMILIAR] if checked else []), UNREAD],
        default="all",
        key="try_filter",
        help="Click a column's title to sort by it.",
    )
    shown = table
    if show == NOT_SURE:
        shown = table[table["prediction"] == NOT_SURE]
    elif show == UNFAMILIAR:
        shown = table[flagged]
    elif show == UNREAD:
        shown = table[unread]
    config = {
        "probability": st.column_config.ProgressColumn(
            format="percent", min_value=0.0, max_value=1.0
        ),
        "nearest_class": st.column_config.TextColumn(
            "nearest class", help="The class the model would name if it had to choose one."
        ),
    }
    if checked:
        config["unfamiliarity"] = st.column_config.NumberColumn(
            format="%.3f",
            help="How unlike every training picture it is (0: just like one). Above "
            f"{unfamiliar_threshold:.3f} it is unfamiliar.",
        )
    else:
        shown = shown.drop(columns="unfamiliarity")
    st.dataframe(
        shown,
        hide_index=True,
        height=min(38 + 35 * max(len(shown), 1), 560),
        key="try_table",
        column_config=config,
    )
    st.download_button(
        "Download as CSV",
        table.to_csv(index=False).encode(),
        file_name="predictions.csv",
        mime="text/csv",
        icon=":material/download:",
    )
