"""What the frozen-feature jobs found, as the pages read it: no torch here.

The readings of :mod:`tl_core.analysis.transfer` (head start, learning curve, model ranking,
domain gauge) come back from a worker as JSON and are rebuilt into these dataclasses in the
web server, which should not import torch to draw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tl_core.analysis import metrics
from tl_core.analysis.metrics import wilson_interval
from tl_core.models.catalog import visible_specs, weights_status

__all__ = [
    "RISING_POINTS",
    "TIE_P_VALUE",
    "DomainGauge",
    "Example",
    "HeadStart",
    "LearningCurve",
    "Level",
    "ModelScore",
    "Recommendation",
    "offline_models",
    "rank_models",
    "suggested",
    "verdict",
]

Level = Literal["close", "some distance", "far"]


@dataclass(frozen=True)
class HeadStart:
    """Accuracy of classifiers that need no training, on frozen features."""

    ncm_accuracy: float  # nearest class mean (cosine)
    knn_accuracy: float  # k nearest neighbours (cosine)
    k: int
    ncm_ci: tuple[float, float]  # 95% Wilson interval of ncm_accuracy
    chance: float  # 1 / classes
    majority: float  # share of the largest class among the images scored
    images: int  # images scored
    cross_validated: bool  # True: k-fold over all images, because validation images are few
    folds: int  # 0 when scored on the validation images
    sentence: str


RISING_POINTS = 2.0  # a last step worth at least this many points reads as "still rising"


@dataclass(frozen=True)
class LearningCurve:
    """Validation accuracy of a logistic-regression probe trained on part of the images."""

    fractions: list[float]
    accuracies: list[float]  # mean over the draws
    spreads: list[float]  # standard deviation over the draws (0 with one draw)
    train_images: list[int]  # mean training images per point
    val_images: int

    def gain(self) -> float:
        """Accuracy points the last step adds (e.g. from 75% to 100% of the images).

        From a straight line through the last three points (two with a two-point curve), so
        that one noisy point does not decide the reading.
        """
        if len(self.accuracies) < 2:
            return 0.0
        x = np.array(self.fractions[-3:], dtype=np.float64)
        y = np.array(self.accuracies[-3:], dtype=np.float64)
        slope = float(np.polyfit(x, y, 1)[0])
        return 100 * slope * (self.fractions[-1] - self.fractions[-2])

    def reading(self) -> str:
        """The slope in one plain sentence."""
        if len(self.fractions) < 2:
            return "There are too few images to draw a learning curve."
        gain = self.gain()
        span = f"from {self.fractions[-2]:.0%} to {self.fractions[-1]:.0%} of your images"
        if gain >= RISING_POINTS:
            return (
                f"Accuracy still rises by {gain:.0f} points {span}: more images will likely help."
            )
        return (
            f"Accuracy is flat {span} ({gain:+.0f} points): more images of the same kind will "
            "help little; different images (new angles, backgrounds, hard cases) or training "
            "more of the network may help more."
        )


# Models whose per-image results differ less than this (McNemar's test, two-sided) are "as
# good as each other": the gap is within the noise of the images scored.
TIE_P_VALUE = 0.05


@dataclass(frozen=True)
class Recommendation:
    """One model scored on the user's images, for a table."""

    rank: int  # 1 = best
    key: str
    title: str
    probe_accuracy: float  # linear probe on frozen features: what head-only training reaches
    ncm_accuracy: float  # the head start: nearest class mean, no training at all
    logme: float  # LogME on all images: higher = features fit the classes better
    cross_validated: bool  # accuracies from k-fold over all images (few validation images)
    seconds: float  # time the features took on this computer
    params_m: float
    images_per_s: int  # the catalog's speed figure (reference 2-core CPU)
    weights: str  # "ready" or "downloaded"
    images: int = 0  # images the probe was scored on (the same for every model)
    ci_low: float = 0.0  # 95% Wilson interval of probe_accuracy
    ci_high: float = 1.0
    p_vs_leader: float = 1.0  # McNemar's test against the rank-1 model on the same images
    tied: bool = True  # within the noise of the rank-1 model (the rank-1 model itself too)
    suggested: bool = False  # the one to use: the fastest of the tied models


@dataclass(frozen=True)
class ModelScore:
    """What :func:`rank_models` needs of one model: per-image probe results and catalog facts."""

    key: str
    title: str
    correct: np.ndarray  # (images,) bool: the probe was right on this image
    logme: float
    params_m: float
    images_per_s: int
    ncm_accuracy: float = 0.0
    cross_validated: bool = False
    seconds: float = 0.0
    weights: str = "ready"


def rank_models(scores: Sequence[ModelScore]) -> list[Recommendation]:
    """Rank by probe accuracy (then LogME), find the models tied with the leader, pick one.

    All models are scored on the same images in the same order, so they are compared image by
    image: going down the ranking, each model is tied with the leader while McNemar's test
    finds no difference (p >= TIE_P_VALUE); the first clearly worse model ends the tied group.
    The suggested model is the fastest of the group (catalog images/s, then fewer parameters).
    """
    if not scores:
        return []
    sizes = {len(s.correct) for s in scores}
    if len(sizes) != 1:
        raise ValueError("every model must be scored on the same images")
    total = sizes.pop()

    def accuracy(s: ModelScore) -> float:
        return float(np.mean(s.correct)) if total else 0.0

    ordered = sorted(scores, key=lambda s: (-accuracy(s), -s.logme))
    leader = ordered[0]
    p_values = [metrics.mcnemar_p(leader.correct, s.correct) for s in ordered]
    tied = [True] * len(ordered)
    for i in range(1, len(ordered)):
        tied[i] = tied[i - 1] and p_values[i] >= TIE_P_VALUE
    group = [i for i in range(len(ordered)) if tied[i]]
    pick = min(group, key=lambda i: (-ordered[i].images_per_s, ordered[i].params_m, i))
    out = []
    for i, s in enumerate(ordered):
        low, high = wilson_interval(int(np.sum(s.correct)), total)
        out.append(
            Recommendation(
                rank=i + 1,
                key=s.key,
                title=s.title,
                probe_accuracy=accuracy(s),
                ncm_accuracy=s.ncm_accuracy,
                logme=s.logme,
                cross_validated=s.cross_validated,
                seconds=s.seconds,
                params_m=s.params_m,
                images_per_s=s.images_per_s,
                weights=s.weights,
                images=total,
                ci_low=low,
                ci_high=high,
                p_vs_leader=p_values[i],
                tied=tied[i],
                suggested=i == pick,
            )
        )
    return out


def suggested(ranking: Sequence[Recommendation]) -> Recommendation | None:
    """The model to use: the fastest of those tied with the leader."""
    return next((r for r in ranking if r.suggested), ranking[0] if ranking else None)


def verdict(ranking: Sequence[Recommendation]) -> str:
    """The ranking's reading in plain words (Markdown; model titles are catalog text)."""
    best = suggested(ranking)
    if best is None:
        return "No model could be scored."
    group = [r for r in ranking if r.tied]
    images = f"{best.images} image" + ("" if best.images == 1 else "s")
    if len(group) > 1:
        names = ", ".join(f"{r.title} ({r.probe_accuracy:.1%})" for r in group)
        return (
            f"These models are as good as each other on your images (within the noise of "
            f"{images}): {names}. The fastest of them is **{best.title}** (about "
            f"{best.images_per_s} images/s, {best.params_m:g} M parameters): use it."
        )
    rest = (
        " The others are clearly behind on these images."
        if len(ranking) > 1
        else " It is the only model that could be scored."
    )
    return (
        f"Best on your images: **{best.title}** ({best.probe_accuracy:.1%} from frozen "
        f"features alone, 95% interval {best.ci_low:.1%}–{best.ci_high:.1%} on {images}; "
        f"training usually adds a few points).{rest}"
    )


def offline_models() -> list[str]:
    """Keys of the listed models whose weights need no download."""
    return [s.key for s in visible_specs() if weights_status(s) in ("ready", "downloaded")]


@dataclass(frozen=True)
class Example:
    """One image with how sure the ImageNet classifier is about it."""

    file: str
    entropy: float
    imagenet_class: str  # what the ImageNet classifier sees in it


@dataclass(frozen=True)
class DomainGauge:
    """How far the images are from the photos the model was pretrained on."""

    mean_entropy: float  # 0: each image is one confident ImageNet class; 1: no idea at all
    level: Level | None  # None: no cut-offs measured for this model
    most_like_imagenet: list[Example]
    least_like_imagenet: list[Example]
    sentence: str
