"""What a pretrained model already knows about your images, from frozen features, in seconds.

One pass of the frozen backbone gives each image a pooled feature vector (cached on disk). On
those vectors, before any training:
- :func:`head_start`: nearest-class-mean and k-nearest-neighbour accuracy on the validation
  images (cross-validated over all images when there are few), beside chance and the
  majority-class level;
- :func:`logme`: LogME (You et al., ICML 2021), a transferability score without training;
- :func:`learning_curve`: accuracy with 25/50/75/100% of the training images;
- :func:`recommend`: every model available offline, scored and ranked this way, the models
  within noise of the best marked as tied and the fastest of them suggested;
- :func:`domain_gauge`: how far the images are from ImageNet, by the entropy of the pretrained
  ImageNet classifier's predictions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tl_core.analysis.metrics import wilson_interval
from tl_core.analysis.readings import (
    RISING_POINTS,
    TIE_P_VALUE,
    DomainGauge,
    Example,
    HeadStart,
    LearningCurve,
    Level,
    ModelScore,
    Recommendation,
    offline_models,
    rank_models,
    suggested,
    verdict,
)
from tl_core.data.dataset import DatasetManifest, ImageItem, Split
from tl_core.models.catalog import (
    DataConfig,
    ModelSpec,
    create_model,
    get_spec,
    weights_status,
)
from tl_core.models.device import ComputePlan, one_thread, plan_compute
from tl_core.training.featurecache import (
    earlier_rows,
    features_path,
    kept_result,
    linked_twin,
    one_pass,
    read_cache,
    write_cache,
)
from tl_core.training.inputs import (
    ImageTensors,
    Normalize,
    cache_budget_bytes,
    cache_side,
    decode_all,
    make_transforms,
)
from tl_core.training.prefixcache import Pooled, run_prefix

__all__ = [
    "CLOSE_BELOW",
    "FAR_FROM",
    "GAUGED_MODELS",
    "MIN_VAL_IMAGES",
    "MIN_VAL_PER_CLASS",
    "RISING_POINTS",
    "TIE_P_VALUE",
    "DomainGauge",
    "Example",
    "Features",
    "HeadStart",
    "LearningCurve",
    "Level",
    "ModelScore",
    "Predictor",
    "Progress",
    "Recommendation",
    "domain_gauge",
    "features_path",
    "frozen_features",
    "head_start",
    "kept_result",
    "learning_curve",
    "logme",
    "offline_models",
    "picture_features",
    "probe_accuracy",
    "rank_models",
    "recommend",
    "suggested",
    "verdict",
]

Progress = Callable[[int, int], None]
_IMAGENET_CLASSES = 1000


# ------------------------------------------------------------------------------ features


@dataclass(frozen=True)
class Features:
    """Frozen pooled features of a split's images: training images first, then validation."""

    model_key: str
    pretrained: bool
    classes: list[str]
    files: list[str]  # data-set-relative file of each row
    vectors: np.ndarray  # (images, dim) float32: the classifier's input
    labels: np.ndarray  # (images,) int64 indices into ``classes``
    n_train: int  # rows [0, n_train) are training images, the rest validation images
    entropy: np.ndarray | None  # (images,) ImageNet prediction entropy / log(1000), or None
    imagenet_top: np.ndarray | None  # (images,) the ImageNet class predicted, or None
    seconds: float  # time to compute them (the first time, when read from the cache)
    from_cache: bool
    source: Path | None = None  # the features file they were read from or written to

    @property
    def train_x(self) -> np.ndarray:
        return self.vectors[: self.n_train]

    @property
    def train_y(self) -> np.ndarray:
        return self.labels[: self.n_train]

    @property
    def val_x(self) -> np.ndarray:
        return self.vectors[self.n_train :]

    @property
    def val_y(self) -> np.ndarray:
        return self.labels[self.n_train :]


def _imagenet_model(spec: ModelSpec, pretrained: bool) -> tuple[nn.Module, bool]:
    """The model with its 1000-class ImageNet head, and whether that head is the trained one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights are the same on every call
        model = create_model(spec, num_classes=_IMAGENET_CLASSES, pretrained=pretrained)
    # With 1000 classes, create_model keeps the pretrained ImageNet head itself.
    return model, pretrained and not spec.hidden


def _compute(
    spec: ModelSpec,
    pretrained: bool,
    root: Path,
    items: Sequence[ImageItem],
    plan: ComputePlan,
    progress: Progress | None,
    rows: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Pooled features, ImageNet entropy and top class of ``items`` (of ``items[rows]`` when
    given: the decoded cache still holds them all), in their order."""
    torch.set_num_threads(plan.threads)
    model, has_head = _imagenet_model(spec, pretrained)
    data_cfg = DataConfig.of(model)
    model = plan.prepare_model(model).eval()
    n = len(items)
    rows = range(n) if rows is None else list(rows)
    side = cache_side(data_cfg)

    def report(offset: int) -> Callable[[int], None]:
        return lambda done: progress(offset + done, n + len(rows)) if progress else None

    decoded = decode_all(
        root,
        items,
        side,
        data_cfg.interpolation,
        cache_budget_bytes() // 2,
        lambda done, _: report(0)(done),
    )
    _, eval_tf = make_transforms(data_cfg, "none")
    images = ImageTensors(
        decoded, rows, root, items, [0] * len(rows), eval_tf, side, data_cfg.interpolation
    )
    prefix = nn.Sequential(Normalize(data_cfg).to(plan.device), Pooled(model)).eval()
    loader = plan.loader(images)
    feats, _ = run_prefix(prefix, loader, plan, torch.float32, lambda: False, report(n))
    entropy = top = None
    if has_head:
        with torch.inference_mode():
            logits = model.get_classifier()(feats.float()).float()
        if logits.shape[1] == _IMAGENET_CLASSES:
            logp = logits.log_softmax(1)
            ent = -(logp.exp() * logp).sum(1) / math.log(_IMAGENET_CLASSES)
            entropy = ent.cpu().numpy().astype(np.float32)
            top = logits.argmax(1).cpu().numpy().astype(np.int16)
    return feats.cpu().numpy().astype(np.float32), entropy, top


def frozen_features(
    manifest: DatasetManifest,
    split: Split,
    model_key: str,
    pretrained: bool = True,
    plan: ComputePlan | None = None,
    progress: Progress | None = None,
    exact_val: bool = False,
) -> Features:
    """Pooled penultimate features of every image in ``split``, computed once and cached.

    The same inputs as training: the decoded image cache, the eval centre crop, the model's
    normalisation, bf16 autocast where the plan says so. With ``pretrained``, also the
    pretrained ImageNet classifier's prediction entropy per image. Cached as
    ``<data root>/cache/features-<model>-<pretrained|random>-<hash>.npz`` (per image, so any
    split of the same images reuses it). ``progress(done, total)``: preparing the images, then
    running them through the model. With ``exact_val`` and a plan in reduced precision, the
    validation images' features are also kept in fp32 (``exact_files``/``exact_vectors``):
    a head-only training run then gives its final fp32 scores without a pass of its own.
    """
    spec = get_spec(model_key)
    root = Path(manifest.root)
    items = sorted([*split.train, *split.val], key=lambda i: i.file)
    files = [i.file for i in items]
    plan = plan or plan_compute()
    val_files = [i.file for i in split.val]

    def complete(data: dict[str, np.ndarray]) -> bool:
        exact = data.get("exact_files", np.array([])).tolist()
        return not exact_val or plan.amp_dtype is None or exact == val_files

    def add_exact(path: Path, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        at = {f: r for r, f in enumerate(files)}
        exact, _, _ = _compute(
            spec, pretrained, root, items, plan.exact(), None, [at[f] for f in val_files]
        )
        data = {**data, "exact_files": np.array(val_files), "exact_vectors": exact}
        write_cache(path, data)
        return data

    path, data, from_cache = _cached(
        spec, pretrained, root, items, plan, progress, (complete, add_exact)
    )
    row = {f: r for r, f in enumerate(files)}
    ordered = [*split.train, *split.val]
    rows = np.array([row[i.file] for i in ordered], dtype=np.int64)
    index = {c: k for k, c in enumerate(manifest.classes)}
    return Features(
        model_key=spec.key,
        pretrained=pretrained,
        classes=list(manifest.classes),
        files=[i.file for i in ordered],
        vectors=np.asarray(data["vectors"], dtype=np.float32)[rows],
        labels=np.array([index[i.label] for i in ordered], dtype=np.int64),
        n_train=len(split.train),
        entropy=np.asarray(data["entropy"])[rows] if "entropy" in data else None,
        imagenet_top=np.asarray(data["imagenet_top"])[rows] if "imagenet_top" in data else None,
        seconds=float(data["seconds"]),
        from_cache=from_cache,
        source=path,
    )


def picture_features(
    manifest: DatasetManifest,
    model_key: str,
    pretrained: bool = True,
    plan: ComputePlan | None = None,
    progress: Progress | None = None,
) -> tuple[list[ImageItem], np.ndarray]:
    """Pooled features of every picture of the data version, labelled or not, sorted by file.

    The same cache file as :func:`frozen_features` when every picture is labelled (so the
    Model page's features job and the map share one pass); rows of pictures that another
    data version cached for the model are copied, not computed. ``progress(done, total)``.
    """
    spec = get_spec(model_key)
    root = Path(manifest.root)
    items = sorted([*manifest.items, *manifest.unlabelled], key=lambda i: i.file)
    data = _cached(spec, pretrained, root, items, plan, progress)[1]
    return items, np.asarray(data["vectors"], dtype=np.float32)


_Arrays = dict[str, np.ndarray]
_Finish = tuple[Callable[[_Arrays], bool], Callable[[Path, _Arrays], _Arrays]]


def _cached(
    spec: ModelSpec,
    pretrained: bool,
    root: Path,
    items: Sequence[ImageItem],
    plan: ComputePlan | None,
    progress: Progress | None,
    finish: _Finish | None = None,
) -> tuple[Path, _Arrays, bool]:
    """The features file of ``items`` (sorted by file): its path, its arrays (read, linked
    from another data version of the workspace, or computed and written) and whether they
    came from a cache. ``finish``: (is the file complete for the caller, complete it), e.g.
    the validation features in fp32. One job at a time computes or completes a given file
    (``featurecache.one_pass``); the others wait, then find it."""
    complete, add = finish or ((lambda data: True), (lambda path, data: data))
    path = features_path(root, items, spec.key, pretrained)
    files = [i.file for i in items]
    data = read_cache(path, files)
    if data is not None and complete(data):
        return path, data, True
    with one_pass(path):
        data = read_cache(path, files)
        if data is None or not complete(data):
            data = linked_twin(path, files, complete) or data
        from_cache = data is not None
        if data is None:
            data = _features_of(spec, pretrained, root, items, plan or plan_compute(), progress)
            write_cache(path, data)
        if not complete(data):
            data = add(path, data)
    return path, data, from_cache


def _features_of(
    spec: ModelSpec,
    pretrained: bool,
    root: Path,
    items: Sequence[ImageItem],
    plan: ComputePlan,
    progress: Progress | None,
) -> dict[str, np.ndarray]:
    """The features file's arrays for ``items``: rows of images (same sha256) that another
    version of the data set has cached for this model are copied, the others computed."""
    started = time.monotonic()
    known = earlier_rows(root, spec.key, pretrained)
    todo = [k for k, item in enumerate(items) if item.sha256 not in known]
    vectors = entropy = top = None
    if todo:
        vectors, entropy, top = _compute(spec, pretrained, root, items, plan, progress, todo)
    # Without a pass of its own, the earlier files say whether the model has an ImageNet head.
    sample = [known[i.sha256][0] for i in items if i.sha256 in known]
    with_head = entropy is not None if todo else all("entropy" in d for d in sample)
    if sample and with_head and not all("entropy" in d and "imagenet_top" in d for d in sample):
        vectors, entropy, top = _compute(spec, pretrained, root, items, plan, progress)
        todo = list(range(len(items)))  # an earlier file lacks the entropy: compute them all
    computed = {k: j for j, k in enumerate(todo)}

    def column(key: str, fresh: np.ndarray | None) -> np.ndarray:
        out = []
        for k, item in enumerate(items):
            if k in computed:
                out.append(fresh[computed[k]])  # type: ignore[index]
            else:
                data, row = known[item.sha256]
                out.append(data[key][row])
        return np.stack(out)

    data = {
        "files": np.array([i.file for i in items]),
        "sha256": np.array([i.sha256 for i in items]),
        "vectors": column("vectors", vectors).astype(np.float32),
        "seconds": np.array(time.monotonic() - started),
        "reused": np.array(len(items) - len(todo)),
    }
    if with_head:
        data |= {"entropy": column("entropy", entropy), "imagenet_top": column("imagenet_top", top)}
    return data


# ---------------------------------------------------------------------- frozen classifiers


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _normalised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise, subtract the training mean, L2-normalise again (SimpleShot's CL2N)."""
    train, test = _unit(train.astype(np.float64)), _unit(test.astype(np.float64))
    mean = train.mean(0, keepdims=True)
    return _unit(train - mean), _unit(test - mean)


def _ncm_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int
) -> np.ndarray:
    """Nearest class mean by cosine similarity; classes without training images never win."""
    train, test = _normalised(train_x, test_x)
    means = np.zeros((n_classes, train.shape[1]))
    np.add.at(means, train_y, train)
    scores = test @ _unit(means).T
    scores[:, np.bincount(train_y, minlength=n_classes) == 0] = -np.inf
    return scores.argmax(1)


def _knn_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int, k: int = 5
) -> np.ndarray:
    """k nearest training images by cosine similarity; votes weighted by similarity."""
    train, test = _normalised(train_x, test_x)
    k = max(1, min(k, len(train)))
    sims = test @ train.T
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    votes = np.zeros((len(test), n_classes))
    rows = np.repeat(np.arange(len(test)), k)
    np.add.at(
        votes, (rows, train_y[nearest].ravel()), 1 + np.take_along_axis(sims, nearest, 1).ravel()
    )
    return votes.argmax(1)


def _probe_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_classes: int,
    c: float = 1.0,
    max_iter: int = 100,
) -> np.ndarray:
    """Multinomial logistic regression on standardised features (L-BFGS, L2 penalty 1/C)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = torch.from_numpy(((train_x - mean) / std).astype(np.float32))
    y = torch.from_numpy(train_y.astype(np.int64))
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    penalty = 1.0 / (2 * c * len(x))
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x @ w + b, y, reduction="mean")
        loss = loss + penalty * (w * w).sum()
        loss.backward()
        return loss

    with one_thread(), torch.enable_grad():
        opt.step(closure)
    test = torch.from_numpy(((test_x - mean) / std).astype(np.float32))
    with torch.no_grad():
        return (test @ w + b).argmax(1).numpy()


def _stratified_folds(labels: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per image, each class spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        folds[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)  # spread the classes' remainders over different folds
    return folds


Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def _cross_val_predict(
    x: np.ndarray, y: np.ndarray, n_classes: int, n_folds: int, predict: Predictor
) -> np.ndarray:
    folds = _stratified_folds(y, n_folds)
    preds = np.zeros(len(y), dtype=np.int64)
    for f in range(n_folds):
        test = folds == f
        preds[test] = predict(x[~test], y[~test], x[test], n_classes)
    return preds


# ------------------------------------------------------------------------------ head start

MIN_VAL_IMAGES = 20
MIN_VAL_PER_CLASS = 3


def _evaluate(features: Features, predict: Predictor) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, predictions, folds): on the validation images, or cross-validated when few."""
    n_classes = len(features.classes)
    val_counts = np.bincount(features.val_y, minlength=n_classes)
    train_counts = np.bincount(features.train_y, minlength=n_classes)
    present = val_counts[train_counts > 0]
    small = len(features.val_y) < MIN_VAL_IMAGES or bool((present < MIN_VAL_PER_CLASS).any())
    if not small:
        preds = predict(features.train_x, features.train_y, features.val_x, n_classes)
        return features.val_y, preds, 0
    counts = np.bincount(features.labels, minlength=n_classes)
    n_folds = int(min(5, max(2, counts[counts > 0].min())))
    preds = _cross_val_predict(features.vectors, features.labels, n_classes, n_folds, predict)
    return features.labels, preds, n_folds


def head_start(features: Features) -> HeadStart:
    """Nearest-class-mean and k-NN accuracy of the frozen features, with chance and majority.

    Scored on the validation images; when they are few (under 20, or under 3 of a class),
    by stratified k-fold cross-validation over all images instead.
    """
    n_classes = len(features.classes)
    k = int(min(5, max(1, len(features.train_y) // n_classes)))
    labels, ncm, folds = _evaluate(features, _ncm_predict)
    _, knn, _ = _evaluate(features, lambda tx, ty, x, n: _knn_predict(tx, ty, x, n, k=k))
    total = len(labels)
    correct = int((ncm == labels).sum())
    accuracy = correct / total if total else 0.0
    chance = 1 / n_classes
    majority = float(np.bincount(labels, minlength=n_classes).max() / total) if total else 0.0
    what = "pretrained features" if features.pretrained else "features of the untrained network"
    where = (
        "of your images correctly, each scored while left out of the reference set"
        if folds
        else "of your validation images correctly"
    )
    levels = f"chance: {chance:.0%}"
    if majority >= chance + 0.05:
        levels += f"; always answering the biggest class: {majority:.0%}"
    sentence = f"Before any training, the {what} already sort {accuracy:.0%} {where} ({levels})."
    return HeadStart(
        ncm_accuracy=accuracy,
        knn_accuracy=float((knn == labels).mean()) if total else 0.0,
        k=k,
        ncm_ci=wilson_interval(correct, total),
        chance=chance,
        majority=majority,
        images=total,
        cross_validated=folds > 0,
        folds=folds,
        sentence=sentence,
    )


# ------------------------------------------------------------------------------------ LogME


def logme(features: np.ndarray, labels: np.ndarray, max_iter: int = 11) -> float:
    """LogME (You et al., ICML 2021): mean per-class log evidence per image; higher is better.

    For each class, a Bayesian linear regression from the features to the class's one-hot
    target, with prior precision alpha and noise precision beta set by the paper's fixed-point
    evidence maximisation, on the eigen-decomposition of the smaller Gram matrix of the
    features. log|A| counts all D eigenvalues, the zero ones too (thuml/LogME issue #23).
    """
    with one_thread():
        f = torch.from_numpy(np.asarray(features, dtype=np.float64))
        y = np.asarray(labels).reshape(-1)
        n, d = f.shape
        if n <= d:  # F F^T = U diag(sigma) U^T; U^T y are the target's coordinates
            sigma_k, u = torch.linalg.eigh(f @ f.T)
            basis = u.numpy()
        else:  # F^T F = V diag(sigma) V^T; u_i = F v_i / sqrt(sigma_i)
            sigma_k, v = torch.linalg.eigh(f.T @ f)
            basis = (f @ v / sigma_k.clamp_min(1e-12).sqrt()).numpy()
            basis[:, sigma_k.numpy() <= 1e-10 * float(sigma_k.max())] = 0.0
    sigma = np.zeros(d)
    sigma[: len(sigma_k)] = sigma_k.clamp_min(0).numpy()  # eigenvalues of F^T F, zeros padded
    evidences = []
    for c in np.unique(y):
        target = (y == c).astype(np.float64)
        x2 = np.zeros(d)
        x2[: basis.shape[1]] = (basis.T @ target) ** 2
        rest = max(float(target @ target - x2.sum()), 0.0)  # outside F's column space
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            t = alpha / beta
            gamma = float((sigma / (sigma + t)).sum())
            m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
            res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + rest
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        t = alpha / beta
        m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
        res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + rest
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - 0.5 * float(np.log(alpha + beta * sigma).sum())
            - beta / 2 * res2
            - alpha / 2 * m2
            - n / 2 * math.log(2 * math.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


# --------------------------------------------------------------------------- learning curve


def _subset(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices of a stratified subset: ``fraction`` of each class, at least one image."""
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        take = max(1, round(len(idx) * fraction))
        picked.append(rng.choice(idx, size=take, replace=False))
    return np.sort(np.concatenate(picked))


def learning_curve(
    features: Features,
    fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    seed: int = 0,
    draws: int = 5,
) -> LearningCurve:
    """Validation accuracy of a logistic-regression probe on stratified training subsets.

    The probe (:func:`_probe_predict`) is a linear classifier like the head the app trains.
    Each fraction below 1 is drawn ``draws`` times (different images) and averaged.
    """
    n_classes = len(features.classes)
    rng = np.random.default_rng(seed)
    accs, spreads, sizes = [], [], []
    for fraction in fractions:
        runs, counts = [], []
        for _ in range(draws if fraction < 1 else 1):
            rows = _subset(features.train_y, fraction, rng)
            preds = _probe_predict(
                features.train_x[rows], features.train_y[rows], features.val_x, n_classes
            )
            runs.append(float((preds == features.val_y).mean()) if len(preds) else 0.0)
            counts.append(len(rows))
        accs.append(float(np.mean(runs)))
        spreads.append(float(np.std(runs)))
        sizes.append(round(float(np.mean(counts))))
    return LearningCurve(list(fractions), accs, spreads, sizes, len(features.val_y))


# ------------------------------------------------------------------------------ recommend


def _probe_correct(features: Features) -> tuple[np.ndarray, int]:
    """(per-image correctness, folds) of :func:`_probe_predict`, scored as in :func:`head_start`."""
    labels, preds, folds = _evaluate(features, _probe_predict)
    return np.asarray(preds == labels, dtype=bool), folds


def probe_accuracy(features: Features) -> tuple[float, int]:
    """(accuracy, folds) of :func:`_probe_predict`, scored as in :func:`head_start`."""
    correct, folds = _probe_correct(features)
    return (float(correct.mean()) if len(correct) else 0.0), folds


def recommend(
    manifest: DatasetManifest,
    split: Split,
    keys: Sequence[str] | None = None,
    plan: ComputePlan | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Recommendation]:
    """Score every model available offline (or ``keys``) on the images; best first.

    Ranked by linear-probe accuracy on the frozen features (validation images, or k-fold over
    all images when they are few), ties broken by LogME; models within the noise of the
    leader are marked tied and the fastest of them suggested (:func:`rank_models`).
    ``progress(model_key, done, total)`` reports each model's feature pass.
    """
    plan = plan or plan_compute()
    scores = []
    for key in keys if keys is not None else offline_models():
        spec = get_spec(key)
        report = (lambda d, t, k=spec.key: progress(k, d, t)) if progress else None
        feats = frozen_features(manifest, split, spec.key, plan=plan, progress=report)
        correct, folds = _probe_correct(feats)
        scores.append(
            ModelScore(
                key=spec.key,
                title=spec.title,
                correct=correct,
                logme=logme(feats.vectors, feats.labels),
                params_m=spec.params_m,
                images_per_s=spec.images_per_s,
                ncm_accuracy=head_start(feats).ncm_accuracy,
                cross_validated=folds > 0,
                seconds=feats.seconds,
                weights=weights_status(spec),
            )
        )
    return rank_models(scores)


# ---------------------------------------------------------------------------- domain gauge

# Mean normalised entropy measured with EfficientNet-Lite0/1/2: crops of real photos 0.37-0.50;
# generated shapes 0.58-0.63; Fashion-MNIST 0.60-0.67; grey texture patches 0.66-0.76;
# handwritten characters (Omniglot) 0.70-0.77; generated noise and flat colours 0.79-0.93
# (Lite0). The cuts sit midway between the photos and the rest, and between Fashion-MNIST and
# the handwriting. Other model families (other training losses) may need other cuts.
CLOSE_BELOW = 0.54
FAR_FROM = 0.68
# The models the cuts were measured on. Others (a ResNet-50 trained with a BCE loss, say) give
# softer predictions on every image, so their entropy gets a number but no verdict.
GAUGED_MODELS = frozenset({"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"})


def domain_gauge(features: Features, examples: int = 3) -> DomainGauge:
    """Mean normalised entropy of the pretrained ImageNet classifier on the images."""
    if features.entropy is None or features.imagenet_top is None:
        raise ValueError("the features have no ImageNet predictions (pretrained=True needed)")
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    entropy = features.entropy.astype(np.float64)
    mean = float(entropy.mean())
    level: Level | None = None
    if features.model_key in GAUGED_MODELS:
        level = "close" if mean < CLOSE_BELOW else "far" if mean >= FAR_FROM else "some distance"
    order = np.argsort(entropy, kind="stable")

    def example(i: int) -> Example:
        name = info.index_to_description(int(features.imagenet_top[i])).split(",")[0]
        return Example(features.files[i], float(entropy[i]), name)

    sentence = {
        None: "How unsure the model's ImageNet classifier is about your images: higher means "
        "less like the photos it learned from. Where this model's scale turns from close to far "
        "has not been measured, so there is no verdict.",
        "close": "Your images look like the photos the model learned from: its pretrained "
        "knowledge should carry over well.",
        "some distance": "Your images differ somewhat from the photos the model learned from: "
        "training the last layer groups too may help.",
        "far": "Your images look unlike the photos the model learned from: expect to need more "
        "images and to train more of the network.",
    }[level]
    return DomainGauge(
        mean_entropy=mean,
        level=level,
        most_like_imagenet=[example(i) for i in order[:examples]],
        least_like_imagenet=[example(i) for i in order[::-1][:examples]],
        sentence=sentence,
    )
