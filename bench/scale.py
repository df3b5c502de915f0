"""Does the cost per image stay constant as a data set grows? Import, train and predict at N images.

For each N it builds N camera-style JPEGs (about 500x375, like ordinary photos) from a small
labelled folder, then measures, each phase in a process of its own (so one phase's memory
does not hide in another's), through the entry points the app's worker uses:

- ``import``: :func:`tl_core.data.dataset.import_folder` of the N photos into a data folder;
- ``frozen``: a training job (:func:`tl_core.runs.worker.execute`, kind ``train``) with the
  whole backbone frozen, 10 epochs, the Train page's defaults otherwise;
- ``partial``: the same with the last two layer groups learning, 2 epochs;
- ``inference``: one pass over the same imported images, decode included, with the fastest
  settings (``bench/train_speed.py``'s ``single_pass_files``): the floor of frozen training.

For each phase: seconds, images per second and the process's peak RSS (``os.wait4``); per N
also the caches' size on disk, the frozen run's ratio to the inference pass and the cost per
image of import + frozen run next to N = 2,000 (or the smallest N when 2,000 is not run). It
prints one JSON object as its last line and writes a plot (``--plot``, SVG or PNG).

    uv run --group bench python bench/scale.py [SOURCE] [--sizes 500,2000,10000,20000]
        [--quick] [--plot docs/scale.svg] [--work DIR] [--model efficientnet_lite0]

SOURCE holds ``<class>/*`` images, or ``train/<class>/*`` (and ``val/`` or ``test/``); default:
the bundled demo set. ``--quick`` is N = 200, 500 with 2 frozen epochs and 1 partial one (a
smoke test, about a minute here). ``--work`` keeps the photos for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from tl_core.events import Event

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo" / "fashion_mnist"
SIZES = (500, 2000, 10_000, 20_000)
QUICK = (200, 500)
PHOTO = (500, 375)
REFERENCE_N = 2000
TARGET_N = 20_000  # the N the cost-per-image and memory targets are about
TARGETS = {"frozen_vs_inference": 1.3, "per_image_cost_vs_2000": 1.2, "peak_rss_mb": 2500}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


# ------------------------------------------------------------------------------ the photos


def source_images(src: Path) -> dict[str, list[Path]]:
    """The images of ``src`` by class, from ``<class>/*`` or from every split folder."""
    splits = [src / s for s in ("train", "val", "test") if (src / s).is_dir()] or [src]
    by_class: dict[str, list[Path]] = {}
    for split in splits:
        for sub in sorted(p for p in split.iterdir() if p.is_dir()):
            files = sorted(f for f in sub.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            by_class.setdefault(sub.name, []).extend(files)
    by_class = {c: f for c, f in by_class.items() if f}
    if len(by_class) < 2:
        raise SystemExit(f"{src} needs at least two class folders of images.")
    return by_class


def _photo(job: tuple[Path, Path, int]) -> None:
    """One camera-style JPEG: a random crop of the source image, rescaled, flipped and
    brightened at random, on a random lit background, with sensor-like noise."""
    source, out, seed = job
    rng = np.random.default_rng(seed)
    w, h = PHOTO
    with Image.open(source) as img:
        img = img.convert("RGB")
    sw, sh = img.size
    frac = rng.uniform(0.75, 1.0)  # a crop of 75-100% of each side
    cw, ch = max(1, int(sw * frac)), max(1, int(sh * frac))
    x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    side = int(rng.uniform(0.55, 0.95) * h)  # the object fills 55-95% of the height
    obj = img.crop((x0, y0, x0 + cw, y0 + ch)).resize(
        (max(1, side * cw // ch), side), Image.Resampling.BICUBIC
    )
    if rng.random() < 0.5:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a, b = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)  # background: a lit gradient
    t = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0.3, 1) + np.linspace(0, 1, h)[
        :, None, None
    ] * rng.uniform(0, 0.7)
    canvas = (a + (b - a) * np.clip(t, 0, 1)).astype(np.float32)
    ox, oy = int(rng.integers(0, max(1, w - obj.width))), int(rng.integers(0, h - obj.height + 1))
    patch = np.asarray(obj, dtype=np.float32) * rng.uniform(0.8, 1.2)
    canvas[oy : oy + patch.shape[0], ox : ox + patch.shape[1]] = patch[:, : w - ox]
    canvas += rng.normal(0, 5, canvas.shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).save(out, quality=88)


def make_photos(src: Path, pool: Path, n: int, dest: Path) -> Path:
    """``dest/<class>/*.jpg``: N photos (the same per class at every N, kept in ``pool``)."""
    by_class = source_images(src)
    per_class = max(1, n // len(by_class))
    jobs = []
    for c, (label, files) in enumerate(sorted(by_class.items())):
        for k in range(per_class):
            out = pool / label / f"{k:05d}.jpg"
            if not out.exists():
                jobs.append((files[k % len(files)], out, c * 1_000_003 + k))
    with ProcessPoolExecutor(os.cpu_count() or 1) as ex:
        list(ex.map(_photo, jobs, chunksize=64))
    shutil.rmtree(dest, ignore_errors=True)
    for label in by_class:
        (dest / label).mkdir(parents=True)
        for k in range(per_class):
            name = f"{k:05d}.jpg"
            try:
                os.link(pool / label / name, dest / label / name)
            except OSError:
                shutil.copy2(pool / label / name, dest / label / name)
    return dest


# ------------------------------------------------------------------------------ the phases


def phase_import(photos: str, data: str) -> dict[str, Any]:
    from tl_core.data.dataset import import_folder

    manifest = import_folder(Path(photos), Path(data))
    return {"images": len(manifest.items), "classes": len(manifest.classes)}


class _Sink:
    """A job's events, kept with their time (the phases of a run come from its progress)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []

    def emit(self, event: Event) -> None:
        self.events.append((time.perf_counter(), event))

    def stop_asked(self) -> bool:
        return False


def phase_train(data: str, run: str, model: str, groups: int, epochs: int) -> dict[str, Any]:
    """One training job as a worker runs it; its phases' seconds from its progress events."""
    from train_speed import PHASES

    from tl_core.config import RunSpec, TrainConfig
    from tl_core.events import Log, Progress
    from tl_core.runs import jobs
    from tl_core.runs.kinds import JobSpec
    from tl_core.runs.worker import JobContext, execute

    config = TrainConfig(model=model, trainable_groups=groups, epochs=epochs)
    spec = JobSpec(
        id="bench",
        kind="train",
        project_id="bench",
        params=RunSpec(config),
        data_dir=data,
        folder=run,
        threads=jobs.cpu_count(),
    )
    sink = _Sink()
    started = time.perf_counter()
    end = execute(spec, JobContext(spec, sink))
    finished = time.perf_counter()
    if end.status != "finished" or end.result is None:
        raise SystemExit(f"training ended {end.status}: {end.error}")
    marks: list[tuple[str, float]] = []
    for t, event in sink.events:
        if not isinstance(event, Progress):
            continue
        phase = PHASES.get(event.phase)
        if phase and (not marks or marks[-1][0] != phase):
            marks.append((phase, t))
    phases: dict[str, float] = {}
    for (phase, t), (_, t_next) in zip(marks, [*marks[1:], ("", finished)], strict=True):
        phases[phase] = round(phases.get(phase, 0.0) + t_next - t, 2)
    logs = [e.text for _, e in sink.events if isinstance(e, Log)]
    return {
        "seconds": finished - started,
        "val_accuracy": end.result["val_accuracy"],
        "phases": phases,
        "decodes_every_epoch": any("decodes them again" in line for line in logs),
        "compute": end.result.get("compute"),
    }


def phase_inference(data: str, model: str) -> dict[str, Any]:
    from train_speed import single_pass_files

    from tl_core.data.dataset import DatasetManifest

    manifest = DatasetManifest.load(Path(data))
    files = [Path(manifest.root) / i.file for i in manifest.items]
    seconds, phases = single_pass_files(files, model)
    return {"seconds": seconds, "phases": phases}


PHASE_FUNCS = {"import": phase_import, "train": phase_train, "inference": phase_inference}


def run_phase(name: str, work: Path, **kwargs: Any) -> dict[str, Any]:
    """``PHASE_FUNCS[name](**kwargs)`` in a fresh process with the worker's environment:
    its result, wall seconds (``wall_s``, the process's start included) and peak RSS in MB."""
    from tl_core.runs.executor import WORKER_ENV

    out = work / f"phase-{name}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, **WORKER_ENV}
    cmd = [sys.executable, __file__, "--phase", name, "--phase-args", json.dumps(kwargs)]
    started = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--phase-out", str(out)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the {name} phase failed (exit code {proc.returncode})")
    result = json.loads(out.read_text())
    result["wall_s"] = wall
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024)  # KiB on Linux
    return result


def _child(name: str, raw: str, out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_speed
    started = time.perf_counter()
    result = PHASE_FUNCS[name](**json.loads(raw))
    result.setdefault("seconds", time.perf_counter() - started)
    out.write_text(json.dumps(result))


# ------------------------------------------------------------------------------ one N


def disk_mb(path: Path) -> float:
    """Bytes on disk (allocated blocks, as ``du``) under ``path``, in MB."""
    if not path.exists():
        return 0.0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.lstat().st_blocks * 512 for p in files) / 1e6, 1)


def measure(n: int, src: Path, pool: Path, work: Path, model: str, epochs: tuple[int, int]):
    """Every phase at ``n`` images: the row of the table."""
    t0 = time.perf_counter()
    photos = make_photos(src, pool, n, work / f"photos-{n}")
    made = time.perf_counter() - t0
    data, runs = work / f"data-{n}", work / f"runs-{n}"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)
    imp = run_phase("import", work, photos=str(photos), data=str(data))
    common = {"data": str(data), "model": model}
    frozen = run_phase(
        "train", work, run=str(runs / "frozen"), groups=0, epochs=epochs[0], **common
    )
    partial = run_phase(
        "train", work, run=str(runs / "partial"), groups=2, epochs=epochs[1], **common
    )
    infer = run_phase("inference", work, **common)
    images = imp["images"]
    phases = {"import": imp, "frozen": frozen, "partial": partial, "inference": infer}
    row: dict[str, Any] = {
        "n": n,
        "images": images,
        "classes": imp["classes"],
        "seconds": {k: round(v["seconds"], 2) for k, v in phases.items()},
        "images_per_s": {k: round(images / v["seconds"], 1) for k, v in phases.items()},
        "peak_rss_mb": {k: v["peak_rss_mb"] for k, v in phases.items()},
        "frozen_vs_inference": round(frozen["seconds"] / infer["seconds"], 2),
        "import_plus_frozen_ms_per_image": round(
            1000 * (imp["seconds"] + frozen["seconds"]) / images, 2
        ),
        "cache_mb": disk_mb(data / "cache"),
        "data_mb": disk_mb(data),
        "runs_mb": disk_mb(runs),
        "val_accuracy": {
            "frozen": round(frozen["val_accuracy"], 4),
            "partial": round(partial["val_accuracy"], 4),
        },
        "decodes_every_epoch": frozen["decodes_every_epoch"] or partial["decodes_every_epoch"],
        "phases": {k: phases[k]["phases"] for k in ("frozen", "partial", "inference")},
        "compute": frozen["compute"],
        "photos_s": round(made, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    shutil.rmtree(runs, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    return row


def _verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ratios against N = 2,000 and each target: met (true), missed (false), or null
    when the N it is about (20,000) was not run."""
    ref = next((r for r in rows if r["n"] == REFERENCE_N), rows[0])
    for r in rows:
        r["per_image_cost_vs_2000"] = round(
            r["import_plus_frozen_ms_per_image"] / ref["import_plus_frozen_ms_per_image"], 2
        )
    big = next((r for r in rows if r["n"] == TARGET_N), None)
    return {
        "reference_n": ref["n"],
        "frozen_within_1.3x_of_inference": all(
            r["frozen_vs_inference"] <= TARGETS["frozen_vs_inference"] for r in rows
        ),
        "per_image_cost_within_1.2x_at_20000": None
        if big is None
        else big["per_image_cost_vs_2000"] <= TARGETS["per_image_cost_vs_2000"],
        "peak_rss_under_2500_mb_at_20000": None
        if big is None
        else max(big["peak_rss_mb"].values()) < TARGETS["peak_rss_mb"],
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Milliseconds per image and peak RSS per phase against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (
        ("import", "import"),
        ("frozen", "frozen run (10 epochs)"),
        ("partial", "last two groups (2 epochs)"),
        ("inference", "one inference pass"),
    ):
        left.plot(ns, [1000 * r["seconds"][key] / r["images"] for r in rows], "o-", label=label)
        right.plot(ns, [r["peak_rss_mb"][key] for r in rows], "o-", label=label)
    left.plot(
        ns, [r["import_plus_frozen_ms_per_image"] for r in rows], "k--", label="import + frozen"
    )
    right.axhline(TARGETS["peak_rss_mb"], color="red", linestyle=":", label="2.5 GB target")
    for ax, title in ((left, "ms per image"), (right, "peak RSS of the process (MB)")):
        ax.set_xscale("log")
        ax.set_xticks(ns, [f"{n:,}" for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("images (N)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    left.legend(fontsize=8)
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEMO)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--quick", action="store_true", help="N = 200, 500; fewer epochs")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--plot", type=Path, default=None, help="write the plot here")
    parser.add_argument("--work", type=Path, default=None, help="keep the photos here")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--phase-args", help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        _child(args.phase, args.phase_args, args.phase_out)
        return
    sizes = QUICK if args.quick else tuple(int(s) for s in args.sizes.split(","))
    epochs = (2, 1) if args.quick else (10, 2)
    work = args.work or Path(tempfile.mkdtemp(prefix="tl-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in sorted(sizes):
            rows.append(measure(n, args.source, work / "pool", work, args.model, epochs))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = {
        "source": str(args.source),
        "photo_size": f"{PHOTO[0]}x{PHOTO[1]}",
        "model": args.model,
        "epochs": {"frozen": epochs[0], "partial": epochs[1]},
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "targets": _verdict(rows),
        "rows": rows,
    }
    if args.plot:
        plot(rows, args.plot)
        out["plot"] = str(args.plot)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
