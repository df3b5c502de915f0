"""What defines a training run, without torch: the command line and pages import it cheaply.

:mod:`tl_core.training.engine` re-exports everything here, so
``from tl_core.training.engine import TrainConfig`` keeps working.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace
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


@dataclass(frozen=True)
class SplitSettings:
    """How a project's images are split into training and validation: the one home of the
    defaults (a fifth of the images for validation, shuffle seed 0)."""

    val_fraction: float = 0.2
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> SplitSettings:
        """The split a settings dict (a project's, a job's parameters) names; defaults for
        what it leaves out."""
        raw = raw or {}
        default = cls()
        return cls(
            float(raw.get("val_fraction", default.val_fraction)),
            int(raw.get("seed", default.seed)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The Train page's "Advanced settings": TrainConfig fields a project keeps beside its model,
# its freeze depth and its split (the seed is the split's: one seed for the split and the run).
ADVANCED_SETTINGS = ("epochs", "lr", "batch_size", "augment", "seed")


@dataclass(frozen=True)
class ProjectSettings:
    """A project's saved choices (the store's ``settings`` column), typed: the model, the
    camera's preset, and the run settings the next run starts from.

    ``model`` is None until one is chosen (the pages then show the catalog's default);
    ``train`` holds every TrainConfig field the project keeps (the freeze depth, the advanced
    settings and the split from the pages; the command line keeps all of them), TrainConfig's
    defaults for the others, and the chosen model (else TrainConfig's default).
    """

    model: str | None = None
    preset: str | None = None  # "classroom" once the camera's classroom settings were applied
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def trainable_groups(self) -> int:
        return self.train.trainable_groups

    @property
    def split(self) -> SplitSettings:
        return SplitSettings(self.train.val_fraction, self.train.seed)

    def advanced(self) -> dict[str, Any]:
        """The values of :data:`ADVANCED_SETTINGS`, by name."""
        return {name: getattr(self.train, name) for name in ADVANCED_SETTINGS}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> ProjectSettings:
        """The settings a stored dict names, of any age: a value that cannot be read as its
        field's type counts as not set (its default applies); unknown keys are left out."""
        raw = raw or {}
        default = TrainConfig()
        values: dict[str, Any] = {}
        for name in TrainConfig.__dataclass_fields__:
            kind = type(getattr(default, name))
            value = raw.get(name)
            if value is None or (kind in (str, bool) and not isinstance(value, kind)):
                continue
            with contextlib.suppress(TypeError, ValueError):
                values[name] = kind(value)
        model, preset = raw.get("model"), raw.get("preset")
        return cls(
            model if isinstance(model, str) else None,
            preset if isinstance(preset, str) else None,
            replace(default, **values),
        )


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


@dataclass(frozen=True)
class RunSpec:
    """A training run's stored record: its settings plus the tags that say why it exists.

    ``baseline_of``: the run this one is the from-scratch baseline of; ``sweep``: the id of
    the depth sweep it belongs to; ``corrections``: the label review it was trained with (the
    review's own dict form, see :mod:`tl_core.data.review`).
    """

    config: TrainConfig
    baseline_of: str | None = None
    sweep: str | None = None
    corrections: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunSpec:
        return cls(
            TrainConfig.from_dict(raw),
            baseline_of=raw.get("baseline_of"),
            sweep=raw.get("sweep"),
            corrections=raw.get("corrections") or None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The flat dict stored in the run's ``config`` column (settings and tags side by side)."""
        tags = {"baseline_of": self.baseline_of, "sweep": self.sweep}
        if self.corrections:
            tags["corrections"] = self.corrections  # type: ignore[assignment]
        return {**asdict(self.config), **{k: v for k, v in tags.items() if v is not None}}


@dataclass(frozen=True)
class StepRow:
    """One training step: what the engine reports and the store's ``metrics`` table keeps."""

    epoch: int  # 1-based
    step: int  # global, 1-based
    total_steps: int
    loss: float  # of this batch
    accuracy: float  # of this batch
    lr: float  # of the last parameter group (the head)
    elapsed_s: float  # since the run (or its resumed part) started


@dataclass(frozen=True)
class EpochRow:
    """One finished epoch: training scores over its batches, validation scores after it."""

    epoch: int  # 1-based
    step: int  # global step at the epoch's end
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    elapsed_s: float  # since the run (or its resumed part) started


ACTIVE = ("starting", "running")  # job states: claimed and working
UNFINISHED = ("queued", *ACTIVE)  # waiting or working
