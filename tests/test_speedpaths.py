"""The engine's fast paths: decode once, cached frozen prefixes, and their plain fallbacks."""

from __future__ import annotations

import pytest
import torch
from helpers import make_shapes

from tl_core.data.dataset import import_folder, split_dataset
from tl_core.models.device import plan_compute
from tl_core.models.facts import model_info
from tl_core.models.stages import split_model
from tl_core.training import inputs
from tl_core.training.engine import QuietCallbacks, TrainConfig, fit

CPU = plan_compute("cpu")


class Log(QuietCallbacks):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def on_log(self, message: str) -> None:
        self.lines.append(message)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    manifest = import_folder(make_shapes(root / "src", per_class=24), root / "data")
    return manifest, split_dataset(manifest, 0.25, seed=0)


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "test_convnext"])
def test_prefix_plus_suffix_is_the_whole_network(name: str) -> None:
    import timm

    model = timm.create_model(name, num_classes=3).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
        for k in range(1, 4):
            prefix, suffix = split_model(model, k)
            torch.testing.assert_close(suffix(prefix(x)), expected)


def test_images_are_decoded_once_and_reused_by_later_runs(shapes, monkeypatch, tmp_path) -> None:
    manifest, split = shapes
    cfg = TrainConfig(model="test_efficientnet", epochs=2, pretrained=False, augment="light")
    fit(cfg, split, manifest.root, manifest.classes, tmp_path / "a", plan=CPU)
    assert list((manifest.root / "cache").glob("decoded-*.u8"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded again")

    monkeypatch.setattr(inputs, "load_square", no_decoding)
    result = fit(cfg, split, manifest.root, manifest.classes, tmp_path / "b", plan=CPU)
    assert result.status == "finished"


@pytest.mark.parametrize(("trainable", "augment"), [(0, "none"), (2, "none"), (2, "light")])
def test_cached_and_plain_paths_reach_the_same_accuracy(shapes, tmp_path, trainable, augment):
    manifest, split = shapes
    scores = {}
    for cache in (True, False):
        cfg = TrainConfig(
            model="efficientnet_lite0",
            trainable_groups=trainable,
            epochs=3,
            augment=augment,
            cache=cache,
            seed=1,
        )
        log = Log()
        result = fit(
            cfg, split, manifest.root, manifest.classes, tmp_path / str(cache), log, plan=CPU
        )
        scores[cache] = result.val_accuracy
        learns = model_info(cfg.model, len(manifest.classes)).trainable_params(trainable)
        assert result.trainable_params == learns  # the head counts in both paths
        assert any("Cached" in line for line in log.lines) == cache
    assert abs(scores[True] - scores[False]) <= 0.1, scores  # 18 images: 0.1 is ~2 images


def test_over_budget_the_caches_stay_on_disk_and_say_so(shapes, tmp_path, monkeypatch):
    manifest, split = shapes
    monkeypatch.setenv("TL_STUDIO_CACHE_MB", "0.01")
    log = Log()
    cfg = TrainConfig(model="test_efficientnet", epochs=1, pretrained=False)
    result = fit(cfg, split, manifest.root, manifest.classes, tmp_path, log, plan=CPU)
    assert result.status == "finished"
    text = "\n".join(log.lines)
    assert "read from disk per batch" in text and "MB on disk in the run's folder" in text
    assert result.cache_bytes["activations"] > 0 and result.cache_bytes["decoded"] > 0
    assert not (tmp_path / "activations").exists()  # removed when the run ended


@pytest.mark.parametrize(("trainable", "epochs"), [(0, 2), (2, 3)])
def test_final_scores_from_cached_outputs_equal_a_full_pass(shapes, tmp_path, trainable, epochs):
    """With an fp32 plan, predictions.json comes from the cached validation outputs: the same
    answers as the whole best model on the pictures, as the Try page computes them."""
    import json

    from tl_core.training.inference import load_trained

    manifest, split = shapes
    cfg = TrainConfig(
        model="efficientnet_lite0", trainable_groups=trainable, epochs=epochs, augment="none"
    )
    log = Log()
    fit(cfg, split, manifest.root, manifest.classes, tmp_path, log, plan=CPU.exact())
    assert any("Cached" in line for line in log.lines)
    saved = json.loads((tmp_path / "predictions.json").read_text())
    trained = load_trained(tmp_path, plan=CPU.exact())
    files = [manifest.root / row["file"] for row in saved["rows"]]
    logits = trained.logits(files)
    expected = torch.tensor([row["logits"] for row in saved["rows"]])
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("plan", [CPU, CPU.exact()], ids=["fast", "fp32"])
def test_a_head_only_run_after_the_head_start_reuses_its_features(shapes, tmp_path, plan) -> None:
    """The features job already ran every image through the frozen backbone: a head-only run
    without augmentation trains on those outputs and scores in fp32 from the kept ones, with
    the answers of a run that computes them itself."""
    import json

    from tl_core.analysis import transfer
    from tl_core.training import featurecache

    manifest, split = shapes
    cfg = TrainConfig(model="efficientnet_lite0", epochs=3, batch_size=8)
    computed, reused = Log(), Log()
    for old in (manifest.root / "cache").glob("features-*.npz"):  # from another test
        old.unlink()
    fit(cfg, split, manifest.root, manifest.classes, tmp_path / "a", computed, plan=plan)
    transfer.frozen_features(manifest, split, cfg.model, plan=plan, exact_val=True)
    items = sorted([*split.train, *split.val], key=lambda i: i.file)
    assert featurecache.features_path(manifest.root, items, cfg.model, True).exists()
    fit(cfg, split, manifest.root, manifest.classes, tmp_path / "b", reused, plan=plan)
    assert any("Reused the whole frozen backbone" in line for line in reused.lines)
    assert not any("Reused" in line for line in computed.lines)

    def rows(folder):
        return json.loads((folder / "predictions.json").read_text())["rows"]

    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["file"] for r in a] == [r["file"] for r in b]
    agree = sum(r["pred"] == s["pred"] for r, s in zip(a, b, strict=True))
    assert agree >= len(a) - 1  # bf16 batches may round one borderline image the other way
    # with augmentation the views differ per epoch: nothing is reused
    augmented = Log()
    aug = TrainConfig(model="efficientnet_lite0", epochs=1, batch_size=8, augment="light")
    fit(aug, split, manifest.root, manifest.classes, tmp_path / "c", augmented, plan=plan)
    assert not any("Reused" in line for line in augmented.lines)


def _count_images_through_the_backbone(monkeypatch) -> list[int]:
    """A list that grows by each batch's size whenever a model built by fit runs its body
    (the whole network's forward runs it too)."""
    from tl_core.training import engine

    seen: list[int] = []
    load = engine._load_model

    def counting(*args, **kwargs):
        model, groups, data_cfg = load(*args, **kwargs)
        features = model.forward_features

        def counted(x):
            seen.append(len(x))
            return features(x)

        model.forward_features = counted
        return model, groups, data_cfg

    monkeypatch.setattr(engine, "_load_model", counting)
    return seen


@pytest.mark.parametrize(
    ("model", "pretrained"),
    [("efficientnet_lite0", True), ("test_resnet", False), ("test_efficientnet", False)],
)
@pytest.mark.parametrize("plan", [CPU, CPU.exact()], ids=["fast", "fp32"])
def test_a_frozen_run_passes_each_image_once_and_scores_in_fp32(
    shapes, tmp_path, monkeypatch, model, pretrained, plan
) -> None:
    """A wholly frozen run computes the validation features once, in fp32: its epochs and its
    final scores (predictions.json) use them, with the answers of the whole best model on the
    pictures in fp32, and no second pass over the validation images."""
    import json
    import shutil

    from tl_core.training.inference import load_trained

    manifest, split = shapes
    # Features other tests of this module cached beside the data set would be reused.
    shutil.rmtree(manifest.root / "cache", ignore_errors=True)
    seen = _count_images_through_the_backbone(monkeypatch)
    cfg = TrainConfig(model=model, epochs=3, augment="none", pretrained=pretrained, seed=2)
    log = Log()
    result = fit(cfg, split, manifest.root, manifest.classes, tmp_path, log, plan=plan)
    probe = 1  # cache_phase sizes its cache from one validation image
    # the unfamiliar check takes the bank and the validation features from that one pass;
    # only the shipped everyday pictures go through the network for it
    from tl_core.data import foreign

    everyday = len(foreign.pictures())
    assert sum(seen) == len(split.train) + len(split.val) + probe + everyday
    assert not any("Final scoring in full precision" in line for line in log.lines)
    saved = json.loads((tmp_path / "predictions.json").read_text())
    trained = load_trained(tmp_path, plan=CPU.exact())
    files = [manifest.root / row["file"] for row in saved["rows"]]
    expected = torch.tensor([row["logits"] for row in saved["rows"]])
    torch.testing.assert_close(
        torch.from_numpy(trained.logits(files)), expected, atol=2e-4, rtol=1e-4
    )
    accuracy = sum(row["pred"] == row["label"] for row in saved["rows"]) / len(saved["rows"])
    assert result.val_accuracy == pytest.approx(accuracy)


@pytest.mark.parametrize("change", ["optimizer_step", "load_state_dict", "unfreeze"])
def test_checkpoint_snapshots_copy_what_changed_and_keep_frozen_copies(change) -> None:
    """Snapshots share the copy of a frozen weight that did not change, and copy anew what
    changed: an earlier snapshot never sees a later change."""
    from tl_core.training.engine import _Snapshots

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    for p in net[0].parameters():
        p.requires_grad_(False)
    copies = _Snapshots()
    copies.begin(net)
    first = copies.take(net.state_dict())
    before = {k: v.clone() for k, v in first.items()}
    if change == "optimizer_step":
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.1)
        net(torch.randn(3, 4)).sum().backward()
        opt.step()
        changed = {"1.weight", "1.bias"}
    elif change == "load_state_dict":
        net.load_state_dict({k: v + 1 for k, v in net.state_dict().items()})
        changed = set(first)
    else:  # the next phase trains the first layer too
        for p in net[0].parameters():
            p.requires_grad_(True)
        with torch.no_grad():
            net[0].weight.mul_(2)
        changed = {"0.weight", "0.bias"} | {"1.weight", "1.bias"}  # trainable: always copied
    copies.begin(net)
    second = copies.take(net.state_dict())
    for key, value in second.items():
        torch.testing.assert_close(value, net.state_dict()[key])
        torch.testing.assert_close(first[key], before[key])  # the old snapshot is intact
        shared = value.data_ptr() == first[key].data_ptr()
        assert shared == (key not in changed and change != "unfreeze"), key
