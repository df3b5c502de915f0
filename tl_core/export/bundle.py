"""Take a trained run home: one zip that predicts exactly as the app does, anywhere.

The zip holds::

    model/config.json          timm's local-dir layout: timm.create_model("local-dir:model")
    model/model.safetensors
    model.onnx                 uint8 RGB pictures (batch, height, width, 3) of any size in;
                               "probabilities" and "logits" out, and "unfamiliarity" when
                               the run has the unfamiliar check; resizing, cropping and
                               normalising happen inside
    familiarity.npz            the unfamiliar check for the timm model: the training
                               pictures' pooled features (bank), each one's class spread
                               (row_scale) and the threshold (only with the check)
    predict.py                 python predict.py FOLDER [--format safetensors|onnx]
    requirements.txt           what predict.py needs
    README.md                  the model card, with the parity result

Each part is a module of :mod:`tl_core.export.formats`, listed in
:data:`~tl_core.export.formats.registry.PARTS`. Before the zip is written, every format is
checked against the app (:mod:`tl_core.export.parity`); the result goes into the report and
the model card (:mod:`tl_core.export.card`).
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from tl_core.analysis.results import Predictions, load_predictions
from tl_core.errors import RunError
from tl_core.export.card import DataFacts, data_facts, model_card
from tl_core.export.formats import registry
from tl_core.export.formats.base import ModelToExport
from tl_core.export.parity import check_parity
from tl_core.export.report import ExportReport, Progress, say
from tl_core.models.catalog import get_spec
from tl_core.models.device import ComputePlan
from tl_core.models.freezing import max_trainable_groups
from tl_core.training import checkpoint
from tl_core.training.engine import TrainConfig
from tl_core.training.familiarity import load_report
from tl_core.training.inference import TrainedModel, load_trained

__all__ = ["export_run"]


def export_run(
    run_dir: Path,
    out_zip: Path,
    data_root: Path | None = None,
    progress: Progress | None = None,
    *,
    corrections: dict[str, object] | None = None,
    extra_sections: dict[str, str] | None = None,
) -> ExportReport:
    """Write the run's best model as a zip bundle at ``out_zip`` and check it against the app.

    ``data_root`` is the imported data set the run trained on; without it the parity check
    is skipped. ``corrections``: the label review the run was trained with (its dict form).
    ``progress`` receives plain status lines. ``extra_sections`` go into the model card.
    Raises RunError when the run folder or its best.pt is missing or unreadable.
    """
    run_dir, out_zip = Path(run_dir), Path(out_zip)
    _check_export_paths(run_dir, out_zip, data_root)
    say(progress, "Loading the trained model")
    meta = _read_meta(run_dir)
    cfg = TrainConfig.from_dict(meta.get("config", {}))
    plan = ComputePlan("cpu", None, False, torch.get_num_threads())  # fp32: the reference
    trained: TrainedModel = load_trained(run_dir, plan=plan)
    spec = get_spec(trained.model_key)
    model = ModelToExport(
        trained.net.eval(), trained.data_config, trained.classes, spec.title, trained.familiarity
    )
    preds = load_predictions(run_dir)

    with tempfile.TemporaryDirectory(prefix="tl-export-") as tmp:
        bundle = Path(tmp) / "bundle"
        bundle.mkdir()
        for part in registry.PARTS:
            if part.writing:
                say(progress, part.writing)
            part.write(bundle, model)

        report = check_parity(bundle, run_dir, trained, preds, data_root, progress)
        report.out_zip, report.model, report.timm_name = out_zip, spec.key, spec.timm_name
        data = data_facts(model.classes, preds, data_root, cfg, corrections)
        if extra_sections is None:
            extra_sections = _evaluation_sections(run_dir)
        card = _card(run_dir, cfg, meta, model, preds, data, report, extra_sections)
        (bundle / "README.md").write_text(card, encoding="utf-8")

        say(progress, "Writing the zip")
        _write_zip(bundle, out_zip)
    report.bytes = out_zip.stat().st_size
    return report


def _card(
    run_dir: Path,
    cfg: TrainConfig,
    meta: dict[str, Any],
    model: ModelToExport,
    preds: Predictions | None,
    data: DataFacts,
    report: ExportReport,
    extra_sections: dict[str, str],
) -> str:
    """The model card of the run in ``run_dir``, with the parity check's ``report``."""
    classes = model.classes
    return model_card(
        title=f"{model.title} for {len(classes)} classes",
        spec_title=model.title,
        timm_name=report.timm_name,
        cfg=cfg,
        data_config=model.data_config,
        classes=classes,
        data=data,
        n_backbone=max_trainable_groups(model.net),
        best_epoch=meta.get("epoch"),
        val_accuracy=meta.get("val_accuracy"),
        preds=preds,
        report=report,
        familiar=load_report(run_dir) if model.familiar is not None else None,
        extra_sections=extra_sections,
    )


def _read_meta(run_dir: Path) -> dict[str, Any]:
    return dict(checkpoint.load(run_dir / checkpoint.BEST)["meta"])  # weights only: no code


def _evaluation_sections(run_dir: Path) -> dict[str, str]:
    """Interval, per-class scores and calibration for the model card (from predictions.json)."""
    from tl_core.analysis.evaluation import card_sections, evaluate_run

    return card_sections(evaluate_run(run_dir))


def _check_export_paths(run_dir: Path, out_zip: Path, data_root: Path | None) -> None:
    """RunError unless the run has a best.pt, ``out_zip`` is no folder and ``data_root`` is."""
    if not run_dir.is_dir():
        raise RunError(f"There is no run folder at {run_dir}.")
    if not (run_dir / "best.pt").is_file():
        raise RunError(f"The run in {run_dir} has no trained model yet (best.pt is missing).")
    if out_zip.is_dir():
        raise RunError(f"{out_zip} is a folder; give a file name ending in .zip.")
    if data_root is not None and not Path(data_root).is_dir():
        raise RunError(f"There is no data set folder at {data_root}.")


def _write_zip(bundle: Path, out_zip: Path) -> None:
    """Zip ``bundle`` into ``out_zip``, which appears only once complete."""
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    partial = out_zip.with_name(out_zip.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                path.chmod(0o644)  # safetensors writes 0600: readable for all once unzipped
                zf.write(path, path.relative_to(bundle).as_posix())
    partial.replace(out_zip)
