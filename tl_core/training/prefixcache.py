"""Compute a frozen prefix once per image (per augmented view) and train on its outputs.

With the first groups frozen, their output for an image never changes from one epoch to the
next (frozen BatchNorm layers use fixed statistics), so the classic loop's repeated forward
through them is wasted work. Here it runs once: the whole frozen backbone when only the head
learns (then an epoch is milliseconds), or the frozen stages when the last groups learn.
The outputs stay in memory when they fit the memory budget, else in files of the run's
folder read per batch (:mod:`tl_core.training.rowfile`): they depend on the run's seed,
views and split point, so no other run could use them, and they go when the run ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tl_core import diskspace
from tl_core.events import Progress
from tl_core.models.device import ComputePlan
from tl_core.models.freezing import LayerGroup
from tl_core.models.stages import split_model
from tl_core.training.rowfile import RowFile, RowsDataset, megabytes


class StopRequested(Exception):
    """Raised inside a loop when the user pressed Stop; caught by the engine's ``fit``."""


@dataclass
class CachedPhase:
    """The trainable part of the network and the prefix outputs it trains on.

    Outputs are stored in the plan's inference dtype: with an fp32 plan, ``net`` on ``val``
    gives exactly the whole network's answers on the validation images.
    """

    net: nn.Module
    train_views: list[Dataset]  # view v feeds epochs v, v + V, v + 2V, ...
    val: Dataset
    note: str
    val_exact: Dataset | None = None  # the validation outputs in fp32, when known
    disk_bytes: int = 0  # what its files take on disk (0: it is all in memory)


class Pooled(nn.Module):
    """The whole frozen backbone: image -> pooled features (the classifier's input)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _prefix_and_net(
    model: nn.Module, trainable: int, groups: list[LayerGroup] | None
) -> tuple[nn.Module, nn.Module] | None:
    if trainable == 0:
        return Pooled(model), model.get_classifier()
    return split_model(model, trainable, groups)


@torch.inference_mode()
def run_prefix(
    prefix: nn.Module,
    loader: DataLoader,
    plan: ComputePlan,
    dtype: torch.dtype,
    should_stop: Callable[[], bool],
    report: Callable[[int], None],
) -> tuple[torch.Tensor, torch.Tensor]:
    outs, labels, done = [], [], 0
    for images, y in loader:
        if should_stop():
            raise StopRequested
        with plan.autocast():
            outs.append(prefix(plan.batch(images)).to(dtype))
        labels.append(y.to(plan.device))
        done += len(y)
        report(done)
    return torch.cat(outs), torch.cat(labels)


def _run_prefix_to_file(
    prefix: nn.Module,
    loader: DataLoader,
    plan: ComputePlan,
    dtype: torch.dtype,
    should_stop: Callable[[], bool],
    report: Callable[[int], None],
    out: RowFile,
) -> RowsDataset:
    """:func:`run_prefix`, its outputs written to ``out`` batch by batch (nothing kept)."""
    labels, done = [], 0
    with torch.inference_mode():
        for images, y in loader:
            if should_stop():
                raise StopRequested
            with plan.autocast():
                feats = prefix(plan.batch(images)).to(dtype)
            out.write(done, feats.cpu())
            labels.append(y.cpu())
            done += len(y)
            report(done)
    return RowsDataset(out, torch.cat(labels))


def cache_phase(
    model: nn.Module,
    normalize: nn.Module,
    trainable: int,
    train_ds: Dataset,
    val_ds: Dataset,
    views: int,
    plan: ComputePlan,
    budget_bytes: int,
    should_stop: Callable[[], bool],
    on_progress: Callable[[Progress], None],
    seed: int = 0,
    groups: list[LayerGroup] | None = None,
    exact_val: bool = False,
    spill_dir: Path | None = None,
) -> CachedPhase | None:
    """Run the frozen prefix once per image and view; None when it cannot or should not be.

    ``views`` augmented copies of each training image are cached (1 without augmentation).
    They are kept in memory when they fit ``budget_bytes``; otherwise, with a ``spill_dir``,
    they are written there, one file per view (and one for the validation outputs) read back
    per batch, as many views as the free disk holds (DiskFullError when not even one does);
    without one, fewer views are kept in memory, none at all when one would not fit. The
    views are drawn from their own ``seed``, apart from the global random stream (even a
    DataLoader draws from that): a resumed run caches the same views and continues
    identically. ``groups``: the model's layer groups, when the caller has them already.
    With ``exact_val`` the validation outputs are computed once in fp32 (no autocast) and
    serve as both ``val`` and ``val_exact``: the final fp32 scores then need no second pass.
    ``on_progress`` hears the images passed so far (phase ``frozen``).
    """
    parts = _prefix_and_net(model, trainable, groups)
    if parts is None:
        return None
    prefix, net = parts
    prefix = nn.Sequential(normalize, prefix).eval()
    dtype = plan.amp_dtype or torch.float32
    val_plan, val_dtype = (plan.exact(), torch.float32) if exact_val else (plan, dtype)
    n_train, n_val = len(train_ds), len(val_ds)  # type: ignore[arg-type]
    sizes = _sizes(prefix, val_ds, plan, dtype, val_dtype, (n_train, n_val))
    over_budget = views * sizes.per_view + sizes.val_bytes > budget_bytes
    spill = spill_dir if over_budget else None  # None: every output stays in memory
    fit_views = _views_that_fit(sizes.per_view, sizes.val_bytes, budget_bytes, spill)
    if fit_views < 1:
        return None
    views = min(views, fit_views)
    total = views * n_train + n_val
    passes = _Passes(prefix, plan, should_stop, on_progress, total, sizes, spill)
    train_views = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for v in range(views):
            train_views.append(passes.run(train_ds, plan, dtype, v * n_train, f"train-view{v}"))
        val = passes.run(val_ds, val_plan, val_dtype, views * n_train, "val")
    size = sizes.per_view * views + sizes.val_bytes
    return CachedPhase(
        net,
        train_views,
        val,
        _note(trainable, n_train, views, n_val, size, spill is not None),
        val_exact=val if exact_val else None,
        disk_bytes=size if spill is not None else 0,
    )


@dataclass(frozen=True)
class _Sizes:
    """What the prefix's outputs take: their shape, bytes per training image, per training
    view and for all the validation images."""

    shape: tuple[int, ...]
    per_image: int
    per_view: int
    val_bytes: int


def _sizes(
    prefix: nn.Module,
    val_ds: Dataset,
    plan: ComputePlan,
    dtype: torch.dtype,
    val_dtype: torch.dtype,
    counts: tuple[int, int],
) -> _Sizes:
    """The outputs' sizes, from one validation image through ``prefix`` (no random draw)."""
    n_train, n_val = counts
    with torch.inference_mode(), plan.autocast():
        probe = prefix(plan.batch(val_ds[0][0][None]))
    per_image = probe[0].numel() * torch.tensor([], dtype=dtype).element_size()
    per_val = probe[0].numel() * torch.tensor([], dtype=val_dtype).element_size()
    return _Sizes(tuple(probe.shape[1:]), per_image, per_image * n_train, per_val * n_val)


class _Passes:
    """The prefix's passes over the images, into memory or (``spill_dir``) into files, each
    reporting how many of the phase's ``total`` images have gone through."""

    def __init__(
        self,
        prefix: nn.Module,
        plan: ComputePlan,
        should_stop: Callable[[], bool],
        on_progress: Callable[[Progress], None],
        total: int,
        sizes: _Sizes,
        spill_dir: Path | None,
    ) -> None:
        self.prefix, self.plan, self.should_stop = prefix, plan, should_stop
        self.on_progress, self.total = on_progress, total
        self.sizes, self.spill_dir = sizes, spill_dir

    def _report(self, offset: int) -> Callable[[int], None]:
        return lambda done: self.on_progress(Progress("frozen", offset + done, self.total))

    def run(
        self, data: Dataset, run_plan: ComputePlan, run_dtype: torch.dtype, offset: int, name: str
    ) -> Dataset:
        """``data`` through the prefix in order (rows match labels); ``name`` its file."""
        loader = self.plan.loader(data, self.plan.infer_batch)
        report = self._report(offset)
        if self.spill_dir is None:
            feats, labels = run_prefix(
                self.prefix, loader, run_plan, run_dtype, self.should_stop, report
            )
            return TensorDataset(feats, labels)
        path = self.spill_dir / f"{name}.bin"
        n = len(data)  # type: ignore[arg-type]
        with diskspace.guard(self.spill_dir, n * self.sizes.per_image, cleanup=[path]):
            out = RowFile.create(path, n, self.sizes.shape, run_dtype)
            return _run_prefix_to_file(
                self.prefix, loader, run_plan, run_dtype, self.should_stop, report, out
            )


def _views_that_fit(
    per_view: int, val_bytes: int, budget_bytes: int, spill_dir: Path | None
) -> int:
    """How many training views the memory budget holds, or with ``spill_dir`` the free disk
    there (DiskFullError when not even one does)."""
    if spill_dir is None:
        return int((budget_bytes - val_bytes) // max(per_view, 1))
    spill_dir.mkdir(parents=True, exist_ok=True)
    free = diskspace.free_bytes(spill_dir) - diskspace.MARGIN_BYTES - val_bytes
    if free // max(per_view, 1) < 1:
        raise diskspace.disk_full_error(spill_dir, per_view + val_bytes)
    return int(free // max(per_view, 1))


def _note(trainable: int, n_train: int, views: int, n_val: int, size: int, on_disk: bool) -> str:
    """The run log's line on what was cached and where."""
    what = "the whole frozen backbone" if trainable == 0 else "the frozen layers"
    where = (
        f"{megabytes(size)} MB on disk in the run's folder, read per batch since they "
        "exceed the memory budget; removed when the run ends"
        if on_disk
        else f"{megabytes(size)} MB in memory"
    )
    return (
        f"Cached the output of {what} for {n_train} training images x {views} view(s) and "
        f"{n_val} validation images ({where})."
    )
