"""No file the app reads from a run folder can run code, and a damaged one is a plain message."""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_shapes

from tl_core.analysis import evaluation
from tl_core.analysis.gradcam import heatmap
from tl_core.data.dataset import DatasetManifest, import_folder, split_dataset
from tl_core.errors import CheckpointError, StudioError
from tl_core.export import bundle as export
from tl_core.models.device import ComputePlan
from tl_core.runs.recording import run_worker
from tl_core.runs.store import Store
from tl_core.training import checkpoint
from tl_core.training.engine import QuietCallbacks, TrainConfig, fit
from tl_core.training.inference import load_trained

CPU = ComputePlan("cpu", None, False, 2)
CFG = TrainConfig(
    model="test_efficientnet", trainable_groups=1, epochs=2, batch_size=8, pretrained=False
)


class _Stop(QuietCallbacks):
    """Stops after the first epoch, so last.pt exists and Resume has work to do."""

    def __init__(self) -> None:
        self.epochs = 0

    def on_epoch(self, metrics) -> None:
        self.epochs += 1

    def should_stop(self) -> bool:
        return self.epochs >= 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder after 2 epochs, run folder stopped after 1 epoch) and their data set."""
    base = tmp_path_factory.mktemp("safe")
    manifest = import_folder(make_shapes(base / "src", per_class=10, size=32), base / "data")
    split = split_dataset(manifest, 0.3, 0)
    fit(CFG, split, manifest.root, manifest.classes, base / "done", plan=CPU)
    fit(CFG, split, manifest.root, manifest.classes, base / "cut", _Stop(), plan=CPU)
    return base, manifest.root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -------------------------------------------------------------------- planted files


class _OpenFile:
    """Unpickling this opens (creates) a file: code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Shell:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _plant(path: Path, kind: str, marker: Path) -> None:
    """Replace ``path`` with a hostile or damaged file of the given kind."""
    good = path.read_bytes() if path.exists() else b""
    if kind == "evil-open":
        torch.save({"model": _OpenFile(marker), "meta": {}}, path)
    elif kind == "evil-shell":
        torch.save({"model": {}, "meta": _Shell(marker), "rng": _Shell(marker)}, path)
    elif kind == "evil-plain-pickle":  # a bare pickle, not torch's zip format
        path.write_bytes(pickle.dumps({"model": _Shell(marker), "meta": {}}, protocol=2))
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "missing-keys":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "not-a-dict":
        torch.save([torch.zeros(3)], path)
    elif kind == "wrong-shapes":
        state = torch.load(io.BytesIO(good), weights_only=True)
        state["model"] = {k: torch.zeros(1) for k in state["model"]}
        torch.save(state, path)
    else:  # pragma: no cover
        raise AssertionError(kind)


KINDS = [
    "evil-open",
    "evil-shell",
    "evil-plain-pickle",
    "random-bytes",
    "truncated",
    "empty",
    "missing-keys",
    "not-a-dict",
    "wrong-shapes",
]


def _assert_plain(exc: BaseException, path: Path) -> None:
    text = str(exc)
    assert isinstance(exc, StudioError)
    assert f"The saved model in {path} cannot be read" in text, text
    assert "Traceback" not in text and "pickle" not in text.lower()


# ------------------------------------------------------------ best.pt: every reader


def _via_load_trained(run: Path, data: Path) -> None:
    load_trained(run)


def _via_export_meta(run: Path, data: Path) -> None:
    export._read_meta(run)


def _via_export(run: Path, data: Path) -> None:
    export.export_run(run, run.parent / "out.zip", data)


def _via_gradcam(run: Path, data: Path) -> None:  # the Evaluate page's Grad-CAM
    heatmap(load_trained(run), next((data / "images").rglob("*.png")), target_class=0)


def _via_evaluate_folder(run: Path, data: Path) -> None:
    evaluation.evaluate_folder(run, data / "images")


READERS = [
    _via_load_trained,
    _via_export_meta,
    _via_export,
    _via_gradcam,
    _via_evaluate_folder,
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reader", READERS, ids=lambda f: f.__name__.removeprefix("_via_"))
def test_a_planted_best_pt_runs_no_code_and_says_so(trained, tmp_path, kind, reader) -> None:
    base, data = trained
    run = _copy(base / "done", tmp_path / "run")
    marker = tmp_path / "marker"
    _plant(run / "best.pt", kind, marker)
    if reader is _via_export_meta and kind == "wrong-shapes":
        reader(run, data)  # reads the settings only; the weights are checked when loaded
        return
    with pytest.raises(CheckpointError) as info:
        reader(run, data)
    assert not marker.exists()
    _assert_plain(info.value, run / "best.pt")


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_best_pt_is_an_unusable_verdict_not_a_score(trained, tmp_path, kind) -> None:
    base, data = trained
    run = _copy(base / "done", tmp_path / "run")
    marker = tmp_path / "marker"
    _plant(run / "best.pt", kind, marker)
    verdict = evaluation.verify_run(run, data)
    assert verdict.status == "unusable" and not marker.exists()
    assert evaluation.reproduces_predictions(run, data)[0] is False
    assert f"The saved model in {run / 'best.pt'} cannot be read" in verdict.sentence


# -------------------------------------------------------------- last.pt: Resume


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_last_pt_is_refused_on_resume(trained, tmp_path, kind) -> None:
    base, data = trained
    run = _copy(base / "cut", tmp_path / "run")
    marker = tmp_path / "marker"
    _plant(run / "last.pt", kind, marker)
    manifest = DatasetManifest.load(data)
    split = split_dataset(manifest, 0.3, 0)
    with pytest.raises(CheckpointError) as info:
        fit(CFG, split, manifest.root, manifest.classes, run, resume=True, plan=CPU)
    assert not marker.exists()
    _assert_plain(info.value, run / "last.pt")
    assert "start the run again" in str(info.value)


@pytest.mark.parametrize("kind", ["evil-open", "evil-shell", "truncated"])
def test_resume_through_the_worker_fails_the_run_with_the_message(trained, tmp_path, kind):
    base, data = trained
    store = Store(tmp_path / "ws")
    project = store.create_project()
    run = store.create_job(project.id, asdict(CFG), data, run_dir=tmp_path / "run")
    run_dir = Path(shutil.copytree(base / "cut", run.run_dir, dirs_exist_ok=True))
    marker = tmp_path / "marker"
    _plant(run_dir / "last.pt", kind, marker)
    store.update_job(run.id, status="stopped", resume=1)
    assert run_worker(store, run.id) is None
    after = store.job(run.id)
    assert after.status == "failed" and not marker.exists()
    assert "cannot be read" in after.error and "Traceback" not in after.error


# ---------------------------------------------------------- what is written is plain


def _draw(gen: torch.Generator) -> tuple:
    return random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen)


def test_checkpoints_load_with_weights_only_and_resume_restores_every_rng(trained) -> None:
    base, _ = trained
    for name in ("best.pt", "last.pt"):
        state = torch.load(base / "done" / name, map_location="cpu", weights_only=True)
        assert tuple(state) == checkpoint.KEYS[name]
    gen = torch.Generator().manual_seed(5)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = checkpoint.rng_state(gen)
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    expected = _draw(gen)
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    gen2 = torch.Generator()
    checkpoint.set_rng_state(torch.load(buf, weights_only=True), gen2)
    again = _draw(gen2)
    assert again[:3] == expected[:3] and torch.equal(again[3], expected[3])


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("serialisation failed")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        checkpoint.save(tmp_path / "best.pt", {"model": {}, "meta": {}})
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_keys_outside_the_list(tmp_path) -> None:
    with pytest.raises(ValueError):
        checkpoint.save(tmp_path / "best.pt", {"model": {}, "meta": {}, "extra": 1})


def test_no_torch_load_in_the_product_unpickles_code() -> None:
    root = Path(__file__).resolve().parent.parent
    for path in [
        *root.glob("tl_core/*.py"),
        *root.glob("tl_ui/*.py"),
        *root.glob("app_pages/*.py"),
    ]:
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert "pickle.load" not in text and "allow_pickle=True" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, (path, line)
