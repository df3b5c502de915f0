"""Layer groups and freeze plans, from timm's own ``group_matcher`` (the model family's, in
:mod:`tl_core.models.families`).

A model is a row of layer groups (stem, stages, ..., head). The new classifier head always
trains; ``trainable_groups = k`` also lets the last ``k`` backbone groups learn, the rest stay
frozen with their BatchNorm statistics fixed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn

from tl_core.models.families import group_matcher


@dataclass(frozen=True)
class LayerGroup:
    """One group of parameters in network order; the last group of a model is its head."""

    index: int
    name: str
    params: int
    param_names: tuple[str, ...]


def _group_name(first_param: str) -> str:
    """'blocks.3.0.conv_pw.weight' -> 'blocks.3'; 'conv_stem.weight' -> 'conv_stem'."""
    parts = first_param.split(".")[:-1]  # drop weight/bias
    for i, part in enumerate(parts):
        if re.fullmatch(r"\d+", part):
            return ".".join(parts[: i + 1])
    return ".".join(parts[:1]) or first_param


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """The model's layer groups in order, the classifier head last."""
    params = dict(model.named_parameters())
    grouped = group_parameters(model, group_matcher(model))
    groups = []
    for i, names in enumerate(grouped.values()):
        total = sum(params[n].numel() for n in names)
        groups.append(LayerGroup(i, _group_name(names[0]), total, tuple(names)))
    return groups


def max_trainable_groups(model: nn.Module) -> int:
    """How many backbone groups exist (everything but the head)."""
    return len(layer_groups(model)) - 1


def apply_freeze(
    model: nn.Module, trainable_groups: int, groups: list[LayerGroup] | None = None
) -> int:
    """Freeze all but the head and the last ``trainable_groups`` backbone groups.

    ``groups``: the model's :func:`layer_groups`, when the caller has them already.
    Returns the number of trainable parameters.
    """
    groups = groups or layer_groups(model)
    n_backbone = len(groups) - 1
    if not 0 <= trainable_groups <= n_backbone:
        raise ValueError(f"trainable_groups must be between 0 and {n_backbone}")
    train_names = {n for g in groups[n_backbone - trainable_groups :] for n in g.param_names}
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name in train_names)
        count += p.numel() if p.requires_grad else 0
    return count


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, but BatchNorm layers whose weights are frozen keep their statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = list(module.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                module.eval()


def trainable_param_groups(
    model: nn.Module,
    trainable_groups: int,
    lr: float,
    lr_ratio: float = 100.0,
    body_ratio: float = 5.0,
    groups: list[LayerGroup] | None = None,
) -> list[dict[str, object]]:
    """Optimizer groups with discriminative learning rates, as fastai's ``fine_tune`` does.

    The new head learns at ``lr``. Pretrained groups learn slower: the last one at
    ``lr / body_ratio``, earlier ones geometrically slower down to ``lr / lr_ratio``.
    """
    groups = groups or layer_groups(model)
    body = groups[len(groups) - 1 - trainable_groups : -1]
    params = dict(model.named_parameters())
    out: list[dict[str, object]] = []
    n = len(body)
    for j, group in enumerate(body):
        # j = 0 is the earliest trainable group: lr / lr_ratio; j = n - 1: lr / body_ratio.
        t = j / (n - 1) if n > 1 else 1.0
        scale = (1 / lr_ratio) ** (1 - t) * (1 / body_ratio) ** t
        out.append(
            {"params": [params[p] for p in group.param_names], "lr": lr * scale, "name": group.name}
        )
    head = groups[-1]
    out.append({"params": [params[p] for p in head.param_names], "lr": lr, "name": head.name})
    return out
