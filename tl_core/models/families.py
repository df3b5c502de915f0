"""Model families: what the app knows about each timm architecture, in one table.

A family is a timm model class. Its entry says where a frozen prefix may be cut (the stages of
``forward_features`` in forward order), which layer Grad-CAM reads, and which ``group_matcher``
makes its layer groups. :func:`family_of` walks the model's class and its bases, so a subclass
shares its parent's entry unless it has its own (DeiT's distilled ViT does: its embedding adds
a distillation token).

A model of no registered family gets None: it still has layer groups (timm's coarse
``group_matcher``, which every timm model has, :func:`group_matcher`), but it trains without a
prefix cache (:func:`tl_core.models.stages.split_model` returns None) and has no heat maps
(:func:`tl_core.analysis.gradcam.target_layer` raises a RunError that says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from timm.models.convnext import ConvNeXt
from timm.models.deit import VisionTransformerDistilled
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["FAMILIES", "Family", "Stage", "family_of", "group_matcher"]

Stage = tuple[str, nn.Module]  # (parameter-name prefix, module), one step of forward_features


def _coarse_groups(model: Any) -> dict[str, Any]:
    """timm's own coarse grouping: stem, one group per stage, the head last."""
    return model.group_matcher(coarse=True)


@dataclass(frozen=True)
class Family:
    """One timm architecture: its stage cut, its Grad-CAM layer and its layer groups."""

    stages: Callable[[Any], list[Stage] | None]  # forward_features exactly; None: no cut
    gradcam_layer: Callable[[Any], nn.Module]  # the layer whose output Grad-CAM weighs
    tokens: bool = False  # that output is ViT tokens (batch, tokens, channels), not a map
    groups: Callable[[Any], dict[str, Any]] = _coarse_groups  # the model's group_matcher


def _efficientnet_stages(m: EfficientNet) -> list[Stage]:
    out: list[Stage] = [("conv_stem", nn.Sequential(m.conv_stem, m.bn1))]
    out += [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]
    return [*out, ("conv_head", nn.Sequential(m.conv_head, m.bn2))]


def _mobilenetv3_stages(m: MobileNetV3) -> list[Stage]:
    """Its conv_head comes after the pooling, in ``forward_head``."""
    out: list[Stage] = [("conv_stem", nn.Sequential(m.conv_stem, m.bn1))]
    return out + [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]


def _resnet_stages(m: ResNet) -> list[Stage]:
    out: list[Stage] = [("conv1", nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool))]
    return out + [(f"layer{i}", getattr(m, f"layer{i}")) for i in range(1, 5)]


def _convnext_stages(m: ConvNeXt) -> list[Stage]:
    out: list[Stage] = [("stem", m.stem)]
    out += [(f"stages.{i}", s) for i, s in enumerate(m.stages)]
    return [*out, ("norm_pre", m.norm_pre)]


_PrefixTokens = Callable[[Any], tuple[torch.Tensor | None, ...]]


class _TokenEmbedding(nn.Module):
    """A ViT's embedding as one stage: patches, prefix tokens and position embedding, then
    ``patch_drop`` and ``norm_pre``, as ``forward_features`` begins, from timm's public
    attributes (fixed image size only)."""

    def __init__(self, owner: VisionTransformer, prefix_tokens: _PrefixTokens) -> None:
        super().__init__()
        self.owner_ref = [owner]  # not a child: the owner's parameters stay where they are
        self.prefix_tokens = prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.owner_ref[0]
        x = m.patch_embed(x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in self.prefix_tokens(m) if t is not None]
        if m.pos_embed is None:
            x = torch.cat([*prefix, x], dim=1)
        elif m.no_embed_class:  # positions for the patches only: add, then prepend the tokens
            x = torch.cat([*prefix, x + m.pos_embed], dim=1) if prefix else x + m.pos_embed
            x = m.pos_drop(x)
        else:  # positions for the tokens too: prepend, then add
            x = torch.cat([*prefix, x], dim=1) if prefix else x
            x = m.pos_drop(x + m.pos_embed)
        return m.norm_pre(m.patch_drop(x))


def _vit_stages(prefix_tokens: _PrefixTokens) -> Callable[[Any], list[Stage] | None]:
    def stages(m: VisionTransformer) -> list[Stage] | None:
        if m.dynamic_img_size:  # the position embedding is resampled per input size
            return None
        out: list[Stage] = [("patch_embed", _TokenEmbedding(m, prefix_tokens))]
        out += [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]
        return [*out, ("norm", m.norm)]

    return stages


def _vit_layer(m: VisionTransformer) -> nn.Module:
    """The last block's input to attention: the output tokens of a class-token model get no
    gradient except the class token's, so the usual choice is this one."""
    return m.blocks[-1].norm1


FAMILIES: dict[type[nn.Module], Family] = {
    # bn2 (conv_head + bn2 + activation): the last map before pooling
    EfficientNet: Family(_efficientnet_stages, lambda m: m.bn2),
    # blocks: its conv_head comes after the pooling
    MobileNetV3: Family(_mobilenetv3_stages, lambda m: m.blocks),
    ResNet: Family(_resnet_stages, lambda m: m.layer4),
    # norm_pre: the last stage's output (norm_pre is usually an identity)
    ConvNeXt: Family(_convnext_stages, lambda m: m.norm_pre),
    VisionTransformer: Family(
        _vit_stages(lambda m: (m.cls_token, m.reg_token)),
        _vit_layer,
        tokens=True,
    ),
    VisionTransformerDistilled: Family(
        _vit_stages(lambda m: (m.cls_token, m.dist_token)),
        _vit_layer,
        tokens=True,
    ),
}


def family_of(model: nn.Module) -> Family | None:
    """The entry of the model's class or of its nearest registered base; None if none is."""
    for klass in type(model).__mro__:
        family = FAMILIES.get(klass)
        if family is not None:
            return family
    return None


def group_matcher(model: nn.Module) -> dict[str, Any]:
    """The family's ``group_matcher`` for layer groups; timm's coarse one for any other model."""
    family = family_of(model)
    return (family.groups if family else _coarse_groups)(model)
