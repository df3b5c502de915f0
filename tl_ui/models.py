"""Cached, read-only facts about catalog models for the pages."""

from __future__ import annotations

import streamlit as st

from tl_core.models.facts import ModelInfo
from tl_core.models.facts import model_info as describe_model


@st.cache_data(max_entries=64, show_spinner="Reading the model's structure…")
def model_info(key: str, num_classes: int) -> ModelInfo:
    """Layer groups, parameter counts and data config (no weights, no download)."""
    return describe_model(key, num_classes)
