"""A run's checkpoints: best.pt and last.pt, written and read from one list of keys each.

:class:`TrainState` is what a run carries from epoch to epoch and the one place that turns it
into a checkpoint (:meth:`TrainState.best_checkpoint`, :meth:`TrainState.last_checkpoint`) and
back (:meth:`TrainState.resume`); the functions below are its file layer.

Files are read with ``torch.load(weights_only=True)``: only tensors and plain containers come
back, so a crafted file cannot run code. Everything a checkpoint holds is therefore plain:
the random-number states are stored as lists, ints and tensors (:func:`rng_state`).
Writes are atomic (a ``.tmp`` beside the file, then a rename; the ``.tmp`` is removed on
failure) and a full disk becomes :class:`DiskFullError`. Any file that cannot be read back
(damaged, cut short, random bytes, a foreign pickle, missing keys) is a
:class:`CheckpointError` in plain words.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tl_core import diskspace
from tl_core.errors import CheckpointError

BEST = "best.pt"
LAST = "last.pt"
BEST_KEYS = ("model", "meta")
LAST_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "epoch",
    "step",
    "phase_start",
    "best_acc",
    "best_loss",
    "best_epoch",
    "rng",
    "meta",
)
KEYS = {BEST: BEST_KEYS, LAST: LAST_KEYS}
_RNG_KEYS = ("torch", "python", "numpy", "loader")


def unreadable(path: Path, advice: str = "train the run again") -> CheckpointError:
    """The one message for a saved model the app cannot use."""
    return CheckpointError(
        f"The saved model in {path} cannot be read (it is damaged or was not made by this "
        f"app); {advice}."
    )


# --------------------------------------------------------------------------- writing


def tensor_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state: about a checkpoint's size on disk."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(tensor_bytes(v) for v in state)
    return 0


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (exactly the keys listed for ``path.name``) to ``path`` atomically."""
    path = Path(path)
    keys = KEYS.get(path.name)
    if keys is not None and tuple(state) != keys:
        raise ValueError(f"{path.name} takes the keys {keys}, not {tuple(state)}")
    tmp = path.with_name(path.name + ".tmp")
    with diskspace.guard(path.parent, tensor_bytes(state) + diskspace.MB, cleanup=[tmp]):
        # A Python file object: a full disk is an OSError (a path gives an errno-less C++ error).
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def rng_state(loader: torch.Generator) -> dict[str, Any]:
    """Every random-number state a run uses, in types ``weights_only`` loading accepts."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "loader": loader.get_state(),
    }


def set_rng_state(state: dict[str, Any], loader: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached"]))
    loader.set_state(state["loader"])


# --------------------------------------------------------------------------- reading


def load(path: Path, advice: str = "train the run again") -> dict[str, Any]:
    """The checkpoint at ``path`` with every key listed for its name, on the CPU.

    Raises CheckpointError for anything that is not a checkpoint this app wrote.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"There is no saved model at {path}; {advice}.") from None
    except Exception:  # UnpicklingError, RuntimeError (not a zip), EOFError, ...
        raise unreadable(path, advice) from None
    keys = KEYS.get(path.name, BEST_KEYS)
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise unreadable(path, advice)
    meta = state["meta"]
    if (
        not isinstance(state["model"], dict)
        or not isinstance(meta, dict)
        or not isinstance(meta.get("classes"), list | tuple)
        or not isinstance(meta.get("config"), dict)
        or not isinstance(meta["config"].get("model"), str)
    ):
        raise unreadable(path, advice)
    if path.name == LAST and (
        not isinstance(state["rng"], dict) or any(k not in state["rng"] for k in _RNG_KEYS)
    ):
        raise unreadable(path, advice)
    return state


def load_weights(
    module: nn.Module | torch.optim.Optimizer | Any,
    weights: dict[str, Any],
    path: Path,
    advice: str = "train the run again",
) -> None:
    """``module.load_state_dict(weights)``; a mismatch (shapes, names) is a CheckpointError."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError):
        raise unreadable(path, advice) from None


# --------------------------------------------------------------------------- the state


@dataclass
class TrainState:
    """Where a run stands: its position, its best epoch so far, and what it is about."""

    meta: dict[str, Any]  # config, classes, data_config, timm_name: written into both files
    epoch: int = 0
    step: int = 0
    phase_start: int = 0
    best_acc: float = -1.0
    best_loss: float = math.inf
    best_epoch: int | None = None
    resumed: dict[str, Any] | None = None  # last.pt's optimizer and scheduler, until used

    def improve(self, val_acc: float, val_loss: float) -> bool:
        """Record this epoch's validation scores; True when they are the best so far."""
        better = val_acc > self.best_acc or (val_acc == self.best_acc and val_loss < self.best_loss)
        if better:
            self.best_acc, self.best_loss, self.best_epoch = val_acc, val_loss, self.epoch
        return better

    def best_checkpoint(self, model: nn.Module) -> dict[str, Any]:
        """best.pt's content (:data:`BEST_KEYS`): the weights and what they are."""
        meta = {**self.meta, "epoch": self.epoch, "val_accuracy": self.best_acc}
        return {"model": model.state_dict(), "meta": meta}

    def last_checkpoint(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generator: torch.Generator,
    ) -> dict[str, Any]:
        """last.pt's content (:data:`LAST_KEYS`): everything a resume needs."""
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "phase_start": self.phase_start,
            "best_acc": self.best_acc,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "rng": rng_state(generator),
            "meta": self.meta,
        }

    @classmethod
    def resume(
        cls, path: Path, model: nn.Module, generator: torch.Generator, meta: dict[str, Any]
    ) -> TrainState:
        """The state saved in last.pt; the model's weights and every random state restored."""
        saved = load(path, RESUME_ADVICE)
        load_weights(model, saved["model"], path, RESUME_ADVICE)
        try:
            set_rng_state(saved["rng"], generator)
            return cls(
                meta=meta,
                epoch=int(saved["epoch"]),
                step=int(saved["step"]),
                phase_start=int(saved["phase_start"]),
                best_acc=float(saved["best_acc"]),
                best_loss=float(saved["best_loss"]),
                best_epoch=None if saved["best_epoch"] is None else int(saved["best_epoch"]),
                resumed={
                    "phase_start": int(saved["phase_start"]),
                    "optimizer": saved["optimizer"],
                    "scheduler": saved["scheduler"],
                    "path": path,
                },
            )
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError):
            raise unreadable(path, RESUME_ADVICE) from None

    def restore_phase(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Give the phase last.pt stopped in its optimizer and scheduler back (once)."""
        saved = self.resumed
        if saved is None or saved["phase_start"] != self.phase_start:
            return
        load_weights(optimizer, saved["optimizer"], saved["path"], RESUME_ADVICE)
        load_weights(scheduler, saved["scheduler"], saved["path"], RESUME_ADVICE)
        self.resumed = None


RESUME_ADVICE = "start the run again instead of resuming it"
