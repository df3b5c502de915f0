"""Cut a timm model into a frozen prefix and a trainable suffix at a layer-group boundary.

A frozen prefix gives the same output for the same input every epoch, so the engine computes
it once per image (per augmented view) and trains only the suffix on the cached activations.
timm has no generic "run from stage i" API, so this knows the forward order of the catalog's
families; any other model trains without a prefix cache (the engine says so in its log).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tl_core.models.freezing import LayerGroup, layer_groups, set_train_mode

Stage = Callable[[torch.Tensor], torch.Tensor]


class _Fn(nn.Module):
    """A stage that is a function of a module's own methods (e.g. ViT's embedding)."""

    def __init__(
        self,
        owner: nn.Module,
        fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        names: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.fn = fn
        self.owner_ref = [owner]  # not a child: the owner's parameters stay where they are
        self.names = names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.owner_ref[0], x)


def _stage_list(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """(parameter-name prefix, module) pairs in forward order, ``forward_features`` exactly."""
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, EfficientNet | MobileNetV3):
        out = [("conv_stem", nn.Sequential(model.conv_stem, model.bn1))]
        out += [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
        if isinstance(model, EfficientNet):
            out.append(("conv_head", nn.Sequential(model.conv_head, model.bn2)))
        return out
    if isinstance(model, ResNet):
        out = [("conv1", nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool))]
        return out + [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]
    if isinstance(model, ConvNeXt):
        out = [("stem", model.stem)]
        out += [(f"stages.{i}", s) for i, s in enumerate(model.stages)]
        return [*out, ("norm_pre", model.norm_pre)]
    if isinstance(model, VisionTransformer) and not model.dynamic_img_size:
        embed = _Fn(
            model,
            lambda m, x: m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x)))),
            ("patch_embed",),
        )
        out = [("patch_embed", embed)]
        out += [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
        return [*out, ("norm", model.norm)]
    return None


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
    stages = _stage_list(model)
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
