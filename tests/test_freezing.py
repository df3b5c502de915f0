"""Freeze plans from timm's layer groups: counts, BatchNorm statistics, learning rates."""

from __future__ import annotations

import pytest
import torch

from tl_core.models import catalog
from tl_core.models.facts import freeze_sentence, model_info
from tl_core.models.freezing import (
    apply_freeze,
    layer_groups,
    set_train_mode,
    trainable_param_groups,
)


@pytest.fixture
def model() -> torch.nn.Module:
    return catalog.create_model(catalog.get_spec("test_efficientnet"), num_classes=4)


def test_groups_cover_every_parameter_once_and_end_with_the_head(model) -> None:
    groups = layer_groups(model)
    names = [n for g in groups for n in g.param_names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    assert set(groups[-1].param_names) == {"classifier.weight", "classifier.bias"}
    assert groups[0].name == "conv_stem"


@pytest.mark.parametrize("k", [0, 1, 3])
def test_apply_freeze_trains_head_plus_last_k_groups(model, k: int) -> None:
    groups = layer_groups(model)
    count = apply_freeze(model, k)
    expected = sum(g.params for g in groups[len(groups) - 1 - k :])
    assert count == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for g in groups[len(groups) - 1 - k :] for n in g.param_names}


def test_apply_freeze_rejects_more_groups_than_exist(model) -> None:
    with pytest.raises(ValueError, match="between 0 and"):
        apply_freeze(model, len(layer_groups(model)))


def test_frozen_batchnorm_keeps_its_statistics_in_training(model) -> None:
    apply_freeze(model, 1)
    set_train_mode(model)
    stem_bn = model.bn1
    before = stem_bn.running_mean.clone()
    model(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert not stem_bn.training
    assert torch.equal(stem_bn.running_mean, before)
    last_bn = model.bn2  # in the last backbone group, which trains
    assert last_bn.training


def test_discriminative_learning_rates_shrink_towards_the_input(model) -> None:
    groups = trainable_param_groups(model, 3, lr=1e-3)
    lrs = [g["lr"] for g in groups]
    assert len(groups) == 4
    assert lrs[-1] == pytest.approx(1e-3)
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[-2] == pytest.approx(1e-3 / 5)
    assert lrs == sorted(lrs)


def test_describe_model_and_sentences() -> None:
    info = model_info("efficientnet_lite0", num_classes=10)
    assert info.n_backbone >= 5
    assert info.trainable_params(0) == 1280 * 10 + 10
    assert info.trainable_params(info.n_backbone) == info.total_params
    assert info.data_config["input_size"] == (3, 224, 224)
    assert "only the new last layer" in freeze_sentence(0, info.n_backbone).lower()
    assert "whole network" in freeze_sentence(info.n_backbone, info.n_backbone)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("training", [True, False])
def test_compute_plan_batch_puts_inputs_in_the_layout_and_dtype_of_the_step(dtype, training):
    from tl_core.models.device import ComputePlan

    plan = ComputePlan("cpu", torch.bfloat16, True, 1, train_amp_dtype=None)
    images = plan.batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), training)
    assert images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last)
    feats = plan.batch(torch.zeros(2, 16, dtype=dtype), training)
    # fp32 steps get fp32 inputs; bf16 inference keeps what autocast reads anyway.
    assert feats.dtype == (torch.float32 if training else dtype)
    model = plan.prepare_model(torch.nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
