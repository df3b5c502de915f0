"""The headless commands: the same engine and store as the app.

``python -m tl_core train --data DIR [--val DIR] --model NAME [--trainable-groups K]
[--epochs N] [--seed S] [--out RUN_DIR]`` imports the folder into a project of the workspace,
trains, and prints one JSON object as its last line. The run shows up in the app under the
printed project link.

``python -m tl_core evaluate RUN_DIR [--data DIR]`` scores a run (accuracy with its 95%
interval, per-class scores, calibration) and prints a JSON summary as its last line.

``python -m tl_core export RUN_DIR --out FILE.zip [--data DIR]`` writes the run's best model
as a bundle that predicts the same elsewhere (see :mod:`tl_core.export`) and prints a JSON
summary, with ``parity_ok``, as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from tl_core.catalog import DEFAULT_MODEL, get_spec
from tl_core.engine import SCRATCH_LR, TrainConfig, scratch_config
from tl_core.errors import StudioError
from tl_core.store import Store

if TYPE_CHECKING:
    from tl_core.data import DatasetManifest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tl_core", description=__doc__)
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="workspace folder (default: $TL_STUDIO_HOME or ~/.tl-studio)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model on a folder of labelled images")
    defaults = TrainConfig()
    train.add_argument(
        "--data", type=Path, required=True, help="folder with one sub-folder of images per class"
    )
    train.add_argument(
        "--val", type=Path, default=None, help="validation folder (same classes); never trained on"
    )
    train.add_argument("--model", default=DEFAULT_MODEL)
    train.add_argument("--trainable-groups", type=int, default=defaults.trainable_groups)
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--augment", default=defaults.augment)
    train.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    train.add_argument("--out", type=Path, default=None, help="folder for the run's files")
    train.add_argument(
        "--from-scratch",
        action="store_true",
        help="the baseline: same model and epochs from random weights, every layer learning "
        f"(learning rate at most {SCRATCH_LR:g})",
    )

    recommend = sub.add_parser(
        "recommend",
        help="rank the models available offline on your images, from frozen features",
        description="Score every catalog model whose weights are on this machine with a "
        "cross-validated probe on frozen features (and LogME); print the ranking and, as the "
        "last line, a JSON object.",
    )
    recommend.add_argument("--data", type=Path, required=True, help="one sub-folder per class")
    recommend.add_argument("--val", type=Path, default=None, help="validation folder")

    export = sub.add_parser(
        "export",
        help="write a run's best model as a zip that predicts the same elsewhere",
        description="Write RUN_DIR's best model as a zip (timm folder, ONNX, predict.py, model "
        "card) and check it against the app on the validation pictures. Exit code 0: written "
        "and parity checked; 1: written, but parity failed or could not be checked; 2: bad "
        "input, nothing written.",
    )
    export.add_argument("run_dir", type=Path, help="the run's folder (holding best.pt)")
    export.add_argument("--out", type=Path, required=True, help="the zip file to write")
    export.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the run's imported data set folder (default: found through the workspace)",
    )

    evaluate = sub.add_parser(
        "evaluate",
        help="score a run: accuracy with its 95% interval, per-class scores, calibration",
        description="Score RUN_DIR's best model on its validation pictures (or on --data, a "
        "folder with one sub-folder per class) and print a JSON summary as the last line.",
    )
    evaluate.add_argument("run_dir", type=Path, help="the run's folder (holding best.pt)")
    evaluate.add_argument(
        "--data", type=Path, default=None, help="another labelled folder to score instead"
    )

    worker = sub.add_parser("worker", help="(internal) run one queued run of the app")
    worker.add_argument("run_id")
    worker.add_argument("--workspace", type=Path, default=None, dest="worker_workspace")
    return parser


def _import(data: Path, val: Path | None, dest: Path) -> DatasetManifest:
    """Import ``data`` (and ``val``, kept as the validation set) into ``dest``."""
    from tl_core.data import import_folder

    if val is None:
        return import_folder(data, dest)
    with tempfile.TemporaryDirectory() as tmp:  # one train/val layout, nothing copied
        (Path(tmp) / "train").symlink_to(data.resolve(), target_is_directory=True)
        (Path(tmp) / "val").symlink_to(val.resolve(), target_is_directory=True)
        return import_folder(Path(tmp), dest)


def _recommend(args: argparse.Namespace) -> dict[str, object]:
    from tl_core.data import split_dataset
    from tl_core.transfer import recommend, suggested, verdict

    with tempfile.TemporaryDirectory() as tmp:
        manifest = _import(args.data, args.val, Path(tmp) / "data")
        ranking = recommend(
            manifest,
            split_dataset(manifest),
            progress=lambda key, done, total: (
                print(f"{key}: {done}/{total}", file=sys.stderr) if done == total else None
            ),
        )
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
    }


def _train(store: Store, args: argparse.Namespace) -> dict[str, object]:
    from tl_core.worker import run_worker

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
    project = store.create_project(name=args.data.resolve().name)
    data_dir = store.new_data_dir(project.id)
    manifest = _import(args.data, args.val, data_dir)
    if args.from_scratch:
        from tl_core.freezing import describe_model

        n_backbone = describe_model(config.model, len(manifest.classes)).n_backbone
        config = scratch_config(config, n_backbone)
    store.set_data_dir(project.id, data_dir)
    store.update_settings(project.id, **asdict(config))
    run = store.create_run(
        project.id, asdict(config), data_dir, run_dir=args.out, source="cli", status="starting"
    )
    result = run_worker(store, run.id)
    final = store.run(run.id)
    if result is None or final is None:
        raise StudioError(final.error if final and final.error else "Training failed.")
    return {
        "val_accuracy": result.val_accuracy,
        "epochs": result.epochs_done,
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 2),
        "model": config.model,
        "trainable_groups": config.trainable_groups,
        "pretrained": config.pretrained,
        "train_images": sum(1 for i in manifest.items if i.subset != "val")
        if manifest.has_explicit_val
        else None,
        "classes": manifest.classes,
        "status": result.status,
        "compute": result.compute,
        "project_id": project.id,
        "run_id": run.id,
        "run_dir": final.run_dir,
        "app_link": f"?project={project.id}",
    }


def _export(store: Store, args: argparse.Namespace) -> tuple[dict[str, object], int]:
    from tl_core.export import export_run

    report = export_run(
        args.run_dir,
        args.out,
        data_root=args.data,
        progress=lambda message: print(message, file=sys.stderr),
        workspace=store.workspace,
    )
    from tl_core.evaluation import evaluate_run

    scores = evaluate_run(Path(args.run_dir))
    summary = {**(scores.summary_json() if scores else {}), **report.summary()}
    return summary, 0 if report.parity_ok else 1


def _evaluate(store: Store, args: argparse.Namespace) -> dict[str, object]:
    from tl_core import evaluation
    from tl_core.export import find_data_root

    run_dir = Path(args.run_dir)
    if not (run_dir / "best.pt").is_file():
        raise StudioError(f"There is no trained model in {run_dir} (best.pt is missing).")
    if args.data is not None:
        result = evaluation.evaluate_folder(run_dir, args.data)
        summary = {**result.summary_json(), "data": str(args.data), "parity_ok": None}
    else:
        result = evaluation.evaluate_run(run_dir)
        if result is None:
            raise StudioError(f"The run in {run_dir} has no validation predictions.")
        summary = {**result.summary_json(), "data": "validation split"}
        root = find_data_root(run_dir, store.workspace)
        if root is not None:  # the saved model gives the recorded predictions again
            ok, diff = evaluation.reproduces_predictions(run_dir, root)
            summary.update(parity_ok=ok, parity_max_prob_diff=diff)
        else:
            summary.update(parity_ok=None)
    summary["per_class"] = {
        result.classes[c.index]: {"recall": c.recall, "precision": c.precision, "f1": c.f1}
        for c in result.per_class
    }
    if result.warning:
        summary["warning"] = result.warning
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    workspace = getattr(args, "worker_workspace", None) or args.workspace
    store = Store(workspace)
    try:
        if args.command == "worker":
            from tl_core.worker import run_worker

            run_worker(store, args.run_id)
            from tl_core.jobs import pump

            pump(store)  # hand the freed slot to the next waiting run
            return 0
        if args.command == "recommend":
            print(json.dumps(_recommend(args)))
            return 0
        if args.command == "evaluate":
            print(json.dumps(_evaluate(store, args)))
            return 0
        if args.command == "export":
            summary, code = _export(store, args)
            print(json.dumps(summary))
            return code
        summary = _train(store, args)
    except StudioError as exc:
        print(json.dumps({"error": str(exc)}))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
