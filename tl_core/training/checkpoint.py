"""A run's checkpoints: best.pt and last.pt, written and read from one list of keys each.

Files are read with ``torch.load(weights_only=True)``: only tensors and plain containers come
back, so a crafted file cannot run code. Everything a checkpoint holds is therefore plain:
the random-number states are stored as lists, ints and tensors (:func:`rng_state`).
Writes are atomic (a ``.tmp`` beside the file, then a rename; the ``.tmp`` is removed on
failure) and a full disk becomes :class:`DiskFullError`. Any file that cannot be read back
(damaged, cut short, random bytes, a foreign pickle, missing keys) is a
:class:`CheckpointError` in plain words.
"""

from __future__ import annotations

import os
import random
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
