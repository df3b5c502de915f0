"""What defines a training run, without torch: the command line and pages import it cheaply.

:mod:`tl_core.training.engine` re-exports everything here, so
``from tl_core.training.engine import TrainConfig`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from tl_core.errors import RunError

AUGMENT_LEVELS = ("none", "light", "medium", "strong")


@dataclass
class TrainConfig:
    """Everything that defines a run; stored with it and enough to repeat it."""

    model: str = "efficientnet_lite0"
    trainable_groups: int = 0
    epochs: int = 20
    lr: float = 1e-2
    batch_size: int = 32
    augment: str = "none"
    seed: int = 0
    val_fraction: float = 0.2
    head_epochs: int = 1
    pretrained: bool = True
    weight_decay: float = 0.01
    aug_views: int = 4  # augmented copies of each image whose frozen-prefix output is cached
    cache: bool = True  # decode once and cache frozen-prefix outputs (False: the plain loop)

    def validate(self) -> None:
        """Raise RunError with a plain message for settings that cannot work."""
        if self.epochs < 1:
            raise RunError("Train for at least 1 epoch.")
        if not 1 <= self.batch_size <= 1024:
            raise RunError("Batch size must be between 1 and 1024.")
        if not 0 < self.lr < 1:
            raise RunError("The learning rate must be between 0 and 1 (try 0.002).")
        if self.augment not in AUGMENT_LEVELS:
            raise RunError(f"Augmentation must be one of {', '.join(AUGMENT_LEVELS)}.")
        if self.trainable_groups < 0:
            raise RunError("The number of trainable layer groups cannot be negative.")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


SCRATCH_LR = 2e-3  # AdamW from random weights: the usual rate; the fine-tuning 1e-2 is too high


def scratch_config(cfg: TrainConfig, n_backbone: int) -> TrainConfig:
    """The same run from random weights: every layer learns from the start, same epochs."""
    return replace(
        cfg,
        pretrained=False,
        trainable_groups=n_backbone,
        head_epochs=0,
        lr=min(cfg.lr, SCRATCH_LR),
    )
