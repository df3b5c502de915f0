"""``web/``: a web page that runs the model in the browser, with no server of its own.

The folder holds the page (``index.html``, ``app.js``, ``style.css``), onnxruntime-web's
WebAssembly build with its licence (``ort/``, vendored from the npm registry by
:mod:`tl_core.export.web.vendor`), copies of ``model.onnx`` (and ``model_int8.onnx`` when
the bundle has it) and ``model.json``: the classes, how the Try page turns the model's
output into an answer (temperature, "not sure" and "unfamiliar" thresholds) and which model
files there are. Every file loads from the folder itself, so the page works from any static
host or a local static server, offline once loaded. A browser cannot be run here, so the
export checks the files (:func:`offline_check`); the tests compare the page's answers with
the app's in Chromium.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from tl_core.data.standalone_predict import MAX_SIDE
from tl_core.export.formats.base import BundlePart, FormatOption, ModelToExport
from tl_core.training.familiarity import UNFAMILIAR

__all__ = [
    "FOLDER",
    "MODEL_JSON",
    "PAGE_FILES",
    "PART",
    "STATIC",
    "offline_check",
    "page_title",
    "web_folder",
]

FOLDER = "web"
MODEL_JSON = "model.json"
STATIC = Path(__file__).resolve().parent.parent / "web"  # the page and the vendored runtime
PAGE_FILES = ("index.html", "app.js", "style.css")
ORT = "ort"
ORT_MANIFEST = "FILES.json"
# (key, file in the bundle, the page's name for it); the first is the default.
MODELS = (("full", "model.onnx", "Full model"), ("small", "model_int8.onnx", "Small model (8-bit)"))
TITLE_CLASSES = 8  # more classes than this: the title names the first ones and a count


def web_folder(bundle: Path) -> Path:
    """The web page's folder in ``bundle``."""
    return Path(bundle) / FOLDER


def page_title(classes: list[str]) -> str:
    """The page's title: the classes it sorts pictures into."""
    if len(classes) <= TITLE_CLASSES:
        return "Sorts pictures into: " + ", ".join(classes)
    shown = ", ".join(classes[:TITLE_CLASSES])
    return (
        f"Sorts pictures into {len(classes)} classes: {shown} "
        f"and {len(classes) - TITLE_CLASSES} more"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _threshold_of(path: Path) -> float | None:
    """The unfamiliar threshold in an ONNX file's metadata (each model has its own: the 8-bit
    one's is set on its own scores)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == "unfamiliar_threshold":
            return float(json.loads(prop.value))
    return None


def _model_json(bundle: Path, model: ModelToExport) -> dict[str, Any]:
    """What the page needs besides the model file: classes, rules, model files, title."""
    from tl_core.export.formats.onnx_model import INPUT_NAME, OUTPUT_NAMES, UNFAMILIARITY_NAME

    has_check = model.familiar is not None
    models = [
        {
            "key": key,
            "file": name,
            "label": label,
            "bytes": (bundle / name).stat().st_size,
            "unfamiliar_threshold": _threshold_of(bundle / name) if has_check else None,
        }
        for key, name, label in MODELS
        if (bundle / name).is_file()
    ]
    return {
        "title": page_title(model.classes),
        "classes": list(model.classes),
        "temperature": float(model.temperature),
        "not_sure_below": float(model.not_sure_below),
        "unfamiliar_threshold": float(model.familiar.threshold) if model.familiar else None,
        "unfamiliar_sentence": UNFAMILIAR,
        "input": {
            "name": INPUT_NAME,
            "type": "uint8",
            "layout": "RGB (1, height, width, 3)",
            "max_side": MAX_SIDE,
            "outputs": [*OUTPUT_NAMES, *([UNFAMILIARITY_NAME] if has_check else [])],
        },
        "models": models,
    }


def _write(bundle: Path, model: ModelToExport) -> None:
    """``web/`` in ``bundle``: the page, the runtime, the model files and model.json."""
    folder = web_folder(bundle)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in PAGE_FILES:
        shutil.copy2(STATIC / name, folder / name)
    shutil.copytree(STATIC / ORT, folder / ORT)
    for _, name, _ in MODELS:
        if (bundle / name).is_file():
            shutil.copy2(bundle / name, folder / name)
    config = _model_json(bundle, model)
    (folder / MODEL_JSON).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _onnx_classes(path: Path) -> list[str] | None:
    """The ``classes`` metadata of an ONNX model; None when it has none."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return json.loads(props["classes"]) if "classes" in props else None


def _runtime_problem(folder: Path) -> str:
    """Why the page's own files or the vendored onnxruntime-web are not intact; "" if they are."""
    for name in PAGE_FILES:
        if not (folder / name).is_file():
            return f"The web page's {name} is missing."
    try:
        manifest = json.loads((folder / ORT / ORT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"The web page's list of onnxruntime-web files ({ORT}/{ORT_MANIFEST}) is missing."
    for name, digest in manifest["files"].items():
        path = folder / ORT / name
        if not path.is_file() or _sha256(path) != digest:
            return f"The web page's onnxruntime-web file {ORT}/{name} is missing or damaged."
    return ""


def offline_check(bundle: Path, model: ModelToExport) -> str:
    """Without a browser: the page's model files equal the bundle's, the vendored runtime
    matches its list, and model.json's classes equal the ONNX model's; "" when all hold, else
    the problem in one sentence."""
    folder = web_folder(bundle)
    try:
        config = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"The web page's {MODEL_JSON} is missing or unreadable."
    for _, name, _ in MODELS:
        if not (bundle / name).is_file():
            continue
        copy = folder / name
        if not copy.is_file() or _sha256(copy) != _sha256(bundle / name):
            return f"The web page's {name} is not the same file as the bundle's {name}."
        if name not in {m["file"] for m in config.get("models", [])}:
            return f"The web page's {MODEL_JSON} does not list {name}."
    problem = _runtime_problem(folder)
    if problem:
        return problem
    if config.get("classes") != _onnx_classes(folder / MODELS[0][1]):
        return f"The web page's {MODEL_JSON} lists other classes than model.onnx."
    if config["classes"] != list(model.classes):
        return f"The web page's {MODEL_JSON} lists other classes than the trained model."
    return ""


def _paths(bundle: Path) -> list[Path]:
    folder = web_folder(bundle)
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _example(has_check: bool) -> str:
    return (
        "# on this computer: then open http://localhost:8000\n"
        "python -m http.server --directory web 8000\n"
        "# for phones: copy the web/ folder to any static web host (https, for the camera)"
    )


def _usage(has_check: bool) -> list[str]:
    unfamiliar = ", 'not sure' and 'unfamiliar'" if has_check else " and 'not sure'"
    return [
        "- **Web page** (`web/`): open `web/index.html` from any static web host or a local "
        "server (`python -m http.server -d web 8000`, then localhost:8000). It sorts pictures "
        "chosen on the device or seen by the camera in the browser, with the same bars"
        f"{unfamiliar} answers as the studio's Try page; nothing is sent anywhere. The camera "
        "needs https (or this computer)."
    ]


def _files(has_check: bool) -> list[str]:
    return [
        "- `web/`: the web page (index.html, onnxruntime-web in `web/ort/` with its licence, "
        "a copy of the ONNX model and `model.json`)"
    ]


PART = BundlePart(
    name="web",
    write=_write,
    writing="Writing the web page",
    usage=_usage,
    files=_files,
    option=FormatOption(
        key="web",
        title="Web page (phone or computer, no server)",
        paths=_paths,
        example=_example,
        needs=("onnx",),
        offline_check=offline_check,
        cannot_run=(
            "The web page computes in the browser, so its answers were not computed here; it "
            "runs the very model files above with onnxruntime-web, which the studio's own tests "
            "check against the app in Chromium. Here its files were checked: the model files "
            "are the bundle's, onnxruntime-web's files are intact and the classes match."
        ),
    ),
)
