"""The web page part of the bundle, without a browser: what it writes into web/, model.json,
the offline check catching damaged files, and a page that loads nothing from elsewhere.
(tests/test_export_web_browser.py runs the page in Chromium.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from torch import nn

from tl_core.export.formats import web_page
from tl_core.export.formats.base import ModelToExport
from tl_core.export.web import vendor
from tl_core.models.catalog import DataConfig
from tl_core.training.familiarity import UNFAMILIAR, Familiarity

CLASSES = ["brick", "grass", "<b>gravel</b>"]
CONFIG = DataConfig((3, 32, 32), "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.875, "center")


def _familiar(threshold: float) -> Familiarity:
    bank = np.eye(3, 4, dtype=np.float16)
    return Familiarity(bank, np.arange(3), np.ones(3), np.zeros(2), threshold)


def _model(familiar: Familiarity | None = None) -> ModelToExport:
    return ModelToExport(
        nn.Identity(), CONFIG, CLASSES, "test", familiar, temperature=1.5, not_sure_below=0.6
    )


def _onnx(path: Path, classes: list[str]) -> None:
    """A stand-in model.onnx: an identity with the export's ``classes`` metadata."""
    x = helper.make_tensor_value_info("image", TensorProto.UINT8, [1, None, None, 3])
    y = helper.make_tensor_value_info("logits", TensorProto.UINT8, [1, None, None, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", [x], [y])
    proto = helper.make_model(graph)
    helper.set_model_props(proto, {"classes": json.dumps(classes)})
    onnx.save(proto, str(path))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    _onnx(tmp_path / "model.onnx", CLASSES)
    return tmp_path


def test_write_makes_a_self_contained_folder(bundle: Path) -> None:
    model = _model(_familiar(1.25))
    web_page.PART.write(bundle, model)
    web = web_page.web_folder(bundle)
    assert web == bundle / "web"
    names = {str(p.relative_to(web)) for p in web.rglob("*") if p.is_file()}
    manifest = json.loads((web / "ort" / "FILES.json").read_text())
    assert names == {
        "index.html",
        "app.js",
        "style.css",
        "model.onnx",
        "model.json",
        "ort/FILES.json",
        *(f"ort/{name}" for name in manifest["files"]),
    }
    assert {"LICENSE", *vendor.RUNTIME_FILES} == set(manifest["files"])
    assert "MIT License" in (web / "ort" / "LICENSE").read_text()
    assert (web / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()
    assert web_page.offline_check(bundle, model) == ""
    assert set(web_page.PART.option.paths(bundle)) == {web / name for name in names}


def test_model_json_says_how_to_answer(bundle: Path) -> None:
    web_page.PART.write(bundle, _model(_familiar(1.25)))
    config = json.loads((bundle / "web" / "model.json").read_text())
    assert config["classes"] == CLASSES
    assert config["title"] == "Sorts pictures into: brick, grass, <b>gravel</b>"
    assert (config["temperature"], config["not_sure_below"]) == (1.5, 0.6)
    assert config["unfamiliar_threshold"] == 1.25
    assert config["unfamiliar_sentence"] == UNFAMILIAR
    assert config["input"]["outputs"] == ["probabilities", "logits", "unfamiliarity"]
    assert config["input"]["max_side"] == 640
    size = (bundle / "model.onnx").stat().st_size
    assert config["models"] == [  # this file has no threshold of its own: the page uses 1.25
        {
            "key": "full",
            "file": "model.onnx",
            "label": "Full model",
            "bytes": size,
            "unfamiliar_threshold": None,
        }
    ]


def test_a_run_without_the_check_and_with_the_small_model(bundle: Path) -> None:
    _onnx(bundle / "model_int8.onnx", CLASSES)
    web_page.PART.write(bundle, _model())
    config = json.loads((bundle / "web" / "model.json").read_text())
    assert config["unfamiliar_threshold"] is None
    assert config["input"]["outputs"] == ["probabilities", "logits"]
    assert [m["file"] for m in config["models"]] == ["model.onnx", "model_int8.onnx"]
    assert (bundle / "web" / "model_int8.onnx").is_file()
    assert web_page.offline_check(bundle, _model()) == ""


def test_many_classes_make_a_short_title() -> None:
    title = web_page.page_title([f"c{k}" for k in range(20)])
    assert title == "Sorts pictures into 20 classes: c0, c1, c2, c3, c4, c5, c6, c7 and 12 more"


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda web: web.joinpath("model.onnx").write_bytes(b"x"), "model.onnx is not the same"),
        (
            lambda web: web.joinpath("ort", vendor.RUNTIME_FILES[-1]).write_bytes(b"x"),
            "missing or damaged",
        ),
        (lambda web: web.joinpath("ort", "LICENSE").unlink(), "missing or damaged"),
        (lambda web: web.joinpath("app.js").unlink(), "app.js is missing"),
        (lambda web: web.joinpath("model.json").write_text("{"), "model.json is missing"),
        (
            lambda web: web.joinpath("model.json").write_text(json.dumps({"classes": ["a"]})),
            "does not list model.onnx",
        ),
    ],
)
def test_the_offline_check_catches_damage(bundle: Path, damage, problem: str) -> None:
    model = _model()
    web_page.PART.write(bundle, model)
    damage(bundle / "web")
    found = web_page.offline_check(bundle, model)
    assert problem in found
    assert found.endswith(".") and "\n" not in found


def test_the_offline_check_compares_the_classes(bundle: Path) -> None:
    model = _model()
    web_page.PART.write(bundle, model)
    path = bundle / "web" / "model.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "classes": ["brick", "grass", "sand"]}))
    assert "other classes than model.onnx" in web_page.offline_check(bundle, model)


def test_writing_again_replaces_the_folder(bundle: Path) -> None:
    web_page.PART.write(bundle, _model())
    (bundle / "web" / "stale.txt").write_text("old")
    web_page.PART.write(bundle, _model())
    assert not (bundle / "web" / "stale.txt").exists()


URL = re.compile(r"""(?:https?:|wss?:)?//([A-Za-z0-9.-]+)""")


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """Every file the page uses is in its folder: no address of another host in the page's
    files, and the ES module imports and fetches are relative."""
    for name in web_page.PAGE_FILES:
        text = (web_page.STATIC / name).read_text()
        hosts = {m.group(1) for m in URL.finditer(text)} - {"localhost", "127.0.0.1"}
        assert not hosts, f"{name} names other hosts: {hosts}"
    app = (web_page.STATIC / "app.js").read_text()
    assert re.findall(r"""import\(\s*["']([^"']+)""", app) == ["./ort/ort.wasm.min.mjs"]
    assert "textContent" in app and "innerHTML" not in app  # class names are never markup
    html = (web_page.STATIC / "index.html").read_text()
    assert set(re.findall(r"""(?:src|href)="([^"]+)""", html)) == {
        "data:,",
        "style.css",
        "app.js",
    }


def test_the_vendored_runtime_matches_its_pin() -> None:
    """ort/FILES.json lists the version pinned in package.json and package-lock.json, and every
    file's hash: what ``python -m tl_core.export.web.vendor`` wrote."""
    manifest = json.loads((vendor.ORT_DIR / vendor.MANIFEST).read_text())
    package = json.loads((vendor.HERE / "package.json").read_text())
    lock = json.loads((vendor.HERE / "package-lock.json").read_text())
    pinned = package["dependencies"]["onnxruntime-web"]
    assert re.fullmatch(r"1\.\d+\.\d+", pinned)  # an exact 1.x version
    entry = lock["packages"]["node_modules/onnxruntime-web"]
    assert entry["version"] == pinned == manifest["version"]
    assert entry["integrity"].startswith("sha512-")
    for name, digest in manifest["files"].items():
        assert vendor.sha256(vendor.ORT_DIR / name) == digest, name
