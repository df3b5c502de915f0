"""The compute plan: CUDA decided from the device's facts (no GPU needed), pinned loaders,
batches fit to free memory, decoding on every core; the CPU plan as it was."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from helpers import make_shapes
from PIL import Image
from torch.utils.data import TensorDataset

from tl_core.data import imageprep
from tl_core.data.dataset import ImageItem, import_folder, split_dataset
from tl_core.errors import DataError
from tl_core.models import device
from tl_core.models.catalog import DataConfig
from tl_core.models.device import ComputePlan, CudaFacts, cuda_plan, gpu_batch, plan_compute
from tl_core.training import inference, inputs
from tl_core.training.engine import QuietCallbacks, TrainConfig, fit
from tl_core.training.inference import load_trained

GiB = 1024**3
H200 = CudaFacts("NVIDIA H200", (9, 0), True, 139 * GiB, 141 * GiB)
A100 = CudaFacts("NVIDIA A100-SXM4-40GB", (8, 0), True, 39 * GiB, 40 * GiB)
RTX4090_BUSY = CudaFacts("NVIDIA GeForce RTX 4090", (8, 9), True, 6 * GiB, 24 * GiB)
T4 = CudaFacts("Tesla T4", (7, 5), False, 14 * GiB, 15 * GiB)
V100 = CudaFacts("Tesla V100-SXM2-16GB", (7, 0), False, 15 * GiB, 16 * GiB)
P100 = CudaFacts("Tesla P100-PCIE-16GB", (6, 0), False, 15 * GiB, 16 * GiB)
K80_FULL = CudaFacts("Tesla K80", (3, 7), False, 300 * 1024**2, 12 * GiB)


@pytest.mark.parametrize(
    ("facts", "infer", "train", "batch"),
    [
        (H200, torch.bfloat16, torch.bfloat16, 1024),
        (A100, torch.bfloat16, torch.bfloat16, 256),
        (RTX4090_BUSY, torch.bfloat16, torch.bfloat16, 64),
        (T4, torch.float16, None, 128),  # fp16 inference, fp32 steps: nothing to scale
        (V100, torch.float16, None, 128),
        (P100, None, None, 128),  # no fp16 tensor cores: fp32 throughout
        (K80_FULL, None, None, 32),  # nearly full: the smallest batch
    ],
    ids=lambda v: v.name if isinstance(v, CudaFacts) else None,
)
def test_the_cuda_plan_follows_the_device(facts, infer, train, batch) -> None:
    plan = cuda_plan(facts, threads=16)
    assert (plan.device, plan.amp_dtype, plan.train_amp_dtype) == ("cuda", infer, train)
    assert plan.channels_last and plan.pin_memory
    assert plan.infer_batch == batch
    assert plan.exact().amp_dtype is None and plan.exact().infer_batch == batch
    assert f"batches of {batch}" in plan.describe()


@pytest.mark.parametrize("free_gib", [0, 0.5, 3, 6, 12, 20, 47, 80, 139, 1000])
def test_gpu_batches_are_powers_of_two_within_bounds_and_grow_with_memory(free_gib) -> None:
    free = int(free_gib * GiB)
    batch = gpu_batch(free)
    assert device.GPU_BATCH_MIN <= batch <= device.GPU_BATCH_MAX
    assert batch & (batch - 1) == 0
    assert gpu_batch(free * 2) >= batch
    if batch > device.GPU_BATCH_MIN:  # what it takes is a quarter of the free memory at most
        assert batch * 24 * 1024**2 <= free / 4


@pytest.mark.parametrize("facts", [H200, T4, P100], ids=lambda f: f.name)
def test_plan_compute_asks_the_cuda_device_for_its_facts(monkeypatch, facts) -> None:
    monkeypatch.setattr(device, "cuda_facts", lambda index=None: facts)
    monkeypatch.setenv("TL_STUDIO_THREADS", "6")
    assert plan_compute("cuda") == cuda_plan(facts, 6)
    monkeypatch.setenv("TL_STUDIO_DEVICE", "cuda")
    assert plan_compute("cpu") == cuda_plan(facts, 6)


def test_the_cpu_plan_is_unchanged() -> None:
    plan = plan_compute("cpu", threads=2)
    assert plan.infer_batch == 32 and not plan.pin_memory and plan.channels_last
    assert plan.train_amp_dtype is None
    assert "batches of" not in plan.describe()
    assert ComputePlan("mps", None, False, 4).infer_batch == 128


def test_loaders_pin_host_batches_on_cuda_only() -> None:
    images = TensorDataset(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), torch.zeros(10))
    on_device = TensorDataset(torch.zeros(10, 4, device="meta"), torch.zeros(10, device="meta"))
    gpu = cuda_plan(A100, 4)
    assert gpu.loader(images).pin_memory and gpu.loader(images).batch_size == 256
    assert not gpu.loader(on_device, 8).pin_memory  # already there: nothing to copy
    cpu = plan_compute("cpu", threads=1)
    assert not cpu.loader(images).pin_memory and cpu.loader(images).batch_size == 32
    loader = cpu.loader(images, 4, shuffle=True, drop_last=True)
    assert len(loader) == 2


def test_non_blocking_batches_keep_their_values_and_layout() -> None:
    plan = ComputePlan("cpu", None, True, 1)
    x = torch.randint(0, 255, (3, 3, 16, 16), dtype=torch.uint8)
    y = plan.batch(x)
    assert torch.equal(y, x) and y.is_contiguous(memory_format=torch.channels_last)
    assert plan.batch(x.float().bfloat16(), training=True).dtype == torch.float32


class _Pinned(ComputePlan):
    """A CPU plan whose loaders pin like CUDA's (pinning is skipped without a GPU)."""

    @property
    def pin_memory(self) -> bool:
        return True


@pytest.mark.parametrize(("trainable", "cache"), [(0, True), (1, True), (1, False)])
def test_training_runs_through_pinned_loaders(tmp_path, trainable, cache) -> None:
    manifest = import_folder(make_shapes(tmp_path / "src", per_class=6), tmp_path / "data")
    split = split_dataset(manifest, 0.34, seed=0)
    plan = _Pinned("cpu", None, True, 1)
    cfg = TrainConfig(
        model="test_efficientnet", trainable_groups=trainable, epochs=2, pretrained=False,
        cache=cache,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="pin_memory"):
        result = fit(cfg, split, manifest.root, manifest.classes, tmp_path / "run", plan=plan)
    assert result.status == "finished" and result.epochs_done == 2


@pytest.mark.parametrize("cores", [1, 2, 5, 16, 64, 200])
def test_decoding_uses_every_core_this_process_may_use(monkeypatch, cores) -> None:
    monkeypatch.setattr(imageprep.os, "sched_getaffinity", lambda _: set(range(cores)), False)
    assert imageprep.decode_workers() == min(cores, imageprep.MAX_DECODE_WORKERS)


def _photos(root, n: int) -> list[ImageItem]:
    root.mkdir()
    items = []
    for i in range(n):
        Image.new("RGB", (40 + i, 30), (i * 9 % 255, 80, 200)).save(root / f"{i}.png")
        items.append(ImageItem(f"{i}.png", "a", None, f"{i}.png", "", 40 + i, 30))
    return items


def _threads_seen(monkeypatch) -> set[int]:
    seen: set[int] = set()
    real = inputs.load_square

    def slow_square(*args):
        seen.add(threading.get_ident())
        time.sleep(0.02)  # long enough for the pool to hand work to every thread
        return real(*args)

    monkeypatch.setattr(inputs, "load_square", slow_square)
    return seen


@pytest.mark.parametrize("workers", [3, 6, 8])
def test_the_decoded_cache_is_filled_on_every_core(tmp_path, monkeypatch, workers) -> None:
    items = _photos(tmp_path / "data", 24)
    monkeypatch.setattr(inputs, "decode_workers", lambda: workers)
    seen = _threads_seen(monkeypatch)
    decoded = inputs.decode_all(tmp_path / "data", items, 16, "bicubic", 1 << 30)
    assert decoded is not None and decoded.shape == (24, 3, 16, 16)
    assert len(seen) == workers


@pytest.mark.parametrize("augment", ["none", "light", "strong"])
def test_batches_decoded_on_the_fly_use_several_cores_and_match_one_at_a_time(
    tmp_path, monkeypatch, augment
) -> None:
    """Over the memory budget each batch decodes again: on every core, same tensors."""
    items = _photos(tmp_path / "data", 12)
    cfg = DataConfig((3, 16, 16), "bicubic", (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), 0.875, "center")
    train_tf, _ = inputs.make_transforms(cfg, augment)
    data = inputs.ImageTensors(
        None, range(12), tmp_path / "data", items, list(range(12)), train_tf, 18, "bicubic"
    )
    torch.manual_seed(3)
    one_by_one = [data[i] for i in range(12)]
    monkeypatch.setattr(inputs, "decode_workers", lambda: 4)
    seen = _threads_seen(monkeypatch)
    torch.manual_seed(3)
    batch = data.__getitems__(list(range(12)))
    assert len(seen) == 4
    for (x, y), (x1, y1) in zip(batch, one_by_one, strict=True):
        assert torch.equal(x, x1) and y == y1
    seen.clear()
    images, labels = next(iter(plan_compute("cpu", threads=1).loader(data, 6)))
    assert images.shape == (6, 3, 16, 16) and labels.tolist() == list(range(6))
    assert len(seen) == 4  # the DataLoader asks for whole batches


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    manifest = import_folder(make_shapes(root / "src", per_class=6), root / "data")
    split = split_dataset(manifest, 0.34, seed=0)
    cfg = TrainConfig(model="test_efficientnet", epochs=1, pretrained=False)
    plan = ComputePlan("cpu", None, False, 1)
    fit(cfg, split, manifest.root, manifest.classes, root / "run", QuietCallbacks(), plan=plan)
    return root / "run", [manifest.root / i.file for i in manifest.items]


@pytest.mark.parametrize("bad_at", [0, 3, 9])
def test_prediction_decodes_on_every_core_in_order(trained, tmp_path, monkeypatch, bad_at):
    run_dir, files = trained
    model = load_trained(run_dir, plan=ComputePlan("cpu", None, False, 1))
    one_by_one = np.stack([model.logits([f])[0] for f in files[:10]])
    monkeypatch.setattr(inference, "decode_workers", lambda: 4)
    np.testing.assert_allclose(model.logits(files[:10]), one_by_one, atol=1e-4)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    pictures = list(files[:10])
    pictures.insert(bad_at, broken)
    pictures.insert(bad_at + 2, tmp_path / "missing.jpg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        model.logits(pictures)
