"""The 2D map of the pictures from their features (method chosen by measurement:
bench/map_projection.py, docs/CHOICES.md). Torch-free.

t-SNE (openTSNE) on the features reduced to 50 dimensions by PCA: pictures that the network
sees as alike sit close together, and each class forms its own island. openTSNE picks its
gradient method by size (Barnes-Hut below 10,000 pictures, FFT interpolation above). With
half of openTSNE's default iterations after the early phase (the same map quality on the
real sets, half the time at 20,000 pictures), 20,000 pictures take about 36 CPU seconds:
24 s on a quiet two-core machine, about a minute on a busy one. Fewer than
:data:`MIN_TSNE` distinct pictures get the PCA layout instead (t-SNE needs some neighbours
to work with).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from openTSNE import TSNE
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

__all__ = [
    "EARLY_ITERATIONS",
    "ITERATIONS",
    "METHOD",
    "MIN_TSNE",
    "PCA_DIMS",
    "PERPLEXITY",
    "THREADS_FROM",
    "fit_scale",
    "project",
    "reduce_dims",
]

METHOD = "t-SNE (openTSNE)"  # the library and method used, for the page's caption
PCA_DIMS = 50  # t-SNE runs on the features reduced to this many dimensions
PERPLEXITY = 30.0  # about how many neighbours each picture keeps close (lower for tiny sets)
MIN_TSNE = 10  # fewer distinct pictures than this get the PCA layout
EARLY_ITERATIONS = 250  # the clusters form (openTSNE's default) ...
ITERATIONS = 250  # ... then settle (openTSNE's default: 500)
THREADS_FROM = 10_000  # below this, one thread is as fast and not slowed down by other jobs
_EVERY = 25  # iterations between progress reports


def reduce_dims(vectors: np.ndarray, dims: int = PCA_DIMS, seed: int = 0) -> np.ndarray:
    """``vectors`` (n, d) reduced by PCA to at most ``dims`` dimensions, float32 (half the
    memory of float64: 20,000 x 1,280 features are 100 MB). Deterministic for a seed.

    One BLAS thread: on a busy two-core machine two threads wait on each other (4 s against
    0.1 s for 500 pictures, and slower at 20,000 too).
    """
    x = np.asarray(vectors, dtype=np.float32)
    varying = int((np.ptp(x, axis=0) > 0).sum()) if len(x) else 0
    keep = min(dims, len(x) - 1, varying)
    if keep < 1:  # one picture, or all alike: nothing to spread them along
        return np.zeros((len(x), 1), dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        return PCA(n_components=keep, random_state=seed).fit_transform(x)


def fit_scale(xy: np.ndarray) -> np.ndarray:
    """``xy`` (n, 2) moved and scaled into [0, 1] keeping its aspect ratio (the shorter side
    centred); all points at one spot go to the middle. float32."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return np.zeros((0, 2), dtype=np.float32)
    low, span = xy.min(axis=0), np.ptp(xy, axis=0)
    size = float(span.max())
    if size <= 0 or not np.isfinite(size):
        return np.full(xy.shape, 0.5, dtype=np.float32)
    out = (xy - low) / size + (1.0 - span / size) / 2.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _pca_layout(reduced: np.ndarray) -> np.ndarray:
    """The first two principal axes (a zero second axis when there is only one)."""
    xy = np.zeros((len(reduced), 2))
    cols = min(2, reduced.shape[1])
    xy[:, :cols] = reduced[:, :cols]
    return xy


def _reporter(progress: Callable[[int, int], None], total: int) -> Callable[..., None]:
    """An openTSNE callback that reports the iterations done across both phases."""
    done = [1]

    def callback(iteration: int, error: float, embedding: object) -> None:
        done[0] = min(total - 1, done[0] + _EVERY)
        progress(done[0], total)

    return callback


def _tsne(
    reduced: np.ndarray,
    seed: int,
    threads: int,
    iterations: int,
    callback: Callable[..., None] | None,
) -> np.ndarray:
    """openTSNE on the reduced features, PCA initialisation (stable from run to run)."""
    n = len(reduced)
    tsne = TSNE(
        perplexity=min(PERPLEXITY, (n - 1) / 3.0),
        early_exaggeration_iter=EARLY_ITERATIONS,
        n_iter=iterations,
        initialization="pca",
        n_jobs=threads,
        random_state=seed,
        callbacks=callback,
        callbacks_every_iters=_EVERY,
        verbose=False,
    )
    return np.asarray(tsne.fit(reduced))


def project(
    vectors: np.ndarray,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
    iterations: int = ITERATIONS,
) -> np.ndarray:
    """(n, 2) float32 map coordinates of ``vectors`` (n, d), scaled to [0, 1]; deterministic
    for a seed. Works from 1 row up to 20,000+ rows.

    ``progress(done, total)`` is called at the start, every few iterations and at the end.
    ``threads``: openTSNE's worker threads (default: 1 below :data:`THREADS_FROM` pictures,
    else 2: a fixed number, so that a seed gives the same map on every machine).
    ``iterations``: t-SNE iterations after the early phase of :data:`EARLY_ITERATIONS`.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"the features must be a (pictures, dimensions) array, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the features hold NaN or infinite values")
    n = len(x)
    total = 1 + EARLY_ITERATIONS + iterations
    if progress is not None:
        progress(0, total)
    reduced = reduce_dims(x, seed=seed)
    if n < MIN_TSNE or len({row.tobytes() for row in x}) < MIN_TSNE:
        xy = _pca_layout(reduced)
    else:
        threads = threads or (1 if n < THREADS_FROM else 2)
        callback = _reporter(progress, total) if progress is not None else None
        xy = _tsne(reduced, seed, threads, iterations, callback)
    if progress is not None:
        progress(total, total)
    return fit_scale(xy)
