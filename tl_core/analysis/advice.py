"""Freeze advice before training, and a quick sweep that checks it on the user's images.

The advice follows the usual transfer-learning rule of thumb (Yosinski et al., 2014; the
CS231n notes on transfer learning): the fewer the images and the closer they are to the
pretraining photos, the more of the network should stay frozen; many images unlike those
photos let the whole network learn. Three measured signals place the data on that map:

- images per class in the training split;
- the head start: how far above chance the frozen features already sort the images;
- the domain gauge: how sure the pretrained ImageNet classifier is about them.

It is a rule of thumb, so the Train page offers to measure it: a sweep trains short runs at
two or three depths in the background queue and plots validation accuracy against depth.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Literal

from tl_core.analysis.metrics import validation_noise, wilson_interval
from tl_core.config import UNFINISHED

if TYPE_CHECKING:
    from tl_core.training.engine import TrainConfig

__all__ = [
    "FEW_PER_CLASS",
    "MANY_PER_CLASS",
    "STRONG_LIFT",
    "SWEEP_EPOCHS",
    "WEAK_LIFT",
    "Fit",
    "FreezeAdvice",
    "Size",
    "SweepPoint",
    "depth_label",
    "freeze_advice",
    "sweep_configs",
    "sweep_depths",
    "sweep_reading",
]

FEW_PER_CLASS = 40  # under this many training images per class: "few"
MANY_PER_CLASS = 250  # from this many: "many"
STRONG_LIFT = 0.7  # head start this far from chance to perfect: the features already fit
WEAK_LIFT = 0.4  # below this: they fit poorly
SWEEP_EPOCHS = 4  # a sweep's short runs

Size = Literal["few", "some", "many"]
Fit = Literal["close", "between", "far"]

# Share of the backbone's layer groups that learn, by data size and closeness.
_SHARE: dict[tuple[Size, Fit], float] = {
    ("few", "close"): 0.0,
    ("few", "between"): 0.125,
    ("few", "far"): 0.25,
    ("some", "close"): 0.125,
    ("some", "between"): 0.25,
    ("some", "far"): 0.5,
    ("many", "close"): 0.25,
    ("many", "between"): 0.5,
    ("many", "far"): 1.0,
}


@dataclass(frozen=True)
class FreezeAdvice:
    """A suggested number of trainable backbone groups, the reason, and depths to compare."""

    trainable_groups: int
    reason: str
    size: Size
    fit: Fit
    sweep: tuple[int, ...]  # two or three depths worth measuring side by side


def _lift(accuracy: float, chance: float) -> float:
    """Where ``accuracy`` sits between chance (0) and perfect (1)."""
    return (accuracy - chance) / (1 - chance) if chance < 1 else 0.0


def _fit(head_lift: float | None, domain_level: str | None) -> Fit:
    if domain_level == "close":
        return "close" if head_lift is None or head_lift >= WEAK_LIFT else "between"
    if domain_level == "far":
        return "far" if head_lift is None or head_lift < STRONG_LIFT else "between"
    if head_lift is None:
        return "between"
    if head_lift >= STRONG_LIFT:
        return "close"
    return "far" if head_lift < WEAK_LIFT else "between"


def depth_label(trainable_groups: int, n_backbone: int | None = None) -> str:
    """How many layer groups learn, in the Train page slider's words: 'only the new head',
    'last 2 groups', 'everything' (only when ``n_backbone``, the model's group count, is
    known)."""
    if trainable_groups == 0:
        return "only the new head"
    if n_backbone is not None and trainable_groups >= n_backbone:
        return "everything"
    return f"last {trainable_groups} group{'s' if trainable_groups > 1 else ''}"


def sweep_depths(suggested: int, n_backbone: int) -> tuple[int, ...]:
    """Three depths to measure: head only (the cheapest floor), the suggestion, and deeper."""
    step = max(1, n_backbone // 4)
    if suggested <= 0:
        depths = {0, max(1, step // 2), step}
    elif suggested >= n_backbone:
        depths = {0, n_backbone - step, n_backbone}
    else:
        depths = {0, suggested, min(n_backbone, suggested + step)}
    return tuple(sorted(d for d in depths if 0 <= d <= n_backbone))


def freeze_advice(
    n_train: int,
    n_classes: int,
    n_backbone: int,
    head_start_accuracy: float | None = None,
    chance: float | None = None,
    domain_level: str | None = None,
) -> FreezeAdvice:
    """Suggest how many backbone groups should learn, with a one-sentence reason.

    ``head_start_accuracy``/``chance``: nearest-class-mean accuracy of the frozen features and
    the chance level (from :func:`tl_core.analysis.transfer.head_start`); ``domain_level``:
    the domain gauge's "close", "some distance" or "far" (None when the model has no ImageNet head).
    """
    per_class = n_train / max(n_classes, 1)
    size: Size = (
        "few" if per_class < FEW_PER_CLASS else "many" if per_class >= MANY_PER_CLASS else "some"
    )
    head_lift = (
        _lift(head_start_accuracy, chance if chance is not None else 1 / max(n_classes, 1))
        if head_start_accuracy is not None
        else None
    )
    fit = _fit(head_lift, domain_level)
    share = _SHARE[(size, fit)]
    groups = 0 if share == 0 else max(1, min(n_backbone, round(share * n_backbone)))

    amount = {
        "few": f"few images ({per_class:.0f} per class)",
        "some": f"a fair number of images ({per_class:.0f} per class)",
        "many": f"many images ({per_class:.0f} per class)",
    }[size]
    looks = {
        "close": "the pretrained features already fit them",
        "between": "they are partly like the photos the model learned from",
        "far": "they look unlike the photos the model learned from",
    }[fit]
    evidence = []
    if head_start_accuracy is not None:
        evidence.append(f"{head_start_accuracy:.0%} sorted right before any training")
    if domain_level is not None:
        evidence.append(f"domain gauge: {domain_level}")
    why = f" ({'; '.join(evidence)})" if evidence else ""
    if groups == 0:
        then = "train only the new last layer; more would memorise your few images"
    elif groups >= n_backbone:
        then = "let the whole network learn"
    else:
        which = "last layer group" if groups == 1 else f"last {groups} layer groups"
        then = (
            f"let the {which} adapt too, and no more"
            if size == "few"
            else f"let the {which} adapt to them"
        )
    reason = f"{amount[0].upper()}{amount[1:]} and {looks}{why}: {then}."
    return FreezeAdvice(groups, reason, size, fit, sweep_depths(groups, n_backbone))


# ------------------------------------------------------------------------------- sweep


def sweep_configs(config: TrainConfig, depths: Sequence[int]) -> list[dict[str, object]]:
    """One short run per depth, otherwise as ``config``; all tagged with one sweep id."""
    sweep_id = uuid.uuid4().hex[:8]
    epochs = min(config.epochs, SWEEP_EPOCHS)
    return [
        {**asdict(replace(config, trainable_groups=d, epochs=epochs)), "sweep": sweep_id}
        for d in depths
    ]


@dataclass(frozen=True)
class SweepPoint:
    """One depth of a sweep: its run and, once finished, its validation accuracy."""

    trainable_groups: int
    run_id: str
    status: str
    accuracy: float | None
    n_val: int
    seconds: float | None

    @property
    def pending(self) -> bool:
        """Still waiting in the queue or training."""
        return self.status in UNFINISHED

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.accuracy is None or not self.n_val:
            return None
        return wilson_interval(round(self.accuracy * self.n_val), self.n_val)


def sweep_reading(points: Sequence[SweepPoint], n_backbone: int) -> str | None:
    """A plain reading of a finished sweep: which depth won, and whether by more than noise."""
    done = [p for p in points if p.accuracy is not None]
    if len(done) < 2:
        return None
    best = max(done, key=lambda p: (p.accuracy, -p.trainable_groups))
    others = [p for p in done if p is not best]
    runner = max(others, key=lambda p: p.accuracy or 0.0)
    assert best.accuracy is not None and runner.accuracy is not None
    noise = validation_noise(best.accuracy, best.n_val) if best.n_val else 0.0
    clear = best.accuracy - runner.accuracy > noise
    name = depth_label(best.trainable_groups, n_backbone)
    waiting = any(p.pending for p in points)
    text = (
        f"{'So far, best' if waiting else 'Best'} in this sweep: {name} "
        f"({best.accuracy:.0%}), against "
        f"{depth_label(runner.trainable_groups, n_backbone)} ({runner.accuracy:.0%}) next."
    )
    if clear:
        return f"{text} The gap is larger than the validation set's noise: train with {name}."
    return (
        f"{text} The gap is within the validation set's noise, so these depths are about "
        "equal here: the shallower one trains faster and memorises less."
    )
