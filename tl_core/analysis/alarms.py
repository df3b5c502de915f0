"""Honest alarms about a run: overfitting, negative transfer, too little data to judge.

Each alarm is one plain sentence of what was seen and one suggested action. The functions
take plain numbers (epoch metrics from the store, accuracies, counts), so they are cheap to
run on every page view and easy to test on constructed cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tl_core.analysis.metrics import is_small_sample, validation_noise, wilson_interval
from tl_core.config import EpochRow

__all__ = [
    "Alarm",
    "RunAlarms",
    "domain_mismatch",
    "negative_transfer",
    "overfitting",
    "run_alarms",
    "too_little_data",
]


@dataclass(frozen=True)
class Alarm:
    kind: str  # "overfitting" | "negative_transfer" | "too_little_data" | "domain_mismatch"
    title: str
    explanation: str
    action: str


def overfitting(
    epochs: Sequence[EpochRow], gap: float = 0.15, rise: float = 0.1, patience: int = 2
) -> Alarm | None:
    """Training accuracy far above validation, or validation loss rising as training loss falls.

    ``epochs``: the run's epoch rows, in order. ``gap``: accuracy gap that counts as "far
    above"; ``rise``: relative rise of the validation loss above its best, held for at least
    ``patience`` epochs while the training loss kept falling.
    """
    if len(epochs) < 2:
        return None
    last = epochs[-1]
    acc_gap = last.train_accuracy - last.val_accuracy
    best_at = min(range(len(epochs)), key=lambda i: epochs[i].val_loss)
    best = epochs[best_at]
    rising = (
        len(epochs) - best_at > patience
        and last.val_loss > best.val_loss * (1 + rise)
        and last.train_loss < best.train_loss
    )
    if acc_gap <= gap and not rising:
        return None
    if rising:
        grew = last.val_loss / best.val_loss - 1
        seen = (
            f"Validation loss rose {grew:.0%} since epoch {best.epoch} while the "
            "training loss kept falling"
        )
    else:
        seen = (
            f"Training accuracy ({last.train_accuracy:.0%}) is far above validation "
            f"accuracy ({last.val_accuracy:.0%})"
        )
    return Alarm(
        "overfitting",
        "The model is memorising your training images",
        f"{seen}: it learns the training pictures by heart rather than what the classes have "
        "in common.",
        "Freeze more layers, turn on augmentation, add images, or train fewer epochs (the "
        "best epoch is kept either way).",
    )


def negative_transfer(
    transfer_accuracy: float,
    n_val: int,
    scratch_accuracy: float | None = None,
    frozen_accuracy: float | None = None,
) -> Alarm | None:
    """The fine-tuned model loses to learning from scratch or to the frozen features alone.

    Differences within the validation set's noise (a Wilson half-width) do not count.
    """
    noise = validation_noise(transfer_accuracy, n_val)
    rivals = [
        (name, acc)
        for name, acc in (
            ("training from scratch", scratch_accuracy),
            ("the frozen pretrained features alone", frozen_accuracy),
        )
        if acc is not None and acc - transfer_accuracy > noise
    ]
    if not rivals:
        return None
    name, acc = max(rivals, key=lambda r: r[1])
    return Alarm(
        "negative_transfer",
        "The pretrained start is not helping",
        f"{name.capitalize()} reached {acc:.0%}, above the fine-tuned model's "
        f"{transfer_accuracy:.0%}: what the network learned before gets in the way here.",
        "Train more layers (or all of them) at a lower learning rate, or pick a model whose "
        "training images look more like yours."
        if name.startswith("training")
        else "Freeze more layers or lower the learning rate: fine-tuning damaged good features.",
    )


def _points(share: float) -> str:
    """0.02 -> '2%', 0.005 -> '0.5%': small differences keep their one decimal."""
    return f"{share * 100:.1f}".rstrip("0").rstrip(".") + "%"


def too_little_data(n_val: int, accuracy: float, differences: Sequence[float] = ()) -> Alarm | None:
    """The validation set is too small to tell the shown differences apart (or to trust one
    number): a small sample (:func:`~tl_core.analysis.metrics.is_small_sample`), or an
    interval wider than the smallest difference."""
    if n_val <= 0:
        return None
    low, high = wilson_interval(round(accuracy * n_val), n_val)
    width = high - low
    smallest = min((abs(d) for d in differences if d), default=None)
    if not is_small_sample(n_val, low, high) and (smallest is None or width / 2 <= smallest):
        return None
    about = (
        f"differences of {_points(smallest)} between the results shown are within that noise"
        if smallest is not None and width / 2 > smallest
        else "one number says little"
    )
    return Alarm(
        "too_little_data",
        "Too few validation images to judge",
        f"With {n_val} validation images the true accuracy could be anywhere from {low:.0%} to "
        f"{high:.0%}, so {about}.",
        "Add images, or hold back a larger share for validation, before choosing between settings.",
    )


def domain_mismatch(level: str | None, score: float) -> Alarm | None:
    """The images look unlike the pretraining photos (``level`` from the domain gauge)."""
    if level != "far":
        return None
    return Alarm(
        "domain_mismatch",
        "Your images are far from what the model saw before",
        f"The pretrained network recognises little in them (uncertainty {score:.0%} of the "
        "maximum), so its ready-made features fit them less well.",
        "Let more layer groups learn (the later ones at least), or use more images.",
    )


@dataclass(frozen=True)
class RunAlarms:
    """What is said about a finished run above its scores: the alarms that apply, in the
    order shown, and the evaluation's own small-sample warning where no alarm already says
    the validation set is too small."""

    alarms: tuple[Alarm, ...]
    warning: str | None


def run_alarms(
    epochs: Sequence[EpochRow],
    accuracy: float,
    n_val: int,
    scratch_accuracy: float | None = None,
    frozen_accuracy: float | None = None,
    warning: str | None = None,
) -> RunAlarms:
    """Overfitting, negative transfer and too little data for a run's ``epochs`` and its
    validation ``accuracy`` on ``n_val`` images, held against its baselines where they exist
    (the too-little-data alarm then judges the differences to them); ``warning``: the
    evaluation's small-sample warning, kept only when that alarm is not raised."""
    baselines = (scratch_accuracy, frozen_accuracy)
    little = too_little_data(
        n_val, accuracy, [accuracy - other for other in baselines if other is not None]
    )
    found = (
        overfitting(epochs),
        negative_transfer(accuracy, n_val, scratch_accuracy, frozen_accuracy),
        little,
    )
    return RunAlarms(tuple(a for a in found if a is not None), warning if little is None else None)
