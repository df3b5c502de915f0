"""Where and how to compute: CUDA, Apple MPS or CPU, and the fastest safe precision there."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class ComputePlan:
    """The device, the autocast dtypes (None = plain fp32) and the memory layout to use.

    Inference (feature extraction, validation) and training steps get their own precision:
    on CPUs with bf16 units, bf16 doubles inference speed, but measured training steps ran
    slower in bf16 than in fp32 with channels_last (docs/PERFORMANCE.md).
    """

    device: str
    amp_dtype: torch.dtype | None
    channels_last: bool
    threads: int
    train_amp_dtype: torch.dtype | None = None

    @property
    def infer_batch(self) -> int:
        """Images per inference batch: on a CPU, 32 ran as fast as 64 with half the memory."""
        return 32 if self.device == "cpu" else 128

    def exact(self) -> ComputePlan:
        """The same plan in fp32: for the answers a user keeps (final scores, Try, export),
        which then agree across machines and with the exported model."""
        return replace(self, amp_dtype=None)

    def describe(self) -> str:
        def name(dtype: torch.dtype | None) -> str:
            return "fp32" if dtype is None else str(dtype).removeprefix("torch.")

        layout = ", channels_last" if self.channels_last else ""
        return (
            f"{self.device}, {name(self.amp_dtype)} inference, "
            f"{name(self.train_amp_dtype)} training{layout}, {self.threads} thread(s)"
        )

    def prepare_model(self, model: M) -> M:
        """``model`` on the plan's device, in its memory layout (channels_last where faster)."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def batch(self, x: torch.Tensor, training: bool = False) -> torch.Tensor:
        """A batch of inputs on the device, in the layout and dtype the model expects.

        Images (4-d) go channels_last where the plan says so; floating inputs (cached
        activations, stored in the inference dtype) become fp32 when this step runs in fp32.
        """
        x = x.to(self.device, non_blocking=True)
        if x.is_floating_point() and (self.train_amp_dtype if training else self.amp_dtype) is None:
            x = x.float()
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @contextlib.contextmanager
    def autocast(self, training: bool = False) -> Iterator[None]:
        """Mixed precision where it is safe and fast; a no-op context in fp32."""
        dtype = self.train_amp_dtype if training else self.amp_dtype
        with torch.autocast(
            device_type=self.device, dtype=dtype or torch.float32, enabled=dtype is not None
        ):
            yield


def _cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix units (AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def plan_compute(prefer: str = "auto", threads: int | None = None) -> ComputePlan:
    """Pick CUDA, then MPS, then CPU (or the ``prefer``-ed device) with its fast paths.

    ``TL_STUDIO_DEVICE`` overrides the choice (``cpu``, ``cuda``, ``mps``).
    """
    choice = os.environ.get("TL_STUDIO_DEVICE", prefer)
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "cuda"
        elif torch.backends.mps.is_available():
            choice = "mps"
        else:
            choice = "cpu"
    if threads is None and os.environ.get("TL_STUDIO_THREADS", "").isdigit():
        threads = max(1, int(os.environ["TL_STUDIO_THREADS"]))  # what the job runner allows
    if threads is None:
        affinity = getattr(os, "sched_getaffinity", None)
        threads = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    n_threads = threads
    if choice == "cuda":
        # bf16 needs no loss scaling; older GPUs without it train in fp32.
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return ComputePlan("cuda", dtype, True, n_threads, train_amp_dtype=dtype)
    if choice == "mps":
        return ComputePlan("mps", None, False, n_threads)
    dtype = torch.bfloat16 if _cpu_has_fast_bf16() else None
    return ComputePlan("cpu", dtype, True, n_threads)
