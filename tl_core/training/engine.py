"""The training engine: build a pretrained model, freeze it as asked, fine-tune, keep the best.

One code path, composed of small phases in the torchvision-references style:
``train_one_epoch`` and ``evaluate`` under ``fit``. Progress leaves only through callbacks.
The schedule follows fastai's ``fine_tune``: when backbone groups are trainable, the new head
first trains alone for ``head_epochs`` epoch(s), then the chosen groups join with smaller,
discriminative learning rates.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tl_core import diskspace
from tl_core.config import (  # noqa: F401 - re-exported: older imports keep working
    AUGMENT_LEVELS,
    SCRATCH_LR,
    TrainConfig,
    scratch_config,
)
from tl_core.data.dataset import Split
from tl_core.errors import RunError
from tl_core.models.catalog import DataConfig, create_model, get_spec
from tl_core.models.device import ComputePlan, plan_compute
from tl_core.models.freezing import (
    apply_freeze,
    layer_groups,
    set_train_mode,
    trainable_param_groups,
)
from tl_core.training import checkpoint
from tl_core.training.inputs import (
    ImageTensors,
    Normalize,
    cache_budget_bytes,
    cache_side,
    decode_all,
    make_transforms,
)
from tl_core.training.prefixcache import CachedPhase, StopRequested, cache_phase


@dataclass(frozen=True)
class StepMetrics:
    epoch: int  # 1-based
    step: int  # global, 1-based
    total_steps: int
    loss: float
    accuracy: float
    lr: float
    elapsed_s: float


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    step: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    elapsed_s: float
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


class Callbacks(Protocol):
    """How the engine reports progress and learns it should stop."""

    def on_status(self, message: str) -> None: ...
    def on_log(self, message: str) -> None: ...
    def on_step(self, metrics: StepMetrics) -> None: ...
    def on_epoch(self, metrics: EpochMetrics) -> None: ...
    def should_stop(self) -> bool: ...


class QuietCallbacks:
    """Callbacks that record nothing and never stop: for scripts and tests."""

    def on_status(self, message: str) -> None:
        pass

    def on_log(self, message: str) -> None:
        pass

    def on_step(self, metrics: StepMetrics) -> None:
        pass

    def on_epoch(self, metrics: EpochMetrics) -> None:
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
        images = images.to(plan.device, non_blocking=True)
        labels = labels.to(plan.device, non_blocking=True)
        if images.is_floating_point() and plan.train_amp_dtype is None:
            images = images.float()  # cached activations may be stored in bf16
        if plan.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
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
            StepMetrics(
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
        images = images.to(plan.device)
        if plan.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with plan.autocast():
            logits = model(images)
        probs.append(logits.float().cpu())
        labels.append(y)
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
    model: nn.Module, cfg: TrainConfig, trainable: int, epochs: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with one-cycle learning rates over one phase of the schedule."""
    apply_freeze(model, trainable)
    # Head-only phases learn at the full rate; phases with a body at half of it, as fastai does.
    head_lr = cfg.lr if trainable == 0 else cfg.lr / 2
    groups = trainable_param_groups(model, trainable, head_lr)
    optimizer = torch.optim.AdamW(groups, lr=head_lr, weight_decay=cfg.weight_decay)
    total = epochs * steps_per_epoch
    if total < 3:  # too few steps for a warm-up and a decay: a constant rate
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in groups],
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


def _snapshot(state: Any) -> Any:
    """A detached CPU copy of a (nested) state dict, so training can go on changing it."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _snapshot(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_snapshot(v) for v in state)
    return state


class _Checkpoints:
    """best.pt and last.pt: kept in memory every epoch, written at most every ``every_s``.

    Head-only epochs take milliseconds: writing two checkpoints each time would cost more than
    the training. Stop, the end of training and a phase change always write.
    """

    def __init__(self, run_dir: Path, every_s: float = 15.0) -> None:
        self.run_dir = run_dir
        self.every_s = every_s
        self.best: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.written = time.monotonic()
        self.dirty = False

    def improved(self, model: nn.Module, meta: dict[str, Any]) -> None:
        self.best = {"model": _snapshot(model.state_dict()), "meta": meta}
        self.dirty = True

    def epoch_done(self, last: dict[str, Any], force: bool = False) -> None:
        self.last = _snapshot(last)
        if force or time.monotonic() - self.written >= self.every_s:
            self.write()

    def write(self) -> None:
        best = self.best if self.dirty else None
        for name, state in ((checkpoint.BEST, best), (checkpoint.LAST, self.last)):
            if state is not None:
                checkpoint.save(self.run_dir / name, state)
        self.dirty = False
        self.written = time.monotonic()


class _Inputs:
    """The run's images as uint8 tensors: decoded once when the memory budget allows."""

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
        if cfg.cache:
            decoded = decode_all(
                root,
                items,
                side,
                data_cfg.interpolation,
                budget // 2,
                lambda done, total: callbacks.on_status(
                    f"Preparing your images once: {done}/{total}"
                ),
            )
            if decoded is None:
                callbacks.on_log(
                    "The images do not fit the memory budget "
                    "(TL_STUDIO_CACHE_MB): each epoch decodes them again."
                )
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
        self.val_items = split.val
        self.used_bytes = 0 if decoded is None else decoded.numel()


_RESUME_ADVICE = "start the run again instead of resuming it"


def _resume_state(last: Path, model: nn.Module, generator: torch.Generator) -> dict[str, Any]:
    """last.pt read safely; the model's weights and every random state restored from it."""
    saved = checkpoint.load(last, _RESUME_ADVICE)
    checkpoint.load_weights(model, saved["model"], last, _RESUME_ADVICE)
    try:
        checkpoint.set_rng_state(saved["rng"], generator)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError):
        raise checkpoint.unreadable(last, _RESUME_ADVICE) from None
    return saved


def _check_disk(
    cfg: TrainConfig,
    split: Split,
    data_root: Path,
    classes: list[str],
    model: nn.Module,
    data_cfg: DataConfig,
    run_dir: Path,
    steps: int,
) -> None:
    """Refuse to start when the run's files (decoded cache, checkpoints, ...) would not fit."""
    n = len(split.train) + len(split.val)
    side = cache_side(data_cfg)
    decoded = n * 3 * side * side
    to_cache = decoded - _decoded_on_disk(data_root, side, data_cfg.interpolation)
    if not cfg.cache or decoded > cache_budget_bytes() // 2:
        to_cache = 0  # nothing is written to the cache
    params = sum(p.numel() for p in model.parameters())
    apply_freeze(model, cfg.trainable_groups)  # each phase sets its own freeze again
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    need = diskspace.run_need(
        n, len(split.val), len(classes), side, params, trainable, steps, cached_bytes=decoded
    )
    # A resumed run replaces its checkpoints: the space they take is counted already.
    need -= diskspace.files_bytes(run_dir / name for name in (checkpoint.BEST, checkpoint.LAST))
    need = max(need, diskspace.MARGIN_BYTES)
    if os.stat(run_dir).st_dev == os.stat(data_root).st_dev:
        diskspace.check_free(run_dir, need + max(to_cache, 0))
    else:  # the decoded cache sits beside the data set, on another disk
        diskspace.check_free(run_dir, need)
        diskspace.check_free(data_root, max(to_cache, 0) + diskspace.MARGIN_BYTES)


def _decoded_on_disk(root: Path, side: int, interpolation: str) -> int:
    """Bytes of decoded images already cached for this size (0 when none are)."""
    data = Path(root) / "cache" / f"decoded-{side}-{interpolation}.u8"
    return data.stat().st_size if data.is_file() else 0


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
    callbacks = callbacks or QuietCallbacks()
    plan = plan or plan_compute()
    torch.set_num_threads(plan.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    generator = seed_everything(cfg.seed)
    notes = [f"Computing on {plan.describe()}."]
    callbacks.on_log(notes[0])

    callbacks.on_status("Loading the model")
    spec = get_spec(cfg.model)
    model = create_model(spec, num_classes=len(classes), pretrained=cfg.pretrained)
    n_backbone = len(layer_groups(model)) - 1
    if cfg.trainable_groups > n_backbone:
        raise RunError(f"{spec.title} has {n_backbone} layer groups; choose at most that many.")
    data_cfg = DataConfig.of(model)
    model = model.to(plan.device)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalize = Normalize(data_cfg).to(plan.device)
    full = nn.Sequential(normalize, model)  # uint8 images in, logits out

    if not split.train or not split.val:
        raise RunError("Both the training and the validation set need at least one image.")
    drop_last = len(split.train) > cfg.batch_size
    n_steps = cfg.epochs * max(len(split.train) // cfg.batch_size, 1)
    _check_disk(cfg, split, data_root, classes, model, data_cfg, run_dir, n_steps)
    budget = cache_budget_bytes()
    inputs = _Inputs(cfg, split, data_root, classes, data_cfg, callbacks, budget)
    train_loader = DataLoader(
        inputs.train,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=generator,
        drop_last=drop_last,
    )
    val_loader = DataLoader(inputs.val, batch_size=plan.infer_batch)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    total_params = sum(p.numel() for p in model.parameters())
    meta = {
        "config": asdict(cfg),
        "classes": classes,
        "data_config": asdict(data_cfg),
        "timm_name": spec.timm_name,
    }

    epoch, step, best_acc, best_loss, best_epoch = 0, 0, -1.0, math.inf, None
    saved = None
    if resume:
        last = run_dir / checkpoint.LAST
        if not last.exists():
            raise RunError("This run has no saved epoch to resume from; start it again instead.")
        saved = _resume_state(last, model, generator)
        epoch, step = saved["epoch"], saved["step"]
        best_acc, best_loss, best_epoch = saved["best_acc"], saved["best_loss"], saved["best_epoch"]

    status = "finished"
    trainable_params = 0
    checkpoints = _Checkpoints(run_dir)
    cached: CachedPhase | None = None
    try:
        phase_start = 0
        for trainable, n_epochs in phases(cfg):
            phase_end = phase_start + n_epochs
            if epoch >= phase_end:
                phase_start = phase_end
                continue
            optimizer, scheduler = _phase_optimizer(
                model, cfg, trainable, n_epochs, steps_per_epoch
            )
            cached = None
            if cfg.cache:
                views = 1 if cfg.augment == "none" else cfg.aug_views
                cached = cache_phase(
                    model,
                    normalize,
                    trainable,
                    inputs.train,
                    inputs.val,
                    views,
                    plan,
                    budget - inputs.used_bytes,
                    callbacks.should_stop,
                    callbacks.on_status,
                    seed=cfg.seed * 1000 + phase_start,
                )
                message = (
                    cached.note
                    if cached
                    else (
                        "The frozen layers' outputs were not cached (they would not fit the memory"
                        " budget, or nothing is frozen): each step runs the whole network."
                    )
                )
                callbacks.on_log(message)
                notes.append(message)
            net = cached.net if cached else full
            trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if saved is not None and saved["phase_start"] == phase_start:
                last = run_dir / checkpoint.LAST
                checkpoint.load_weights(optimizer, saved["optimizer"], last, _RESUME_ADVICE)
                checkpoint.load_weights(scheduler, saved["scheduler"], last, _RESUME_ADVICE)
            callbacks.on_status("Training")
            while epoch < phase_end:
                epoch += 1
                if cached:
                    view = cached.train_views[(epoch - 1) % len(cached.train_views)]
                    phase_train = DataLoader(
                        view,
                        batch_size=cfg.batch_size,
                        shuffle=True,
                        generator=generator,
                        drop_last=drop_last,
                    )
                    phase_val = DataLoader(cached.val, batch_size=plan.infer_batch)
                else:
                    phase_train, phase_val = train_loader, val_loader
                train_loss, train_acc, step = train_one_epoch(
                    net,
                    phase_train,
                    optimizer,
                    scheduler,
                    plan,
                    epoch,
                    step,
                    total_steps,
                    started,
                    callbacks,
                )
                val_loss, val_acc = evaluate(net, phase_val, plan, callbacks.should_stop)
                is_best = val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss)
                if is_best:
                    best_acc, best_loss, best_epoch = val_acc, val_loss, epoch
                    checkpoints.improved(model, {**meta, "epoch": epoch, "val_accuracy": val_acc})
                checkpoints.epoch_done(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "step": step,
                        "phase_start": phase_start,
                        "best_acc": best_acc,
                        "best_loss": best_loss,
                        "best_epoch": best_epoch,
                        "rng": checkpoint.rng_state(generator),
                        "meta": meta,
                    },
                    force=epoch == phase_end,
                )
                callbacks.on_epoch(
                    EpochMetrics(
                        epoch,
                        step,
                        train_loss,
                        train_acc,
                        val_loss,
                        val_acc,
                        time.monotonic() - started,
                        is_best,
                    )
                )
                if callbacks.should_stop():
                    raise StopRequested
            phase_start = phase_end
    except StopRequested:
        status = "stopped"
    checkpoints.write()  # whatever is newer in memory than on disk: Stop keeps the best

    result = TrainResult(
        status=status,
        epochs_done=epoch,
        best_epoch=best_epoch,
        val_accuracy=None if best_epoch is None else best_acc,
        val_loss=None if best_epoch is None else best_loss,
        seconds=time.monotonic() - started,
        trainable_params=trainable_params,
        total_params=total_params,
        compute=plan.describe(),
        classes=classes,
        notes=notes,
    )
    if checkpoints.best is not None and status == "finished":
        callbacks.on_status("Scoring the best model on the validation images")
        model.load_state_dict(checkpoints.best["model"])
        # Final answers in fp32 (bf16 served the epochs): they then match the Try page and the
        # exported model exactly, on any machine.
        logits, labels = predict(full, val_loader, plan.exact())
        write_predictions(run_dir, classes, inputs.val_items, logits, labels)
        exact = (logits.argmax(1) == labels).float().mean().item()
        if plan.amp_dtype is not None and abs(exact - best_acc) > 1e-9:
            message = (
                f"Final scoring in full precision: {exact:.1%} validation accuracy "
                f"({best_acc:.1%} in {str(plan.amp_dtype).removeprefix('torch.')} during training)."
            )
            callbacks.on_log(message)
            result.notes.append(message)
        result.val_accuracy = exact
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
