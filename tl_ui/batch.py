"""The Try page's answers for many pictures: a summary line, a filter, a sortable table, a CSV.

A table of a thousand rows is drawn by Streamlit's data grid, which scrolls and sorts them in
the browser; the filter narrows it to the pictures that need a look.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from tl_ui.text import literal


def results_table(
    results: list[tuple[str, np.ndarray | None, str | None]], classes: list[str], threshold: float
) -> None:
    """Many pictures' answers (name, probabilities or None, error or None): how many of
    each, then one sortable row per picture, filtered by kind, and the CSV."""
    rows = []
    for name, probs, error in results:
        if error or probs is None:
            rows.append({"file": name, "prediction": "", "probability": None, "note": error})
            continue
        top = int(probs.argmax())
        sure = probs[top] >= threshold
        rows.append(
            {
                "file": name,
                "prediction": classes[top] if sure else "not sure",
                "probability": float(probs[top]),
                "note": "" if sure else f"best guess {classes[top]}",
            }
        )
    table = pd.DataFrame(rows)
    unread = sum(1 for _, probs, error in results if error or probs is None)
    answers = table.loc[table["prediction"] != "", "prediction"].value_counts()
    st.markdown(
        f"**{len(results):,} pictures**: "
        + ", ".join(f"{n:,} {literal(str(label))}" for label, n in answers.head(5).items())
        + (f" and {len(answers) - 5:,} more answers" if len(answers) > 5 else "")
        + (f"; {unread:,} could not be read" if unread else "")
        + "."
    )
    show = st.segmented_control(
        "Show",
        ["all", "not sure", "could not be read"],
        default="all",
        key="try_filter",
        help="Click a column's title to sort by it.",
    )
    shown = table
    if show == "not sure":
        shown = table[table["prediction"] == "not sure"]
    elif show == "could not be read":
        shown = table[table["prediction"] == ""]
    st.dataframe(
        shown,
        hide_index=True,
        height=min(38 + 35 * max(len(shown), 1), 560),
        key="try_table",
        column_config={
            "probability": st.column_config.ProgressColumn(
                format="percent", min_value=0.0, max_value=1.0
            )
        },
    )
    st.download_button(
        "Download as CSV",
        table.to_csv(index=False).encode(),
        file_name="predictions.csv",
        mime="text/csv",
        icon=":material/download:",
    )
