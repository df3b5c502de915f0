"""Where and how to compute: CUDA, Apple MPS or CPU, and the fastest safe precision there."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

M = TypeVar("M", bound=nn.Module)

# Inference batches on a GPU: a quarter of the free memory at the plan's start (other runs
# may share the card), at a generous 24 MiB per 224-pixel image (activations of the largest
# catalog model in bf16), as a power of two between the CPU's 32 and 1024.
_GPU_BATCH_SHARE = 0.25
_GPU_BYTES_PER_IMAGE = 24 * 1024**2
GPU_BATCH_MIN, GPU_BATCH_MAX = 32, 1024


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
    infer_batch_size: int = 0  # 0: the device's default (see infer_batch)

    @property
    def infer_batch(self) -> int:
        """Images per inference batch (frozen passes, validation): on a CPU, 32 ran as fast as
        64 with half the memory; on a GPU, what its free memory allows (:func:`gpu_batch`)."""
        if self.infer_batch_size > 0:
            return self.infer_batch_size
        return 32 if self.device == "cpu" else 128

    @property
    def pin_memory(self) -> bool:
        """Whether host batches go through page-locked memory (asynchronous copies to CUDA)."""
        return self.device == "cuda"

    def loader(self, data: Dataset, batch_size: int | None = None, **kwargs: Any) -> DataLoader:
        """A DataLoader over ``data`` for this plan: ``infer_batch`` unless told otherwise, host
        batches pinned on CUDA (then :meth:`batch` copies them without blocking the host).
        Tensors already on the device are not pinned (they need no copy)."""
        on_device = isinstance(data, TensorDataset) and any(
            t.device.type != "cpu" for t in data.tensors
        )
        return DataLoader(
            data,
            batch_size=batch_size or self.infer_batch,
            pin_memory=self.pin_memory and not on_device,
            **kwargs,
        )

    def exact(self) -> ComputePlan:
        """The same plan in fp32: for the answers a user keeps (final scores, Try, export),
        which then agree across machines and with the exported model."""
        return replace(self, amp_dtype=None)

    def describe(self) -> str:
        def name(dtype: torch.dtype | None) -> str:
            return "fp32" if dtype is None else str(dtype).removeprefix("torch.")

        layout = ", channels_last" if self.channels_last else ""
        batch = f", batches of {self.infer_batch} for inference" if self.device == "cuda" else ""
        return (
            f"{self.device}, {name(self.amp_dtype)} inference, "
            f"{name(self.train_amp_dtype)} training{layout}, {self.threads} thread(s){batch}"
        )

    def prepare_model(self, model: M) -> M:
        """``model`` on the plan's device, in its memory layout (channels_last where faster)."""
        if self.device == "cuda":
            # Fixed image sizes: cuDNN may time its convolution kernels once and keep the best.
            torch.backends.cudnn.benchmark = True
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


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Small matrices (a head alone, a probe): one thread is as fast, and far faster when
    other work loads the CPU (the other threads only wait for work)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix units (AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class CudaFacts:
    """What the CUDA plan is decided from: read by :func:`cuda_facts`, or made up in tests."""

    name: str
    capability: tuple[int, int]  # compute capability (8, 0) = A100, (9, 0) = H100/H200
    bf16: bool  # native bf16 units (compute capability 8.0 and later)
    free_bytes: int  # torch.cuda.mem_get_info()[0]
    total_bytes: int


def cuda_facts(index: int | None = None) -> CudaFacts:
    """The facts of the current (or ``index``-th) CUDA device."""
    device = torch.device("cuda", torch.cuda.current_device() if index is None else index)
    props = torch.cuda.get_device_properties(device)
    free, total = torch.cuda.mem_get_info(device)
    return CudaFacts(
        props.name,
        (props.major, props.minor),
        # Native bf16 only: older GPUs "support" it by emulation, slower than fp32.
        bool(torch.cuda.is_bf16_supported(including_emulation=False)),
        int(free),
        int(total),
    )


def gpu_batch(free_bytes: int) -> int:
    """Images per inference batch on a GPU with ``free_bytes`` free (see _GPU_BATCH_SHARE)."""
    fits = int(free_bytes * _GPU_BATCH_SHARE) // _GPU_BYTES_PER_IMAGE
    if fits < GPU_BATCH_MIN:
        return GPU_BATCH_MIN
    return min(GPU_BATCH_MAX, 1 << (fits.bit_length() - 1))


def cuda_plan(facts: CudaFacts, threads: int) -> ComputePlan:
    """The plan for a CUDA device with these ``facts``; a pure function of them.

    bf16 autocast for inference and training where the GPU has it (Ampere and later): no
    loss scaling needed. Older GPUs with fp16 tensor cores (compute capability 7.x: V100,
    T4) run inference in fp16 and training steps in fp32, so no gradient ever needs scaling;
    older ones still run fp32. channels_last everywhere; inference batches fit free memory.
    """
    if facts.bf16:
        infer, train = torch.bfloat16, torch.bfloat16
    elif facts.capability >= (7, 0):
        infer, train = torch.float16, None
    else:
        infer, train = None, None
    return ComputePlan(
        "cuda",
        infer,
        True,
        threads,
        train_amp_dtype=train,
        infer_batch_size=gpu_batch(facts.free_bytes),
    )


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
        return cuda_plan(cuda_facts(), n_threads)
    if choice == "mps":
        return ComputePlan("mps", None, False, n_threads)
    dtype = torch.bfloat16 if _cpu_has_fast_bf16() else None
    return ComputePlan("cpu", dtype, True, n_threads)
