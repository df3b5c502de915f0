"""The 2D map of the pictures: PCA, UMAP, openTSNE and PaCMAP side by side.

Every method gets the same input, the pretrained pooled features (EfficientNet-Lite0, 1280
numbers per picture) reduced by PCA to 50 dimensions (:func:`projection.reduce_dims`; PCA
shows the first two of them). The ``opentsne`` row runs the app's own
:func:`tl_core.labeling.projection.project` (250 early + 250 iterations), ``opentsne-750``
the same with openTSNE's default length (250 + 500); the others run their library's
defaults with a fixed seed (umap-learn's ``UMAP``, pacmap's ``PaCMAP``). openTSNE imports
pynndescent (numba) whenever it is installed, as it is here for umap-learn; the app does not
install it, so the openTSNE workers run without it.

- On the real sets (``../shared/datasets/*/train`` and the bundled demo set):
  trustworthiness (scikit-learn, 10 neighbours, against the 1280-d features), how many of
  each picture's 10 nearest neighbours in the features stay among its 10 nearest on the map,
  the 5-NN accuracy of the labels on the map (5-fold) next to the same in the features, the
  time of a warm run, and whether a second run with the same seed gives the same map.
- Start-up, each in a fresh process on the demo set (700 pictures): import and the first map
  with an empty numba cache (a fresh install: numba compiles UMAP's and PaCMAP's code), then
  again with the cache that run left (a later process on the same server).
- Scale: 5,000 and 20,000 rows made from the real features of all four sets (1,599 pictures,
  40 set:class labels): each row is a real picture mixed with a random picture of its class
  (the other's weight uniform in [0, 0.5]) plus Gaussian noise of 5% of each feature's
  spread, clipped at 0 like the features. Wall and CPU seconds (after a warm-up run), the
  memory the map takes (peak resident memory while mapping, above what was resident
  before), the 10-neighbour overlap (against the 50-d input) and the 5-NN label accuracy on
  the map (3-fold).
- The install size of what each method adds to numpy, scipy and scikit-learn.

    uv run --group test --group bench python bench/map_projection.py [--work DIR]
        [--methods pca,umap,opentsne,pacmap] [--sizes 5000,20000]

``--work`` keeps the imported sets and their features for the next run (default: a folder
in the temporary directory). Prints progress, then markdown tables. Every measurement runs
in a process of its own (``--worker``), so imports, compiled code and memory do not leak
from one method into another.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "datasets"
SETS = {
    "fashion": SHARED / "fashion_mnist_demo50" / "train",
    "omniglot": SHARED / "omniglot_tagalog" / "train",
    "textures": SHARED / "skimage_textures" / "train",
    "demo": ROOT / "assets" / "demo" / "fashion_mnist",
}
MODEL = "efficientnet_lite0"
METHODS = {  # method -> (library to import, the packages it adds to the app)
    "pca": ("sklearn", ()),
    "umap": ("umap", ("umap-learn", "pynndescent", "numba", "llvmlite")),
    "opentsne": ("openTSNE", ("openTSNE",)),
    "opentsne-750": ("openTSNE", ("openTSNE",)),
    "pacmap": ("pacmap", ("pacmap", "numba", "llvmlite", "faiss-cpu")),
}
K = 10  # neighbours for trustworthiness and the neighbour overlap


# --- the methods ---------------------------------------------------------------------


def embed(method: str, vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, 2) map of ``vectors`` by ``method`` (raw 2D coordinates, any scale)."""
    from tl_core.labeling import projection

    if method == "opentsne":
        return projection.project(vectors, seed=seed)
    if method == "opentsne-750":  # openTSNE's default length: 250 early + 500 iterations
        return projection.project(vectors, seed=seed, iterations=500)
    reduced = projection.reduce_dims(vectors, seed=seed)
    if method == "pca":
        return reduced[:, :2]
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(reduced)
    if method == "pacmap":
        import pacmap

        return pacmap.PaCMAP(n_components=2, random_state=seed, apply_pca=False).fit_transform(
            reduced
        )
    raise ValueError(f"unknown method {method}")


# --- measures ----------------------------------------------------------------------------


def overlap(high: np.ndarray, low: np.ndarray, k: int = K) -> float:
    """Mean share of each row's k nearest neighbours in ``high`` that are among its k
    nearest in ``low``."""
    from sklearn.neighbors import NearestNeighbors

    a = NearestNeighbors(n_neighbors=k).fit(high).kneighbors(return_distance=False)
    b = NearestNeighbors(n_neighbors=k).fit(low).kneighbors(return_distance=False)
    return float(np.mean([len(set(p) & set(q)) / k for p, q in zip(a, b, strict=True)]))


def label_accuracy(x: np.ndarray, labels: np.ndarray, folds: int = 5) -> float:
    """Cross-validated 5-NN accuracy of the labels from the coordinates ``x``."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    return float(cross_val_score(KNeighborsClassifier(5), x, labels, cv=cv).mean())


def memory_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak since the last :func:`reset_peak`) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Start VmHWM again from the resident memory now (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def timed(method: str, vectors: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The map, its wall seconds and the process's CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    xy = embed(method, vectors)
    return xy, time.perf_counter() - wall, time.process_time() - cpu


def scaled_rows(sets: dict[str, Path], n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows made from the real features (see the module's docstring) and their labels."""
    vectors, labels = [], []
    for name, path in sets.items():
        data = np.load(path)
        vectors.append(data["vectors"])
        labels += [f"{name}:{label}" for label in data["labels"]]
    real, real_labels = np.concatenate(vectors), np.array(labels)
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(real), n)
    by_label = {lab: np.flatnonzero(real_labels == lab) for lab in set(labels)}
    second = np.array([rng.choice(by_label[real_labels[i]]) for i in first])
    weight = rng.uniform(0.0, 0.5, (n, 1))
    noise = rng.normal(0.0, 0.05, (n, real.shape[1])) * real.std(axis=0)
    rows = (1 - weight) * real[first] + weight * real[second] + noise
    return np.maximum(rows, 0).astype(np.float32), real_labels[first]


# --- workers (each in a fresh process) ------------------------------------------------


def work_start(method: str, path: str) -> dict[str, float]:
    """Import the library, then the first and a second map of one set."""
    started = time.perf_counter()
    importlib.import_module(METHODS[method][0])
    imported = time.perf_counter()
    vectors = np.load(path)["vectors"]
    embed(method, vectors)
    first = time.perf_counter()
    embed(method, vectors)
    return {
        "import_s": imported - started,
        "cold_s": first - started,
        "warm_s": time.perf_counter() - first,
    }


def work_quality(method: str, paths: dict[str, str]) -> dict[str, dict[str, float]]:
    """Quality, warm time and determinism on each real set."""
    from sklearn.manifold import trustworthiness

    embed(method, np.random.default_rng(0).normal(size=(200, 20)).astype(np.float32))
    out = {}
    for name, path in paths.items():
        data = np.load(path)
        vectors, labels = data["vectors"], data["labels"]
        first = embed(method, vectors)
        xy, wall, _ = timed(method, vectors)
        out[name] = {
            "warm_s": wall,
            "same": float(np.array_equal(first, xy)),
            "trust": float(trustworthiness(vectors, xy, n_neighbors=K)),
            "overlap": overlap(vectors, xy),
            "acc_2d": label_accuracy(xy, labels),
            "acc_features": label_accuracy(vectors, labels),
        }
        print(f"    {method} {name}: {json.dumps(rounded(out[name]))}", file=sys.stderr)
    return out


def work_scale(method: str, paths: dict[str, str], n: int) -> dict[str, float]:
    """Time and memory of one map of ``n`` rows built from the real features."""
    from tl_core.labeling import projection

    rows, labels = scaled_rows({k: Path(v) for k, v in paths.items()}, n)
    # warm up (numba compiles on first use); UMAP switches to pynndescent from 4,096 rows
    embed(method, rows[: min(n, 4200 if method == "umap" else 300)])
    resident = memory_mb("VmRSS")
    reset_peak()
    xy, wall, cpu = timed(method, rows)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_mb": memory_mb("VmHWM") - resident,
        "overlap": overlap(projection.reduce_dims(rows), xy),
        "acc_2d": label_accuracy(xy, labels, folds=3),
    }


def run_worker(job: dict, env: dict[str, str] | None = None) -> dict:
    """Run one worker job in a fresh Python process; its JSON answer."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    sys.stderr.write("".join(line + "\n" for line in proc.stderr.splitlines() if "    " in line))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Absent(importlib.abc.MetaPathFinder):
    """Makes ``import pynndescent`` fail, as in the app's install."""

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name.partition(".")[0] == "pynndescent":
            raise ModuleNotFoundError(f"No module named {name!r}")


def worker(job: dict) -> None:
    warnings.filterwarnings("ignore")
    if job["method"].startswith("opentsne"):
        sys.meta_path.insert(0, Absent())
    kind, method = job["kind"], job["method"]
    if kind == "start":
        out: object = work_start(method, job["path"])
    elif kind == "quality":
        out = work_quality(method, job["paths"])
    else:
        out = work_scale(method, job["paths"], job["n"])
    print(json.dumps(out))


# --- the run -------------------------------------------------------------------------


def rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in d.items()}


def features(work: Path) -> dict[str, str]:
    """Import each set once into ``work`` and save its pooled features; the .npz paths."""
    from tl_core.analysis.transfer import picture_features
    from tl_core.data.dataset import DatasetManifest, import_folder

    paths = {}
    for name, folder in SETS.items():
        out = work / f"{name}.npz"
        if not out.is_file():
            if not folder.is_dir():
                print(f"skipping {name}: {folder} not found", file=sys.stderr)
                continue
            root = work / name
            if (root / "manifest.json").is_file():
                manifest = DatasetManifest.load(root)
            else:
                manifest = import_folder(folder, root)
            items, vectors = picture_features(manifest, MODEL)
            labels = np.array([i.label or "" for i in items])
            np.savez(out, vectors=vectors, labels=labels)
        paths[name] = str(out)
        print(f"features: {name} {np.load(out)['vectors'].shape}", file=sys.stderr)
    return paths


def install_mb(packages: tuple[str, ...]) -> float:
    """Installed size of the packages (their files on disk)."""
    total = 0
    for name in packages:
        dist = importlib.metadata.distribution(name)
        total += sum(f.locate().stat().st_size for f in dist.files or () if f.locate().is_file())
    return total / 1024**2


def measure(method: str, paths: dict[str, str], sizes: list[int]) -> dict:
    """Every measurement of one method."""
    result: dict = {"install_mb": install_mb(METHODS[method][1])}
    with tempfile.TemporaryDirectory() as cache:
        env = {"NUMBA_CACHE_DIR": cache}
        result["fresh"] = run_worker(
            {"kind": "start", "method": method, "path": paths["demo"]}, env
        )
        result["cached"] = run_worker(
            {"kind": "start", "method": method, "path": paths["demo"]}, env
        )
    print(f"  {method} start: {result['fresh']} then {result['cached']}", file=sys.stderr)
    result["quality"] = run_worker({"kind": "quality", "method": method, "paths": paths})
    for n in sizes:
        job = {"kind": "scale", "method": method, "paths": paths, "n": n}
        result[n] = run_worker(job)
        print(f"  {method} n={n}: {rounded(result[n])}", file=sys.stderr)
    return result


def tables(results: dict[str, dict], sizes: list[int]) -> str:
    """The markdown tables."""
    sets = list(next(iter(results.values()))["quality"])
    first = next(iter(results.values()))["quality"]
    head = " / ".join(sets)
    lines = [
        f"Quality on the real sets ({head}); label accuracy in the features: "
        + " / ".join(f"{first[s]['acc_features']:.2f}" for s in sets),
        "",
        "| method | trustworthiness | 10-NN kept | label 5-NN accuracy on the map "
        "| warm s | same map twice |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        q = r["quality"]

        def cell(key: str, fmt: str = ".2f", q: dict = q) -> str:
            return " / ".join(format(q[s][key], fmt) for s in sets)

        same = "yes" if all(q[s]["same"] for s in sets) else "no"
        lines.append(
            f"| {method} | {cell('trust')} | {cell('overlap')} | {cell('acc_2d')} "
            f"| {cell('warm_s', '.1f')} | {same} |"
        )
    lines += ["", "Start-up and scale (wall s, CPU s in brackets)", ""]
    cols = ["method", "adds (MB installed)", "import / first map, empty numba cache"]
    cols += ["first map, cached", "warm (700 rows)", *(f"{n:,} rows" for n in sizes)]
    cols += [f"MB, 10-NN kept, label acc at {sizes[-1]:,}"] if sizes else []
    lines += ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for method, r in results.items():
        f, c = r["fresh"], r["cached"]
        row = [method, f"{r['install_mb']:.0f}", f"{f['import_s']:.1f} / {f['cold_s']:.1f}"]
        row += [f"{c['cold_s']:.1f}", f"{c['warm_s']:.1f}"]
        row += [f"{r[n]['wall_s']:.1f} ({r[n]['cpu_s']:.1f})" for n in sizes]
        if sizes:
            big = r[sizes[-1]]
            row.append(f"{big['peak_mb']:.0f}, {big['overlap']:.2f}, {big['acc_2d']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "map_bench")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sizes", default="5000,20000")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    paths = features(args.work)
    results = {}
    for method in args.methods.split(","):
        print(f"{method}: {time.perf_counter() - started:.0f} s in", file=sys.stderr)
        results[method] = measure(method, paths, sizes)
    minutes = (time.perf_counter() - started) / 60
    print(f"done in {minutes:.1f} min, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    print(tables(results, sizes))


if __name__ == "__main__":
    main()
