"""Cut a timm model into a frozen prefix and a trainable suffix at a layer-group boundary.

A frozen prefix gives the same output for the same input every epoch, so the engine computes
it once per image (per augmented view) and trains only the suffix on the cached activations.
timm has no generic "run from stage i" API, so the forward order of each family's stages comes
from its entry in :mod:`tl_core.models.families`; any other model trains without a prefix cache
(the engine says so in its log).
"""

from __future__ import annotations

import torch
from torch import nn

from tl_core.models.families import family_of
from tl_core.models.freezing import LayerGroup, layer_groups, set_train_mode


class Suffix(nn.Module):
    """The trainable rest of the network: remaining stages, then timm's ``forward_head``."""

    def __init__(self, model: nn.Module, stages: list[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.model_ref = [model]  # forward_head's modules are the model's own

    def train(self, mode: bool = True) -> Suffix:
        """Also switch the model itself, whose flag drives the head's dropout."""
        super().train(mode)
        if mode:
            set_train_mode(self.model_ref[0])
        else:
            self.model_ref[0].eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.model_ref[0].forward_head(x)


def split_model(
    model: nn.Module, trainable_groups: int, groups: list[LayerGroup] | None = None
) -> tuple[nn.Sequential, Suffix] | None:
    """(prefix, suffix) with every parameter of the prefix in a frozen group.

    The prefix ends where the first trainable group begins; None when the model's family is
    unknown or nothing can be cut off (everything trains). ``groups``: the model's
    :func:`layer_groups`, when the caller has them already.
    """
    family = family_of(model)
    stages = family.stages(model) if family else None
    if stages is None:
        return None
    groups = groups or layer_groups(model)
    group_of = {name: g.index for g in groups for name in g.param_names}
    first_trainable = len(groups) - 1 - trainable_groups
    cut, current = 0, 0
    for i, (prefix, _) in enumerate(stages):
        owned = [g for name, g in group_of.items() if name.startswith(prefix + ".")]
        current = min(owned) if owned else current  # parameter-free stages join the previous
        if current >= first_trainable:
            break
        cut = i + 1
    if cut == 0:
        return None
    prefix_modules = [m for _, m in stages[:cut]]
    return nn.Sequential(*prefix_modules), Suffix(model, [m for _, m in stages[cut:]])
