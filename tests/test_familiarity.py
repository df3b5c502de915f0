"""The unfamiliar check: its score, its threshold, its measurement, and a trained run's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from tests.helpers import make_shapes
from tl_core.data import foreign
from tl_core.data.dataset import import_folder, split_dataset
from tl_core.models.catalog import CATALOG, create_model
from tl_core.models.device import plan_compute
from tl_core.training import familiarity
from tl_core.training.engine import QuietCallbacks, TrainConfig, fit
from tl_core.training.familiar_pass import NearestDistance, WithFeatures
from tl_core.training.familiarity import (
    ClassLeftOut,
    FamiliarityReport,
    auroc,
    bank_rows,
    leave_one_class_out,
    nearest_distance,
    threshold_for,
)
from tl_core.training.inference import load_trained
from tl_core.training.inputs import Normalize

CPU = plan_compute("cpu")


# ----------------------------------------------------------------------------- the threshold


@pytest.mark.parametrize("n", [1, 2, 5, 16, 19, 20, 21, 100, 1001])
@pytest.mark.parametrize("accept", [0.8, 0.95, 1.0])
def test_the_threshold_accepts_the_share_asked_and_sits_on_no_validation_score(n, accept):
    scores = np.random.default_rng(n).gamma(2.0, 0.1, n)
    t = threshold_for(scores, accept)
    kept = (scores <= t).mean()
    assert kept >= accept - 1e-9  # at least the share asked for...
    slack = max(1, int(familiarity.SLACK * n))  # a wider margin may take a few more
    assert kept - accept < (1 + slack) / n + 1e-9
    margin = np.abs(scores - t).min()
    assert margin > 0  # no validation picture on the line...
    s = np.sort(scores)
    first = min(n - 1, int(np.ceil(accept * n - 1e-9)))
    if 0 < first < n:  # ...and it is no nearer than the plain midpoint's would be
        assert margin >= (s[first] - s[first - 1]) / 2 - 1e-12
    if accept == 1.0:
        assert t > scores.max()


def test_a_threshold_needs_scores_and_a_share():
    with pytest.raises(ValueError):
        threshold_for(np.array([]), 0.95)
    with pytest.raises(ValueError):
        threshold_for(np.array([0.1, 0.2]), 0.0)
    with pytest.raises(ValueError):
        threshold_for(np.array([0.1, 0.2]), 1.5)


def test_the_threshold_moves_with_the_share():
    scores = np.linspace(0.1, 0.5, 200)
    ts = [threshold_for(scores, a) for a in familiarity.ACCEPT_CHOICES]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)


# ----------------------------------------------------------------------------- the score


def test_the_score_is_the_cosine_distance_to_the_nearest_training_picture():
    rng = np.random.default_rng(0)
    bank = familiarity.unit(rng.normal(size=(300, 16)))
    q = rng.normal(size=(2500, 16)) * 3  # lengths do not matter
    d, where = nearest_distance(q, bank)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    brute = 1 - (qn @ bank.T).max(1)
    assert np.allclose(d, brute, atol=1e-5)
    assert (where == (qn @ bank.T).argmax(1)).all()
    # a training picture itself is at distance 0
    assert np.allclose(nearest_distance(bank[:5] * 7, bank)[0], 0, atol=1e-5)
    # the torch module (the app, the ONNX model) gives the same numbers
    torch_d = NearestDistance(bank)(torch.from_numpy(q.astype(np.float32))).numpy()
    assert np.allclose(torch_d, d, atol=1e-5)
    # with each row's distance in units of its scale
    scale = rng.uniform(0.2, 2.0, len(bank))
    scaled, _ = nearest_distance(q, bank, scale)
    assert np.allclose(scaled, ((1 - qn @ bank.T) / scale).min(1), atol=1e-5)
    module = NearestDistance(bank, scale)(torch.from_numpy(q.astype(np.float32))).numpy()
    assert np.allclose(module, scaled, atol=1e-5)


def test_each_class_is_measured_in_its_own_spread():
    rng = np.random.default_rng(3)
    centres = familiarity.unit(rng.normal(size=(3, 64)))
    spreads = np.array([0.05, 0.3, 0.3])  # class 0 tight, class 1 varied, class 2 a near-copy
    tx = np.concatenate([centres[c] + rng.normal(size=(40, 64)) * spreads[c] / 8 for c in (0, 1)])
    tx = np.concatenate([tx, centres[2] + rng.normal(size=(1, 64)) * 0.01])
    ty = np.array([0] * 40 + [1] * 40 + [2])
    scale = familiarity.class_scales(familiarity.unit(tx), ty, 3)
    assert scale[1] > 3 * scale[0]
    assert scale[0] < scale[2] < scale[1]  # one picture: the middle spread
    floor = familiarity.class_scales(np.repeat(familiarity.unit(tx[:2]), 3, axis=0), [0] * 6, 1)
    assert floor[0] > 0  # exact copies do not make the spread 0


def test_the_bank_keeps_every_class_in_proportion_when_capped():
    labels = np.array([0] * 9000 + [1] * 900 + [2] * 3)
    rows = bank_rows(labels, cap=1000)
    kept = np.bincount(labels[rows], minlength=3)
    assert 950 <= len(rows) <= 1050
    assert kept[2] >= 1 and abs(kept[0] / kept[1] - 10) < 1
    assert (np.diff(rows) > 0).all()
    assert len(bank_rows(labels[:500], cap=1000)) == 500


def test_auroc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, 40).astype(float)
    b = rng.integers(2, 8, 30).astype(float)
    ref = roc_auc_score(np.r_[np.zeros(40), np.ones(30)], np.r_[a, b])
    assert auroc(a, b) == pytest.approx(ref)
    assert auroc(a, np.array([])) is None


# ----------------------------------------------------------------------------- measurement


def _clusters(n_classes: int, per_class: int, spread: float, seed: int = 0):
    """Pictures of ``n_classes`` classes around the same centres whatever the ``seed``."""
    centres = np.random.default_rng(100).normal(size=(n_classes, 32)) * 4
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    return centres[labels] + rng.normal(size=(len(labels), 32)) * spread, labels


def _brute_left_out(tx, ty, vx, vy, classes, accept):
    """The definition, one class at a time, without the shared products."""
    scale = familiarity.class_scales(familiarity.unit(tx), ty, len(classes))
    out = []
    for c, name in enumerate(classes):
        bank, rows = familiarity.unit(tx[ty != c]), scale[ty[ty != c]]
        known = nearest_distance(vx[vy != c], bank, rows)[0]
        left = nearest_distance(np.concatenate([vx[vy == c], tx[ty == c]]), bank, rows)[0]
        t = threshold_for(known, accept)
        out.append(ClassLeftOut(name, len(left), float((left > t).mean()), auroc(known, left)))
    return out


def test_leaving_each_class_out_matches_its_definition():
    tx, ty = _clusters(5, 30, 2.0)
    vx, vy = _clusters(5, 10, 2.0, seed=1)
    classes = list("abcde")
    fast = leave_one_class_out(tx, ty, vx, vy, classes)
    slow = _brute_left_out(tx, ty, vx, vy, classes, familiarity.ACCEPT)
    assert [c.name for c in fast] == classes
    for f, s in zip(fast, slow, strict=True):
        assert f.images == s.images == 40
        assert f.flagged == pytest.approx(s.flagged, abs=1e-6)
        assert f.auroc == pytest.approx(s.auroc, abs=1e-6)


def test_far_apart_classes_are_noticed_when_left_out_and_alike_ones_are_not():
    tx, ty = _clusters(4, 40, 0.3)
    vx, vy = _clusters(4, 10, 0.3, seed=1)
    apart = leave_one_class_out(tx, ty, vx, vy, list("abcd"))
    assert all(c.auroc == 1.0 and c.flagged == 1.0 for c in apart)
    rng = np.random.default_rng(2)  # four labels on one cloud: nothing tells them apart
    same_t, same_v = rng.normal(size=(160, 32)), rng.normal(size=(40, 32))
    alike = leave_one_class_out(same_t, ty, same_v, vy, list("abcd"))
    assert 0.3 < np.mean([c.auroc for c in alike]) < 0.7
    assert np.mean([c.flagged for c in alike]) < 0.25


def test_the_report_says_it_in_one_sentence_and_survives_a_round_trip(tmp_path):
    rep = FamiliarityReport(
        accept=0.95,
        threshold=0.3,
        val_images=200,
        val_flagged=0.05,
        left_out=[ClassLeftOut("a", 10, 0.9, 0.97), ClassLeftOut("b", 10, 0.9, 0.93)],
        foreign_images=70,
        foreign_flagged=0.9,
        foreign_auroc=0.99,
    )
    text = rep.sentence()
    assert "9 times in 10" in text and "5 in 100" in text
    familiarity.save_report(tmp_path, rep)
    assert familiarity.load_report(tmp_path) == rep
    assert json.loads((tmp_path / familiarity.REPORT_FILE).read_text())["left_out_auroc"] == 0.95
    (tmp_path / familiarity.REPORT_FILE).write_text("{not json")
    assert familiarity.load_report(tmp_path) is None


def test_a_damaged_or_foreign_detector_file_reads_as_none(tmp_path):
    assert familiarity.load(tmp_path) is None
    (tmp_path / familiarity.FEATURES_FILE).write_bytes(b"not a zip")
    assert familiarity.load(tmp_path) is None
    tx, ty = _clusters(2, 10, 1.0)
    fam = familiarity.build(tx, ty, tx[:4])
    familiarity.save(tmp_path, fam)
    back = familiarity.load(tmp_path)
    assert back is not None and back.threshold == fam.threshold
    assert back.bank.dtype == np.float16 and np.array_equal(back.bank, fam.bank)


# ----------------------------------------------------------------------------- the network


@pytest.mark.parametrize("key", [s.key for s in CATALOG])
def test_one_pass_gives_the_models_own_logits_and_its_pooled_features(key):
    torch.manual_seed(0)
    net = create_model(next(s for s in CATALOG if s.key == key), 3, pretrained=False).eval()
    size = 224 if "vit" in key else 96
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    from tl_core.models.catalog import DataConfig

    normalize = Normalize(DataConfig.of(net))
    with torch.inference_mode():
        logits, features = WithFeatures(normalize, net)(x)
        assert torch.allclose(logits, net(normalize(x)), atol=1e-4)
    assert features.shape == (2, net.get_classifier().in_features)


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    manifest = import_folder(make_shapes(root / "src", per_class=24), root / "data")
    split = split_dataset(manifest, 0.25, seed=0)
    cfg = TrainConfig(model="efficientnet_lite0", epochs=3, batch_size=16, seed=0)
    logs: list[str] = []

    class Logged(QuietCallbacks):
        def on_log(self, message: str) -> None:
            logs.append(message)

    fit(cfg, split, manifest.root, manifest.classes, root / "run", Logged(), plan=CPU)
    return manifest, split, root / "run", logs


def test_a_trained_run_keeps_its_check_beside_its_model(shapes_run):
    manifest, split, run_dir, logs = shapes_run
    fam = familiarity.load(run_dir)
    rep = familiarity.load_report(run_dir)
    assert fam is not None and rep is not None
    assert len(fam.bank) == len(split.train) and len(fam.val_scores) == len(split.val)
    assert fam.accepted_share(fam.threshold) >= familiarity.ACCEPT
    assert rep.foreign_images == len(foreign.pictures()) == 70
    assert [c.name for c in rep.left_out] == manifest.classes
    assert any(line.startswith("Unfamiliar check: Pictures of none") for line in logs)


def test_the_trained_model_flags_everyday_pictures_and_not_its_own(shapes_run):
    manifest, split, run_dir, _ = shapes_run
    model = load_trained(run_dir)
    own = [manifest.root / i.file for i in split.val]
    everyday = [img for _, img in foreign.pictures()]
    g_own, g_far = model.guess(own), model.guess(everyday)
    threshold = model.familiarity.threshold
    assert g_own.unfamiliar(threshold).mean() <= 1 - familiarity.ACCEPT + 1e-9
    assert g_far.unfamiliar(threshold).mean() >= 0.8
    # the validation scores the threshold was chosen on are the app's, to float rounding
    assert np.allclose(
        np.sort(g_own.unfamiliarity), np.sort(model.familiarity.val_scores), atol=2e-3
    )
    # one pass: the same probabilities as predict
    assert np.allclose(g_own.probs, model.predict(own), atol=1e-6)
    assert not g_own.unfamiliar(None).any()


def test_a_run_without_its_check_still_guesses(shapes_run, tmp_path):
    run_dir = shapes_run[2]
    bare = tmp_path / "run"
    bare.mkdir()
    for f in run_dir.iterdir():
        if f.name != familiarity.FEATURES_FILE and f.is_file():
            (bare / f.name).write_bytes(f.read_bytes())
    model = load_trained(bare)
    assert model.familiarity is None
    g = model.guess([Image.new("RGB", (64, 64), (200, 30, 30))])
    assert g.unfamiliarity is None and not g.unfamiliar(0.1).any()
