"""The training engine: build a pretrained model, freeze it as asked, fine-tune, keep the best.

One code path, composed of small phases in the torchvision-references style:
``train_one_epoch`` and ``evaluate`` under ``fit``. Progress leaves only through callbacks.
The schedule follows fastai's ``fine_tune``: when backbone groups are trainable, the new head
first trains alone for ``head_epochs`` epoch(s), then the chosen groups join with smaller,
discriminative learning rates.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tl_core import diskspace
from tl_core.config import (  # noqa: F401 - re-exported: older imports keep working
    AUGMENT_LEVELS,
    SCRATCH_LR,
    EpochRow,
    StepRow,
    TrainConfig,
    scratch_config,
)
from tl_core.data.dataset import Split
from tl_core.errors import RunError
from tl_core.events import Progress
from tl_core.models.catalog import DataConfig, create_model, get_spec
from tl_core.models.device import ComputePlan, one_thread, plan_compute
from tl_core.models.freezing import (
    LayerGroup,
    apply_freeze,
    layer_groups,
    set_train_mode,
    trainable_param_groups,
)
from tl_core.training import checkpoint, familiar_pass, featurecache
from tl_core.training.checkpoint import TrainState
from tl_core.training.inputs import (
    DecodedImages,
    ImageTensors,
    Normalize,
    cache_budget_bytes,
    cache_side,
    decode_all,
    make_transforms,
)
from tl_core.training.prefixcache import CachedPhase, StopRequested, cache_phase
from tl_core.training.rowfile import megabytes


@dataclass(frozen=True)
class EpochMetrics(EpochRow):
    """An epoch as the engine reports it: the stored row, and whether it is the best so far."""

    is_best: bool


@dataclass
class TrainResult:
    status: str  # "finished" | "stopped"
    epochs_done: int
    best_epoch: int | None
    val_accuracy: float | None
    val_loss: float | None
    seconds: float
    trainable_params: int
    total_params: int
    compute: str
    classes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Bytes on disk: "decoded" (kept beside the data set for later runs), "activations"
    # (frozen-layer outputs in the run's folder while it trained; removed at its end).
    cache_bytes: dict[str, int] = field(default_factory=dict)


class Callbacks(Protocol):
    """How the engine reports progress and learns it should stop.

    ``on_resume`` says which epoch a resumed run goes on from (the one its last.pt holds).
    """

    def on_progress(self, progress: Progress) -> None: ...
    def on_log(self, message: str) -> None: ...
    def on_step(self, metrics: StepRow) -> None: ...
    def on_epoch(self, metrics: EpochMetrics) -> None: ...
    def on_resume(self, epoch: int) -> None: ...
    def should_stop(self) -> bool: ...


class QuietCallbacks:
    """Callbacks that record nothing and never stop: for scripts and tests."""

    def on_progress(self, progress: Progress) -> None:
        pass

    def on_log(self, message: str) -> None:
        pass

    def on_step(self, metrics: StepRow) -> None:
        pass

    def on_epoch(self, metrics: EpochMetrics) -> None:
        pass

    def on_resume(self, epoch: int) -> None:
        pass

    def should_stop(self) -> bool:
        return False


# ---------------------------------------------------------------------------------- loop


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    plan: ComputePlan,
    epoch: int,
    step: int,
    total_steps: int,
    started: float,
    callbacks: Callbacks,
) -> tuple[float, float, int]:
    """One pass over the training data; returns (mean loss, accuracy, global step)."""
    set_train_mode(model)
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        if callbacks.should_stop():
            raise StopRequested
        images = plan.batch(images, training=True)  # cached activations may be bf16
        labels = labels.to(plan.device, non_blocking=True)
        with plan.autocast(training=True):
            logits = model(images)
            loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        # .item() is a device sync point; once per step is cheap next to the step itself.
        batch_loss = loss.item()
        batch_correct = int((logits.argmax(1) == labels).sum().item())
        loss_sum += batch_loss * len(labels)
        correct += batch_correct
        seen += len(labels)
        callbacks.on_step(
            StepRow(
                epoch,
                step,
                total_steps,
                batch_loss,
                batch_correct / len(labels),
                optimizer.param_groups[-1]["lr"],
                time.monotonic() - started,
            )
        )
    return loss_sum / max(seen, 1), correct / max(seen, 1), step


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: DataLoader,
    plan: ComputePlan,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32) and labels for every image in ``loader``."""
    model.eval()
    probs, labels = [], []
    for images, y in loader:
        if should_stop is not None and should_stop():
            raise StopRequested
        with plan.autocast():
            logits = model(plan.batch(images))
        probs.append(logits.float().cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    plan: ComputePlan,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) on ``loader``."""
    logits, labels = predict(model, loader, plan, should_stop)
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def _phase_optimizer(
    model: nn.Module,
    cfg: TrainConfig,
    trainable: int,
    epochs: int,
    steps_per_epoch: int,
    groups: list[LayerGroup] | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with one-cycle learning rates over one phase of the schedule."""
    apply_freeze(model, trainable, groups)
    # Head-only phases learn at the full rate; phases with a body at half of it, as fastai does.
    head_lr = cfg.lr if trainable == 0 else cfg.lr / 2
    param_groups = trainable_param_groups(model, trainable, head_lr, groups=groups)
    optimizer = torch.optim.AdamW(param_groups, lr=head_lr, weight_decay=cfg.weight_decay)
    total = epochs * steps_per_epoch
    if total < 3:  # too few steps for a warm-up and a decay: a constant rate
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in param_groups],
        total_steps=total,
        pct_start=max(0.25, 2 / total),  # at least two warm-up steps (one would divide by 0)
    )
    return optimizer, scheduler


def phases(cfg: TrainConfig) -> list[tuple[int, int]]:
    """The schedule as (trainable groups, epochs) phases."""
    if cfg.trainable_groups == 0 or cfg.epochs < 2 or cfg.head_epochs < 1:
        return [(cfg.trainable_groups, cfg.epochs)]
    head = min(cfg.head_epochs, cfg.epochs - 1)
    return [(0, head), (cfg.trainable_groups, cfg.epochs - head)]


class _Snapshots:
    """Detached CPU copies of (nested) state dicts, so training can go on changing them.

    A frozen parameter unchanged since the last round (same memory, same in-place version
    counter) keeps its earlier copy: a head-only epoch then copies the head, not the whole
    network. Everything else (trainable weights, buffers, optimizer state) is copied each
    time: fused optimizers may change weights without counting a version. Copies are never
    changed in place, so snapshots may share them. Each round (``begin``) forgets the tensors
    the last round did not see.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self._last: dict[tuple, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self._frozen: frozenset[int] = frozenset()

    def begin(self, model: nn.Module) -> None:
        """Start a round: ``model``'s frozen parameters are the ones copies may be kept of."""
        self._last, self._seen = self._seen, {}
        self._frozen = frozenset(p.data_ptr() for p in model.parameters() if not p.requires_grad)

    def take(self, state: Any) -> Any:
        if isinstance(state, torch.Tensor):
            return self._tensor(state)
        if isinstance(state, dict):
            return {k: self.take(v) for k, v in state.items()}
        if isinstance(state, list | tuple):
            return type(state)(self.take(v) for v in state)
        return state

    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        if t.is_inference() or t.numel() == 0 or t.data_ptr() not in self._frozen:
            return t.detach().to("cpu", copy=True)
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride(), t.storage_offset())
        # The source is held with its copy: its memory cannot be reused by another tensor.
        known = self._seen.get(key) or self._last.get(key)
        if known is not None and known[1] == t._version:
            self._seen[key] = known
            return known[2]
        copy = t.detach().to("cpu", copy=True)
        self._seen[key] = (t, t._version, copy)
        return copy


class _Checkpoints(QuietCallbacks):
    """The engine's own callback: keeps best.pt and last.pt, beside the user's callbacks.

    Both are kept in memory every epoch and written at most every ``every_s``: head-only
    epochs take milliseconds, and writing two checkpoints each time would cost more than the
    training. The end of a phase, Stop and the end of training always write, each file only
    when it changed since it was last written.
    """

    def __init__(self, run: _Run, every_s: float = 15.0) -> None:
        self.run = run
        self.every_s = every_s
        self.best: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.written = time.monotonic()
        self.dirty = False
        self.last_dirty = False
        self.copies = _Snapshots()

    def on_epoch(self, metrics: EpochMetrics) -> None:
        run = self.run
        self.copies.begin(run.model)
        if metrics.is_best:
            self.best = self.copies.take(run.state.best_checkpoint(run.model))
            self.dirty = True
        last = run.state.last_checkpoint(run.model, run.optimizer, run.scheduler, run.generator)
        self.last = self.copies.take(last)
        self.last_dirty = True
        if metrics.epoch == run.phase_end or time.monotonic() - self.written >= self.every_s:
            self.write()

    def write(self) -> None:
        best = self.best if self.dirty else None
        last = self.last if self.last_dirty else None
        for name, state in ((checkpoint.BEST, best), (checkpoint.LAST, last)):
            if state is not None:
                checkpoint.save(self.run.run_dir / name, state)
        self.dirty = self.last_dirty = False
        self.written = time.monotonic()


class _Fanout:
    """Several callbacks as one: every event goes to each in turn; any of them can stop."""

    def __init__(self, *callbacks: Callbacks) -> None:
        self.callbacks = callbacks

    def on_progress(self, progress: Progress) -> None:
        for c in self.callbacks:
            c.on_progress(progress)

    def on_log(self, message: str) -> None:
        for c in self.callbacks:
            c.on_log(message)

    def on_step(self, metrics: StepRow) -> None:
        for c in self.callbacks:
            c.on_step(metrics)

    def on_epoch(self, metrics: EpochMetrics) -> None:
        for c in self.callbacks:
            c.on_epoch(metrics)

    def on_resume(self, epoch: int) -> None:
        for c in self.callbacks:
            c.on_resume(epoch)

    def should_stop(self) -> bool:
        return any(c.should_stop() for c in self.callbacks)


class _Inputs:
    """The run's images as uint8 tensors, decoded once into the data set's cache on disk."""

    def __init__(
        self,
        cfg: TrainConfig,
        split: Split,
        root: Path,
        classes: list[str],
        data_cfg: DataConfig,
        callbacks: Callbacks,
        budget: int,
    ) -> None:
        items = sorted([*split.train, *split.val], key=lambda i: i.file)  # split-independent
        row = {item.file: r for r, item in enumerate(items)}
        index = {c: i for i, c in enumerate(classes)}
        side = cache_side(data_cfg)
        decoded = None
        self.notes: list[str] = []
        if cfg.cache:
            decoded = decode_all(
                root,
                items,
                side,
                data_cfg.interpolation,
                budget // 2,
                lambda done, total: callbacks.on_progress(Progress("decode", done, total)),
            )
            self.notes.append(_decoded_note(decoded))
            callbacks.on_log(self.notes[-1])
        train_tf, eval_tf = make_transforms(data_cfg, cfg.augment)

        def dataset(subset: list, tf) -> ImageTensors:
            return ImageTensors(
                decoded,
                [row[i.file] for i in subset],
                root,
                items,
                [index[i.label] for i in subset],
                tf,
                side,
                data_cfg.interpolation,
            )

        self.train = dataset(split.train, train_tf)
        self.val = dataset(split.val, eval_tf)
        self.train_eval = dataset(split.train, eval_tf)  # the unfamiliar check's bank
        self.root = root
        self.train_items = split.train
        self.val_items = split.val
        self.used_bytes = 0 if decoded is None else decoded.resident_bytes
        self.disk_bytes = 0 if decoded is None else decoded.nbytes


def _decoded_note(decoded: DecodedImages) -> str:
    """The run log's line on the decoded images: size on disk, reuse, memory."""
    how = (
        "kept in memory"
        if decoded.resident
        else "read from disk per batch, since they exceed the memory budget (TL_STUDIO_CACHE_MB)"
    )
    if decoded.from_import:
        made = "all made while the images were imported"
    elif decoded.decoded_now or decoded.reused:
        made = f"{decoded.decoded_now} decoded now"
        if decoded.reused:
            made += f", {decoded.reused} copied from an earlier version of the data set"
    else:
        made = "all decoded by an earlier run"
    return (
        f"Decoded images: {len(decoded)} take {megabytes(decoded.nbytes)} MB on disk beside "
        f"the data set ({made}); {how}."
    )


def _check_disk(run: _Run, split: Split, steps: int) -> None:
    """Refuse to train when what training writes in the run's folder (checkpoints,
    predictions, metrics) would not fit. The decoded images and the frozen layers' outputs
    are checked by the phases that write them (:func:`decode_all`, :func:`cache_phase`)."""
    params = sum(p.numel() for p in run.model.parameters())
    # The head and the last trainable groups learn (the last phase's freeze, the largest).
    learning = run.groups[len(run.groups) - 1 - run.cfg.trainable_groups :]
    trainable = sum(g.params for g in learning)
    n = len(split.train) + len(split.val)
    need = diskspace.run_need(n, len(split.val), len(run.classes), 0, params, trainable, steps)
    # A resumed run replaces its checkpoints: the space they take is counted already.
    run_dir = run.run_dir
    need -= diskspace.files_bytes(run_dir / name for name in (checkpoint.BEST, checkpoint.LAST))
    diskspace.check_free(run_dir, max(need, diskspace.MARGIN_BYTES))


@dataclass
class _Run:
    """What one run works with; built once by ``fit``'s first phases, read by the others."""

    cfg: TrainConfig
    plan: ComputePlan
    run_dir: Path
    classes: list[str]
    model: nn.Module  # the timm model, on the device
    normalize: nn.Module
    groups: list[LayerGroup]  # the model's layer groups: computed once per run
    data_cfg: DataConfig
    generator: torch.Generator
    started: float
    notes: list[str]
    state: TrainState = field(init=False)
    inputs: _Inputs = field(init=False)
    budget: int = 0
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    phase_end: int = 0
    trainable_params: int = 0
    cached: CachedPhase | None = None  # the current phase's frozen outputs, if any
    activation_bytes: int = 0  # the most the frozen outputs took on disk in one phase

    @property
    def full(self) -> nn.Module:
        """uint8 images in, logits out."""
        return nn.Sequential(self.normalize, self.model)

    @property
    def drop_last(self) -> bool:
        return len(self.inputs.train) > self.cfg.batch_size

    def train_loader(self, data: Any) -> DataLoader:
        """The user's batch size (the optimiser's steps); pinned host batches on CUDA."""
        return self.plan.loader(
            data,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            generator=self.generator,
            drop_last=self.drop_last,
        )

    def val_loader(self, data: Any) -> DataLoader:
        """The plan's inference batch: larger where the device has the memory."""
        return self.plan.loader(data)


def _load_model(
    cfg: TrainConfig, classes: list[str], plan: ComputePlan
) -> tuple[nn.Module, list[LayerGroup], DataConfig]:
    """Phase 1: the pretrained model on the device, its layer groups and its preprocessing."""
    spec = get_spec(cfg.model)
    model = create_model(spec, num_classes=len(classes), pretrained=cfg.pretrained)
    groups = layer_groups(model)
    n_backbone = len(groups) - 1
    if cfg.trainable_groups > n_backbone:
        raise RunError(f"{spec.title} has {n_backbone} layer groups; choose at most that many.")
    return plan.prepare_model(model), groups, DataConfig.of(model)


def _prepare_data(run: _Run, split: Split, data_root: Path, callbacks: Callbacks) -> None:
    """Phase 2: decode the images once, then check the disk has room for what training
    writes."""
    cfg = run.cfg
    if split.train and not split.val:
        raise RunError(
            "No image is held back to check the model. When each class is one burst of "
            "near-identical camera pictures none can be: record each class in a few takes, "
            "moving the object between them, or add other pictures."
        )
    if not split.train or not split.val:
        raise RunError("Both the training and the validation set need at least one image.")
    run.budget = cache_budget_bytes()
    run.inputs = _Inputs(cfg, split, data_root, run.classes, run.data_cfg, callbacks, run.budget)
    run.notes.extend(run.inputs.notes)
    _check_disk(run, split, cfg.epochs * max(len(split.train) // cfg.batch_size, 1))


def _start_state(run: _Run, resume: bool, callbacks: Callbacks) -> TrainState:
    """Phase 3: a fresh state, or the one last.pt holds (weights and random states too);
    a resumed run tells ``callbacks.on_resume`` the epoch it goes on from."""
    meta = {
        "config": asdict(run.cfg),
        "classes": run.classes,
        "data_config": asdict(run.data_cfg),
        "timm_name": get_spec(run.cfg.model).timm_name,
    }
    if not resume:
        return TrainState(meta)
    last = run.run_dir / checkpoint.LAST
    if not last.exists():
        raise RunError("This run has no saved epoch to resume from; start it again instead.")
    state = TrainState.resume(last, run.model, run.generator, meta)
    callbacks.on_resume(state.epoch)
    return state


def _head_start_outputs(run: _Run) -> CachedPhase | None:
    """The whole frozen backbone's outputs as the features job (the head start) cached them:
    the same pass over the same decoded images, so a head-only run without augmentation on
    the same images need not run it again. None when there are none for these images."""
    cfg, inputs = run.cfg, run.inputs
    if cfg.augment != "none" or not cfg.pretrained or not inputs.train_items:
        return None
    found = featurecache.pooled_rows(
        inputs.root, inputs.train_items, inputs.val_items, cfg.model, cfg.pretrained
    )
    if found is None:
        return None
    dtype = run.plan.amp_dtype or torch.float32

    def tensors(rows: Any, data: ImageTensors) -> TensorDataset:
        return TensorDataset(
            torch.from_numpy(rows).to(run.plan.device, dtype),
            torch.tensor(data.labels, device=run.plan.device),
        )

    train, val, exact = found
    note = (
        f"Reused the whole frozen backbone's output from the head start for {len(train)} "
        f"training and {len(val)} validation images (no pass through the network)."
    )
    return CachedPhase(
        run.model.get_classifier(),
        [tensors(train, inputs.train)],
        tensors(val, inputs.val),
        note,
        val_exact=None
        if exact is None
        else TensorDataset(
            torch.from_numpy(exact).to(run.plan.device),
            torch.tensor(inputs.val.labels, device=run.plan.device),
        ),
    )


ACTIVATIONS = "activations"  # the run folder's files of cached frozen-layer outputs


def _activations_dir(run: _Run) -> Path:
    """An empty folder for this phase's frozen-layer outputs (the last phase's go first)."""
    folder = run.run_dir / ACTIVATIONS
    run.cached = None  # the files below belong to it
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def _cache_phase(run: _Run, trainable: int, callbacks: Callbacks) -> CachedPhase | None:
    """The frozen part's outputs for this phase, computed once (None: each step runs it)."""
    cfg = run.cfg
    if not cfg.cache:
        return None
    cached = _head_start_outputs(run) if trainable == 0 else None
    cached = cached or cache_phase(
        run.model,
        run.normalize,
        trainable,
        run.inputs.train,
        run.inputs.val,
        1 if cfg.augment == "none" else cfg.aug_views,
        run.plan,
        run.budget - run.inputs.used_bytes,
        callbacks.should_stop,
        callbacks.on_progress,
        seed=cfg.seed * 1000 + run.state.phase_start,
        groups=run.groups,
        # A wholly frozen run scores its epochs and its best model on fp32 features from
        # this one pass. A partial fine-tune's head phase keeps the plan's precision: its
        # epochs then compare as they always did.
        exact_val=cfg.trainable_groups == 0,
        spill_dir=_activations_dir(run),
    )
    if cached is not None:
        run.activation_bytes = max(run.activation_bytes, cached.disk_bytes)
    message = (
        cached.note
        if cached
        else (
            "The frozen layers' outputs were not cached (nothing is frozen): each step runs"
            " the whole network."
        )
    )
    callbacks.on_log(message)
    run.notes.append(message)
    return cached


def _train_phase(run: _Run, trainable: int, n_epochs: int, callbacks: Callbacks) -> None:
    """Phase 4, once per schedule phase: its optimizer, its cache, then its epochs."""
    state, cfg = run.state, run.cfg
    steps_per_epoch = len(run.train_loader(run.inputs.train))
    run.optimizer, run.scheduler = _phase_optimizer(
        run.model, cfg, trainable, n_epochs, steps_per_epoch, run.groups
    )
    cached = run.cached = _cache_phase(run, trainable, callbacks)
    net = cached.net if cached else run.full
    # fp32 validation outputs are scored in fp32 (the head alone: cheap), as the final scores.
    exact = cached is not None and cached.val_exact is cached.val
    eval_plan = run.plan.exact() if exact else run.plan
    run.trainable_params = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    state.restore_phase(run.optimizer, run.scheduler)
    callbacks.on_progress(Progress("train"))
    # The head alone on cached features: steps of tiny matrices, fastest on one thread.
    with one_thread() if cached and trainable == 0 and run.plan.device == "cpu" else nullcontext():
        _epochs(run, cached, net, eval_plan, steps_per_epoch, callbacks)


def _epochs(
    run: _Run,
    cached: CachedPhase | None,
    net: nn.Module,
    eval_plan: ComputePlan,
    steps_per_epoch: int,
    callbacks: Callbacks,
) -> None:
    """The phase's epochs, each scored on the validation images, until its last or a Stop."""
    state, cfg = run.state, run.cfg
    while state.epoch < run.phase_end:
        state.epoch += 1
        if cached:
            view = cached.train_views[(state.epoch - 1) % len(cached.train_views)]
            train, val = run.train_loader(view), run.val_loader(cached.val)
        else:
            train, val = run.train_loader(run.inputs.train), run.val_loader(run.inputs.val)
        train_loss, train_acc, state.step = train_one_epoch(
            net,
            train,
            run.optimizer,
            run.scheduler,
            run.plan,
            state.epoch,
            state.step,
            steps_per_epoch * cfg.epochs,
            run.started,
            callbacks,
        )
        val_loss, val_acc = evaluate(net, val, eval_plan, callbacks.should_stop)
        is_best = state.improve(val_acc, val_loss)
        elapsed = time.monotonic() - run.started
        callbacks.on_epoch(
            EpochMetrics(
                state.epoch, state.step, train_loss, train_acc, val_loss, val_acc, elapsed, is_best
            )
        )
        if callbacks.should_stop():
            raise StopRequested


def _train(run: _Run, callbacks: Callbacks) -> str:
    """Phase 4: every phase of the schedule from where the state stands; the final status."""
    state = run.state
    try:
        phase_start = 0
        for trainable, n_epochs in phases(run.cfg):
            run.phase_end = phase_start + n_epochs
            if state.epoch < run.phase_end:
                state.phase_start = phase_start
                _train_phase(run, trainable, n_epochs, callbacks)
            phase_start = run.phase_end
    except StopRequested:
        return "stopped"
    return "finished"


def _score_best(run: _Run, best: dict[str, Any], result: TrainResult, callbacks: Callbacks) -> None:
    """Phase 5: the best weights scored in fp32 on the validation images (predictions.json)."""
    callbacks.on_progress(Progress("score"))
    run.model.load_state_dict(best["model"])
    # Final answers in fp32 (bf16 served the epochs): they then match the Try page and the
    # exported model exactly, on any machine. The last phase's frozen part is frozen in every
    # phase: when its validation outputs were cached in fp32, the trainable rest alone gives
    # the whole network's answers without a second pass over the images.
    if run.cached is not None and run.cached.val_exact is not None:
        net, val = run.cached.net, run.cached.val_exact  # fp32 outputs kept by the frozen pass
    elif run.cached is not None and run.plan.amp_dtype is None:
        net, val = run.cached.net, run.cached.val
    else:
        net, val = run.full, run.inputs.val
    logits, labels = predict(net, run.val_loader(val), run.plan.exact())
    write_predictions(run.run_dir, run.classes, run.inputs.val_items, logits, labels)
    exact = (logits.argmax(1) == labels).float().mean().item()
    best_acc, amp = run.state.best_acc, run.plan.amp_dtype
    if amp is not None and abs(exact - best_acc) > 1e-9:
        message = (
            f"Final scoring in full precision: {exact:.1%} validation accuracy "
            f"({best_acc:.1%} in {str(amp).removeprefix('torch.')} during training)."
        )
        callbacks.on_log(message)
        result.notes.append(message)
    result.val_accuracy = exact
    _record_familiarity(run, callbacks)


def _record_familiarity(run: _Run, callbacks: Callbacks) -> None:
    """Phase 6: the unfamiliar check's bank, threshold and measurement (familiarity.npz).

    A wholly frozen run without augmentation trained on the pooled features themselves: its
    cached training outputs are the bank, with no pass through the network (the validation
    features come from the fp32 outputs when they were kept, else from an fp32 pass, as the
    app computes them). A run without validation pictures has nothing to choose a threshold
    on and gets no check; neither does one stopped during this phase. The trained model is
    kept whatever happens here.
    """
    inputs = run.inputs
    if not inputs.val_items or not inputs.train_items:
        return
    cached = None
    if (
        run.cached is not None
        and run.cached.net is run.model.get_classifier()
        and run.cfg.augment == "none"
        and len(run.cached.train_views) == 1
    ):
        cached = (run.cached.train_views[0], run.cached.val_exact)
    try:
        report = familiar_pass.record(
            run.run_dir,
            run.classes,
            familiar_pass.WithFeatures(run.normalize, run.model),
            run.plan,
            inputs.train_eval,
            inputs.train.labels,
            inputs.val,
            inputs.val.labels,
            run.data_cfg,
            cached=cached,
            on_progress=callbacks.on_progress,
            should_stop=callbacks.should_stop,
        )
    except StopRequested:
        callbacks.on_log("Stopped before the unfamiliar check was ready: this model has none.")
        return
    except diskspace.DiskFullError as exc:
        callbacks.on_log(f"{exc} The model is kept, without an unfamiliar check.")
        return
    callbacks.on_log(f"Unfamiliar check: {report.sentence()}")


def fit(
    cfg: TrainConfig,
    split: Split,
    data_root: Path,
    classes: list[str],
    run_dir: Path,
    callbacks: Callbacks | None = None,
    resume: bool = False,
    plan: ComputePlan | None = None,
) -> TrainResult:
    """Train ``cfg`` on ``split``; keep best.pt (by validation accuracy) and last.pt in run_dir.

    With ``resume``, continue from run_dir/last.pt at the epoch after the one it holds.
    """
    cfg.validate()
    user = callbacks or QuietCallbacks()
    plan = plan or plan_compute()
    torch.set_num_threads(plan.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    generator = seed_everything(cfg.seed)
    notes = [f"Computing on {plan.describe()}."]
    user.on_log(notes[0])

    user.on_progress(Progress("load"))
    model, groups, data_cfg = _load_model(cfg, classes, plan)
    normalize = Normalize(data_cfg).to(plan.device)
    run = _Run(
        cfg, plan, run_dir, classes, model, normalize, groups, data_cfg, generator, started, notes
    )
    try:
        return _fit(run, split, data_root, user, resume)
    finally:
        run.cached = None
        shutil.rmtree(run_dir / ACTIVATIONS, ignore_errors=True)


def _fit(run: _Run, split: Split, data_root: Path, user: Callbacks, resume: bool) -> TrainResult:
    """:func:`fit` once the model is loaded."""
    model, plan, notes, classes = run.model, run.plan, run.notes, run.classes
    _prepare_data(run, split, data_root, user)
    total_params = sum(p.numel() for p in model.parameters())
    run.state = _start_state(run, resume, user)
    checkpoints = _Checkpoints(run)
    status = _train(run, _Fanout(checkpoints, user))
    checkpoints.write()  # whatever is newer in memory than on disk: Stop keeps the best

    state = run.state
    result = TrainResult(
        status=status,
        epochs_done=state.epoch,
        best_epoch=state.best_epoch,
        val_accuracy=None if state.best_epoch is None else state.best_acc,
        val_loss=None if state.best_epoch is None else state.best_loss,
        seconds=time.monotonic() - run.started,
        trainable_params=run.trainable_params,
        total_params=total_params,
        compute=plan.describe(),
        classes=classes,
        notes=notes,
        cache_bytes={"decoded": run.inputs.disk_bytes, "activations": run.activation_bytes},
    )
    if checkpoints.best is not None and status == "finished":
        _score_best(run, checkpoints.best, result, user)
    return result


def write_predictions(
    run_dir: Path,
    classes: list[str],
    val_items: list,
    logits: torch.Tensor,
    labels: torch.Tensor,
) -> None:
    """The best checkpoint's scores on the validation images, as predictions.json.

    Logits are kept (not only probabilities) so calibration can be fitted afterwards.
    """
    probs = logits.softmax(1)
    rows = [
        {
            "file": item.file,
            "label": int(y),
            "pred": int(p.argmax()),
            "confidence": float(p.max()),
            "probs": [round(float(v), 6) for v in p],
            "logits": [round(float(v), 5) for v in z],
        }
        for item, p, z, y in zip(val_items, probs, logits, labels, strict=True)
    ]
    tmp = run_dir / "predictions.json.tmp"
    text = json.dumps({"classes": classes, "rows": rows})
    with diskspace.guard(run_dir, len(text) + diskspace.MB, cleanup=[tmp]):
        tmp.write_text(text)
        tmp.replace(run_dir / "predictions.json")
