"""Label assist: how many labels active choice saves, how right the confident pages are, how
fast a refresh is, and how well label issues are found (tl_core.labeling).

    uv run --group test --group bench python bench/label_assist.py [DATASET ...]
        [--cache DIR] [--seeds 8] [--step 10] [--rows 5000]

Default data sets: every ``<name>/`` with a ``train/`` folder under ../shared/datasets, and
the bundled demo set (skipped when it holds the same pictures as one already run). Each
folder is imported whole (train and test parts together) and its pooled EfficientNet-Lite0
features are cached under ``--cache`` (default: a folder in the system's temp folder).

Per data set and seed, a simulated user who always answers with the true class:

- 25% of the pictures (stratified) are held out for testing; the rest is the pool, its
  labels hidden. The space is :func:`reduce` of all pictures' features (the app has them all).
- Start: 3 random labels per class. Then batches of ``--step`` labels chosen (a) by
  :func:`next_batch` with :func:`suggest`, (b) in a random order, until the pool is labelled.
  After each batch the classifier :func:`suggest` uses is fitted on the labels and scored on
  the test part.
- "full": test accuracy with every pool label. "labels to 95%": the first label count at
  which the seed-averaged test accuracy reaches 95% of the seed-averaged full accuracy.
  "mean acc. to half the pool": the seed-averaged test accuracy averaged over the steps
  until half the pool is labelled (the area under the learning curve; less noisy).
- Confident pages: a third run where, before each batch, the user accepts every confident
  page at once (the suggested class becomes the label); accepted pictures pooled over the
  run and seeds, and the share whose suggested class was the true one.
- Label issues: on each whole data set, 5% of the labels (seeded) are moved to another random
  class; :func:`label_quality` ranks the rows; recall = share of moved labels among the 10%
  lowest-quality rows, precision = share of those 10% that were moved (at most 50%). Also
  cleanlab's flagged set from :func:`find_issues` (precision / recall).
- Refresh: ``suggest`` + ``next_batch`` on ``--rows`` rows made from every data set's
  features (each row a real picture's features plus Gaussian noise of 5% of the features'
  spread; the classes of all sets kept apart), 10 labels per class, median of 3.

Prints progress, then a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tl_core.labeling.assist import (  # noqa: E402
    UNLABELLED,
    confident_pages,
    make_classifier,
    next_batch,
    reduce,
    small_blas,
    suggest,
)
from tl_core.labeling.issues import find_issues, label_quality  # noqa: E402

START_PER_CLASS = 3
TEST_SHARE = 0.25
SWAP_SHARE = 0.05
TOP_SHARE = 0.10


@dataclass
class Features:
    name: str
    vectors: np.ndarray  # (n, d) float32
    labels: np.ndarray  # (n,) int64
    classes: list[str]
    digest: str  # of the pictures' contents, to skip a set already run


def default_sets() -> list[Path]:
    shared = ROOT.parent / "shared" / "datasets"
    sets = sorted(p for p in shared.iterdir() if (p / "train").is_dir()) if shared.is_dir() else []
    return [*sets, ROOT / "assets" / "demo" / "fashion_mnist"]


def load(folder: Path, cache: Path) -> Features:
    """The folder's pooled features, from the cache when the folder did not change."""
    from tl_core.data.dataset import import_folder, source_fingerprint

    key = hashlib.sha256(f"{folder.resolve()}|{source_fingerprint(folder)}".encode()).hexdigest()
    name = folder.name if folder.name != "fashion_mnist" else "demo (assets/demo)"
    saved = cache / f"{key[:16]}.npz"
    if not saved.exists():
        from tl_core.analysis.transfer import picture_features

        print(f"  importing {folder} and computing its features ...", flush=True)
        manifest = import_folder(folder, cache / key[:16] / "data")
        items, vectors = picture_features(manifest, "efficientnet_lite0")
        labels = np.array([manifest.classes.index(i.label) for i in items], dtype=np.int64)
        digest = hashlib.sha256("".join(sorted(i.sha256 for i in items)).encode()).hexdigest()
        np.savez(saved, vectors=vectors, labels=labels, classes=manifest.classes, digest=digest)
    data = np.load(saved)
    return Features(
        name,
        data["vectors"],
        data["labels"],
        [str(c) for c in data["classes"]],
        str(data["digest"]),
    )


def split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    pool, test = train_test_split(
        np.arange(len(y)), test_size=TEST_SHARE, stratify=y, random_state=seed
    )
    return np.sort(pool), np.sort(test)


def start_labels(y: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.full(len(y), UNLABELLED, dtype=np.int64)
    for c in range(n_classes):
        rows = rng.choice(np.flatnonzero(y == c), START_PER_CLASS, replace=False)
        labels[rows] = c
    return labels


def test_accuracy(space: np.ndarray, labels: np.ndarray, test: tuple[np.ndarray, np.ndarray]):
    lab = labels >= 0
    with small_blas():
        clf = make_classifier().fit(space[lab], labels[lab])
        return float((clf.predict(test[0]) == test[1]).mean())


def curve(space, y, n_classes, test, step, seed, active: bool) -> tuple[list[int], list[float]]:
    """Label counts and test accuracies, batch by batch, until the pool is labelled."""
    rng = np.random.default_rng(seed)
    labels = start_labels(y, n_classes, rng)
    counts, accs = [], []
    while True:
        counts.append(int((labels >= 0).sum()))
        accs.append(test_accuracy(space, labels, test))
        if counts[-1] == len(y):
            return counts, accs
        if active:
            batch = next_batch(space, labels, suggest(space, labels, n_classes, seed), step, seed)
        else:
            unl = np.flatnonzero(labels < 0)
            batch = rng.choice(unl, min(step, unl.size), replace=False)
        labels[batch] = y[batch]


def with_pages(space, y, n_classes, step, seed) -> tuple[int, int, int]:
    """(accepted, right, typed) for a user who accepts every confident page before each batch."""
    labels = start_labels(y, n_classes, np.random.default_rng(seed))
    accepted = right = 0
    while (labels < 0).any():
        sugg = suggest(space, labels, n_classes, seed)
        for _, rows in confident_pages(sugg, labels):
            labels[rows] = sugg.label[rows]
            accepted += rows.size
            right += int((sugg.label[rows] == y[rows]).sum())
        if not (labels < 0).any():
            break
        sugg = suggest(space, labels, n_classes, seed)
        batch = next_batch(space, labels, sugg, step, seed)
        labels[batch] = y[batch]
    typed = len(y) - accepted
    return accepted, right, typed


def first_reach(counts: list[int], accs: np.ndarray, target: float) -> int:
    return counts[int(np.flatnonzero(accs >= target - 1e-12)[0])]


def run_set(data: Features, seeds: int, step: int) -> dict[str, object]:
    space = reduce(data.vectors)
    n_classes = len(data.classes)
    full, act, rnd, pages = [], [], [], np.zeros(3, dtype=np.int64)
    started = time.perf_counter()
    for seed in range(seeds):
        pool, test = split(data.labels, seed)
        y = data.labels[pool]
        held = (space[test], data.labels[test])
        counts, a = curve(space[pool], y, n_classes, held, step, seed, active=True)
        counts_r, r = curve(space[pool], y, n_classes, held, step, seed, active=False)
        assert counts == counts_r
        act.append(a)
        rnd.append(r)
        full.append(a[-1])
        pages += with_pages(space[pool], y, n_classes, step, seed)
        print(f"  seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    full_acc = float(np.mean(full))
    target = 0.95 * full_acc
    need_a = first_reach(counts, np.mean(act, axis=0), target)
    need_r = first_reach(counts, np.mean(rnd, axis=0), target)
    early = np.asarray(counts) <= len(pool) / 2
    return {
        "set": data.name,
        "pictures": len(data.labels),
        "classes": n_classes,
        "pool": len(pool),
        "start": START_PER_CLASS * n_classes,
        "full": full_acc,
        "active": need_a,
        "random": need_r,
        "ratio": need_r / need_a,
        "early_active": float(np.mean(act, axis=0)[early].mean()),
        "early_random": float(np.mean(rnd, axis=0)[early].mean()),
        "accepted": int(pages[0]),
        "right": int(pages[1]),
        "typed": int(pages[2]) / seeds,
        **issues_scores(space, data.labels, n_classes),
    }


def issues_scores(space: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float]:
    """Recall and precision of the lowest-quality 10% and of cleanlab's flagged set, after
    moving 5% of the labels to another class."""
    rng = np.random.default_rng(0)
    moved = rng.choice(len(y), max(1, round(SWAP_SHARE * len(y))), replace=False)
    noisy = y.copy()
    noisy[moved] = (y[moved] + rng.integers(1, n_classes, moved.size)) % n_classes
    quality = label_quality(space, noisy)
    top = np.argsort(np.nan_to_num(quality, nan=np.inf), kind="stable")
    top = top[: round(TOP_SHARE * len(y))]
    hit = np.isin(top, moved).sum()
    flagged = np.array([i.row for i in find_issues(space, noisy)], dtype=np.int64)
    caught = np.isin(flagged, moved).sum()
    return {
        "top_recall": hit / moved.size,
        "top_precision": hit / top.size,
        "flag_recall": caught / moved.size,
        "flag_precision": caught / max(1, flagged.size),
        "flagged": int(flagged.size),
    }


def refresh_time(sets: list[Features], rows: int) -> dict[str, float]:
    """Seconds of suggest + next_batch on ``rows`` jittered real rows, 10 labels per class."""
    rng = np.random.default_rng(0)
    offset, xs, ys = 0, [], []
    for data in sets:
        xs.append(data.vectors)
        ys.append(data.labels + offset)
        offset += len(data.classes)
    x, y = np.concatenate(xs), np.concatenate(ys)
    pick = rng.choice(len(y), rows, replace=len(y) < rows)
    x = x[pick] + rng.normal(0, 0.05 * x.std(axis=0), (rows, x.shape[1])).astype(np.float32)
    y = y[pick]
    t0 = time.perf_counter()
    space = reduce(x)
    t_reduce = time.perf_counter() - t0
    labels = np.full(rows, UNLABELLED, dtype=np.int64)
    for c in range(offset):
        mine = np.flatnonzero(y == c)
        labels[rng.choice(mine, min(10, mine.size), replace=False)] = c
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        sugg = suggest(space, labels, offset)
        next_batch(space, labels, sugg, 20)
        times.append(time.perf_counter() - t0)
    return {
        "rows": rows,
        "classes": offset,
        "labels": int((labels >= 0).sum()),
        "refresh": float(np.median(times)),
        "reduce": t_reduce,
    }


def table(results: list[dict[str, object]], step: int, seeds: int) -> str:
    head = (
        "| data set | pictures | classes | pool | full acc. | labels to 95%: active | random "
        "| random/active | mean acc. to half the pool: active | random "
        "| confident pages right | pictures in pages (typed) "
        "| swapped in lowest 10%: recall | precision | cleanlab flagged: recall | precision |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        share = r["right"] / r["accepted"] if r["accepted"] else float("nan")
        lines.append(
            f"| {r['set']} | {r['pictures']} | {r['classes']} | {r['pool']} | {r['full']:.3f} "
            f"| {r['active']} | {r['random']} | {r['ratio']:.2f}x "
            f"| {r['early_active']:.3f} | {r['early_random']:.3f} "
            f"| {share:.3f} ({r['right']}/{r['accepted']}) "
            f"| {r['accepted'] / seeds:.0f} ({r['typed']:.0f}) "
            f"| {r['top_recall']:.2f} | {r['top_precision']:.2f} "
            f"| {r['flag_recall']:.2f} | {r['flag_precision']:.2f} |"
        )
    lines.append(f"\n(batches of {step}, {seeds} seeds, start {START_PER_CLASS} per class)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="*", type=Path)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "tl_label_bench"
    )
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--rows", type=int, default=5000)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    sets, seen, results = [], {}, []
    for folder in args.datasets or default_sets():
        data = load(folder, args.cache)
        if data.digest in seen:
            print(f"{data.name}: the same pictures as {seen[data.digest]}, skipped", flush=True)
            continue
        seen[data.digest] = data.name
        sets.append(data)
        print(f"{data.name}: {len(data.labels)} pictures, {len(data.classes)} classes", flush=True)
        results.append(run_set(data, args.seeds, args.step))
    t = refresh_time(sets, args.rows)
    print()
    print(table(results, args.step, args.seeds))
    print(
        f"\nrefresh (suggest + next_batch of 20) at {t['rows']} rows, {t['classes']} classes, "
        f"{t['labels']} labels: {t['refresh']:.2f} s (median of 3); reduce once: "
        f"{t['reduce']:.2f} s"
    )


if __name__ == "__main__":
    main()
