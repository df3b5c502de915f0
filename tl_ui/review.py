"""One picture's label review widgets, the same on the Evaluate page's mistakes and the Data
page's likely wrong labels: its new label, leave it out, flag it (saved with
:func:`tl_core.service.save_review`)."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from tl_core import service
from tl_core.data import review

__all__ = ["KEEP", "review_widgets"]

KEEP = "(keep)"


def review_widgets(
    file: str,
    given: str,
    classes: Sequence[str],
    corrections: review.Corrections,
    prefix: str = "",
) -> service.ReviewEdit:
    """The widgets of one picture labelled ``given``, showing its saved review; what they say
    now. ``prefix`` keeps two lists of the same pictures apart."""
    choices = [KEEP, *classes]
    current = corrections.relabel.get(file)
    label = st.selectbox(
        "Correct label",
        choices,
        index=choices.index(current) if current in choices else 0,
        key=f"{prefix}fix_{file}",
    )
    leave_out = st.checkbox("Leave out", file in corrections.exclude, key=f"{prefix}ex_{file}")
    suspect = st.checkbox(
        "Likely label error", file in corrections.suspect, key=f"{prefix}sus_{file}"
    )
    return service.ReviewEdit(file, given, label, leave_out, suspect)
