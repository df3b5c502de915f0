"""What the pages do beyond laying out widgets, without torch: one import for the web server.

Importing into a project (as a job: :func:`submit_import`) or adding images to its data,
finding a run's baseline, merging label-review edits, starting a training run or a retrain,
and submitting the other long jobs (frozen features, model comparison, the saved-model check,
export, batch prediction) to the queue with keys that let a refresh, a second tab or a
second visit find the same job.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tl_core import diskspace
from tl_core.analysis.advice import SweepPoint
from tl_core.config import UNFINISHED, RunSpec, SplitSettings, TrainConfig, scratch_config
from tl_core.data import camera, review
from tl_core.data import dataset as tl_data
from tl_core.errors import DataError, DiskFullError, RunError
from tl_core.runs import jobs, supervisor
from tl_core.runs.kinds import (
    ExportParams,
    FeaturesParams,
    ImportParams,
    JobParams,
    PredictParams,
    RecommendParams,
    SurveyParams,
    VerifyParams,
)
from tl_core.runs.store import Job, Project, Store
from tl_core.training.familiarity import FEATURES_FILE

__all__ = [
    "FINISHED_OR_WAITING",
    "LABEL_CHECK_ENV",
    "Baselines",
    "ReviewEdit",
    "active_import",
    "active_training",
    "baseline_run",
    "baselines",
    "bundle_name",
    "camera_add_class",
    "camera_add_frames",
    "camera_commit",
    "camera_delete_shot",
    "camera_project",
    "camera_remove_class",
    "camera_rename_class",
    "camera_state",
    "delete_project",
    "export_key",
    "features_key",
    "files_stamp",
    "grow_data",
    "import_cut_off",
    "import_data",
    "job_for",
    "label_check_at_import",
    "latest_import",
    "merge_review",
    "rebuild_export",
    "resume_run",
    "retrain",
    "retry_job",
    "review_folder",
    "save_review",
    "scratch_accuracy",
    "split_settings",
    "submit_export",
    "submit_features",
    "submit_import",
    "submit_job",
    "submit_predict",
    "submit_recommend",
    "submit_survey",
    "submit_training",
    "submit_verify",
    "survey_key",
    "survey_of",
    "train_scratch_baseline",
    "use_labels",
]

FINISHED_OR_WAITING = ("queued", "starting", "running", "held", "finished")


# ------------------------------------------------------------------------------ importing


def import_data(
    store: Store,
    project: Project | None,
    kind: str,
    source: Any,
    progress: Callable[[int, int], None] | None = None,
    demo_dir: Path | None = None,
) -> Project:
    """Import images here, in this process, into a fresh data folder of ``project`` (a new
    one when None); the app uses :func:`submit_import` instead.

    ``kind`` is ``demo`` (the folder ``demo_dir``), ``zip`` (a file-like .zip) or ``files``
    (a list of ``(name, bytes)``). On a DataError or DiskFullError the new folder is removed
    and the error raised again; the project keeps its previous images.
    """
    import shutil

    if project is None:
        from tl_core.models.catalog import DEFAULT_MODEL

        project = store.create_project()
        store.update_settings(project.id, model=DEFAULT_MODEL)
    dest = store.new_data_dir(project.id)
    try:
        if kind == "demo":
            manifest = tl_data.import_folder(Path(demo_dir or ""), dest, progress)
        elif kind == "zip":
            manifest = tl_data.import_zip(source, dest, progress)
        else:
            manifest = tl_data.import_files(list(source), dest, progress)
        store.set_data_dir(project.id, manifest.root)
    except (DataError, DiskFullError):
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return store.project(project.id) or project


_NO_IMAGES_YET = "This project has no images yet. Import a data set first, then add more."


def grow_data(
    store: Store,
    project: Project,
    source: tl_data.GrowSource,
    label: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Project, tl_data.Growth]:
    """Add images to ``project``'s data as a new data version beside the current one.

    ``source`` is a folder, a file-like .zip or a list of ``(name, bytes)``; with ``label``
    every image goes into that class (existing or new). The earlier images are hard-linked
    and only the new ones decoded, so this runs in the caller's process. The old version is
    left as it is for the runs that used it. On a DataError or DiskFullError the new folder is
    removed and the error raised again; the project keeps its images.
    """
    import shutil

    if not project.data_dir:
        raise DataError(_NO_IMAGES_YET)
    base = tl_data.DatasetManifest.load(Path(project.data_dir))
    dest = store.new_data_dir(project.id)
    try:
        growth = tl_data.grow(base, source, dest, label, progress)
        store.set_data_dir(project.id, growth.manifest.root)
    except (DataError, DiskFullError):
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return store.project(project.id) or project, growth


IMPORT_WAYS = ("demo", "folder", "zip", "files")
_CHUNK = 1024 * 1024


def _new_project(store: Store) -> Project:
    from tl_core.models.catalog import DEFAULT_MODEL

    project = store.create_project()
    store.update_settings(project.id, model=DEFAULT_MODEL)
    return store.project(project.id) or project


def active_import(store: Store, project_id: str) -> Job | None:
    """The project's import job that is waiting or working, if any."""
    found = store.runs(project_id, UNFINISHED, kind="import")
    return found[-1] if found else None


def latest_import(store: Store, project_id: str) -> Job | None:
    """The project's newest import job (any status), or None."""
    found = store.runs(project_id, kind="import")
    return found[-1] if found else None


def import_cut_off(store: Store, project_id: str) -> str | None:
    """The sentence left when ``project_id`` was removed because its first import was cut
    off (:func:`tl_core.runs.jobs.drop_cut_off_project`); given once, then forgotten."""
    from tl_core.runs.endings import take_notice

    return take_notice(store.workspace, project_id)


def _size(stream: BinaryIO) -> int:
    here = stream.tell()
    end = stream.seek(0, 2)
    stream.seek(here)
    return end


def _save(stream: BinaryIO, path: Path) -> None:
    """Copy one uploaded file to disk in chunks (never a second copy of it in memory)."""
    stream.seek(0)
    with open(path, "wb") as out:
        shutil.copyfileobj(stream, out, _CHUNK)


def _save_upload(folder: Path, way: str, upload: Any) -> None:
    """What the browser sent, into ``folder`` (the job's upload folder) as the task reads it."""
    from tl_core.runs.tasks import UPLOADED_NAMES, UPLOADED_ZIP

    folder.mkdir()
    if way == "zip":
        diskspace.check_free(folder, _size(upload) + diskspace.MARGIN_BYTES)
        _save(upload, folder / UPLOADED_ZIP)
        return
    files = list(upload)
    diskspace.check_free(folder, sum(_size(f) for _, f in files) + diskspace.MARGIN_BYTES)
    for i, (_, stream) in enumerate(files):
        _save(stream, folder / f"{i:06d}")
    names = [str(name) for name, _ in files]
    (folder / UPLOADED_NAMES).write_text(json.dumps(names, ensure_ascii=False), encoding="utf-8")


def submit_import(
    store: Store,
    project: Project | None,
    way: str,
    path: str | Path | None = None,
    upload: Any = None,
) -> Job:
    """Queue an import into a new data version of ``project`` (a new project when None).

    ``way``: ``demo`` or ``folder`` (``path``: a folder or .zip on this machine, imported in
    place), ``zip`` (``upload``: a binary file) or ``files`` (``upload``: ``(name, binary
    file)`` pairs, e.g. Streamlit's UploadedFile). Uploads are written to the job's folder
    first, one file at a time. When the job finishes the project points at the new data; a
    failed or stopped import leaves nothing and the project keeps its images. While the
    project has an import under way, that job is returned instead of a new one.
    """
    if way not in IMPORT_WAYS:
        raise ValueError(f"unknown import way {way!r}")
    project = project or _new_project(store)
    params = ImportParams(
        way,
        path=str(path or "") if way in ("demo", "folder") else "",
        # the demo set is imported once per workspace, then linked (tl_core.runs.tasks)
        reuse=str(store.workspace / "imports") if way == "demo" else None,
        model=project.typed_settings.model or "",
    )
    return _queue_import(store, project, params, upload)


def submit_grow(
    store: Store,
    project: Project,
    upload: Any,
    label: str | None = None,
    path: str | Path | None = None,
) -> Job:
    """Queue an addition of images to ``project``'s data, as a new data version beside the
    current one (an import job that grows it, :func:`tl_core.data.dataset.grow`).

    ``upload`` is one binary .zip or ``(name, binary file)`` pairs (or None with ``path``, a
    folder or .zip on this machine); with ``label`` every image goes into that class
    (existing or new), else into the class of its folder. The earlier images are linked and
    only the new ones decoded, in the worker. When the job finishes the project points at the
    new version (the job's result has a ``summary`` and ``warnings``); the old version stays
    for the runs that used it. While the project has an import under way, that job is
    returned instead.
    """
    if not project.data_dir:
        raise DataError(_NO_IMAGES_YET)
    way = "folder" if path is not None else "zip" if hasattr(upload, "read") else "files"
    params = ImportParams(
        way,
        path=str(path or ""),
        grow=True,
        label=label or None,
        model=project.typed_settings.model or "",
    )
    return _queue_import(store, project, params, upload)


def _queue_import(store: Store, project: Project, params: ImportParams, upload: Any) -> Job:
    """The import job of ``params`` for ``project``, its upload saved first; or the one that
    is under way."""
    found = active_import(store, project.id)
    if found is not None:
        return found

    def save(folder: Path) -> None:
        from tl_core.runs.tasks import IMPORT_UPLOAD

        with diskspace.guard(folder, cleanup=[folder / IMPORT_UPLOAD]):
            _save_upload(folder / IMPORT_UPLOAD, params.way, upload)

    uploaded = params.way in ("zip", "files")
    return submit_job(
        store, project.id, params, project.data_dir or "", prepare=save if uploaded else None
    )


# ------------------------------------------------------------------------------ the camera

# The classroom-speed settings a project whose images all come from the camera gets at its
# first commit (docs/PERFORMANCE.md, "Camera classes"): the backbone frozen (head only on
# frozen features computed once), few epochs, a batch that fits a small class.
CAMERA_SETTINGS: dict[str, Any] = {
    "trainable_groups": 0,
    "epochs": 10,
    "batch_size": 16,
    "augment": "none",
}
CAMERA_PRESET = "classroom"  # settings["preset"] once CAMERA_SETTINGS were applied


def _capture_root(store: Store, project_id: str) -> Path:
    if store.project(project_id) is None:
        raise DataError("This project no longer exists. Start a new one on the Data page.")
    return store.project_dir(project_id) / camera.CAPTURE_FOLDER


def camera_project(store: Store, project_id: str | None) -> Project:
    """The project to record into: ``project_id``'s, or a new one when None."""
    if project_id is None:
        return _new_project(store)
    project = store.project(project_id)
    if project is None:
        raise DataError("This project no longer exists. Start a new one on the Data page.")
    return project


def camera_state(store: Store, project_id: str) -> camera.CaptureState:
    """The classes recorded in the project and not yet made part of its images."""
    return camera.state(_capture_root(store, project_id))


def camera_add_frames(
    store: Store, project_id: str, label: str, frames: list[bytes], recording: str
) -> camera.CaptureState:
    """Check and keep camera frames (JPEG/PNG bytes) in class ``label`` of the project."""
    return camera.add_frames(_capture_root(store, project_id), label, frames, recording)


def camera_add_class(store: Store, project_id: str, label: str) -> camera.CaptureState:
    """A new, empty recorded class."""
    return camera.add_class(_capture_root(store, project_id), label)


def camera_rename_class(store: Store, project_id: str, old: str, new: str) -> camera.CaptureState:
    return camera.rename_class(_capture_root(store, project_id), old, new)


def camera_remove_class(store: Store, project_id: str, label: str) -> camera.CaptureState:
    return camera.remove_class(_capture_root(store, project_id), label)


def camera_delete_shot(
    store: Store, project_id: str, label: str, shot: str | Path
) -> camera.CaptureState:
    return camera.delete_shot(_capture_root(store, project_id), label, shot)


def camera_commit(store: Store, project_id: str) -> Project:
    """The recorded classes become a new data version of the project.

    With images already there this is an addition (:func:`tl_core.data.dataset.grow`): a
    recorded class named like an existing class joins it, the others are new classes;
    otherwise a first import. Validation, dedupe and warnings are those of any import (the
    manifest's warnings). The recorded shots are removed afterwards; on an error nothing
    changes. When every image of the project came from the camera, the project gets the
    classroom-speed settings (:data:`CAMERA_SETTINGS`, once; ``settings["preset"]`` says so).
    """
    root = _capture_root(store, project_id)
    with camera.locked(root):  # frames sent meanwhile wait, then start the next capture
        project = store.project(project_id)
        assert project is not None
        files = camera.commit_files(root)
        dest = store.new_data_dir(project_id)
        try:
            if project.data_dir:
                base = tl_data.DatasetManifest.load(Path(project.data_dir))
                manifest = tl_data.grow(base, files, dest).manifest
            else:
                if len({name.split("/", 1)[0] for name, _ in files}) < 2:
                    raise DataError(
                        "Record at least two classes (for example two different objects) "
                        "before using the pictures."
                    )
                manifest = tl_data.import_files(files, dest)
            store.set_data_dir(project_id, manifest.root)
        except (DataError, DiskFullError):
            shutil.rmtree(dest, ignore_errors=True)
            raise
        camera.clear(root)
    only_camera = all(camera.frame_key(i.source) is not None for i in manifest.items)
    if only_camera and project.typed_settings.preset != CAMERA_PRESET:
        store.update_settings(project_id, **CAMERA_SETTINGS, preset=CAMERA_PRESET)
    return store.project(project_id) or project


# ------------------------------------------------------------------------------ training runs


def delete_project(store: Store, project_id: str) -> None:
    """Delete a project with its images, runs, jobs and caches (:meth:`Store.delete_project`);
    RunError while one of its jobs runs."""
    store.delete_project(project_id)


def active_training(store: Store, project_id: str) -> Job | None:
    """The project's training run that is waiting or going, if any."""
    return next((r for r in store.runs(project_id) if r.active), None)


def submit_training(
    store: Store,
    project: Project,
    config: TrainConfig,
    baseline_of: str | None = None,
    sweep: str | None = None,
) -> Job:
    """Queue a run with the project's current label review snapshotted into its record."""
    corrections = review.load(Path(project.data_dir)) if project.data_dir else None
    spec = RunSpec(
        config,
        baseline_of=baseline_of,
        sweep=sweep,
        corrections=corrections.to_dict() if corrections else None,
    )
    return submit_job(store, project.id, spec, project.data_dir or "")


def resume_run(store: Store, run_id: str) -> Job:
    """Queue an interrupted or stopped run to go on from its last saved epoch, and keep the
    queue moving; RunError when it cannot (:func:`tl_core.runs.jobs.resume`)."""
    run = jobs.resume(store, run_id)
    supervisor.pump(store)
    return store.job(run_id) or run


def retrain(store: Store, project: Project, run: Job) -> Job:
    """The same settings as ``run`` with the current label review; RunError while one trains."""
    if active_training(store, project.id) is not None:
        raise RunError("A run is already training; wait for it to finish.")
    return submit_training(store, project, run.spec.config)


def train_scratch_baseline(store: Store, project: Project, run: Job, n_backbone: int) -> Job:
    """The same run from random weights, tagged as ``run``'s baseline."""
    if active_training(store, project.id) is not None:
        raise RunError("A run is already training; wait for it to finish.")
    config = scratch_config(run.spec.config, n_backbone)
    return submit_training(store, project, config, baseline_of=run.id)


def baseline_run(store: Store, project_id: str, run: Job) -> Job | None:
    """The newest from-scratch run started as ``run``'s baseline, if any."""
    return next((r for r in reversed(store.runs(project_id)) if r.spec.baseline_of == run.id), None)


def scratch_accuracy(store: Store, project_id: str, run: Job) -> float | None:
    """The finished baseline's validation accuracy, if there is one."""
    baseline = baseline_run(store, project_id, run)
    if baseline is None or baseline.status != "finished":
        return None
    return (baseline.result or {}).get("val_accuracy")


# ------------------------------------------------------------------------------ label review


@dataclass(frozen=True)
class ReviewEdit:
    """What the review form says about one image: its new label, left out, suspect."""

    file: str
    true_label: str
    label: str  # "(keep)" or the true label: no change
    leave_out: bool
    suspect: bool


def merge_review(corrections: review.Corrections, edits: Iterable[ReviewEdit]) -> None:
    """Apply the form's edits to ``corrections`` in place (other images keep theirs)."""
    for e in edits:
        corrections.relabel.pop(e.file, None)
        if e.label not in ("(keep)", e.true_label):
            corrections.relabel[e.file] = e.label
        (corrections.exclude.add if e.leave_out else corrections.exclude.discard)(e.file)
        (corrections.suspect.add if e.suspect else corrections.suspect.discard)(e.file)


# ------------------------------------------------------------------------------ other jobs


def submit_job(
    store: Store,
    project_id: str,
    params: JobParams,
    data_dir: Path | str,
    key: str | None = None,
    prepare: Callable[[Path], None] | None = None,
) -> Job:
    """Queue a job and keep the queue moving: the one path of every submit_* function here.

    Its kind is its parameters' entry in :mod:`tl_core.runs.kinds`; a job with a ``key``
    that is waiting, running or finished is returned instead of a new one; ``prepare(folder)``
    writes what the job reads into its folder first (:func:`tl_core.runs.jobs.submit`)."""
    job = jobs.submit(store, project_id, params, data_dir, key=key, prepare=prepare)
    supervisor.pump(store)
    return store.job(job.id) or job


def job_for(
    store: Store,
    project_id: str,
    params: JobParams,
    data_dir: Path | str,
    key: str,
    submit: bool = True,
) -> Job | None:
    """The job computing ``key``: a waiting, running or finished one is reused; a failed or
    stopped one is returned as it is (the page shows why and offers to try again), so a
    failing job is not started again on every refresh. None when there is none and not
    ``submit``."""
    found = jobs.find_job(store, project_id, key)
    if found is not None:
        return found
    return submit_job(store, project_id, params, data_dir, key=key) if submit else None


def features_key(data_dir: str, model: str, val_fraction: float, seed: int) -> str:
    return f"features|{Path(data_dir).resolve()}|{model}|{float(val_fraction):g}|{int(seed)}"


def submit_features(
    store: Store,
    project: Project,
    model: str,
    val_fraction: float,
    seed: int,
    submit: bool = True,
    data_dir: str | None = None,
) -> Job | None:
    """The frozen-features job (head start, gauge, curve, probe) of ``model`` on the images
    (the project's current ones, or ``data_dir``: a run's own data version)."""
    data_dir = data_dir or project.data_dir or ""
    params = FeaturesParams(model, SplitSettings(float(val_fraction), int(seed)))
    key = features_key(data_dir, model, val_fraction, seed)
    return job_for(store, project.id, params, data_dir, key, submit)


def split_settings(project: Project) -> SplitSettings:
    """The project's split (validation share, seed), as its runs use it."""
    return project.typed_settings.split


def submit_recommend(
    store: Store, project: Project, keys: list[str], submit: bool = True
) -> Job | None:
    """The model comparison over ``keys`` on the project's images and split."""
    data_dir = project.data_dir or ""
    split = split_settings(project)
    params = RecommendParams(tuple(keys), split)
    fraction, seed = split.val_fraction, split.seed
    key = f"recommend|{Path(data_dir).resolve()}|{fraction:g}|{seed}|{','.join(keys)}"
    return job_for(store, project.id, params, data_dir, key, submit)


def files_stamp(run_dir: Path | str) -> str:
    """best.pt's mtime and size and predictions.json's mtime: what a check depends on."""
    best, preds = Path(run_dir) / "best.pt", Path(run_dir) / "predictions.json"
    parts = [
        best.stat().st_mtime if best.is_file() else 0.0,
        best.stat().st_size if best.is_file() else -1,
        preds.stat().st_mtime if preds.is_file() else 0.0,
    ]
    return ":".join(f"{p:.6f}" if isinstance(p, float) else str(p) for p in parts)


def submit_verify(store: Store, run: Job) -> Job:
    """The check that the run's saved model gives its recorded predictions again."""
    key = f"verify|{run.id}|{files_stamp(run.run_dir)}"
    job = job_for(store, run.project_id, VerifyParams(run.run_dir), run.data_dir, key)
    assert job is not None
    return job


def bundle_name(project: Project, run: Job) -> str:
    name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in (project.name or "model"))
    return f"{name.strip('-') or 'model'}-{run.spec.config.model}.zip"


def export_key(project: Project, run: Job) -> str:
    return f"export|{run.id}|{files_stamp(run.run_dir)}|{bundle_name(project, run)}"


def submit_export(store: Store, project: Project, run: Job, submit: bool = True) -> Job | None:
    """The export job (bundle + parity check) of ``run``; ``submit=False`` only looks."""
    params = ExportParams(run.run_dir, bundle_name(project, run), run.spec.corrections)
    return job_for(store, project.id, params, run.data_dir, export_key(project, run), submit)


def rebuild_export(store: Store, project: Project, run: Job) -> Job:
    """Forget the run's finished export and build it again."""
    old = jobs.find_job(store, project.id, export_key(project, run))
    if old is not None and not old.active:
        jobs.discard_run(store, old.id)
    job = submit_export(store, project, run)
    assert job is not None
    return job


def submit_predict(
    store: Store, run: Job, pictures: list[tuple[str, bytes]], temperature: float
) -> Job:
    """Predict many pictures with ``run``'s model in a worker; the same pictures, same job."""
    import hashlib

    digest = hashlib.sha256()
    for name, data in pictures:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    # the answers carry each picture's unfamiliarity, so the run's check is part of the key
    check = Path(run.run_dir) / FEATURES_FILE
    checked = f"{check.stat().st_mtime:.6f}" if check.is_file() else "none"
    stamp = f"{files_stamp(run.run_dir)}|{checked}"
    key = f"predict|{run.id}|{stamp}|{temperature:.6f}|{digest.hexdigest()}"
    found = jobs.find_job(store, run.project_id, key)
    if found is not None:
        return found
    params = PredictParams(run.run_dir, float(temperature))
    return submit_job(
        store,
        run.project_id,
        params,
        run.data_dir,
        key=key,
        prepare=lambda folder: jobs.write_inputs(folder, pictures),
    )


def retry_job(store: Store, job: Job) -> Job:
    """Queue a failed or stopped job again with the same params, key and input files."""
    folder = Path(job.run_dir) / "inputs"
    inputs = (
        [(f.name.split("-", 1)[-1], f.read_bytes()) for f in sorted(folder.glob("*"))]
        if folder.is_dir()
        else None
    )
    return submit_job(
        store,
        job.project_id,
        job.params,
        job.data_dir,
        key=job.key,
        prepare=(lambda to: jobs.write_inputs(to, inputs)) if inputs else None,
    )


def _n_val(run: Job) -> int:
    path = Path(run.run_dir) / "predictions.json"
    try:
        return len(json.loads(path.read_text())["rows"])
    except (OSError, ValueError, KeyError):
        return 0


def latest_sweep(runs: Sequence[Job]) -> list[SweepPoint]:
    """The newest sweep among ``runs`` (in creation order), by depth."""
    tagged = [r for r in runs if r.config.get("sweep")]
    if not tagged:
        return []
    sweep_id = tagged[-1].config["sweep"]
    points = [
        SweepPoint(
            trainable_groups=int(r.config.get("trainable_groups", 0)),
            run_id=r.id,
            status=r.status,
            accuracy=(r.result or {}).get("val_accuracy"),
            n_val=_n_val(r),
            seconds=(r.result or {}).get("seconds"),
        )
        for r in tagged
        if r.config["sweep"] == sweep_id
    ]
    return sorted(points, key=lambda p: p.trainable_groups)


# ------------------------------------------------------------------------------ the Evaluate page


@dataclass(frozen=True)
class Baselines:
    """What a finished run is held against: its from-scratch run's accuracy (once finished),
    and the frozen-features job whose probe accuracy is the frozen baseline (None where that
    baseline does not apply)."""

    scratch: float | None
    frozen_job: Job | None


def baselines(store: Store, project: Project, run: Job) -> Baselines:
    """The baselines of ``run``: none for a run from random weights (it is the baseline);
    for a pretrained run, its from-scratch run's accuracy, and, when layer groups learned and
    the model's weights are on this computer, the frozen-features job on the run's own data
    and split (submitted when there is none; shared with the model page)."""
    from tl_core.models import catalog

    cfg = run.spec.config
    if not cfg.pretrained:
        return Baselines(None, None)
    scratch = scratch_accuracy(store, project.id, run)
    frozen = None
    if (
        cfg.trainable_groups > 0
        and catalog.weights_status(catalog.get_spec(cfg.model)) != "needs download"
    ):
        frozen = submit_features(
            store, project, cfg.model, cfg.val_fraction, cfg.seed, data_dir=run.data_dir
        )
    return Baselines(scratch, frozen)


def review_folder(project: Project, run: Job) -> Path:
    """The data folder whose label review the Evaluate page shows and saves: the project's
    current images (the next run's), else the run's own."""
    return Path(project.data_dir or run.data_dir)


def save_review(
    folder: Path, corrections: review.Corrections, edits: Iterable[ReviewEdit]
) -> review.Corrections:
    """Merge the review form's ``edits`` into ``corrections`` (:func:`merge_review`) and save
    them as ``folder``'s review, which the next run applies; returns them."""
    merge_review(corrections, edits)
    review.save(folder, corrections)
    return corrections


# ------------------------------------------------------------------------------ labelling


LABEL_CHECK_ENV = "TL_STUDIO_LABEL_CHECK"


def label_check_at_import() -> bool:
    """Whether the Data page looks for wrong labels by itself after an import (``on``, the
    default) or only when asked (``off``: e.g. a classroom server that keeps its cores for
    training)."""
    return os.environ.get(LABEL_CHECK_ENV, "on").strip().lower() not in ("off", "0", "no")


def survey_key(data_dir: str, model: str, run_dir: str = "") -> str:
    where = f"|{Path(run_dir).resolve()}" if run_dir else ""
    return f"survey|{Path(data_dir).resolve()}|{model}{where}"


def submit_survey(
    store: Store,
    project: Project,
    run: Job | None = None,
    submit: bool = True,
    data_dir: str | None = None,
) -> Job | None:
    """The survey job (map, label suggestions' space, likely wrong labels) of the project's
    current pictures (or ``data_dir``) with its chosen model, or with ``run``'s trained model.
    Computed once per data version and model: a finished one is reused."""
    from tl_core.models.catalog import DEFAULT_MODEL

    data_dir = data_dir or project.data_dir or ""
    if run is not None:
        model, run_dir = str(run.config.get("model") or DEFAULT_MODEL), run.run_dir
    else:
        model, run_dir = project.typed_settings.model or DEFAULT_MODEL, ""
    params = SurveyParams(run_dir, model)
    key = survey_key(data_dir, model, run_dir)
    return job_for(store, project.id, params, data_dir, key, submit)


def survey_of(job: Job | None) -> Any:
    """The survey a finished survey job saved (tl_core.labeling.survey.Survey), else None."""
    if job is None or job.status != "finished" or job.result is None:
        return None
    from tl_core.labeling import survey

    return survey.load(Path(job.run_dir) / survey.FILE_NAME)


def use_labels(store: Store, project: Project) -> Path:
    """Make the labels given so far the project's data: a new data version (the pictures
    still unlabelled stay so), which the next run trains on; earlier runs keep theirs."""
    from tl_core.data import labels

    if not project.data_dir:
        raise DataError("Bring pictures first.")
    base = tl_data.DatasetManifest.load(Path(project.data_dir))
    dest = store.new_data_dir(project.id)
    labels.labelled_version(base, dest)
    store.set_data_dir(project.id, dest)
    return dest
