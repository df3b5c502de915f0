"""The importer's warnings are typed records (kind, classes, folder, text), saved as such in
the manifest; manifests of older releases, whose warnings are sentences only, still load and
grow as before."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import make_shapes
from PIL import Image

from tl_core.data.dataset import MANIFEST_NAME, DatasetManifest, DataWarning, grow, import_folder
from tl_core.data.records import WARNING_KINDS


def _pictures(n: int, seed: int = 500) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append((f"new_{i}.png", buf.getvalue()))
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A training folder of three classes (8 squares: with the validation one, too few) and a
    validation folder 'Validation' without stripes."""
    root = tmp_path_factory.mktemp("warnings") / "src"
    make_shapes(root / "train", per_class=12, size=24)
    for f in sorted((root / "train" / "square").iterdir())[8:]:
        f.unlink()
    make_shapes(root / "Validation", per_class=1, size=24, seed=9)
    shutil.rmtree(root / "Validation" / "stripes")
    return root


@pytest.fixture(scope="module")
def imported(tmp_path_factory, source) -> DatasetManifest:
    return import_folder(source, tmp_path_factory.mktemp("import") / "data-1")


def _as_older_release(manifest: DatasetManifest, dest: Path) -> Path:
    """A copy of ``manifest``'s data set whose manifest holds its warnings as sentences."""
    shutil.copytree(manifest.root, dest)
    data = json.loads((dest / MANIFEST_NAME).read_text(encoding="utf-8"))
    data["warnings"] = [w["text"] for w in data["warnings"]]
    (dest / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    return dest


def test_warnings_are_typed_and_saved_as_records(imported) -> None:
    by_kind = {w.kind: w for w in imported.warnings}
    assert set(by_kind) == {"few_images", "missing_val"}
    assert by_kind["few_images"].classes == ("square",)
    assert by_kind["few_images"].text == "Class 'square' has 9 images; at least 10 are recommended."
    assert by_kind["missing_val"].classes == ("stripes",)
    assert by_kind["missing_val"].folder == "Validation"
    saved = json.loads((imported.root / MANIFEST_NAME).read_text(encoding="utf-8"))["warnings"]
    assert {w["kind"] for w in saved} == {"few_images", "missing_val"}
    assert DatasetManifest.load(imported.root).warnings == imported.warnings


def test_a_manifest_with_sentences_for_warnings_loads_with_their_kinds(imported, tmp_path) -> None:
    old = DatasetManifest.load(_as_older_release(imported, tmp_path / "data-1"))
    assert [w.text for w in old.warnings] == [w.text for w in imported.warnings]
    assert [w.kind for w in old.warnings] == [w.kind for w in imported.warnings]
    assert next(w for w in old.warnings if w.kind == "missing_val").folder == "Validation"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Class 'cat' has 1 image; at least 10 are recommended.", "few_images"),
        (
            "12 classes have fewer than 10 images: 'a' (1). At least 10 per class are recommended.",
            "few_images",
        ),
        (
            "The classes are unbalanced: 'a' has 90 images but 'b' only 3. The model may favour "
            "the big classes; add images to the small ones if you can.",
            "unbalanced",
        ),
        ("3 exact duplicate images were left out (one copy of each is kept).", "other"),
        (
            "Class names that differ from a class of the data set only in capital letters ...",
            "other",
        ),
    ],
)
def test_sentences_of_older_releases_get_the_kinds_the_code_acts_on(text, kind) -> None:
    assert DataWarning.from_json(text) == DataWarning(kind, text)


def test_a_saved_warning_of_an_unknown_kind_is_other() -> None:
    raw = {"kind": "from_the_future", "text": "Something.", "classes": ["a"], "folder": None}
    assert DataWarning.from_json(raw) == DataWarning("other", "Something.", ("a",))
    assert "other" in WARNING_KINDS and "from_the_future" not in WARNING_KINDS


@pytest.mark.parametrize("older", [False, True], ids=["records", "sentences"])
def test_growing_works_the_count_warnings_out_again_from_either_form(
    imported, tmp_path, older
) -> None:
    base = imported
    if older:
        base = DatasetManifest.load(_as_older_release(imported, tmp_path / "data-1"))
    growth = grow(base, _pictures(5), tmp_path / "data-2", "square")  # 14 squares: enough now
    warnings = growth.manifest.warnings
    assert not any(w.kind == "few_images" or "'square' has" in w.text for w in warnings)
    assert len({w.text for w in warnings}) == len(warnings)  # none twice
    (missing,) = [w for w in warnings if w.kind == "missing_val"]
    assert missing.folder == "Validation" and missing.classes == ("stripes",)  # the old folder
    assert "The 'Validation' folder has no images of class 'stripes'" in missing.text
    saved = json.loads((growth.manifest.root / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert all(isinstance(w, dict) and w["kind"] in WARNING_KINDS for w in saved["warnings"])
