"""The headless commands: the same engine and store as the app.

``python -m tl_core train --data DIR [--val DIR] [--model NAME] [--out RUN_DIR]`` imports the
folder into a project of the workspace, trains (waiting its turn when the queue is full) and
prints one JSON object as its last line. The run shows up in the app under the printed link.

``python -m tl_core evaluate RUN_DIR [--data DIR]`` scores a run (accuracy with its 95%
interval, per-class scores, calibration) and prints a JSON summary as its last line.

``python -m tl_core export RUN_DIR --out FILE.zip [--data DIR]`` writes the run's best model
as a bundle that predicts the same elsewhere (see :mod:`tl_core.export.bundle`) and prints a JSON
summary, with ``parity_ok``, as its last line.

``python -m tl_core label suggest --data DIR --out FILE.csv`` suggests a class for every picture
of DIR/unlabelled/ from a few labelled ones per class; ``label issues --data DIR`` lists likely
wrong labels; ``label apply --data DIR --labels FILE.csv`` moves the pictures into their class
folders. Each prints a JSON summary as its last line.

On a terminal, ``train``, ``recommend``, ``evaluate`` and ``export`` show progress bars on
standard error (import, preparing the images, the frozen pass, epochs with loss, accuracy and
an ETA); not on a terminal, or with ``--quiet``, they show none. The JSON summary is always the
last line of standard output.

Bad input ends with exit code 2, one plain sentence on stderr and ``{"error": ...}`` as the
last line, checked before torch is imported and before anything is created. A run that fails
(a full disk, a read-only workspace, memory that ran out, ...) ends the same way, with no
traceback: code 2 and its sentence as ``{"error": ...}``. Ctrl-C and
SIGTERM end a run as ``interrupted`` (resumable in the app) with exit code 130 or 143.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tl_core import events
from tl_core.config import AUGMENT_LEVELS, SCRATCH_LR, TrainConfig, scratch_config
from tl_core.data import paths
from tl_core.errors import DataError, RunError, StudioError
from tl_core.models.catalog import DEFAULT_MODEL, get_spec
from tl_core.runs import endings, interrupt, jobs, supervisor
from tl_core.runs.executor import tune_allocator
from tl_core.runs.store import Job, Store, default_workspace, new_id

if TYPE_CHECKING:
    from tl_core.data.dataset import DatasetManifest, Split


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions; help lines wrap as usual."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tl_core",
        description=__doc__,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="workspace folder (default: $TL_STUDIO_HOME or ~/.tl-studio)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_recommend(sub)
    _add_export(sub)
    _add_evaluate(sub)
    _add_label(sub)
    _add_repair(sub)
    _add_worker(sub)
    return parser


def _add_quiet(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (they are shown only when standard error is a terminal)",
    )


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser(
        "train",
        help="train a model on a folder of labelled images",
        description="Import --data (and --val) into a new project of the workspace, train, and "
        "print a JSON summary as the last line. When TL_STUDIO_MAX_RUNS runs already train, the "
        "run waits its turn in the queue the app uses.",
    )
    _add_quiet(train)
    defaults = TrainConfig()
    train.add_argument(
        "--data", type=Path, required=True, help="folder with one sub-folder of images per class"
    )
    train.add_argument(
        "--val",
        type=Path,
        default=None,
        help="a separate validation folder with the same class sub-folders, never trained on "
        "(default: hold back --val-fraction of --data)",
    )
    train.add_argument(
        "--model", default=DEFAULT_MODEL, help="catalog name of the model (default: %(default)s)"
    )
    train.add_argument(
        "--trainable-groups",
        type=int,
        default=defaults.trainable_groups,
        help="how many of the backbone's layer groups learn, counted from the top; 0 trains "
        "the new head only (default: %(default)s)",
    )
    train.add_argument(
        "--epochs", type=int, default=defaults.epochs, help="epochs (default: %(default)s)"
    )
    train.add_argument(
        "--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)"
    )
    train.add_argument(
        "--lr", type=float, default=defaults.lr, help="learning rate (default: %(default)s)"
    )
    train.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="images per step (default: %(default)s)",
    )
    train.add_argument(
        "--augment",
        default=defaults.augment,
        help=f"how strongly training images are varied: {', '.join(AUGMENT_LEVELS)} "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--val-fraction",
        type=float,
        default=defaults.val_fraction,
        help="share of --data held back for validation when --val is not given "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--out",
        type=Path,
        default=None,
        help="a new or empty folder for the run's files (default: a folder in the workspace)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="let --out be a folder that is not empty: what is in it is deleted first; a "
        "finished run of the workspace in that folder is forgotten, a run that is training "
        "or waiting is never replaced",
    )
    train.add_argument(
        "--from-scratch",
        action="store_true",
        help="the baseline: same model and epochs from random weights, every layer learning "
        f"(learning rate at most {SCRATCH_LR:g})",
    )


def _add_recommend(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    recommend = sub.add_parser(
        "recommend",
        help="rank the models available offline on your images, from frozen features",
        description="Score every catalog model whose weights are on this machine with a "
        "cross-validated probe on frozen features (and LogME); print the ranking and, as the "
        "last line, a JSON object.",
    )
    _add_quiet(recommend)
    recommend.add_argument(
        "--data", type=Path, required=True, help="folder with one sub-folder of images per class"
    )
    recommend.add_argument(
        "--val",
        type=Path,
        default=None,
        help="a separate validation folder with the same class sub-folders",
    )


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser(
        "export",
        help="write a run's best model as a zip that predicts the same elsewhere",
        description="Write RUN_DIR's best model as a zip (timm folder, ONNX, predict.py, model "
        "card) and check it against the app on the validation pictures. Exit code 0: written "
        "and parity checked; 1: written, but parity failed or could not be checked; 2: bad "
        "input, nothing written.",
    )
    _add_quiet(export)
    export.add_argument("run_dir", type=Path, help="the run's folder (holding best.pt)")
    export.add_argument("--out", type=Path, required=True, help="the zip file to write")
    export.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the run's imported data set folder (default: found through the workspace)",
    )
    export.add_argument(
        "--format",
        dest="formats",
        default=None,
        help="comma-separated formats to add to the timm/safetensors model: "
        "onnx,int8,web,tflite,coreml (default: all that this machine can make; tflite and "
        "coreml need the export extra)",
    )


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = sub.add_parser(
        "evaluate",
        help="score a run: accuracy with its 95%% interval, per-class scores, calibration",
        description="Score RUN_DIR's best model on its validation pictures (or on --data, a "
        "folder with one sub-folder per class) and print a JSON summary as the last line.",
    )
    _add_quiet(evaluate)
    evaluate.add_argument("run_dir", type=Path, help="the run's folder (holding best.pt)")
    evaluate.add_argument(
        "--data",
        type=Path,
        default=None,
        help="another labelled folder to score instead, or the run's imported data set "
        "(holding manifest.json) to re-check the saved model on",
    )


def _add_label(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    label = sub.add_parser(
        "label",
        help="label a folder: suggest classes, find likely wrong labels, file pictures",
        description="Label the pictures of a folder from a few labelled ones per class: "
        "'suggest' writes a CSV of suggested classes for the pictures in its unlabelled/ "
        "folder, 'apply' moves them into their class folders from that CSV (edited or not), "
        "'issues' lists labelled pictures that look like another class.",
    )
    steps = label.add_subparsers(dest="label_command", required=True, metavar="STEP")
    _add_label_suggest(steps)
    _add_label_issues(steps)
    _add_label_apply(steps)


def _add_label_data(command: argparse.ArgumentParser, what: str) -> None:
    _add_quiet(command)
    command.add_argument("--data", type=Path, required=True, help=what)
    command.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="catalog name of the pretrained model whose features are used (default: %(default)s)",
    )


def _add_label_suggest(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    suggest = steps.add_parser(
        "suggest",
        help="suggest a class for every unlabelled picture; write them to a CSV",
        description="Suggest a class for every picture of DIR/unlabelled/ from the labelled "
        "pictures in the class folders beside it (at least 3 per class, two classes or more). "
        "The CSV has one row per unlabelled picture, surest first: file (the path inside "
        "DIR), suggested_class, confidence (0 to 1) and confident (yes when the confidence is "
        "at or above the level where suggestions are safe). Nothing in DIR changes. The last "
        "line is a JSON summary with the estimated accuracy of a model trained on the labels.",
    )
    _add_label_data(
        suggest, "folder with one sub-folder of pictures per class and an unlabelled/ folder"
    )
    suggest.add_argument("--out", type=Path, required=True, help="the CSV file to write")
    suggest.add_argument("--force", action="store_true", help="replace --out when it exists")


def _add_label_issues(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    issues = steps.add_parser(
        "issues",
        help="list labelled pictures that look like another class (likely wrong labels)",
        description="Check the labels of a folder with one sub-folder per class: list the "
        "pictures whose features say another class, worst first, with the class they look "
        "like. Nothing in DIR changes. The last line is a JSON summary.",
    )
    _add_label_data(issues, "folder with one sub-folder of pictures per class")
    issues.add_argument(
        "--top", type=int, default=20, help="how many to list at most (default: %(default)s)"
    )


def _add_label_apply(steps: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apply = steps.add_parser(
        "apply",
        help="move the pictures of unlabelled/ into their class folders, from a CSV",
        description="Move the pictures a CSV names from DIR/unlabelled/ into DIR/<class>/ "
        "(new class folders are made). The CSV needs a 'file' column and a 'label' or "
        "'suggested_class' column: a row's label is used when it has one, else its suggested "
        "class; a row with neither is skipped. Every row is checked before anything moves; "
        "a picture whose name the class folder already has gets a free name (name-2.jpg). "
        "The last line is a JSON summary.",
    )
    apply.add_argument("--data", type=Path, required=True, help="the folder to label")
    apply.add_argument(
        "--labels", type=Path, required=True, help="the CSV (such as 'label suggest' writes)"
    )
    apply.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="apply a suggested class only when its confidence is at least this (0 to 1); "
        "rows with their own label always apply",
    )
    apply.add_argument("--copy", action="store_true", help="copy the pictures instead of moving")
    apply.add_argument(
        "--dry-run", action="store_true", help="check and report only; nothing is moved"
    )


def _add_repair(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser(
        "repair",
        help="move a damaged studio.db aside and rebuild the index from the folders",
        description="Check the workspace's index (studio.db). When it is damaged, not a "
        "database, another program's or a newer version's, move it aside as "
        "studio.db.damaged-<time>; then add every project and run folder (project.json, "
        "run.json) that the index lacks. Prints a JSON summary as the last line.",
    )


def _add_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser(
        "worker",
        help="(internal) run one queued run of the app",
        description="Train one run the app queued; the app starts this in its own process.",
    )
    worker.add_argument("run_id", help="the id of the queued run")
    worker.add_argument(
        "--workspace",
        type=Path,
        default=None,
        dest="worker_workspace",
        help="workspace folder of the run (default: the one given before the command)",
    )


# ---------------------------------------------------------------------------- progress bars


class _Bars:
    """Progress bars on standard error (tqdm), one phase at a time; nothing when off.

    Fed by the engine's callbacks and the job's events: ``count`` for a phase with a size
    (images imported, decoded, passed through the frozen layers; training steps), ``phase``
    for one without (loading the model, writing a zip).
    """

    def __init__(self, on: bool, stream: TextIO | None = None) -> None:
        self.on = on
        self.stream = stream or sys.stderr
        self._bar: Any = None
        self._key: str | None = None
        self.epochs = 0  # the run's epochs, for the training bar's label
        self._val = ""

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> _Bars:
        """Bars when standard error is a terminal and ``--quiet`` was not given."""
        quiet = getattr(args, "quiet", False)
        return cls(not quiet and sys.stderr.isatty())

    def _open(
        self, key: str, total: int | None, unit: str, fmt: str | None = None, initial: int = 0
    ) -> Any:
        from tqdm import tqdm

        self.close()
        self._key = key
        try:  # a terminal that tells no size (a bare pseudo-terminal) gets 100x20
            size = os.get_terminal_size(self.stream.fileno())
            sized = size.columns > 0 and size.lines > 0
        except (AttributeError, OSError, ValueError):
            sized = False
        self._bar = tqdm(
            total=total,
            desc=key,
            unit=unit,
            file=self.stream,
            dynamic_ncols=sized,
            ncols=None if sized else 100,
            nrows=None if sized else 20,
            leave=True,
            bar_format=fmt,
            initial=initial,  # a phase that goes on (training after a frozen pass): its ETA
        )
        return self._bar

    def count(self, key: str, done: int, total: int, unit: str = "img", **postfix: str) -> None:
        """Phase ``key`` has done ``done`` of ``total``."""
        if not self.on:
            return
        bar = self._bar
        if bar is None or key != self._key or bar.total != total or done < bar.n:
            bar = self._open(key, total, unit, initial=done if done < total else 0)
        if postfix:
            bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in postfix.items()), refresh=False)
        bar.update(done - bar.n)
        if done >= total:
            self.close()

    def phase(self, message: str) -> None:
        """A phase without a count: its name on a line of its own."""
        if self.on and message != self._key:
            self._open(message, None, "it", "{desc} ({elapsed})")

    def write(self, text: str) -> None:
        """A log line that must be seen even between bars."""
        if self.on and self._bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = self._key = None

    def progress(self, key: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callback for phase ``key``."""
        return lambda done, total: self.count(key, done, total)

    def event(self, event: events.Event) -> None:
        """One event of a job (see :mod:`tl_core.events`): its bar moves."""
        if not self.on:
            return
        if isinstance(event, events.Progress):
            if event.done is not None and event.total:
                self.count(events.label(event), event.done, event.total)
            elif event.phase != "train":  # the steps say when training goes on
                self.phase(events.describe(event))
        elif isinstance(event, events.Step):
            step = event.row
            epoch = f"{step.epoch}/{self.epochs}" if self.epochs else str(step.epoch)
            postfix = {"epoch": epoch, "loss": f"{step.loss:.3f}", "acc": f"{step.accuracy:.1%}"}
            if self._val:
                postfix["val acc"] = self._val
            self.count("Training", step.step, step.total_steps, "step", **postfix)
        elif isinstance(event, events.Epoch):
            row = event.row
            self._val = f"{row.val_accuracy:.1%}"
            self.write(
                f"epoch {row.epoch}: train loss {row.train_loss:.3f}, "
                f"accuracy {row.train_accuracy:.1%}; validation loss "
                f"{row.val_loss:.3f}, accuracy {row.val_accuracy:.1%}"
            )
        elif isinstance(event, events.End):
            self.close()


# ---------------------------------------------------------------------------------- train


def _check_folders(args: argparse.Namespace) -> None:
    """--data and --val, before anything is imported (torch-free)."""
    paths.check_data_folder(args.data)
    if args.val is not None:
        paths.check_val_folder(args.data, args.val)


def _import(
    data: Path, val: Path | None, dest: Path, bars: _Bars, models: Sequence[str] = ()
) -> DatasetManifest:
    """Import ``data`` (and ``val``, kept as the validation set) into ``dest``, making the
    inputs of ``models`` while each image is decoded (training then decodes nothing)."""
    from tl_core.data.dataset import import_folder
    from tl_core.models.catalog import get_spec

    progress = bars.progress("Importing your images")
    squares = [get_spec(m).square for m in models]
    try:
        if val is None:
            return import_folder(data, dest, progress, squares)
        with tempfile.TemporaryDirectory() as tmp:  # one train/val layout, nothing copied
            (Path(tmp) / "train").symlink_to(data.resolve(), target_is_directory=True)
            (Path(tmp) / "val").symlink_to(val.resolve(), target_is_directory=True)
            return import_folder(Path(tmp), dest, progress, squares)
    finally:
        bars.close()


def _split(manifest: DatasetManifest, val: Path | None, fraction: float, seed: int) -> Split:
    """The split training will use; a named validation folder must give it every image."""
    from tl_core.data.dataset import split_dataset

    split = split_dataset(manifest, fraction, seed)
    if val is None:
        return split
    if not manifest.has_explicit_val:
        raise DataError(f"The validation folder '{val}' could not be used as given.")
    if not split.val:
        copies = [a for a, _ in manifest.duplicates if a.startswith("val/")]
        skipped = [s for s in manifest.skipped if s.source.startswith("val/")]
        why = (
            "every one of them is an exact copy of a training image (leakage)"
            if copies and not skipped
            else f"e.g. '{skipped[0].source[4:]}': {skipped[0].reason}"
            if skipped
            else "it holds no images the importer can read"
        )
        raise DataError(f"No image of the validation folder '{val}' can be used: {why}.")
    return split


def _counts(split: Split, manifest: DatasetManifest) -> dict[str, object]:
    return {
        "train_images": len(split.train),
        "val_images": len(split.val),
        "validation": "folder" if manifest.has_explicit_val else "split",
    }


def _warn(manifest: DatasetManifest) -> None:
    for warning in manifest.warnings:
        print(f"warning: {warning.text}", file=sys.stderr)


def _recommend(args: argparse.Namespace, bars: _Bars) -> dict[str, object]:
    _check_folders(args)
    from tl_core.analysis.transfer import recommend, suggested, verdict

    def progress(key: str, done: int, total: int) -> None:
        # The feature pass of one model: preparing the images, then running them through it.
        half = total // 2
        if done <= half and done < total:
            bars.count(f"{key}: preparing your images", done, half)
        else:
            bars.count(f"{key}: running your images through it", done - half, total - half)
        if done == total:
            bars.write(f"{key}: {done}/{total}")

    with tempfile.TemporaryDirectory() as tmp:
        manifest = _import(args.data, args.val, Path(tmp) / "data", bars)
        _warn(manifest)
        split = _split(manifest, args.val, 0.2, 0)
        try:
            ranking = recommend(manifest, split, progress=progress)
        finally:
            bars.close()
    for r in ranking:
        print(
            f"{r.rank}. {r.title}: probe accuracy {r.probe_accuracy:.1%} (95% interval "
            f"{r.ci_low:.1%}-{r.ci_high:.1%}), LogME {r.logme:.3f}, {r.params_m:g} M parameters, "
            f"~{r.images_per_s} images/s, scored in {r.seconds:.1f} s"
            + (" [as good as the best]" if r.tied and r.rank > 1 else "")
        )
    best = suggested(ranking)
    if best is not None:
        print(verdict(ranking).replace("**", ""))
    return {
        "best": best.key if best else None,
        "tied_with": [r.key for r in ranking if r.tied and best and r.key != best.key],
        "images": ranking[0].images if ranking else 0,
        "ranking": [asdict(r) for r in ranking],
        **_counts(split, manifest),
    }


def _run_in_folder(store: Store, folder: Path) -> Job | None:
    target = str(folder.resolve())
    return next((r for r in store.runs() if r.run_dir == target), None)


def _check_out(store: Store, args: argparse.Namespace) -> tuple[bool, Job | None]:
    """--out: (whether it must be emptied first, the finished run it replaces)."""
    if args.out is None:
        return False, None
    clear = paths.check_out_folder(
        args.out, args.overwrite, keep=(store.workspace, args.data, args.val)
    )
    previous = _run_in_folder(store, args.out)
    if previous is not None and previous.active:
        raise RunError(
            f"The folder '{args.out}' belongs to a run that is still training or waiting; "
            "choose another --out folder."
        )
    if previous is not None and not args.overwrite:
        raise RunError(
            f"The folder '{args.out}' belongs to the run {previous.id} of this workspace; "
            "choose another --out folder, or add --overwrite to replace that run."
        )
    return clear, previous


class _Kept(StudioError):
    """A run that ended early but saved an epoch: the message says how to go on."""


def _config(args: argparse.Namespace) -> TrainConfig:
    """The run's settings from the command line, checked before any work."""
    config = TrainConfig(
        model=args.model,
        trainable_groups=args.trainable_groups,
        epochs=args.epochs,
        seed=args.seed,
        lr=args.lr,
        batch_size=args.batch_size,
        augment=args.augment,
        val_fraction=args.val_fraction,
    )
    config.validate()
    get_spec(config.model)  # an unknown name fails before any work
    return config


@dataclass
class _Training:
    """What a command-line run has made so far (undone when it fails)."""

    config: TrainConfig
    staging: Path
    project_id: str | None = None
    run_id: str | None = None
    manifest: DatasetManifest | None = None
    split: Split | None = None


def _queue_run(
    store: Store,
    args: argparse.Namespace,
    t: _Training,
    clear: bool,
    previous: Job | None,
    bars: _Bars,
) -> None:
    """Import the data into a new project and queue its run (ids kept in ``t``)."""
    manifest = _import(args.data, args.val, t.staging, bars, [args.model])
    _warn(manifest)
    t.manifest = manifest
    t.split = _split(manifest, args.val, t.config.val_fraction, t.config.seed)
    if args.from_scratch:
        from tl_core.models.facts import model_info

        n_backbone = model_info(t.config.model, len(manifest.classes)).n_backbone
        t.config = scratch_config(t.config, n_backbone)
    t.project_id = project_id = store.create_project(name=args.data.resolve().name).id
    store.update_settings(project_id, **{jobs.CLI_PENDING: os.getpid()})
    data_dir = store.new_data_dir(project_id)
    os.replace(t.staging, data_dir)
    manifest.root = data_dir  # what reads its files later looks here
    store.set_data_dir(project_id, data_dir)
    store.update_settings(project_id, **asdict(t.config))
    if previous is not None:  # --overwrite: that run's record goes with its files
        jobs.discard_run(store, previous.id, remove_folder=False)
    if clear:
        paths.empty_folder(args.out)
    t.run_id = store.create_job(
        project_id,
        asdict(t.config),
        data_dir,
        run_dir=args.out,
        source="cli",
        status="queued",
        pid=os.getpid(),
    ).id


def _undo(store: Store, t: _Training, exc: BaseException) -> None:
    """After a failure: keep a resumable run (and say how to go on), else remove what was made.

    Returns only when the caller should re-raise ``exc`` as it is.
    """
    if isinstance(exc, KeyboardInterrupt):
        interrupt.hold()
    try:
        run = store.job(t.run_id) if t.run_id else None
    except (StudioError, OSError, sqlite3.Error):
        run = None
    if run is not None and (Path(run.run_dir) / "last.pt").exists():  # resumable: kept
        _tidy(lambda: jobs.settle_cli_project(store, run.project_id, force=True))
        note = f" The run was kept; resume it in the app: ?project={run.project_id}"
        if isinstance(exc, KeyboardInterrupt):
            exc.add_note(note)
            return
        raise _Kept(f"{exc}{note}") from None
    if run is not None:
        _tidy(lambda: jobs.discard_run(store, run.id))
    if t.project_id is not None:
        project_id = t.project_id
        _tidy(lambda: jobs.discard_project(store, project_id))


def _tidy(step: Callable[[], object]) -> None:
    """A clean-up write after a failure; when the workspace cannot take it (full, read-only)
    the next start does it (``jobs.recover``)."""
    with contextlib.suppress(StudioError, OSError, sqlite3.Error):
        step()


def _train(store: Store, args: argparse.Namespace, bars: _Bars) -> dict[str, object]:
    config = _config(args)
    _check_folders(args)
    clear, previous = _check_out(store, args)

    interrupt.install("cli")
    jobs.recover(store)  # leftovers of killed processes go first
    staging = store.workspace / "incoming" / f"{os.getpid()}-{new_id()}"
    staging.parent.mkdir(parents=True, exist_ok=True)
    t = _Training(config, staging)
    try:
        _queue_run(store, args, t, clear, previous, bars)
        assert t.run_id is not None
        jobs.wait_for_turn(
            store,
            t.run_id,
            lambda place: print(f"waiting: place {place} in the queue", file=sys.stderr),
        )
        from tl_core.runs.recording import flush_pending, run_worker

        bars.epochs = t.config.epochs
        ended: list[events.End] = []

        def watch(event: events.Event) -> None:
            if isinstance(event, events.End):
                ended.append(event)
            bars.event(event)

        try:
            result = run_worker(store, t.run_id, watch=watch)
        finally:
            bars.close()
        flush_pending(store)  # an end the store could not take when it came
        if result is None:
            raise StudioError((ended[-1].error if ended else None) or "Training failed.")
        run_dir = str(Path(args.out).resolve()) if args.out else _run_dir(store, t.run_id)
    except BaseException as exc:
        _undo(store, t, exc)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _tidy(lambda: jobs.settle_cli_project(store, t.project_id or "", force=True))
    _tidy(lambda: supervisor.pump(store))  # hand the freed slot to the next waiting run
    return _train_summary(t, result, run_dir)


def _run_dir(store: Store, run_id: str) -> str:
    final = store.job(run_id)
    if final is None:
        raise StudioError("The run was removed from the workspace while it trained.")
    return final.run_dir


def _unfamiliar_summary(run_dir: Path) -> dict[str, object] | None:
    """The unfamiliar check as measured on the run's data (None: the run has none)."""
    from tl_core.training.familiarity import load_report

    report = load_report(run_dir)
    if report is None:
        return None
    return {
        "threshold": round(report.threshold, 6),
        "everyday_pictures_flagged": report.foreign_flagged,
        "everyday_pictures_auroc": report.foreign_auroc,
        "left_out_classes_flagged": report.left_out_flagged,
        "left_out_classes_auroc": report.left_out_auroc,
        "own_validation_flagged": report.val_flagged,
        "sentence": report.sentence(),
    }


def _train_summary(t: _Training, result: Any, run_dir: str) -> dict[str, object]:
    """The train command's JSON summary."""
    from tl_core.data.neardup import run_summary

    config, manifest, split = t.config, t.manifest, t.split
    assert manifest is not None and split is not None
    return {
        "val_accuracy": result.val_accuracy,
        "epochs": result.epochs_done,
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 2),
        "model": config.model,
        "trainable_groups": config.trainable_groups,
        "pretrained": config.pretrained,
        **_counts(split, manifest),
        "classes": manifest.classes,
        "near_duplicates": run_summary(
            manifest, config.val_fraction, config.seed, stream=sys.stderr
        ),
        "status": result.status,
        "unfamiliar": _unfamiliar_summary(Path(run_dir)),
        "compute": result.compute,
        "project_id": t.project_id,
        "run_id": t.run_id,
        "run_dir": run_dir,
        "app_link": f"?project={t.project_id}",
    }


def _export(store: Store, args: argparse.Namespace, bars: _Bars) -> tuple[dict[str, object], int]:
    from tl_core.export.bundle import export_run
    from tl_core.export.table import rows_json
    from tl_core.runs.lookup import find_run

    run = find_run(Path(args.run_dir), store.workspace)
    report = export_run(
        args.run_dir,
        args.out,
        data_root=args.data or (Path(run.data_dir) if run else None),
        progress=bars.phase if bars.on else lambda message: print(message, file=sys.stderr),
        corrections=run.spec.corrections if run else None,
        formats=args.formats.split(",") if args.formats is not None else None,
    )
    bars.close()
    from tl_core.analysis.evaluation import evaluate_run

    scores = evaluate_run(Path(args.run_dir))
    summary = {
        **(scores.summary_json() if scores else {}),
        **report.summary(),
        "table": rows_json(report),
    }
    return summary, 0 if report.parity_ok else 1


def _evaluate(store: Store, args: argparse.Namespace, bars: _Bars) -> dict[str, object]:
    """Scores only for a model that loads, and for recorded predictions it reproduces.

    ``--data`` names either another labelled folder (scored afresh by the loaded model) or
    the run's imported data set (a folder with manifest.json, to re-check the run on).
    The workspace's index is not needed: run.json in the run folder names the data set.
    """
    from tl_core.analysis import evaluation
    from tl_core.analysis.results import load_predictions
    from tl_core.runs import lookup

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise StudioError(f"There is no run folder at {run_dir}.")
    if not (run_dir / "best.pt").is_file():
        raise StudioError(f"There is no trained model in {run_dir} (best.pt is missing).")
    data = Path(args.data) if args.data is not None else None
    scoring = bars.progress("Scoring your images") if bars.on else None
    bars.phase(events.describe(events.Progress("load")))
    if data is not None and not (data / "manifest.json").is_file():
        # the loaded model scores it now
        result = evaluation.evaluate_folder(run_dir, data, scoring)
        summary = {**result.summary_json(), "data": str(data), "parity_ok": None}
        summary["verified"] = True
    else:
        preds = load_predictions(run_dir)
        if preds is None:
            raise StudioError(f"The run in {run_dir} has no validation predictions.")
        trained = evaluation.load_model_checked(run_dir, preds)
        root = data if data is not None else lookup.locate_data_root(run_dir, store.workspace)[0]
        bars.close()  # the model is loaded
        verdict = evaluation.verify_run(run_dir, root, trained, preds, scoring)
        if not verdict.verified:
            hint = (
                " Pass the run's data set folder with --data to re-check it."
                if verdict.status == "unchecked"
                else ""
            )
            raise StudioError(verdict.sentence + hint)
        result = evaluation.evaluate_predictions(preds)
        summary = {**result.summary_json(), "data": "validation split", **verdict.summary()}
    bars.close()
    summary["per_class"] = {
        result.classes[c.index]: {"recall": c.recall, "precision": c.precision, "f1": c.f1}
        for c in result.per_class
    }
    if result.warning:
        summary["warning"] = result.warning
    summary["unfamiliar"] = _unfamiliar_summary(run_dir)
    return summary


def _fail(message: str, code: int, **fields: object) -> int:
    print(json.dumps({"error": message, **fields}))
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if argv is None:  # a process of its own: the allocator that trains and predicts fastest
        tune_allocator()
    workspace = getattr(args, "worker_workspace", None) or args.workspace
    bars = _Bars.for_args(args)
    store_folder = Path(workspace or default_workspace())
    store: Store | None = None
    try:
        if args.command == "label":  # a folder of the user's, not the workspace
            from tl_core import cli_label

            print(json.dumps(cli_label.run(args, bars)))
            return 0
        store = Store(workspace)
        if args.command == "worker":
            interrupt.install("worker")
            from tl_core.runs.recording import run_worker

            run_worker(store, args.run_id)
            supervisor.pump(store)  # hand the freed slot to the next waiting run
            return 0
        if args.command == "recommend":
            print(json.dumps(_recommend(args, bars)))
            return 0
        if args.command == "repair":
            from tl_core.runs.store import repair

            report = repair(store.workspace)
            print(report.sentence(), file=sys.stderr)
            print(json.dumps(report.summary()))
            return 0
        if args.command == "evaluate":
            print(json.dumps(_evaluate(store, args, bars)))
            return 0
        if args.command == "export":
            summary, code = _export(store, args, bars)
            print(json.dumps(summary))
            return code
        summary = _train(store, args, bars)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the run is marked, no traceback
        bars.close()
        interrupt.hold()
        signum = interrupt.signum_of(exc)
        message = interrupt.message(signum) + "".join(getattr(exc, "__notes__", []))
        return _fail(message, 128 + signum, status="interrupted")
    except StudioError as exc:
        bars.close()
        return _fail(str(exc), 2)
    except (OSError, sqlite3.Error, MemoryError) as exc:  # unreadable, full, read-only
        bars.close()
        return _fail(_storage_message(args.command, exc, store_folder), 2)
    finally:
        _flush_at_exit(store)
    print(json.dumps(summary))
    return 0


def _storage_message(command: str, exc: BaseException, workspace: Path) -> str:
    """The sentence for a failure of the disk or of memory outside a job's own ending."""
    kind = "train" if command in ("train", "worker") else "export" if command == "export" else ""
    cause = endings.cause_of(exc, workspace)
    if cause is not None:
        return endings.failure(kind, cause, workspace)
    if isinstance(exc, OSError):
        where = f" ('{exc.filename}')" if exc.filename else ""
        return f"{exc.strerror or exc}{where}."
    return f"The workspace index could not be used ({exc}); try again."


def _flush_at_exit(store: Store | None) -> None:
    """Write the ends the store could not take when they came (one last try)."""
    if store is None or not endings.PENDING:
        return
    from tl_core.runs.recording import flush_pending

    with contextlib.suppress(StudioError, OSError, sqlite3.Error):
        flush_pending(store)
