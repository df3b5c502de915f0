"""Data the tests make for themselves."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parent.parent / "studio.py"


def make_shapes(root: Path, per_class: int = 30, size: int = 48, seed: int = 0) -> Path:
    """Three easy classes: bright squares, dark discs, horizontal stripes, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for label in ("square", "disc", "stripes"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = rng.normal(110, 25, (size, size, 3))
            if label == "square":
                img[10:38, 10:38] += 120
            elif label == "disc":
                img[(yy - 24) ** 2 + (xx - 24) ** 2 < 180] -= 90
            else:
                img[(yy // 6) % 2 == 0] += 100
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / label / f"{i}.png")
    return root


def app_test(page: str | None = None, project: str | None = None, timeout: float = 120) -> AppTest:
    """The app after its first run (on ``project`` when given), switched to ``page``."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    if project:
        at.query_params["project"] = project
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    return at


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by its content hash (to show a folder was only read)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def wait_until(predicate: Callable[[], object], timeout: float = 180, interval: float = 0.1):
    """``predicate()``'s first truthy value, asked every ``interval`` s; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out")


@dataclass(frozen=True)
class TrainedShapes:
    """A model trained on generated shapes in a workspace of its own (see :func:`train_shapes`)."""

    workspace: Path
    run_dir: Path
    data_root: Path  # the imported data set
    train: list[Path]  # the training pictures in it
    val: list[Path]  # the validation pictures in it


def train_shapes(
    tmp: Path,
    model: str = "test_efficientnet",
    *,
    per_class: int = 12,
    size: int = 48,
    epochs: int = 3,
) -> TrainedShapes:
    """Import generated shapes into a workspace under ``tmp`` and train ``model`` there in
    float32: the tiny test model from scratch with two layer groups learning, a real one from
    its pretrained weights with the new head only (batches of 8)."""
    from dataclasses import asdict

    from tl_core.data.dataset import import_folder, split_dataset
    from tl_core.models.device import ComputePlan
    from tl_core.runs.store import Store
    from tl_core.training.engine import TrainConfig, fit

    src = make_shapes(tmp / "src", per_class=per_class, size=size)
    store = Store(tmp / "ws")
    project = store.create_project()
    data_dir = store.new_data_dir(project.id)
    manifest = import_folder(src, data_dir)
    store.set_data_dir(project.id, data_dir)
    tiny = model == "test_efficientnet"
    cfg = TrainConfig(
        model=model,
        epochs=epochs,
        batch_size=8,
        pretrained=not tiny,
        trainable_groups=2 if tiny else 0,
    )
    run = store.create_job(project.id, asdict(cfg), data_dir, run_dir=tmp / "run", source="cli")
    split = split_dataset(manifest, cfg.val_fraction, cfg.seed)
    plan = ComputePlan("cpu", None, True, 2)  # validation in float32, whatever this CPU offers
    fit(cfg, split, manifest.root, manifest.classes, Path(run.run_dir), plan=plan)
    return TrainedShapes(
        tmp / "ws",
        Path(run.run_dir),
        manifest.root,
        [manifest.root / item.file for item in split.train],
        [manifest.root / item.file for item in split.val],
    )
