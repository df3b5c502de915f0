"""The model-family registry: each family's stage cut, Grad-CAM layer and layer groups, checked
on tiny timm models with random weights."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
from timm.models import group_parameters
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from tl_core.analysis.gradcam import target_layer
from tl_core.errors import RunError
from tl_core.models.families import FAMILIES, family_of
from tl_core.models.freezing import layer_groups
from tl_core.models.stages import split_model

SMALL = {"img_size": 64}  # ViTs: a 4x4 patch grid
# (timm name, extra arguments): at least one per registered family, and the ViT's variants of
# prefix tokens and position embedding (the branches of timm's own embedding).
MODELS: list[tuple[str, dict[str, Any]]] = [
    ("test_efficientnet", {}),
    ("tf_efficientnet_lite0", {}),
    ("mobilenetv3_small_050", {}),
    ("test_resnet", {}),
    ("test_convnext", {}),
    ("vit_tiny_patch16_224", SMALL),
    ("vit_tiny_patch16_224", {**SMALL, "reg_tokens": 2, "no_embed_class": True}),
    ("vit_tiny_patch16_224", {**SMALL, "reg_tokens": 2}),
    ("vit_tiny_patch16_224", {**SMALL, "class_token": False, "global_pool": "avg"}),
    (
        "vit_tiny_patch16_224",
        {**SMALL, "class_token": False, "no_embed_class": True, "global_pool": "avg"},
    ),
    ("vit_tiny_patch16_224", {**SMALL, "pos_embed": "none"}),
    ("test_vit3", SMALL),
    ("deit_tiny_distilled_patch16_224", SMALL),
]


def _ids(case: tuple[str, dict[str, Any]]) -> str:
    name, extra = case
    return "-".join([name, *(f"{k}={v}" for k, v in extra.items() if k != "img_size")])


def _build(name: str, extra: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, **extra).eval()
    # Random weights leave ViT's tokens and position embedding at zero or near it: make them
    # count, so that a token in the wrong place or a missing addition shows.
    for p in (getattr(model, n, None) for n in ("cls_token", "reg_token", "dist_token")):
        if isinstance(p, nn.Parameter):
            nn.init.normal_(p, std=1.0)
    if isinstance(getattr(model, "pos_embed", None), nn.Parameter):
        nn.init.normal_(model.pos_embed, std=1.0)
    return model


@pytest.fixture(scope="module", params=MODELS, ids=_ids)
def model(request: pytest.FixtureRequest) -> nn.Module:
    return _build(*request.param)


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_every_registered_family_is_tested() -> None:
    built = {type(_build(name, extra)) for name, extra in MODELS}
    assert set(FAMILIES) <= built


def test_the_stages_are_forward_features_exactly(model: nn.Module) -> None:
    family = family_of(model)
    assert family is not None
    stages = family.stages(model)
    assert stages is not None
    with torch.no_grad():
        x = X
        for _, stage in stages:
            x = stage(x)
        torch.testing.assert_close(x, model.forward_features(X), rtol=0, atol=0)


def test_prefix_plus_suffix_is_the_whole_model(model: nn.Module) -> None:
    groups = layer_groups(model)
    cuts = 0
    with torch.no_grad():
        expected = model(X)
        for k in range(len(groups) - 1):
            parts = split_model(model, k, groups)
            if parts is None:
                continue
            prefix, suffix = parts
            cuts += 1
            torch.testing.assert_close(suffix(prefix(X)), expected, rtol=0, atol=0)
    assert cuts >= 1, "no frozen prefix could be cut"


def test_the_prefix_holds_only_frozen_groups(model: nn.Module) -> None:
    groups = layer_groups(model)
    trainable = 1
    parts = split_model(model, trainable, groups)
    assert parts is not None
    prefix, _ = parts
    frozen = {n for g in groups[: len(groups) - 1 - trainable] for n in g.param_names}
    named = {id(p): n for n, p in model.named_parameters()}
    assert {named[id(p)] for p in prefix.parameters()} <= frozen


def test_the_grad_cam_layer_is_on_the_forward_path(model: nn.Module) -> None:
    layer, tokens = target_layer(model)
    assert any(m is layer for m in model.modules())
    assert tokens == isinstance(model, VisionTransformer)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            model(X)
    finally:
        handle.remove()
    assert len(seen) == 1
    assert seen[0].dim() == (3 if tokens else 4)


def test_the_layer_groups_cover_the_backbone(model: nn.Module) -> None:
    groups = layer_groups(model)
    names = [n for g in groups for n in g.param_names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each exactly once
    heads = model.get_classifier()  # a distilled ViT has two
    heads = heads if isinstance(heads, tuple) else (heads,)
    classifier = {id(p) for h in heads for p in h.parameters()}
    head = {id(model.get_parameter(n)) for n in groups[-1].param_names}
    assert classifier and classifier <= head
    family = family_of(model)
    assert family is not None
    stages = family.stages(model)
    assert stages is not None
    backbone = {n for g in groups[:-1] for n in g.param_names}
    for prefix, _ in stages:
        owned = {n for n in names if n.startswith(prefix + ".")}
        assert owned <= backbone, f"{prefix} has parameters in the head group"


def test_a_subclass_shares_its_parents_entry_unless_it_has_its_own() -> None:
    model = _build("test_resnet", {})
    model.__class__ = type("MyResNet", (ResNet,), {})
    assert family_of(model) is FAMILIES[ResNet]
    with torch.no_grad():
        expected = model(X)
        prefix, suffix = split_model(model, 1) or pytest.fail("no cut for a ResNet subclass")
        torch.testing.assert_close(suffix(prefix(X)), expected, rtol=0, atol=0)
    deit = _build("deit_tiny_distilled_patch16_224", SMALL)
    assert family_of(deit) is not FAMILIES[VisionTransformer]


def test_a_vit_with_dynamic_image_size_has_no_cut_but_a_heat_map_layer() -> None:
    model = _build("test_vit", {})
    assert model.dynamic_img_size
    assert split_model(model, 0) is None
    layer, tokens = target_layer(model)
    assert tokens and layer is model.blocks[-1].norm1


def test_an_unknown_family_trains_without_a_cut_and_has_no_heat_map() -> None:
    model = _build("test_byobnet", {})
    assert family_of(model) is None
    assert split_model(model, 0) is None
    with pytest.raises(RunError, match="Heat maps are not available for ByobNet models"):
        target_layer(model)
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    assert [g.param_names for g in layer_groups(model)] == [tuple(v) for v in grouped.values()]
