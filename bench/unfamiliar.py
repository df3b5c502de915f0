"""Unfamiliar pictures: how well a run's check tells pictures of none of its classes from its
own, which score does it best, and what the check costs per guess.

    uv run --group test python bench/unfamiliar.py [--sets NAME ...] [--epochs N]
        [--fine-tune NAME ...] [--quick] [--keep DIR]

For each data set (``../shared/datasets/<name>/{train,test}``, the test folder as validation,
and the bundled demo set ``assets/demo/fashion_mnist/{train,val}``) it trains a run through the
product's own path (``python -m tl_core train --data ... --val ... --out ...`` in a fresh
process and workspace) with the Train page's defaults (head only, 20 epochs), and a
fine-tuned run (``--trainable-groups 2``) for the sets named by ``--fine-tune``. Per run:

- the run's own ``familiarity.json``: each class left out in turn (AUROC and share flagged),
  the shipped everyday pictures flagged, its own validation pictures flagged (cross-fitted);
- foreign pictures, scored by the trained model (``load_trained(run).outputs``): the other
  data sets' validation pictures (a set that shares any picture with this one is skipped: the
  demo set is fashion_mnist_demo50) and the 70 shipped everyday pictures (less any photo named
  as one of the set's classes: the textures were cut from brick, grass and gravel). Their
  AUROC against the run's validation scores, and the share above the run's threshold;
- the same features under other scores: the shipped one (the nearest training picture's
  cosine distance in units of its class's spread), the plain cosine distance to the k-th
  nearest (k = 1 and 5), the mean of the 10 nearest, Mahalanobis with one Ledoit-Wolf
  covariance (scikit-learn) on unit features, and energy and the top softmax probability on
  the run's logits (for a class left out, on a logistic-regression probe refitted without
  it): foreign AUROC, the share flagged at each score's own 95%-of-validation threshold,
  left-out AUROC;
- the cost per guess: ``predict`` on the run without its check against ``guess`` with it, one
  picture at a time on one thread (as the live route answers), interleaved.

Then the live route (``tl_ui.live_route``, the handler the app mounts) served alone by
uvicorn in a second process, no browser: the same camera JPEG POSTed in alternating blocks for
the run with its check and for a copy of the run without ``familiarity.npz`` (answered as
before the check existed). Guesses per second of each and their ratio. Last, the search
alone: one picture's nearest row among 500 and 4,000 (torch, numpy, scikit-learn).

``--keep DIR`` keeps the runs there, and a later call with the same folder measures them
again without training.

Prints one JSON line per run, the method comparison, the cost lines, and a markdown table with
the target lines at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cli_run import ROOT, train_cli
from PIL import Image

from tl_core.data.dataset import IMAGE_SUFFIXES
from tl_core.training import familiarity
from tl_core.training.familiarity import auroc, threshold_for, unit

sys.path.insert(0, str(ROOT / "tests"))
from browserflags import free_port, wait_until_listening

SHARED = ROOT.parent / "shared" / "datasets"
DEMO = ROOT / "assets" / "demo" / "fashion_mnist"
FINE_TUNE_GROUPS = 2
ACCEPT = familiarity.ACCEPT
Score = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (features, logits) -> score


@dataclass(frozen=True)
class DataSet:
    name: str
    train: Path
    val: Path

    def files(self, split: str) -> tuple[list[Path], list[str]]:
        """Every picture of ``split`` ("train" or "val") and its class folder's name."""
        root = self.train if split == "train" else self.val
        paths, labels = [], []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(path)
                    labels.append(folder.name)
        return paths, labels

    def digests(self) -> set[str]:
        return {
            hashlib.sha1(p.read_bytes()).hexdigest()
            for split in ("train", "val")
            for p in self.files(split)[0]
        }


def all_sets() -> dict[str, DataSet]:
    sets = {}
    if SHARED.is_dir():
        for root in sorted(p for p in SHARED.iterdir() if (p / "train").is_dir()):
            sets[root.name] = DataSet(root.name, root / "train", root / "test")
    sets["demo"] = DataSet("demo", DEMO / "train", DEMO / "val")
    return sets


# ------------------------------------------------------------------------------ the scores


def _kth(k: int, mean: bool) -> Callable[[np.ndarray, np.ndarray], Score]:
    """Cosine distance to the k-th nearest training picture (or the mean of the k nearest)."""

    def fit(train: np.ndarray, _labels: np.ndarray) -> Score:
        bank = unit(train)

        def score(x: np.ndarray, _logits: np.ndarray) -> np.ndarray:
            sim = unit(x) @ bank.T
            kk = min(k, bank.shape[0])
            top = -np.sort(-sim, axis=1)[:, :kk]
            return 1.0 - (top.mean(1) if mean else top[:, -1])

        return score

    return fit


def _shipped(train: np.ndarray, labels: np.ndarray) -> Score:
    """The product's own score (:mod:`tl_core.training.familiarity`): the smallest cosine
    distance to a training picture, in units of that picture's class's spread."""
    bank = unit(train)
    scale = familiarity.class_scales(bank, labels, int(labels.max()) + 1)

    def score(x: np.ndarray, _logits: np.ndarray) -> np.ndarray:
        return familiarity.nearest_distance(x, bank, scale[labels])[0]

    return score


def _mahalanobis(train: np.ndarray, labels: np.ndarray) -> Score:
    """Smallest squared Mahalanobis distance to a class mean, one shared Ledoit-Wolf
    covariance of the residuals, on unit features (Lee et al. 2018)."""
    from sklearn.covariance import LedoitWolf

    x = unit(train).astype(np.float64)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    residuals = x - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf().fit(residuals).precision_

    def score(q: np.ndarray, _logits: np.ndarray) -> np.ndarray:
        u = unit(q).astype(np.float64)
        d = [np.einsum("ij,jk,ik->i", u - m, precision, u - m) for m in means]
        return np.min(d, axis=0)

    return score


def _energy(z: np.ndarray) -> np.ndarray:
    """Negative free energy, -logsumexp(z) (Liu et al. 2020): higher is less familiar."""
    m = z.max(1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(z - m).sum(1)))


def _msp(z: np.ndarray) -> np.ndarray:
    """Minus the top softmax probability (Hendrycks and Gimpel 2017)."""
    p = np.exp(z - z.max(1, keepdims=True))
    return -(p / p.sum(1, keepdims=True)).max(1)


def _on_logits(of: Callable[[np.ndarray], np.ndarray]) -> Callable[..., Score]:
    """A score of the run's own logits; ``probe=True`` (a class left out, which the run's
    head knows): the logits of a logistic regression refitted on the other classes."""

    def fit(train: np.ndarray, labels: np.ndarray, probe: bool = False) -> Score:
        if not probe:
            return lambda _x, logits: of(logits)
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(max_iter=2000).fit(unit(train), labels)

        def score(x: np.ndarray, _logits: np.ndarray) -> np.ndarray:
            z = clf.decision_function(unit(x))
            return of(np.stack([-z / 2, z / 2], 1) if z.ndim == 1 else z)

        return score

    return fit


METHODS: dict[str, tuple[Callable[..., Score], bool]] = {  # name -> (fit, on logits)
    "nearest, in class spreads (shipped)": (_shipped, False),
    "nearest, k=1": (_kth(1, False), False),
    "5th nearest": (_kth(5, False), False),
    "mean of 10 nearest": (_kth(10, True), False),
    "Mahalanobis (Ledoit-Wolf)": (_mahalanobis, False),
    "energy (logits)": (_on_logits(_energy), True),
    "top probability (logits)": (_on_logits(_msp), True),
}


@dataclass
class Features:
    """A run's pooled features and logits of its own pictures and of the foreign ones."""

    train_x: np.ndarray
    train_y: np.ndarray
    train_z: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    val_z: np.ndarray
    foreign_x: np.ndarray
    foreign_z: np.ndarray


def compare(f: Features) -> dict[str, dict[str, float]]:
    """Each score's foreign AUROC, foreign share flagged at its own 95%-of-validation
    threshold, and left-out AUROC and share flagged (mean over classes)."""
    out = {}
    for name, (fit, on_logits) in METHODS.items():
        score = fit(f.train_x, f.train_y)
        val = score(f.val_x, f.val_z)
        foreign = score(f.foreign_x, f.foreign_z)
        threshold = threshold_for(val, ACCEPT)
        aucs, flagged = [], []
        for c in np.unique(f.train_y):
            keep, known = f.train_y != c, f.val_y != c
            if on_logits and len(np.unique(f.train_y[keep])) < 2:
                continue  # a probe needs two classes
            probe = {"probe": True} if on_logits else {}
            s = fit(f.train_x[keep], f.train_y[keep], **probe)
            known_s = s(f.val_x[known], f.val_z[known])
            left_x = np.concatenate([f.train_x[~keep], f.val_x[~known]])
            left_z = np.concatenate([f.train_z[~keep], f.val_z[~known]])
            left_s = s(left_x, left_z)
            aucs.append(auroc(known_s, left_s))
            flagged.append(float((left_s > threshold_for(known_s, ACCEPT)).mean()))
        out[name] = {
            "foreign_auroc": auroc(val, foreign) or 0.0,
            "foreign_flagged": float((foreign > threshold).mean()),
            "left_out_auroc": float(np.mean(aucs)) if aucs else float("nan"),
            "left_out_flagged": float(np.mean(flagged)) if flagged else float("nan"),
        }
    return out


# ------------------------------------------------------------------------------ one run


@dataclass
class RunResult:
    set: str
    kind: str
    run_dir: Path
    classes: int
    train_images: int
    val_images: int
    val_accuracy: float
    near_duplicates: dict
    report: dict
    foreign: dict[str, dict[str, float]] = field(default_factory=dict)
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    bank_check: float = 0.0  # largest gap between the loaded model's validation scores and
    # those the run saved (sorted): the check loads as it was built


def train(data: DataSet, out: Path, epochs: int, groups: int) -> dict:
    extra = ["--quiet", "--out", str(out), "--epochs", str(epochs)]
    return train_cli(data.train, data.val, *extra, "--trainable-groups", str(groups))


def everyday(classes: Sequence[str]) -> list[tuple[str, Image.Image]]:
    """The shipped everyday pictures, less the photos named as one of ``classes``."""
    from tl_core.data import foreign

    named = {c.lower() for c in classes}
    return [(n, img) for n, img in foreign.pictures() if n.split(" ")[0].lower() not in named]


def foreign_pictures(
    data: DataSet, sets: dict[str, DataSet], classes: Sequence[str]
) -> dict[str, list[Any]]:
    """Source -> pictures of none of the run's classes."""
    seen = data.digests()
    out: dict[str, list[Any]] = {}
    for other in sets.values():
        theirs = other.digests()
        if theirs & seen:
            continue  # this set itself, or the same pictures as one already in
        seen |= theirs
        out[other.name] = list(other.files("val")[0])
    out["everyday"] = [img for _, img in everyday(classes)]
    return out


def per_picture_ms(
    with_check: Any, without: Any, pictures: Sequence[Path], warmup: int = 5
) -> dict[str, float]:
    """Median ms of ``without.predict([p])`` and ``with_check.guess([p])``, interleaved (the
    order swapped every picture), on one thread as the live route runs them."""
    from tl_core.models.device import one_thread

    plain: list[float] = []
    checked: list[float] = []
    with one_thread():
        for p in pictures[:warmup]:
            without.predict([p])
            with_check.guess([p])
        for k, p in enumerate(pictures):
            calls = [
                (plain, lambda p=p: without.predict([p])),
                (checked, lambda p=p: with_check.guess([p])),
            ]
            for times, call in calls if k % 2 == 0 else calls[::-1]:
                start = time.perf_counter()
                call()
                times.append(1000 * (time.perf_counter() - start))
    a, b = statistics.median(plain), statistics.median(checked)
    return {"ms_predict": a, "ms_guess": b, "ratio": b / a, "pictures": len(pictures)}


def without_check(run_dir: Path, dest: Path) -> Path:
    """A copy of the run without ``familiarity.npz``: what a run trained before the check
    existed looks like (best.pt and the run's records only)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("best.pt", "run.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    return dest


def measure(
    data: DataSet,
    kind: str,
    run_dir: Path,
    summary: dict,
    sets: dict[str, DataSet],
    work: Path,
    timing_pictures: int,
) -> RunResult:
    from tl_core.training.inference import load_trained

    model = load_trained(run_dir)
    fam = model.familiarity
    rep = familiarity.load_report(run_dir)
    assert fam is not None and rep is not None, f"{run_dir} has no unfamiliar check"
    index = {c: k for k, c in enumerate(model.classes)}
    result = RunResult(
        data.name,
        kind,
        run_dir,
        len(model.classes),
        int(summary["train_images"]),
        int(summary["val_images"]),
        float(summary["val_accuracy"]),
        summary.get("near_duplicates") or {},
        rep.to_json(),
    )

    def run_outputs(pictures: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z, x, far = model.outputs(list(pictures))
        assert far is not None
        return z, x, far

    train_paths, train_names = data.files("train")
    val_paths, val_names = data.files("val")
    train_z, train_x, _ = run_outputs(train_paths)
    val_z, val_x, val_far = run_outputs(val_paths)
    result.bank_check = float(np.abs(np.sort(val_far) - np.sort(fam.val_scores)).max())
    sources = foreign_pictures(data, sets, model.classes)
    foreign_z, foreign_x, foreign_far = [], [], []
    for source, pictures in sources.items():
        z, x, far = run_outputs(pictures)
        foreign_z.append(z)
        foreign_x.append(x)
        foreign_far.append(far)
        result.foreign[source] = {
            "images": len(pictures),
            "auroc": auroc(fam.val_scores, far) or 0.0,
            "flagged": float((far > fam.threshold).mean()),
        }
    far_all = np.concatenate(foreign_far)
    result.foreign["all"] = {
        "images": len(far_all),
        "auroc": auroc(fam.val_scores, far_all) or 0.0,
        "flagged": float((far_all > fam.threshold).mean()),
    }
    features = Features(
        train_x,
        np.array([index[n] for n in train_names]),
        train_z,
        val_x,
        np.array([index[n] for n in val_names]),
        val_z,
        np.concatenate(foreign_x),
        np.concatenate(foreign_z),
    )
    result.methods = compare(features)
    plain = load_trained(without_check(run_dir, work / f"{data.name}-{kind}-plain"))
    assert plain.familiarity is None
    step = max(1, len(val_paths) // timing_pictures)
    result.cost = per_picture_ms(model, plain, val_paths[::step][:timing_pictures])
    return result


# ------------------------------------------------------------------------------ the route


def serve(port: int) -> None:
    """The live route alone (``--serve``): tokens and runs from TL_BENCH_GRANTS (JSON)."""
    import uvicorn
    from starlette.applications import Starlette

    from tl_ui.live_route import grant, routes

    for token, run_dir, unfamiliar in json.loads(os.environ["TL_BENCH_GRANTS"]):
        grant(token, run_dir, 1.0, 0.5, unfamiliar)
    uvicorn.run(Starlette(routes=routes()), host="127.0.0.1", port=port, log_level="warning")


def route_rates(
    run_dir: Path, plain_dir: Path, jpeg: bytes, rounds: int, seconds: float, log: Path
) -> dict[str, Any]:
    """Guesses a second the route gives with the check and without it, measured in
    alternating blocks of ``seconds`` against one server process."""
    from tl_ui.live_route import ROUTE, TOKEN_HEADER

    fam = familiarity.load(run_dir)
    assert fam is not None
    tokens = {"with": secrets.token_urlsafe(16), "without": secrets.token_urlsafe(16)}
    grants = [
        [tokens["with"], str(run_dir), fam.threshold],
        [tokens["without"], str(plain_dir), None],
    ]
    port = free_port()
    env = {**os.environ, "TL_BENCH_GRANTS": json.dumps(grants), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--serve", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_listening(proc, port, log)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def ask(mode: str) -> dict:
            headers = {"Content-Type": "image/jpeg", TOKEN_HEADER: tokens[mode]}
            conn.request("POST", ROUTE, body=jpeg, headers=headers)
            res = conn.getresponse()
            body = json.loads(res.read())
            assert res.status == 200 and "bars" in body, (res.status, body)
            assert (body["unfamiliarity"] is not None) == (mode == "with"), body
            return body

        for mode in ("with", "without"):  # loads each model once
            for _ in range(5):
                ask(mode)
        counts = {"with": 0, "without": 0}
        spent = {"with": 0.0, "without": 0.0}
        ratios = []
        for r in range(rounds):
            block = {}
            for mode in ("with", "without") if r % 2 == 0 else ("without", "with"):
                n, start = 0, time.monotonic()
                while time.monotonic() - start < seconds:
                    ask(mode)
                    n += 1
                elapsed = time.monotonic() - start
                counts[mode] += n
                spent[mode] += elapsed
                block[mode] = n / elapsed
            ratios.append(block["with"] / block["without"])
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rate = {m: counts[m] / spent[m] for m in counts}
    return {
        "run": str(run_dir),
        "per_s_with": rate["with"],
        "per_s_without": rate["without"],
        "ratio": rate["with"] / rate["without"],
        "block_ratios": [round(x, 3) for x in ratios],
        "rounds": rounds,
        "seconds_per_block": seconds,
    }


def camera_jpeg(path: Path) -> bytes:
    """A picture of the data as a 320x240 camera JPEG (as bench/live_rate.py sends)."""
    out = io.BytesIO()
    Image.open(path).convert("RGB").resize((320, 240)).save(out, "JPEG", quality=80)
    return out.getvalue()


# ------------------------------------------------------------------------------ the search


def search_ms(rows: int, dim: int = 1280, repeat: int = 200) -> dict[str, float]:
    """Median ms of one picture's nearest-row search in a bank of ``rows`` unit rows, each on
    one thread (as the route answers): torch (the app's module), numpy (the product alone,
    on a float32 copy), and scikit-learn's NearestNeighbors (brute force, cosine)."""
    import torch
    from sklearn.neighbors import NearestNeighbors

    from tl_core.training.familiar_pass import NearestDistance

    rng = np.random.default_rng(0)
    bank = unit(rng.normal(size=(rows, dim))).astype(np.float16)
    q = rng.normal(size=(1, dim)).astype(np.float32)
    module = NearestDistance(bank)
    bank32 = bank.astype(np.float32)
    qt = torch.from_numpy(q)
    nn_index = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(bank)

    def median_ms(call: Callable[[], object]) -> float:
        for _ in range(10):
            call()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            call()
            times.append(1000 * (time.perf_counter() - start))
        return statistics.median(times)

    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    from tl_core.models.device import one_thread

    with one_thread(), threadpool_limits(1), torch.inference_mode():
        return {
            "rows": rows,
            "torch_ms": median_ms(lambda: module(qt)),
            "numpy_ms": median_ms(lambda: (unit(q) @ bank32.T).max(1)),
            "sklearn_ms": median_ms(lambda: nn_index.kneighbors(q)),
        }


# ------------------------------------------------------------------------------ output


def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.0f}%"


def _num(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x:.3f}"


def table(results: list[RunResult]) -> str:
    head = (
        "| set | run | classes | train / val | accuracy | left-out AUROC | left-out flagged "
        "| foreign AUROC | foreign flagged | everyday flagged (run's own) "
        "| own validation flagged | ms per guess with / without |"
    )
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in results:
        rep, fo = r.report, r.foreign["all"]
        lines.append(
            f"| {r.set} | {r.kind} | {r.classes} | {r.train_images} / {r.val_images} "
            f"| {_pct(r.val_accuracy)} | {_num(rep['left_out_auroc'])} "
            f"| {_pct(rep['left_out_flagged'])} | {_num(fo['auroc'])} "
            f"| {_pct(fo['flagged'])} ({fo['images']}) | {_pct(rep['foreign_flagged'])} "
            f"| {_pct(rep['val_flagged'])} "
            f"| {r.cost['ms_guess']:.1f} / {r.cost['ms_predict']:.1f} |"
        )
    return "\n".join(lines)


def methods_table(results: list[RunResult]) -> str:
    head = "| score | " + " | ".join(f"{r.set} ({r.kind})" for r in results) + " |"
    lines = [
        "foreign AUROC / foreign flagged at 95% of validation / left-out AUROC",
        "",
        head,
        "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|",
    ]
    for name in METHODS:
        cells = []
        for r in results:
            m = r.methods[name]
            cells.append(
                f"{m['foreign_auroc']:.3f} / {_pct(m['foreign_flagged'])} / "
                f"{_num(m['left_out_auroc'])}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(misses: list[str]) -> str:
    return "no (" + "; ".join(misses) + ")" if misses else "yes"


def main(argv: list[str]) -> int:
    sets = all_sets()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(sets), default=sorted(sets))
    parser.add_argument("--epochs", type=int, default=None, help="default: the Train page's")
    parser.add_argument(
        "--fine-tune",
        nargs="*",
        default=None,
        help=f"sets that also get a run with {FINE_TUNE_GROUPS} groups learning "
        "(default: fashion_mnist_demo50, else demo)",
    )
    parser.add_argument("--quick", action="store_true", help="3 epochs, shorter timings")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    from tl_core.config import TrainConfig

    epochs = args.epochs or (3 if args.quick else TrainConfig().epochs)
    fine = args.fine_tune
    if fine is None:
        fine = [next(n for n in ("fashion_mnist_demo50", "demo") if n in sets)]
    timing_pictures = 20 if args.quick else 50
    rounds, seconds = (2, 3.0) if args.quick else (6, 5.0)
    work = Path(tempfile.mkdtemp(prefix="tl-unfamiliar-"))
    keep = args.keep or work / "runs"
    started = time.strftime("%Y-%m-%d %H:%M")
    results: list[RunResult] = []
    try:
        jobs = [(n, "head only", 0) for n in args.sets]
        jobs += [(n, f"{FINE_TUNE_GROUPS} groups", FINE_TUNE_GROUPS) for n in fine if n in sets]
        for name, kind, groups in jobs:
            data = sets[name]
            run_dir = keep / f"{name}-{groups}"
            if not (run_dir / familiarity.REPORT_FILE).is_file():
                shutil.rmtree(run_dir, ignore_errors=True)
                summary = train(data, run_dir, epochs, groups)
                (run_dir / "bench-summary.json").write_text(json.dumps(summary))
            summary = json.loads((run_dir / "bench-summary.json").read_text())
            result = measure(data, kind, run_dir, summary, sets, work, timing_pictures)
            results.append(result)
            line = {k: v for k, v in vars(result).items() if k != "run_dir"}
            print(json.dumps(line, default=str), flush=True)
        route_run = next((r for r in results if r.set == "demo"), results[0])
        plain = without_check(route_run.run_dir, work / "route-plain")
        jpeg = camera_jpeg(sets[route_run.set].files("val")[0][0])
        load = os.getloadavg()[0]
        route = route_rates(route_run.run_dir, plain, jpeg, rounds, seconds, work / "route.log")
        route["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        print(json.dumps(route), flush=True)
        search = [search_ms(n) for n in (500, familiarity.BANK_MAX)]
        for s in search:
            print(json.dumps({"search": {k: round(v, 3) for k, v in s.items()}}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the runs too, unless kept elsewhere
    print()
    print(f"Unfamiliar pictures, {started}, {epochs} epochs, cpu count {os.cpu_count()}")
    print()
    print(table(results))
    print()
    print(methods_table(results))
    print()
    for r in results:
        c = r.cost
        print(
            f"cost {r.set} ({r.kind}): predict without the check {c['ms_predict']:.1f} ms, "
            f"guess with it {c['ms_guess']:.1f} ms per picture (ratio {c['ratio']:.3f}, "
            f"median of {c['pictures']})"
        )
    print(
        f"live route ({route_run.set}, {route_run.kind}): {route['per_s_with']:.1f} guesses/s "
        f"with the check, {route['per_s_without']:.1f} without, ratio {route['ratio']:.3f} "
        f"(blocks: {route['block_ratios']})"
    )
    for s in search:
        print(
            f"search, one picture against {s['rows']} rows: torch {s['torch_ms']:.3f} ms, "
            f"numpy {s['numpy_ms']:.3f} ms, scikit-learn {s['sklearn_ms']:.3f} ms"
        )
    print()
    foreign_miss = [
        f"{r.set} ({r.kind}) {_pct(r.foreign['all']['flagged'])}"
        for r in results
        if r.foreign["all"]["flagged"] < 0.8
    ]
    val_miss = [
        f"{r.set} ({r.kind}) {round(r.report['val_flagged'] * r.val_images)} of {r.val_images}"
        for r in results
        if r.report["val_flagged"] > 0.05
    ]
    print(f"foreign flagged >= 80%: {_verdict(foreign_miss)}")
    print(f"own validation flagged <= 5%: {_verdict(val_miss)}")
    ratio = f"ratio {route['ratio']:.3f}"
    print(f"live route within 10%: {_verdict([] if route['ratio'] >= 0.9 else [ratio])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
