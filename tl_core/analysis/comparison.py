"""Transfer versus learning from scratch: the three gains, in plain words.

Higher start (validation accuracy after the first epoch), faster rise (epochs to reach 90% of
the from-scratch run's best), higher end (best validation accuracy). Differences within the
validation set's noise are called a tie. And what letting layer groups learn added to the
frozen pretrained features alone (:func:`frozen_sentence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tl_core.analysis.metrics import validation_noise
from tl_core.config import EpochRow

__all__ = [
    "Gain",
    "frozen_sentence",
    "gains",
]


@dataclass(frozen=True)
class Gain:
    name: str  # "higher start" | "faster rise" | "higher end"
    transfer: float
    scratch: float
    holds: bool | None  # True: transfer wins; False: scratch wins; None: within noise
    sentence: str


def _val(epochs: Sequence[EpochRow]) -> list[float]:
    return [e.val_accuracy for e in epochs]


def _epochs_to(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


def gains(
    transfer_epochs: Sequence[EpochRow], scratch_epochs: Sequence[EpochRow], n_val: int
) -> list[Gain]:
    """The three gains of the pretrained start over random weights (epoch rows of each run)."""
    t, s = _val(transfer_epochs), _val(scratch_epochs)
    if not t or not s:
        return []
    noise = validation_noise(max(t), n_val)

    def verdict(diff: float) -> bool | None:
        return None if abs(diff) <= noise else diff > 0

    out = []
    start = verdict(t[0] - s[0])
    out.append(
        Gain(
            "higher start",
            t[0],
            s[0],
            start,
            f"After one epoch: {t[0]:.0%} with the pretrained start against {s[0]:.0%} from "
            "scratch"
            + {True: ".", False: ": no head start here.", None: ": about the same."}[start],
        )
    )
    target = 0.9 * max(s)
    t_at, s_at = _epochs_to(t, target), _epochs_to(s, target)
    if t_at is not None and s_at is not None:
        rise = None if t_at == s_at else t_at < s_at
        sentence = (
            f"Reaching {target:.0%} took {t_at} epoch(s) with the pretrained start and {s_at} "
            "from scratch."
        )
    else:
        rise = t_at is not None
        sentence = (
            f"The pretrained start reached {target:.0%} in {t_at} epoch(s)."
            if rise
            else (f"Only the run from scratch reached {target:.0%}.")
        )
    out.append(Gain("faster rise", float(t_at or 0), float(s_at or 0), rise, sentence))
    end = verdict(max(t) - max(s))
    out.append(
        Gain(
            "higher end",
            max(t),
            max(s),
            end,
            f"Best: {max(t):.0%} with the pretrained start against {max(s):.0%} from scratch"
            + {
                True: ".",
                False: ": learning from scratch did better (negative transfer).",
                None: f": within the noise of {n_val} validation images.",
            }[end],
        )
    )
    return out


def frozen_sentence(accuracy: float, frozen_accuracy: float) -> str:
    """What a fine-tuned run's validation ``accuracy`` adds to a classifier on the frozen
    pretrained features alone (``frozen_accuracy``), in whole points."""
    change = accuracy - frozen_accuracy
    effect = (
        "made no difference"
        if round(change * 100) == 0
        else f"{'added' if change > 0 else 'cost'} {abs(change) * 100:.0f} points"
    )
    return (
        f"A classifier on the frozen pretrained features alone reaches {frozen_accuracy:.0%} on "
        f"these images; letting layer groups learn {effect}."
    )
