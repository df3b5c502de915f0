"""Camera classes at classroom speed: from the last recorded frame to a usable model.

    uv run --group test python bench/camera.py [--frames 50] [--epochs N] [--batch N]
        [--cold] [--datasets DIR]

Makes 3 classes x 50 camera frames (640x480 JPEG, as a browser sends them), each class an
object of one real image set of ``/work/shared/datasets`` (a Fashion-MNIST bag, an Omniglot
character, a grass texture) held in front of a plain background, moving a little, in takes
of 10 frames, each take a different picture of its set. The frames go through the service as
the Data page sends them (``camera_add_frames``, 5 at a time), then ``camera_commit`` makes
them the project's data with its classroom-speed settings, and Train is pressed with those
settings through the real queue: the app server's runtime (``supervisor.serve``) with its warm
worker (``--cold`` also times a new worker process, no server). A held-out check scores
frames of pictures no take used (the sets' test images) with the run's saved model.

Prints one JSON line: commit seconds, click to first curve point, click to finish, from the
last frame to the finished model, validation and held-out accuracy, for the warm worker (and
the cold one), with the settings used and the machine's load average.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from warm_start import serve_warm  # noqa: E402 - the same warm queue as bench/warm_start.py

from tl_core import service  # noqa: E402
from tl_core.data.dataset import DatasetManifest, split_dataset  # noqa: E402
from tl_core.runs import supervisor  # noqa: E402
from tl_core.runs.store import Store  # noqa: E402

# ../shared/datasets beside the checkout (or beside the folder of checkouts)
DATASETS = next(
    (p / "shared" / "datasets" for p in ROOT.parents if (p / "shared" / "datasets").is_dir()),
    ROOT.parent / "shared" / "datasets",
)
# class name -> (image set, its class): three distinct objects
OBJECTS = {
    "bag": ("fashion_mnist_demo50", "bag"),
    "letter": ("omniglot_tagalog", "character05"),
    "grass": ("skimage_textures", "grass"),
}
TAKE = 10  # frames per press of the record button
SIZE = (640, 480)


def _sources(root: Path, split: str) -> dict[str, list[Path]]:
    return {
        name: sorted((root / ds / split / cls).glob("*.png")) for name, (ds, cls) in OBJECTS.items()
    }


def _frame(src: Image.Image, k: int, rng: np.random.Generator, tint: int) -> bytes:
    """One camera frame: the picture held up (about 260 px) in front of a plain wall,
    drifting and turning a little from frame to frame, with sensor noise."""
    w, h = SIZE
    wall = np.empty((h, w, 3), np.float64)
    wall[:] = np.linspace(150, 110, w)[None, :, None] + np.array([0, 5, 10]) + tint
    side = int(260 * (1 + 0.05 * np.sin(k / 3)))
    obj = src.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    obj = obj.rotate(4 * np.sin(k / 4), resample=Image.Resampling.BILINEAR, fillcolor=(128,) * 3)
    x = int(w / 2 - side / 2 + 40 * np.sin(k / 5))
    y = int(h / 2 - side / 2 + 20 * np.cos(k / 6))
    canvas = Image.fromarray(wall.astype(np.uint8))
    canvas.paste(obj, (x, y))
    noisy = np.asarray(canvas, np.float64) + rng.normal(0, 4, (h, w, 3))
    out = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=85)
    return out.getvalue()


def frames_of(sources: list[Path], n: int, seed: int) -> list[list[bytes]]:
    """``n`` frames in takes of :data:`TAKE`, each take a different picture of the set."""
    rng = np.random.default_rng(seed)
    takes = []
    for t in range((n + TAKE - 1) // TAKE):
        with Image.open(sources[t % len(sources)]) as src:
            src.load()
            count = min(TAKE, n - t * TAKE)
            takes.append(
                [_frame(src, 10 * t + k, rng, int(rng.integers(-15, 15))) for k in range(count)]
            )
    return takes


def _record(store: Store, project_id: str, root: Path, n: int) -> float:
    """Send every frame as the page does (5 at a time); the time of the last one."""
    for c, (name, files) in enumerate(_sources(root, "train").items()):
        for t, take in enumerate(frames_of(files, n, c)):
            for start in range(0, len(take), 5):
                service.camera_add_frames(
                    store, project_id, name, take[start : start + 5], f"take{t}"
                )
    return time.perf_counter()


def _train(store: Store, project_id: str, overrides: dict, clicked: float) -> dict:
    project = store.project(project_id)
    assert project is not None
    config = replace(project.typed_settings.train, **overrides)
    manifest = DatasetManifest.load(Path(project.data_dir or ""))
    run = service.submit_training(store, project, config)
    first = None
    phases: list[tuple[float, str]] = []  # (seconds after the click, the status line's start)
    while True:
        now = store.job(run.id)
        assert now is not None
        said = " ".join((now.message or now.status).split()[:3])
        if not phases or phases[-1][1] != said:
            phases.append((round(time.perf_counter() - clicked, 2), said))
        if first is None and store.epochs(run.id):
            first = time.perf_counter() - clicked
        if not now.active:
            break
        supervisor.pump(store)
        time.sleep(0.02)
    return {
        "first_point_s": round(first or float("nan"), 2),
        "finish_s": round(time.perf_counter() - clicked, 2),
        "status": now.status,
        "error": now.error,
        "val_accuracy": (now.result or {}).get("val_accuracy"),
        "n_val": len(split_dataset(manifest, config.val_fraction, config.seed).val),
        "run_dir": now.run_dir,
        "phases": phases,
        "config": {
            k: getattr(config, k) for k in ("trainable_groups", "epochs", "batch_size", "augment")
        },
    }


def _held_out(run_dir: str, root: Path) -> float:
    """Accuracy on frames of pictures no take used (the image sets' test pictures)."""
    from tl_core.training.inference import load_trained

    model = load_trained(Path(run_dir))
    images, labels = [], []
    for c, (name, files) in enumerate(_sources(root, "test").items()):
        for take in frames_of(files[:4], 20, 100 + c):
            images += [Image.open(io.BytesIO(f)).convert("RGB") for f in take]
            labels += [name] * len(take)
    probs = model.predict(images)
    guessed = [model.classes[int(k)] for k in probs.argmax(1)]
    return round(float(np.mean([g == t for g, t in zip(guessed, labels, strict=True)])), 3)


def one_case(store: Store, root: Path, n: int, overrides: dict) -> dict:
    project = service.camera_project(store, None)
    last_frame = _record(store, project.id, root, n)
    t = time.perf_counter()
    project = service.camera_commit(store, project.id)
    commit_s = time.perf_counter() - t
    out = {"commit_s": round(commit_s, 2), "preset": project.typed_settings.preset}
    clicked = time.perf_counter()
    out.update(_train(store, project.id, overrides, clicked))
    out["last_frame_to_model_s"] = round(time.perf_counter() - last_frame, 2)
    if out["status"] == "finished":
        out["held_out_accuracy"] = _held_out(out["run_dir"], root)
    out.pop("run_dir")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=50, help="frames per class")
    parser.add_argument("--epochs", type=int, help="instead of the classroom default")
    parser.add_argument("--batch", type=int, help="instead of the classroom default")
    parser.add_argument("--cold", action="store_true", help="also time a new worker process")
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    opts = parser.parse_args()
    overrides = {}
    if opts.epochs:
        overrides["epochs"] = opts.epochs
    if opts.batch:
        overrides["batch_size"] = opts.batch
    out: dict = {
        "classes": len(OBJECTS),
        "frames_per_class": opts.frames,
        "load_before": round(os.getloadavg()[0], 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if opts.cold:
            cold = Store(Path(tmp) / "cold")
            out["cold"] = one_case(cold, opts.datasets, opts.frames, overrides)
        store, out["worker_warm_up_s"] = serve_warm(Path(tmp) / "warm")
        out["warm"] = one_case(store, opts.datasets, opts.frames, overrides)
        out["warm_again"] = one_case(store, opts.datasets, opts.frames, overrides)
        supervisor.shutdown_all()
    out["load_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(out))
    return 0 if out["warm"]["status"] == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
