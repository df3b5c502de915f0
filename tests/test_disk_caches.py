"""Caches bounded by the disk, not the memory: decoded images and frozen-layer outputs over a
tiny memory budget, their sizes reported, and reuse across versions of a data set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_shapes
from PIL import Image
from test_speedpaths import Log

from tl_core import diskspace
from tl_core.data.dataset import import_folder, split_dataset
from tl_core.errors import DiskFullError
from tl_core.models.device import plan_compute
from tl_core.training import inputs, prefixcache
from tl_core.training.engine import TrainConfig, fit
from tl_core.training.rowfile import RowFile, RowsDataset

CPU = plan_compute("cpu")


def _count_decodes(monkeypatch) -> list[Path]:
    seen: list[Path] = []
    real = inputs.load_square

    def counted(path, *args, **kwargs):
        seen.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(inputs, "load_square", counted)
    return seen


def _count_forward(monkeypatch) -> list[int]:
    """Images through the whole frozen backbone (the features job's pass)."""
    seen: list[int] = []
    real = prefixcache.Pooled.forward

    def counted(self, x):
        seen.append(len(x))
        return real(self, x)

    monkeypatch.setattr(prefixcache.Pooled, "forward", counted)
    return seen


def _mapped(path: Path) -> bool:
    """Is ``path`` memory-mapped into this process?"""
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize(
    ("trainable", "augment", "epochs"),
    [(0, "none", 3), (1, "light", 3), (2, "medium", 2)],
    ids=["head-only", "last-group-light", "two-groups-medium"],
)
def test_over_a_tiny_memory_budget_the_caches_live_on_disk_with_the_same_results(
    tmp_path, monkeypatch, trainable, augment, epochs
) -> None:
    """TL_STUDIO_CACHE_MB=0.001 (1 kB; the images alone take 1 MB): every image is decoded once
    and never again per epoch, the frozen outputs go to files of the run folder, the run
    says how much disk that took, and the scores equal a run with the whole budget."""
    manifest = import_folder(make_shapes(tmp_path / "src", per_class=8, size=40), tmp_path / "d")
    split = split_dataset(manifest, 0.25, seed=0)
    cfg = TrainConfig(
        model="test_efficientnet",
        trainable_groups=trainable,
        epochs=epochs,
        augment=augment,
        pretrained=False,
        batch_size=8,
        seed=3,
    )
    decodes = _count_decodes(monkeypatch)
    monkeypatch.setenv("TL_STUDIO_CACHE_MB", "0.001")
    log = Log()
    small = fit(cfg, split, manifest.root, manifest.classes, tmp_path / "small", log, plan=CPU)
    assert len(decodes) == len(manifest.items)  # once, not once per epoch
    text = "\n".join(log.lines)
    assert "read from disk per batch" in text
    assert "MB on disk in the run's folder" in text
    (decoded_file,) = (manifest.root / "cache").glob("decoded-*.u8")
    assert small.cache_bytes["decoded"] == decoded_file.stat().st_size
    assert small.cache_bytes["activations"] > 0
    assert any("Decoded images" in n for n in small.notes)
    assert not (tmp_path / "small" / "activations").exists()

    monkeypatch.setenv("TL_STUDIO_CACHE_MB", "1024")
    decodes.clear()
    log = Log()
    large = fit(cfg, split, manifest.root, manifest.classes, tmp_path / "large", log, plan=CPU)
    assert decodes == []  # the cache on disk serves the next run too
    assert "kept in memory" in "\n".join(log.lines)
    assert large.cache_bytes["activations"] == 0
    assert small.val_accuracy == large.val_accuracy
    assert small.val_loss == pytest.approx(large.val_loss, rel=1e-5)


@pytest.mark.parametrize("budget", [0, 10_000, 10**9])
def test_read_rows_equal_the_decoded_images_and_are_not_mapped_over_budget(
    tmp_path, budget
) -> None:
    manifest = import_folder(make_shapes(tmp_path / "src", per_class=5, size=24), tmp_path / "d")
    items = manifest.items
    decoded = inputs.decode_all(manifest.root, items, 20, "bicubic", budget)
    data = manifest.root / "cache" / "decoded-20-bicubic.u8"
    assert decoded.nbytes == len(items) * 3 * 20 * 20 == data.stat().st_size
    over = len(items) * 3 * 20 * 20 > budget
    assert decoded.resident is (not over)
    assert decoded.resident_bytes == (0 if over else decoded.nbytes)
    rows = [4, 5, 6, 0, 14, 2, 3]
    for row, square in zip(rows, decoded.rows(rows), strict=True):
        expected = inputs.load_square(manifest.root / items[row].file, 20, "bicubic")
        assert torch.equal(square, expected)
        assert torch.equal(decoded[row], expected)
    assert _mapped(data) is (not over)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16, torch.float16])
def test_row_files_round_trip_any_dtype(tmp_path, dtype) -> None:
    block = (torch.randn(11, 3, 4) * 50).to(dtype)
    rows = RowFile.create(tmp_path / "rows.bin", 11, (3, 4), dtype)
    rows.write(0, block[:5])
    rows.write(5, block[5:])
    again = RowFile(tmp_path / "rows.bin", 11, (3, 4), dtype)
    order = [3, 4, 5, 10, 0, 1]
    assert torch.equal(again.read(order), block[order])
    data = RowsDataset(again, torch.arange(11))
    x, y = next(iter(CPU.loader(data, 4)))
    assert torch.equal(x, block[:4]) and y.tolist() == [0, 1, 2, 3]


def test_a_decoded_cache_larger_than_the_free_disk_is_refused_plainly(
    tmp_path, monkeypatch
) -> None:
    manifest = import_folder(make_shapes(tmp_path / "src", per_class=3, size=24), tmp_path / "d")
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 1000)
    with pytest.raises(DiskFullError, match="The disk is full"):
        inputs.decode_all(manifest.root, manifest.items, 20, "bicubic", 0)
    assert not list((manifest.root / "cache").glob("decoded-*"))


def test_frozen_outputs_that_do_not_fit_the_free_disk_are_refused_plainly(
    tmp_path, monkeypatch
) -> None:
    manifest = import_folder(make_shapes(tmp_path / "src", per_class=4, size=40), tmp_path / "d")
    split = split_dataset(manifest, 0.25, seed=0)
    monkeypatch.setenv("TL_STUDIO_CACHE_MB", "0.001")
    real = diskspace.free_bytes

    def little_room(path):  # the decoded cache fits; the frozen outputs do not
        return 2000 if "activations" in str(path) else real(path)

    monkeypatch.setattr(diskspace, "free_bytes", little_room)
    cfg = TrainConfig(model="test_efficientnet", epochs=1, pretrained=False)
    with pytest.raises(DiskFullError, match="The disk is full"):
        fit(cfg, split, manifest.root, manifest.classes, tmp_path / "run", plan=CPU)
    assert not (tmp_path / "run" / "activations").exists()


# ------------------------------------------------------------------ growing a data set


def _two_versions(tmp_path: Path, shared: int, new_per_class: int):
    """data-1 from a shapes folder; data-2 with ``shared`` of its images per class and
    ``new_per_class`` new ones per class (another seed), plus a new class of two images."""
    first = make_shapes(tmp_path / "src1", per_class=6, size=32, seed=0)
    fresh = make_shapes(tmp_path / "fresh", per_class=new_per_class, size=32, seed=7)
    second = tmp_path / "src2"
    for label in ("square", "disc", "stripes"):
        (second / label).mkdir(parents=True)
        for i in range(shared):
            shutil.copy(first / label / f"{i}.png", second / label / f"{i}.png")
        for i in range(new_per_class):
            shutil.copy(fresh / label / f"{i}.png", second / label / f"new{i}.png")
    (second / "dots").mkdir()  # a new class: negatives of new discs
    for i in range(2):
        img = np.asarray(Image.open(fresh / "disc" / f"{i % new_per_class}.png"))
        Image.fromarray(255 - img[:, ::-1] if i else 255 - img).save(second / "dots" / f"{i}.png")
    project = tmp_path / "project"
    v1 = import_folder(first, project / "data-1")
    v2 = import_folder(second, project / "data-2")
    old = {i.sha256 for i in v1.items}
    n_new = sum(i.sha256 not in old for i in v2.items)
    return v1, v2, n_new


@pytest.mark.parametrize(("shared", "new_per_class"), [(6, 2), (3, 1), (0, 2)])
def test_a_new_data_version_decodes_only_its_new_images(
    tmp_path, monkeypatch, shared, new_per_class
) -> None:
    v1, v2, n_new = _two_versions(tmp_path, shared, new_per_class)
    assert n_new == len(v2.items) - 3 * shared
    inputs.decode_all(v1.root, v1.items, 28, "bicubic", 0)
    decodes = _count_decodes(monkeypatch)
    decoded = inputs.decode_all(v2.root, v2.items, 28, "bicubic", 0)
    assert len(decodes) == n_new
    assert decoded.decoded_now == n_new and decoded.reused == len(v2.items) - n_new
    for row, item in enumerate(v2.items):  # copied rows equal a decode of their own
        expected = inputs.load_square(v2.root / item.file, 28, "bicubic")
        assert torch.equal(decoded[row], expected), item.file
    decodes.clear()
    other = inputs.decode_all(v2.root, v2.items, 24, "bicubic", 0)  # another size: decoded
    assert len(decodes) == len(v2.items) and other.reused == 0


@pytest.mark.parametrize(("shared", "new_per_class"), [(6, 2), (2, 1)])
def test_a_new_data_version_passes_only_its_new_images_through_the_network(
    tmp_path, monkeypatch, shared, new_per_class
) -> None:
    from tl_core.analysis import transfer

    plan = CPU.exact()
    v1, v2, n_new = _two_versions(tmp_path, shared, new_per_class)
    first = transfer.frozen_features(
        v1, split_dataset(v1, 0.25), "test_efficientnet", False, plan=plan
    )
    forward = _count_forward(monkeypatch)
    decodes = _count_decodes(monkeypatch)
    split2 = split_dataset(v2, 0.25)
    grown = transfer.frozen_features(v2, split2, "test_efficientnet", False, plan=plan)
    assert sum(forward) == n_new
    assert len(decodes) == n_new
    # The rows it copied equal the first version's, and the whole equals a fresh pass.
    earlier = dict(zip(first.files, first.vectors, strict=True))
    sha1 = {i.file: i.sha256 for i in v1.items}
    by_sha = {sha1[f]: v for f, v in earlier.items()}
    sha2 = {i.file: i.sha256 for i in v2.items}
    for f, v in zip(grown.files, grown.vectors, strict=True):
        if sha2[f] in by_sha:
            np.testing.assert_array_equal(v, by_sha[sha2[f]])
    shutil.rmtree(v1.root / "cache")
    shutil.rmtree(v2.root / "cache")
    forward.clear()
    alone = transfer.frozen_features(v2, split2, "test_efficientnet", False, plan=plan)
    assert sum(forward) == len(v2.items)
    np.testing.assert_allclose(grown.vectors, alone.vectors, rtol=1e-4, atol=1e-5)
    assert alone.files == grown.files


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        ({"decoded": 3 * 1024**3, "activations": 512 * 1024**2}, ["3,072 MB", "512 MB"]),
        ({"decoded": 300 * 1024, "activations": 0}, ["0.3 MB"]),
    ],
)
def test_the_run_panel_says_how_much_disk_the_caches_take(
    workspace, tmp_path, cache, expected
) -> None:
    from helpers import app_test

    from tl_core.runs.store import Store

    store = Store(workspace)
    project = store.create_project()
    data = store.new_data_dir(project.id)
    import_folder(make_shapes(tmp_path / "src", per_class=4, size=24), data)
    store.set_data_dir(project.id, data)
    run = store.create_job(project.id, {"model": "efficientnet_lite0"}, data, status="stopped")
    store.update_job(run.id, result={"best_epoch": 1, "cache_bytes": cache})
    at = app_test("app_pages/train.py", project.id)
    assert not at.exception
    (line,) = [c.value for c in at.caption if c.value.startswith("Caches on disk")]
    assert all(part in line for part in expected), line
    assert ("frozen-layer outputs" in line) == bool(cache["activations"])


def test_a_cache_of_the_first_format_is_used_and_then_reused_by_a_new_version(
    tmp_path, monkeypatch
) -> None:
    """An index written before sha256s were kept (a plain list of files) still counts as
    complete, gains the sha256s, and a grown data version then copies its rows."""
    import json

    v1, v2, n_new = _two_versions(tmp_path, 6, 1)
    inputs.decode_all(v1.root, v1.items, 28, "bicubic", 0)
    index = v1.root / "cache" / "decoded-28-bicubic.json"
    index.write_text(json.dumps([i.file for i in v1.items]))
    decodes = _count_decodes(monkeypatch)
    inputs.decode_all(v1.root, v1.items, 28, "bicubic", 0)
    assert decodes == []
    assert json.loads(index.read_text())["sha256"] == [i.sha256 for i in v1.items]
    inputs.decode_all(v2.root, v2.items, 28, "bicubic", 0)
    assert len(decodes) == n_new


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 torn", b"not an npz"])
def test_a_torn_features_cache_is_computed_again_not_a_crash(tmp_path, content) -> None:
    from tl_core.training import featurecache

    path = tmp_path / "cache" / "features-x.npz"
    path.parent.mkdir()
    path.write_bytes(content)
    assert featurecache.read_cache(path, ["a.png"]) is None
