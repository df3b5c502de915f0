"""The catalog: bundled ImageNet weights load for real, hub models fail clearly offline."""

from __future__ import annotations

import time

import pytest
import torch

from tl_core.errors import ModelUnavailableError
from tl_core.models import catalog


def test_visible_catalog_lists_offline_models_first_with_plain_descriptions() -> None:
    specs = catalog.visible_specs()
    assert [s.key for s in specs[:3]] == [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ]
    assert {s.source for s in specs} == {"bundled", "hub"}
    for spec in specs:
        assert "parameters" in spec.description and "ImageNet" in spec.description
    assert not any(s.hidden for s in specs)


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ModelUnavailableError, match="efficientnet_lite0"):
        catalog.get_spec("no_such_net")


@pytest.mark.parametrize("key", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_bundled_weights_load_strictly_and_keep_imagenet_features(key: str) -> None:
    spec = catalog.get_spec(key)
    assert catalog.weights_status(spec) == "ready"
    pretrained = catalog.create_model(spec, num_classes=3)
    scratch = catalog.create_model(spec, num_classes=3, pretrained=False)
    assert pretrained.get_classifier().out_features == 3
    first = next(iter(pretrained.state_dict()))
    assert not torch.equal(pretrained.state_dict()[first], scratch.state_dict()[first])
    # The stem's BatchNorm running statistics are ImageNet's, not the fresh (0, 1) defaults.
    running_var = pretrained.bn1.running_var
    assert not torch.allclose(running_var, torch.ones_like(running_var))


def test_hub_model_offline_fails_fast_with_a_clear_message(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    spec = catalog.get_spec("resnet50")
    assert catalog.weights_status(spec) == "needs download"
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        catalog.create_model(spec, num_classes=2)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "download" in message and "ready offline" in message and "ResNet-50" in message


def test_data_config_comes_from_timm_per_model() -> None:
    resnet = catalog.create_model(catalog.get_spec("test_resnet"), num_classes=2)
    effnet = catalog.create_model(catalog.get_spec("test_efficientnet"), num_classes=2)
    a, b = catalog.DataConfig.of(resnet), catalog.DataConfig.of(effnet)
    assert a.input_size == (3, 160, 160)
    assert a.interpolation != b.interpolation or a.mean != b.mean


def test_warm_models_are_independent_fresh_objects(monkeypatch) -> None:
    spec = catalog.get_spec("efficientnet_lite0")
    monkeypatch.setattr(catalog, "_warm", type(catalog._warm)())
    reads = []
    real = torch.load

    def counted(*args, **kwargs):
        reads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    torch.manual_seed(0)
    cold = catalog.create_model(spec, num_classes=3)
    torch.manual_seed(0)
    warm = catalog.create_model(spec, num_classes=3)
    assert len(reads) == 1  # the second build read no weights file
    assert cold is not warm
    # The same seed gives the same new head, whether the weights were warm or not.
    torch.testing.assert_close(cold.state_dict(), warm.state_dict())
    with torch.no_grad():
        cold.conv_stem.weight.add_(1.0)
        cold.bn1.running_var.mul_(3.0)
    fresh = catalog.create_model(spec, num_classes=3)
    for name, tensor in catalog.pretrained_state(spec).items():
        if not name.startswith("classifier"):
            assert torch.equal(fresh.state_dict()[name], tensor), name
            assert torch.equal(warm.state_dict()[name], tensor), name
    imagenet = catalog.create_model(spec, num_classes=1000)  # keeps ImageNet's own head
    torch.testing.assert_close(imagenet.state_dict(), catalog.pretrained_state(spec))
    assert "state_dict" not in imagenet.pretrained_cfg


def test_warm_cache_keeps_the_last_few_models(monkeypatch) -> None:
    monkeypatch.setattr(catalog, "_warm", type(catalog._warm)())
    monkeypatch.setattr(catalog, "WARM_MODELS", 2)
    keys = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite0", "efficientnet_lite2"]
    for key in keys:
        catalog.pretrained_state(catalog.get_spec(key))
    assert list(catalog._warm) == ["efficientnet_lite0", "efficientnet_lite2"]
