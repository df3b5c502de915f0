"""The trained model's pooled features, for the unfamiliar check (:mod:`.familiarity`).

:class:`WithFeatures` gives a timm model's logits and the classifier's input (its pooled
features) in one pass, so a guess costs no second forward pass. :func:`record` runs once at
the end of a training run: the features of the training pictures (the bank), of the
validation pictures (the threshold) and of the shipped everyday pictures (the measurement),
saved beside ``best.pt`` as ``familiarity.npz`` and ``familiarity.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from tl_core.events import Progress
from tl_core.models.catalog import DataConfig
from tl_core.models.device import ComputePlan
from tl_core.training import familiarity
from tl_core.training.inputs import cache_side, make_transforms, square_of
from tl_core.training.prefixcache import StopRequested

__all__ = ["NearestDistance", "WithFeatures", "foreign_tensors", "record"]


class WithFeatures(nn.Module):
    """uint8 pictures -> (logits, pooled features): ``normalize``, then the timm model with its
    classifier applied to ``forward_head(..., pre_logits=True)`` (the same logits as the model
    in eval mode, where dropout before the classifier does nothing)."""

    def __init__(self, normalize: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        return net.forward_head(net.forward_features(self.normalize(x)), pre_logits=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.net.get_classifier()(f), f


class NearestDistance(nn.Module):
    """Pooled features -> the unfamiliar score of :mod:`.familiarity`: the smallest cosine
    distance to a bank row, each row's divided by its class's spread. In torch: in the app
    it runs on torch's own threads beside the network (a numpy product between two passes
    leaves BLAS threads spinning on the cores the next pass needs), and the exported ONNX
    model holds the same module."""

    def __init__(self, bank: np.ndarray, row_scale: np.ndarray | None = None) -> None:
        super().__init__()
        self.register_buffer("bank", torch.from_numpy(np.asarray(bank, dtype=np.float32)))
        scale = np.ones(len(bank)) if row_scale is None else row_scale
        self.register_buffer("inverse", torch.from_numpy(1.0 / np.asarray(scale, np.float32)))

    @classmethod
    def of(cls, fam: familiarity.Familiarity) -> NearestDistance:
        """The module of a run's check."""
        return cls(fam.bank, fam.row_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = features.float()
        q = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return ((1.0 - q @ self.bank.T) * self.inverse).amin(dim=1)


def foreign_tensors(data_config: DataConfig) -> torch.Tensor:
    """The shipped everyday pictures as the uint8 crops the model sees (as in validation)."""
    from tl_core.data import foreign

    eval_tf = make_transforms(data_config, "none")[1]
    side = cache_side(data_config)
    pictures = foreign.pictures()
    return torch.stack(
        [eval_tf(square_of(img, side, data_config.interpolation)) for _, img in pictures]
    )


@torch.inference_mode()
def _features(
    model: WithFeatures,
    data: Dataset | torch.Tensor,
    plan: ComputePlan,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Pooled features (float32) of every picture of ``data`` (a dataset of (image, label)
    or a uint8 batch), a batch at a time."""
    model.eval()
    out = []
    if isinstance(data, torch.Tensor):
        step = plan.infer_batch
        batches: Sequence = [(data[k : k + step], None) for k in range(0, len(data), step)]
    else:
        batches = plan.loader(data)
    for images, _ in batches:
        if should_stop is not None and should_stop():
            raise StopRequested
        with plan.autocast():
            out.append(model.features(plan.batch(images)).float().cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


def _rows(data: Dataset) -> np.ndarray:
    """Every row of a dataset of (features, label), stacked (cached frozen outputs)."""
    return torch.stack([data[k][0].float().cpu() for k in range(len(data))]).numpy()


def record(
    run_dir: Path,
    classes: list[str],
    model: WithFeatures,
    plan: ComputePlan,
    train: Dataset,
    train_labels: Sequence[int],
    val: Dataset,
    val_labels: Sequence[int],
    data_config: DataConfig,
    cached: tuple[Dataset, Dataset | None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> familiarity.FamiliarityReport:
    """Compute and save the run's unfamiliar check; its report.

    ``train`` and ``val`` give uint8 eval crops; ``cached``, when given, holds the training
    pictures' pooled features already (a wholly frozen run's cached outputs, in the same
    order) and the validation pictures' in fp32 when they were kept: those pictures then go
    through the network no more.
    """
    say = on_progress or (lambda _p: None)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    rows = familiarity.bank_rows(train_labels)
    say(Progress("familiar", total=len(rows)))
    if cached is not None:
        train_x = _rows(Subset(cached[0], rows.tolist()))
    else:
        train_x = _features(model, Subset(train, rows.tolist()), plan, should_stop)
    if cached is not None and cached[1] is not None:
        val_x = _rows(cached[1])
    else:
        val_x = _features(model, val, plan.exact(), should_stop)
    foreign_x = _features(model, foreign_tensors(data_config), plan.exact(), should_stop)
    fam = familiarity.build(train_x, train_labels[rows], val_x)
    foreign_scores = fam.scores(foreign_x)
    familiarity.save(run_dir, fam, foreign_scores)
    rep = familiarity.report(
        fam, train_x, train_labels[rows], val_x, np.asarray(val_labels), classes, foreign_scores
    )
    familiarity.save_report(run_dir, rep)
    return rep
