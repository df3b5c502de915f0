"""The job side of the jobs that are not training runs: one task function per kind.

Each task is ``task(spec, ctx) -> dict``, named by its kind's entry in
:mod:`tl_core.runs.kinds`: it reads ``spec.data_dir`` (and the trained run's folder named
in its typed ``spec.params`` where it needs one), writes only in ``spec.folder``, reports
through ``ctx`` (progress, log, stop flag) and returns a JSON-able result. It never opens the
store. A task fails the job by raising a StudioError subclass with a one-sentence message.
The pages rebuild the results into the analysis dataclasses (their fields are the dict keys).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from tl_core.errors import DataError, RunError, StudioError
from tl_core.events import Progress
from tl_core.runs.kinds import (
    ExportParams,
    FeaturesParams,
    ImportParams,
    JobSpec,
    PredictParams,
    RecommendParams,
    SurveyParams,
    VerifyParams,
)

__all__ = [
    "IMPORT_STAGING",
    "IMPORT_UPLOAD",
    "JobContextLike",
    "export",
    "features",
    "import_images",
    "predict",
    "recommend",
    "survey",
    "verify",
]


class JobContextLike(Protocol):
    """What a task may ask of the executor (tl_core.runs.worker.JobContext)."""

    def progress(self, progress: Progress) -> None: ...

    def log(self, text: str) -> None: ...

    def should_stop(self) -> bool: ...


class _Stopped(Exception):
    """Raised inside a progress callback when the user pressed Stop."""


STOPPED: dict[str, Any] = {"stopped": True}


def _plain(value: Any) -> Any:
    """``value`` as it comes back from the store's JSON column (tuples as lists, numpy
    numbers as Python ones), so the worker returns exactly what the page later reads."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "tolist"):  # numpy scalars and arrays
            return obj.tolist()
        raise TypeError(f"{type(obj).__name__} is not JSON")

    return json.loads(json.dumps(value, default=default))


def _split(spec: JobSpec):
    from tl_core.data.dataset import DatasetManifest, split_dataset

    params: FeaturesParams | RecommendParams = spec.params
    manifest = DatasetManifest.load(Path(spec.data_dir))
    split = split_dataset(manifest, params.split.val_fraction, params.split.seed)
    return manifest, split


def _reporter(ctx: JobContextLike, phase: str):
    def progress(done: int, total: int) -> None:
        if ctx.should_stop():
            raise _Stopped
        ctx.progress(Progress(phase, done, total))

    return progress


READINGS_FORMAT = 1  # bump when what the features job reads from the features changes


def features(spec: JobSpec, ctx: JobContextLike) -> dict[str, Any]:
    """Frozen features of one model: head start, domain gauge, learning curve, probe accuracy.

    params: ``model``, ``val_fraction``, ``seed``. The features are cached beside the data set.
    """
    from tl_core.analysis import transfer

    params: FeaturesParams = spec.params
    manifest, split = _split(spec)
    try:
        feats = transfer.frozen_features(
            manifest,
            split,
            params.model,
            progress=_reporter(ctx, "features"),
            exact_val=True,  # so a head-only run after it needs no pass over the images
        )
    except _Stopped:
        return STOPPED
    ctx.progress(Progress("headstart", 1, 1))

    def readings() -> dict[str, Any]:
        gauge = transfer.domain_gauge(feats) if feats.entropy is not None else None
        return _plain(
            {
                "model": feats.model_key,
                "n_train": feats.n_train,
                "head_start": asdict(transfer.head_start(feats)),
                "gauge": asdict(gauge) if gauge is not None else None,
                "curve": asdict(transfer.learning_curve(feats)),
                "probe_accuracy": transfer.probe_accuracy(feats)[0],
                "seconds": feats.seconds,
            }
        )

    if feats.source is None:
        return readings()
    # the same pictures, labels, split and model in another project (a class's copies of the
    # demo set): the readings are those of the same features, computed once in the workspace
    sides = [[(i.file, i.label) for i in split.train], [(i.file, i.label) for i in split.val]]
    digest = hashlib.sha256(json.dumps([READINGS_FORMAT, sides]).encode()).hexdigest()[:16]
    return transfer.kept_result(feats.source, f"readings-{digest}", readings)[0]


def recommend(spec: JobSpec, ctx: JobContextLike) -> dict[str, Any]:
    """Every model available offline (or params ``keys``), ranked on the images."""
    from tl_core.analysis import transfer

    manifest, split = _split(spec)
    params: RecommendParams = spec.params
    keys = list(params.keys or transfer.offline_models())

    def progress(key: str, done: int, total: int) -> None:
        if ctx.should_stop():
            raise _Stopped
        i = keys.index(key) if key in keys else 0
        ctx.progress(Progress("recommend", done, total, detail=key, part=(i, len(keys))))

    try:
        ranking = transfer.recommend(manifest, split, keys=keys, progress=progress)
    except _Stopped:
        return STOPPED
    return _plain({"ranking": [asdict(r) for r in ranking]})


def survey(spec: JobSpec, ctx: JobContextLike) -> dict[str, Any]:
    """Every picture, labelled or not: the map, the space of the label suggestions and the
    likely wrong labels (tl_core.labeling.survey), saved as ``survey.npz`` in the job's
    folder. params: ``model``, ``run_dir`` (a trained run's model instead)."""
    from tl_core.data.dataset import DatasetManifest
    from tl_core.labeling import survey as surveying

    params: SurveyParams = spec.params
    manifest = DatasetManifest.load(Path(spec.data_dir))

    def report(phase: str, done: int, total: int) -> None:
        if ctx.should_stop():
            raise _Stopped
        ctx.progress(Progress(phase, done, total))

    run_dir = Path(params.run_dir) if params.run_dir else None
    out = Path(spec.folder) / surveying.FILE_NAME
    try:
        return _plain(surveying.compute(manifest, params.model, out, run_dir, report))
    except _Stopped:
        return STOPPED


def verify(spec: JobSpec, ctx: JobContextLike) -> dict[str, Any]:
    """Load the run's best.pt and re-score its validation images (params ``run_dir``)."""
    from tl_core.analysis.evaluation import verify_run

    ctx.progress(Progress("verify", 0, 1))
    params: VerifyParams = spec.params
    verdict = verify_run(Path(params.run_dir), Path(spec.data_dir))
    return _plain(asdict(verdict))


def export(spec: JobSpec, ctx: JobContextLike) -> dict[str, Any]:
    """The run's bundle and parity report in the job's folder, and the web page alone as
    ``web.zip`` there when it is offered.

    params: ``run_dir`` (the trained run), ``name`` (the zip's file name).
    """
    from tl_core.export.bundle import WEB_ZIP, export_run
    from tl_core.export.table import rows_json

    params: ExportParams = spec.params
    name = Path(params.name or "model.zip").name
    out = Path(spec.folder) / name
    steps = [0]

    def progress(line: str) -> None:
        steps[0] += 1
        ctx.log(line)
        ctx.progress(Progress("export", steps[0], steps[0] + 1, detail=line))

    report = export_run(
        Path(params.run_dir),
        out,
        Path(spec.data_dir) if Path(spec.data_dir).is_dir() else None,
        progress=progress,
        corrections=params.corrections,
        web_zip=Path(spec.folder) / WEB_ZIP,
    )
    web = Path(spec.folder) / WEB_ZIP
    return _plain(
        {
            **report.summary(),
            "table": rows_json(report),
            "bundle": str(out),
            "name": name,
            "web": str(web) if web.is_file() else None,
        }
    )


PREDICT_BATCH = 64  # pictures scored together; progress is reported after each batch


def predict(spec: JobSpec, ctx: JobContextLike) -> dict[str, Any]:
    """Class probabilities and unfamiliarity of every picture in ``<folder>/inputs/``, a batch
    at a time.

    params: ``run_dir`` (the trained run), ``temperature``. Each row: the picture's original
    name, its probabilities (6 decimals, or None), its unfamiliarity (how unlike every training
    picture it is, 6 decimals; None when unreadable or the run has no unfamiliar check; the
    page applies the threshold) and the reason it could not be read (or None). Pictures are
    read from disk batch by batch, so memory does not grow with their number; a batch with an
    unreadable picture is scored again one picture at a time.
    """
    from tl_core.analysis.evaluation import load_model_checked

    params: PredictParams = spec.params
    model = load_model_checked(Path(params.run_dir))
    temperature = params.temperature
    files = sorted((Path(spec.folder) / "inputs").glob("*"))
    if not files:
        raise RunError("No pictures reached the job; upload them again.")
    names = [f.name.split("-", 1)[1] if "-" in f.name else f.name for f in files]
    batch = max(1, min(model.plan.infer_batch, PREDICT_BATCH))
    rows: list[dict[str, Any]] = []

    def scored(name: str, probs: Any, far: Any) -> dict[str, Any]:
        return {
            "name": name,
            "probs": [round(float(p), 6) for p in probs],
            "unfamiliarity": None if far is None else round(float(far), 6),
            "error": None,
        }

    def each(guessed: Any) -> list[Any]:
        far = guessed.unfamiliarity
        return [None] * len(guessed.probs) if far is None else list(far)

    ctx.progress(Progress("predict", 0, len(files)))
    for start in range(0, len(files), batch):
        if ctx.should_stop():
            return STOPPED
        chunk, chunk_names = files[start : start + batch], names[start : start + batch]
        try:
            found = model.guess(chunk, temperature=temperature, names=chunk_names)
            rows += [
                scored(n, p, f)
                for n, p, f in zip(chunk_names, found.probs, each(found), strict=True)
            ]
        except StudioError:  # one picture spoils the batch: score them one by one
            for file, name in zip(chunk, chunk_names, strict=True):
                try:
                    one = model.guess([file], temperature=temperature, names=[name])
                    rows.append(scored(name, one.probs[0], each(one)[0]))
                except StudioError as exc:
                    rows.append(
                        {"name": name, "probs": None, "unfamiliarity": None, "error": str(exc)}
                    )
        done = start + len(chunk)
        ctx.progress(Progress("predict", done, len(files)))
    return {"classes": list(model.classes), "rows": rows}


# ------------------------------------------------------------------------------ importing

IMPORT_UPLOAD = "upload"  # in an import job's folder: what the browser sent, saved by the page
IMPORT_STAGING = "data"  # in an import job's folder: the new data set, moved into the project
UPLOADED_ZIP = "upload.zip"
UPLOADED_NAMES = "names.json"  # the uploaded files' names, in the order of their saved files


def _import_reporter(ctx: JobContextLike):
    """Progress with counts and the speed measured so far (its sentence then tells the time
    left); Stop acts here."""
    start = time.monotonic()

    def progress(done: int, total: int) -> None:
        if ctx.should_stop():
            raise _Stopped
        elapsed = time.monotonic() - start
        rate = done / elapsed if 0 < done < total and elapsed > 0.5 else None
        ctx.progress(Progress("import", done, total, rate=rate))

    return progress


def folder_source(path: str) -> Path:
    """The folder (or .zip) a user typed, checked: DataError saying what is wrong with it."""
    text = path.strip().strip('"').strip("'")
    if not text:
        raise DataError("Type the path of a folder that holds one sub-folder per class.")
    src = Path(text).expanduser()
    if not src.is_absolute():
        raise DataError(
            f"'{text}' is not a full path. Give the folder's whole path, e.g. "
            "/home/you/photos or C:\\Users\\you\\photos."
        )
    if src.is_file():
        if src.suffix.lower() == ".zip":
            return src
        raise DataError(
            f"'{src}' is a file, not a folder. Give the folder that holds one sub-folder per "
            "class (or a .zip of it)."
        )
    if not src.exists():
        raise DataError(f"The folder '{src}' does not exist. Check the path and try again.")
    return src


def import_images(spec: JobSpec, ctx: JobContextLike) -> dict[str, Any]:
    """A new data set in ``<folder>/data`` (the store moves it into the project when the
    job finished; nothing of it is left when it failed or was stopped).

    params: ``way`` (``folder`` or ``demo``: ``path`` on this machine, a folder or a .zip;
    ``zip`` or
    ``files``: what the page saved in ``<folder>/upload``). The upload is removed at the end.
    """
    from tl_core.data import dataset as tl_data

    folder = Path(spec.folder)
    dest, upload = folder / IMPORT_STAGING, folder / IMPORT_UPLOAD
    params: ImportParams = spec.params
    way = params.way
    progress = _import_reporter(ctx)
    ctx.progress(Progress("files", 0, 1))
    started = time.monotonic()
    squares = import_squares(params.model)
    try:
        if params.grow:
            return _grown(spec, dest, upload, progress, started)
        kept = None
        if way in ("folder", "demo"):
            src = folder_source(params.path)
            if way == "demo" and params.reuse:  # fingerprinted before reading it
                kept = Path(params.reuse) / tl_data.source_fingerprint(src)
                reused = _reused_import(kept, dest)
                if reused is not None:
                    n = len(reused.items)
                    ctx.progress(Progress("import", n, n))
                    return _imported(reused, dest, started)
            if src.is_file():
                manifest = tl_data.import_zip(src, dest, progress, squares=squares)
            else:
                manifest = tl_data.import_folder(src, dest, progress, squares)
        else:
            uploaded = _uploaded(upload, way)
            if isinstance(uploaded, Path):
                manifest = tl_data.import_zip(uploaded, dest, progress, squares=squares)
            else:
                manifest = tl_data.import_files(uploaded, dest, progress, squares)
    except _Stopped:
        shutil.rmtree(dest, ignore_errors=True)
        return STOPPED
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(upload, ignore_errors=True)
    # the import found the near-duplicate pairs already (its split needs them)
    if kept is not None:
        _keep_for_reuse(manifest, kept)
    return _imported(manifest, dest, started)


def import_squares(model: str) -> list[Any]:
    """The inputs an import makes while it decodes: those of ``model`` (the default model
    when empty or unknown; :mod:`tl_core.data.pixelcache`)."""
    from tl_core.errors import ModelUnavailableError
    from tl_core.models.catalog import DEFAULT_MODEL, get_spec

    try:
        return [get_spec(model or DEFAULT_MODEL).square]
    except ModelUnavailableError:
        return [get_spec(DEFAULT_MODEL).square]


def _uploaded(upload: Path, way: str) -> Path | list[tuple[str, Path]]:
    """What the page saved in the job's upload folder: the .zip, or the files with their
    names."""
    if not upload.is_dir():
        raise DataError("The uploaded files are no longer here; upload them again.")
    if way == "zip":
        return upload / UPLOADED_ZIP
    names = json.loads((upload / UPLOADED_NAMES).read_text(encoding="utf-8"))
    return [(str(n), upload / f"{i:06d}") for i, n in enumerate(names)]


def _grown(
    spec: JobSpec, dest: Path, upload: Path, progress: Any, started: float
) -> dict[str, Any]:
    """The job's data version (``spec.data_dir``) with the new images added, in ``dest``."""
    from tl_core.data import dataset as tl_data

    params: ImportParams = spec.params
    way = params.way
    source: tl_data.GrowSource = (
        folder_source(params.path) if way == "folder" else _uploaded(upload, way)
    )
    base = tl_data.DatasetManifest.load(Path(spec.data_dir))
    growth = tl_data.grow(base, source, dest, params.label, progress, import_squares(params.model))
    result = _imported(growth.manifest, dest, started)
    warnings = [w.to_json() for w in growth.warnings]
    return {**result, "summary": growth.summary(), "warnings": warnings}


def _imported(manifest: Any, dest: Path, started: float) -> dict[str, Any]:
    return {
        "staged": str(dest),
        "images": len(manifest.items),
        "unlabelled": len(manifest.unlabelled),
        "classes": len(manifest.classes),
        "skipped": len(manifest.skipped),
        "seconds": round(time.monotonic() - started, 3),
    }


def _reused_import(kept: Path, dest: Path) -> Any:
    """The earlier import of the unchanged folder kept in ``kept``, linked into ``dest`` (a
    class of thirty importing the bundled demo set decodes it once); else None."""
    from tl_core.data import dataset as tl_data
    from tl_core.data import neardup, pixelcache

    try:
        base = tl_data.DatasetManifest.load(kept)
    except DataError:
        return None
    try:
        carry = [neardup.CACHE_NAME, *pixelcache.kept_names(kept)]
        return tl_data.link_import(base, dest, carry=carry)
    except (OSError, DataError):  # the kept copy was damaged or is being removed: import as usual
        shutil.rmtree(dest, ignore_errors=True)
        return None


def _keep_for_reuse(manifest: Any, kept: Path) -> None:
    """Keep a linked copy of a fresh import in ``kept`` (see _reused_import)."""
    from tl_core.data import dataset as tl_data
    from tl_core.data import neardup, pixelcache

    if kept.exists():
        return
    tmp = kept.parent / f".{kept.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        carry = [neardup.CACHE_NAME, *pixelcache.kept_names(Path(manifest.root))]
        tl_data.link_import(manifest, tmp, carry=carry)
        os.rename(tmp, kept)
    except OSError:  # another import kept it first, or no room: nothing lost
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
