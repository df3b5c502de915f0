"""How the pages show an alarm: what was seen, why it matters, what to do."""

from __future__ import annotations

import streamlit as st

from tl_core.analysis.alarms import Alarm

ICONS = {
    "overfitting": ":material/warning:",
    "negative_transfer": ":material/trending_down:",
    "domain_mismatch": ":material/travel_explore:",
    "too_little_data": ":material/straighten:",
}


def show_alarm(alarm: Alarm | None) -> None:
    if alarm is not None:
        st.warning(
            f"**{alarm.title}.** {alarm.explanation} **What to do:** {alarm.action}",
            icon=ICONS.get(alarm.kind, ":material/warning:"),
        )
