"""The unfamiliar check on the pages, without a trained model: the answers for many pictures
(table, filter, CSV) and the Evaluate page's chart."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tl_ui.batch import answers_frame

CLASSES = ["cat", "dog", "owl"]


def _results() -> list:
    """Six pictures: sure, not sure, unfamiliar though sure, unfamiliar and not sure,
    unreadable, and one without a measured unfamiliarity."""
    sure, torn = np.array([0.9, 0.05, 0.05]), np.array([0.4, 0.35, 0.25])
    return [
        ("a.png", sure, None, 0.1),
        ("b.png", torn, None, 0.1),
        ("c.png", np.array([0.05, 0.9, 0.05]), None, 0.6),
        ("d.png", torn[::-1].copy(), None, 0.7),
        ("e.png", None, "e.png: not a picture", None),
        ("f.png", sure, None),  # an answer of a run without the check
    ]


def test_the_answers_mark_unfamiliar_pictures_and_name_the_nearest_class() -> None:
    table = answers_frame(_results(), CLASSES, 0.5, 0.3).set_index("file")
    assert list(table["prediction"]) == ["cat", "not sure", "unfamiliar", "unfamiliar", "", "cat"]
    assert list(table["nearest_class"]) == ["cat", "cat", "dog", "owl", "", "cat"]
    assert table.loc["c.png", "unfamiliarity"] == pytest.approx(0.6)
    assert pd.isna(table.loc["f.png", "unfamiliarity"])
    csv = pd.read_csv(io.StringIO(answers_frame(_results(), CLASSES, 0.5, 0.3).to_csv(index=False)))
    assert {"nearest_class", "unfamiliarity"} <= set(csv.columns)
    assert list(csv["prediction"].fillna("")) == list(table["prediction"])
    # no threshold (the check turned off): the same pictures get class or "not sure" answers
    off = answers_frame(_results(), CLASSES, 0.5, None)
    assert "unfamiliar" not in set(off["prediction"]) and off["prediction"][2] == "dog"


def _answers_page(results: list, classes: list[str], threshold: float | None) -> None:
    from tl_ui.batch import results_table

    results_table(results, classes, 0.5, threshold)


def test_the_table_counts_and_filters_unfamiliar_pictures() -> None:
    at = AppTest.from_function(_answers_page, args=(_results(), CLASSES, 0.3), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    summary = at.markdown[0].value
    assert (
        "2 unfamiliar (like none of your classes)" in summary and "1 could not be read" in summary
    )
    assert "unfamiliar" in at.segmented_control(key="try_filter").options
    at.segmented_control(key="try_filter").set_value("unfamiliar").run()
    shown = at.dataframe[0].value
    assert list(shown["file"]) == ["c.png", "d.png"] and "nearest_class" in shown.columns
    off = AppTest.from_function(_answers_page, args=(_results(), CLASSES, None), default_timeout=60)
    off.run()
    assert "unfamiliar" not in off.markdown[0].value
    assert "unfamiliar" not in off.segmented_control(key="try_filter").options
    assert "unfamiliarity" not in off.dataframe[0].value.columns


def test_the_unfamiliar_chart_shows_every_share_least_noticed_class_first() -> None:
    from tl_ui.charts import unfamiliar_figure

    fig = unfamiliar_figure(0.9, [("cat", 0.7), ("dog", 0.2), ("owl", 0.5)], 0.05)
    bar = fig.data[0]
    assert list(bar.x) == [0.9, 0.2, 0.5, 0.7, 0.05]
    assert bar.y[0] == "everyday pictures" and "'dog'" in bar.y[1] and "own" in bar.y[-1]
    assert len(unfamiliar_figure(None, [], 0.1).data[0].x) == 1
