"""How fast does the engine train, next to the plain loop a tutorial would write?

Runs in one process, side by side, with the same model, seed, epochs and freeze:

- the engine (``tl_core.training.engine.fit``: decode once, cached frozen prefix, bf16/channels_last
  where the CPU has them), with the whole backbone frozen and with the last two groups
  trainable; each engine run starts from a fresh import of the folder, so it pays for every
  decode it needs;
- the plain loop: torchvision ``ImageFolder`` + ``DataLoader`` decoding every image every
  epoch, timm's own transforms, a full forward (fp32) every step, the same optimiser, schedule
  and frozen groups as the engine;
- one inference pass over the training and validation images, decode included, with the
  engine's fastest settings: the physical floor of frozen-backbone training.

It prints one JSON object as its last line.

    uv run --group test python bench/train_speed.py [FOLDER] [--epochs 10]
        [--photo-size 2048x1536] [--limit 400] [--photos-dir DIR] [--frozen-only]

FOLDER holds ``train/<class>/*`` and ``val/<class>/*`` (or ``test/``); default: the bundled
demo set. ``--photo-size`` first writes JPEG copies at that size (ordinary camera photos cost
far more to decode than the demo's 28x28 PNGs), ``--limit`` caps the training images,
``--photos-dir`` keeps those copies for the next run. ``engine_phases`` splits each engine run
into its phases (the import, then ``fit``'s own, from its status lines), ``single_pass_phases``
the inference pass.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import timm.data
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader

from tl_core.data.dataset import MAX_SIDE, import_folder, split_dataset
from tl_core.events import Progress
from tl_core.models.catalog import create_model, get_spec
from tl_core.models.device import plan_compute
from tl_core.models.freezing import set_train_mode
from tl_core.training.engine import (
    QuietCallbacks,
    TrainConfig,
    _phase_optimizer,
    evaluate,
    fit,
    phases,
    seed_everything,
)

ROOT = Path(__file__).resolve().parent.parent
MALLOC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def _val_dir(folder: Path) -> Path:
    return folder / "val" if (folder / "val").is_dir() else folder / "test"


def make_photos(src: Path, dest: Path, size: tuple[int, int], limit: int | None) -> Path:
    """JPEG copies of ``src`` at camera size (smooth upscales plus sensor-like noise)."""
    rng = np.random.default_rng(0)
    for split, cap in (("train", limit), ("val", None)):
        files = sorted((src / "train" if split == "train" else _val_dir(src)).glob("*/*"))
        if cap:
            per_class: dict[str, int] = {}
            n_classes = len({f.parent.name for f in files})
            keep = []
            for f in files:
                if per_class.get(f.parent.name, 0) < cap // n_classes:
                    per_class[f.parent.name] = per_class.get(f.parent.name, 0) + 1
                    keep.append(f)
            files = keep
        for f in files:
            out = dest / split / f.parent.name / (f.stem + ".jpg")
            out.parent.mkdir(parents=True, exist_ok=True)
            img = Image.open(f).convert("RGB").resize(size, Image.Resampling.BICUBIC)
            noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 6, (size[1], size[0], 3))
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(out, quality=90)
    return dest


# The engine's progress phases (tl_core.events.PHASES), and the name each one has here.
PHASES = {
    "load": "load_model",
    "decode": "decode_cache",
    "frozen": "frozen_pass",
    "train": "train",
    "score": "final_scoring",
}


class PhaseClock(QuietCallbacks):
    """Seconds per phase of ``fit``, from the time each phase's progress first appears."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []

    def on_progress(self, progress: Progress) -> None:
        phase = PHASES.get(progress.phase)
        if phase is not None and (not self.marks or self.marks[-1][0] != phase):
            self.marks.append((phase, time.perf_counter()))

    def seconds(self, end: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for (phase, t), (_, t_next) in zip(self.marks, [*self.marks[1:], ("", end)], strict=True):
            out[phase] = round(out.get(phase, 0.0) + t_next - t, 2)
        return out


def engine_run(folder: Path, cfg: TrainConfig, work: Path) -> tuple[float, float, dict[str, float]]:
    """Import ``folder`` from scratch and train on it: (seconds, accuracy, seconds per phase)."""
    started = time.perf_counter()
    manifest = import_folder(_train_val(folder, work / "src"), work / "data")
    split = split_dataset(manifest)
    imported = time.perf_counter()
    clock = PhaseClock()
    result = fit(cfg, split, manifest.root, manifest.classes, work / "run", clock)
    end = time.perf_counter()
    phases_s = {"import": round(imported - started, 2), "fit_setup": 0.0, **clock.seconds(end)}
    phases_s["fit_setup"] = round(clock.marks[0][1] - imported if clock.marks else 0.0, 2)
    return end - started, float(result.val_accuracy or 0.0), phases_s


def _train_val(folder: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train").symlink_to((folder / "train").resolve())
    (dest / "val").symlink_to(_val_dir(folder).resolve())
    return dest


def naive_run(folder: Path, cfg: TrainConfig) -> tuple[float, float]:
    """The tutorial loop: decode and transform every image every epoch, full forward."""
    started = time.perf_counter()
    generator = seed_everything(cfg.seed)
    train_set = torchvision.datasets.ImageFolder(folder / "train")
    model = create_model(get_spec(cfg.model), num_classes=len(train_set.classes))
    data_cfg = timm.data.resolve_model_data_config(model)
    train_set.transform = timm.data.create_transform(**data_cfg)  # no augmentation, as cfg
    val_set = torchvision.datasets.ImageFolder(
        _val_dir(folder), transform=timm.data.create_transform(**data_cfg)
    )
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=generator,
        drop_last=len(train_set) > cfg.batch_size,
    )
    val_loader = DataLoader(val_set, batch_size=64)
    fp32 = plan_compute("cpu")
    fp32 = type(fp32)("cpu", None, False, fp32.threads)
    best = 0.0
    for trainable, n_epochs in phases(cfg):
        optimizer, scheduler = _phase_optimizer(model, cfg, trainable, n_epochs, len(loader))
        for _ in range(n_epochs):
            set_train_mode(model)
            for images, labels in loader:
                loss = torch.nn.functional.cross_entropy(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            best = max(best, evaluate(model, val_loader, fp32)[1])
    return time.perf_counter() - started, best


def single_pass(folder: Path, model_key: str) -> tuple[float, dict[str, float]]:
    """Decode every training and validation image once and run the model on it:
    (seconds, seconds per phase)."""
    files = sorted((folder / "train").glob("*/*")) + sorted(_val_dir(folder).glob("*/*"))
    return single_pass_files(files, model_key)


@torch.inference_mode()
def single_pass_files(files: list[Path], model_key: str) -> tuple[float, dict[str, float]]:
    """Decode each of ``files`` once and run the model on it, as fast as this machine allows
    (every core decoding, channels_last, the plan's autocast): (seconds, seconds per phase)."""
    started = time.perf_counter()
    plan = plan_compute()
    model = create_model(get_spec(model_key), num_classes=2).eval()
    model = model.to(memory_format=torch.channels_last)
    loaded = time.perf_counter()
    tf = timm.data.create_transform(**timm.data.resolve_model_data_config(model))

    def load(f: Path) -> torch.Tensor:
        with Image.open(f) as img:
            img.draft("RGB", (MAX_SIDE, MAX_SIDE))  # as the engine's import decodes
            return tf(img.convert("RGB"))

    # Decoding on every core, as the engine's import does, in the plan's inference batches.
    step = plan.infer_batch
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        for i in range(0, len(files), step):
            batch = list(pool.map(load, files[i : i + step]))
            x = torch.stack(batch).contiguous(memory_format=torch.channels_last)
            with plan.autocast():
                model(x)
    end = time.perf_counter()
    return end - started, {
        "load_model": round(loaded - started, 2),
        "decode_and_forward": round(end - loaded, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "folder", nargs="?", type=Path, default=ROOT / "assets" / "demo" / "fashion_mnist"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--photo-size", default=None, help="e.g. 2048x1536")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument(
        "--photos-dir",
        type=Path,
        default=None,
        help="keep the generated photos here and reuse them when they are there already",
    )
    parser.add_argument(
        "--frozen-only",
        action="store_true",
        help="only the frozen-backbone engine run and the inference pass (no plain loop)",
    )
    args = parser.parse_args()
    if os.environ.get("GLIBC_TUNABLES") != MALLOC:  # the worker's allocator setting
        os.execve(
            sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": MALLOC}
        )

    work = Path(tempfile.mkdtemp(prefix="tl-bench-"))
    folder = args.folder
    if args.photo_size:
        w, h = (int(v) for v in args.photo_size.lower().split("x"))
        kept = args.photos_dir
        if kept is not None and (kept / "train").is_dir() and (kept / "val").is_dir():
            folder = kept
        else:
            folder = make_photos(folder, kept or work / "photos", (w, h), args.limit)
    n_images = sum(1 for _ in (folder / "train").glob("*/*"))
    n_val = sum(1 for _ in _val_dir(folder).glob("*/*"))
    out: dict[str, object] = {
        "folder": str(args.folder),
        "photo_size": args.photo_size,
        "train_images": n_images,
        "val_images": n_val,
        "epochs": args.epochs,
        "model": args.model,
        "compute": plan_compute().describe(),
    }
    base = TrainConfig(model=args.model, epochs=args.epochs, augment="none", seed=0)
    for prefix, groups in (("", 0), ("partial_", 2)):
        cfg = TrainConfig(**{**base.__dict__, "trainable_groups": groups})
        engine_s, engine_acc, engine_phases = engine_run(folder, cfg, work / f"engine{groups}")
        out[f"{prefix}engine_phases"] = engine_phases
        if args.frozen_only:
            out.update(
                {"engine_seconds": round(engine_s, 2), "engine_val_accuracy": round(engine_acc, 4)}
            )
            break
        naive_s, naive_acc = naive_run(folder, cfg)
        out.update(
            {
                f"{prefix}engine_seconds": round(engine_s, 2),
                f"{prefix}naive_seconds": round(naive_s, 2),
                f"{prefix}speedup_vs_naive": round(naive_s / engine_s, 2),
                f"{prefix}engine_val_accuracy": round(engine_acc, 4),
                f"{prefix}naive_val_accuracy": round(naive_acc, 4),
            }
        )
        print(
            json.dumps({k: v for k, v in out.items() if k.startswith(prefix or "engine")}),
            flush=True,
        )
    floor, floor_phases = single_pass(folder, args.model)
    out["single_pass_seconds"] = round(floor, 2)
    out["single_pass_phases"] = floor_phases
    out["ratio_to_single_pass"] = round(float(out["engine_seconds"]) / floor, 2)
    # The app imports once (a job of its own) and trains many times: the run alone.
    run_s = float(out["engine_seconds"]) - float(out["engine_phases"]["import"])
    out["run_without_import_ratio"] = round(run_s / floor, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
