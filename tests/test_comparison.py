"""Transfer versus from scratch: the three gains named from the two runs' curves."""

from __future__ import annotations

from tl_core.analysis.comparison import gains
from tl_core.config import EpochRow


def _rows(values: list[float]) -> list[EpochRow]:
    return [EpochRow(i + 1, 10 * (i + 1), 1.0, 0.5, 1.0, v, float(i)) for i, v in enumerate(values)]


def test_a_pretrained_start_that_helps_wins_all_three() -> None:
    start, rise, end = gains(_rows([0.70, 0.80, 0.85]), _rows([0.20, 0.40, 0.60]), 200)
    assert (start.holds, rise.holds, end.holds) == (True, True, True)
    assert "70% with the pretrained start against 20% from scratch." in start.sentence
    # 90% of the scratch run's best (60%) is 54%: epoch 1 against epoch 3
    assert "took 1 epoch(s) with the pretrained start and 3 from scratch" in rise.sentence


def test_negative_transfer_and_ties_are_named() -> None:
    start, _, end = gains(_rows([0.30, 0.50, 0.55]), _rows([0.35, 0.60, 0.80]), 200)
    assert end.holds is False and "negative transfer" in end.sentence
    assert start.holds is None and "about the same" in start.sentence  # 5 points, 200 images
    _, _, end = gains(_rows([0.50, 0.81]), _rows([0.50, 0.80]), 50)
    assert end.holds is None and "within the noise of 50 validation images" in end.sentence
    assert gains([], _rows([0.5]), 10) == []
