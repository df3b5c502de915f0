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

import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tl_core.analysis.results import Predictions, load_predictions
from tl_core.errors import RunError
from tl_core.export.card import DataFacts, data_facts, model_card
from tl_core.export.formats import registry
from tl_core.export.formats.base import BundlePart, ModelToExport, error_line, quiet_output
from tl_core.export.parity import check_parity, validation_files
from tl_core.export.report import ExportReport, FormatParity, Progress, say
from tl_core.models.catalog import get_spec
from tl_core.models.device import ComputePlan
from tl_core.models.freezing import max_trainable_groups
from tl_core.training import checkpoint
from tl_core.training.engine import TrainConfig
from tl_core.training.familiarity import load_report
from tl_core.training.inference import TrainedModel, load_trained

__all__ = ["CALIBRATION_PICTURES", "WEB_FOLDER", "WEB_ZIP", "choose_formats", "export_run"]

CALIBRATION_PICTURES = 200  # training pictures a quantized model is calibrated on, at most
WEB_FOLDER = "web"  # the web page's folder in the bundle
WEB_ZIP = "web.zip"  # the web page alone, beside the bundle when asked (export_run web_zip)


def choose_formats(asked: Sequence[str] | None) -> list[str]:
    """The format keys to write: ``asked`` checked against the known ones, or all of them.

    RunError names the unknown ones and the known ones."""
    known = registry.format_keys()
    if asked is None:
        return [*registry.ALWAYS, *known]
    wanted = [a.strip().lower() for a in asked if a.strip()]
    unknown = [a for a in wanted if a not in known and a not in registry.ALWAYS]
    if unknown:
        raise RunError(f"Unknown format {', '.join(unknown)}: choose among {', '.join(known)}.")
    return [*registry.ALWAYS, *(k for k in known if k in wanted)]


def export_run(
    run_dir: Path,
    out_zip: Path,
    data_root: Path | None = None,
    progress: Progress | None = None,
    *,
    corrections: dict[str, object] | None = None,
    extra_sections: dict[str, str] | None = None,
    formats: Sequence[str] | None = None,
    web_zip: Path | None = None,
) -> ExportReport:
    """Write the run's best model as a zip bundle at ``out_zip`` and check it against the app.

    ``data_root`` is the imported data set the run trained on; without it the parity check
    is skipped (and the 8-bit model, which needs its pictures, is not made). ``corrections``:
    the label review the run was trained with (its dict form). ``progress`` receives plain
    status lines. ``extra_sections`` go into the model card. ``formats``: the format keys to
    write (:func:`choose_formats`; default all); the timm folder is always written.
    ``web_zip``: where to write the web page's folder alone as a zip too, when it is offered
    (the Export page's separate download, and what the app serves to phones).
    Raises RunError when the run folder or its best.pt is missing or unreadable.
    """
    run_dir, out_zip = Path(run_dir), Path(out_zip)
    chosen = choose_formats(formats)
    _check_export_paths(run_dir, out_zip, data_root)
    say(progress, "Loading the trained model")
    meta = _read_meta(run_dir)
    cfg = TrainConfig.from_dict(meta.get("config", {}))
    plan = ComputePlan("cpu", None, False, torch.get_num_threads())  # fp32: the reference
    trained: TrainedModel = load_trained(run_dir, plan=plan)
    spec = get_spec(trained.model_key)
    preds = load_predictions(run_dir)
    model = _model_to_export(trained, spec.title, run_dir, preds, data_root)

    with tempfile.TemporaryDirectory(prefix="tl-export-") as tmp:
        bundle = Path(tmp) / "bundle"
        bundle.mkdir()
        refused: dict[str, FormatParity] = {}
        checked = [p for p in registry.PARTS if not _offline(p)]
        written = _write_parts(bundle, model, checked, chosen, refused, progress)
        report = check_parity(bundle, run_dir, trained, preds, data_root, progress, written)
        _drop_failed(bundle, report)
        offline = [p for p in registry.PARTS if _offline(p)]
        _write_parts(bundle, model, offline, chosen, refused, progress)
        _check_offline(bundle, model, offline, report)
        _describe_formats(bundle, report, refused, model.familiar is not None)
        report.out_zip, report.model, report.timm_name = out_zip, spec.key, spec.timm_name
        data = data_facts(model.classes, preds, data_root, cfg, corrections)
        if extra_sections is None:
            extra_sections = _evaluation_sections(run_dir)
        card = _card(run_dir, cfg, meta, model, preds, data, report, extra_sections)
        (bundle / "README.md").write_text(card, encoding="utf-8")

        say(progress, "Writing the zip")
        _write_zip(bundle, out_zip)
        if web_zip is not None:
            _write_web_zip(bundle / WEB_FOLDER, Path(web_zip))
    report.bytes = out_zip.stat().st_size
    return report


def _model_to_export(
    trained: TrainedModel,
    title: str,
    run_dir: Path,
    preds: Predictions | None,
    data_root: Path | None,
) -> ModelToExport:
    """The run's network with what the formats need: calibration pictures, the Try page's
    temperature and "not sure" threshold."""
    from tl_core.analysis.evaluation import load_calibration

    calibration = load_calibration(run_dir)
    return ModelToExport(
        trained.net.eval(),
        trained.data_config,
        trained.classes,
        title,
        trained.familiarity,
        calibration=_calibration_files(data_root, preds, trained.classes),
        validation=tuple(validation_files(trained.classes, preds, data_root)[0]),
        temperature=float(calibration.temperature),
        not_sure_below=float(calibration.threshold),
    )


def _calibration_files(
    data_root: Path | None, preds: Predictions | None, classes: list[str]
) -> tuple[Path, ...]:
    """Up to :data:`CALIBRATION_PICTURES` training pictures (never validation ones), taken
    from each class in turn, in the data set's order; none without the data set."""
    from tl_core.data.records import DatasetManifest

    if data_root is None or not (Path(data_root) / "manifest.json").is_file():
        return ()
    try:
        manifest = DatasetManifest.load(Path(data_root))
    except (OSError, ValueError, KeyError, TypeError):
        return ()
    held_out = set(preds.files) if preds is not None else set()
    by_class: dict[str, list[Path]] = {c: [] for c in classes}
    for item in manifest.items:
        if item.file not in held_out and item.label in by_class:
            by_class[item.label].append(Path(data_root) / item.file)
    picked: list[Path] = []
    queues = [files for files in by_class.values() if files]
    while queues and len(picked) < CALIBRATION_PICTURES:
        for files in queues:
            if files and len(picked) < CALIBRATION_PICTURES:
                picked.append(files.pop(0))
        queues = [files for files in queues if files]
    return tuple(p for p in picked if p.is_file())


def _offline(part: BundlePart) -> bool:
    """A chosen format that cannot be run here: written after the others are checked."""
    return part.option is not None and part.parity is None


def _write_parts(
    bundle: Path,
    model: ModelToExport,
    parts: Sequence[BundlePart],
    chosen: Sequence[str],
    refused: dict[str, FormatParity],
    progress: Progress | None,
) -> list[str]:
    """Write ``parts`` into ``bundle``: always-written ones always, a format only when chosen,
    possible here and made from formats that were written and not refused. A format that
    cannot be made goes into ``refused`` with the reason, its files removed. Returns the
    names of the parts written."""
    written: list[str] = []
    for part in parts:
        option = part.option
        if option is not None:
            if option.key not in chosen:
                continue
            why = option.missing() or _needs_missing(option.needs, chosen, bundle)
            if why:
                refused[option.key] = FormatParity(option.key, "not built", 0.0, reason=why)
                continue
        if part.writing:
            say(progress, part.writing)
        if option is None or option.key in registry.ALWAYS:
            part.write(bundle, model)
            written.append(part.name)
            continue
        try:
            with quiet_output():
                part.write(bundle, model)
        except Exception as exc:  # a converter's failure leaves this format out, not the rest
            _remove(option.paths(bundle))
            refused[option.key] = FormatParity(option.key, "not built", 0.0, reason=_why(exc))
            continue
        written.append(part.name)
    return written


def _needs_missing(needs: Sequence[str], chosen: Sequence[str], bundle: Path) -> str:
    """Why a format made from ``needs`` cannot be made ("" when it can): a format it is made
    from was not chosen, or is not in the bundle (not made, or left out after its check)."""
    for key in needs:
        if key not in chosen:
            return f"it is made from {registry.title_of(key)}, which was not chosen"
        option = registry.option_of(key)
        if option is None or not any(path.exists() for path in option.paths(bundle)):
            return f"it is made from {registry.title_of(key)}, which is not offered"
    return ""


def _why(exc: BaseException) -> str:
    """One sentence from a converter's error."""
    if isinstance(exc, RunError):
        return str(exc)
    return f"the conversion failed ({error_line(exc)})"


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def _drop_failed(bundle: Path, report: ExportReport) -> None:
    """Take out of the bundle each format whose check found it wanting."""
    for key, parity in list(report.formats.items()):
        option = registry.option_of(key)
        if option is None:
            continue
        if parity.status == "not checked" and not parity.must_match:
            parity.status = "not built"
            parity.reason = (
                "it is offered only once its accuracy is checked on the validation pictures, "
                f"and {parity.reason or 'they were not found'}"
            )
            _remove(option.paths(bundle))
        elif not parity.offered:
            _remove(option.paths(bundle))


def _check_offline(
    bundle: Path,
    model: ModelToExport,
    parts: Sequence[BundlePart],
    report: ExportReport,
) -> None:
    """Check what can be checked of the formats that cannot run here; a problem leaves the
    format out."""
    for part in parts:
        option = part.option
        if option is None or not any(p.exists() for p in option.paths(bundle)):
            continue  # not chosen, or not made (``refused`` says why)
        with quiet_output():
            problem = option.offline_check(bundle, model) if option.offline_check else ""
        if problem:
            _remove(option.paths(bundle))
            report.formats[option.key] = FormatParity(option.key, "failed", 0.0, reason=problem)
        else:
            report.formats[option.key] = FormatParity(
                option.key, "checked offline", 0.0, reason=option.cannot_run
            )


def _describe_formats(
    bundle: Path, report: ExportReport, refused: dict[str, FormatParity], has_check: bool
) -> None:
    """Each format's title, size in the bundle and how to use it, in the registry's order."""
    for key, parity in refused.items():
        report.formats.setdefault(key, parity)
    ordered: dict[str, FormatParity] = {}
    for part in registry.PARTS:
        parity = report.formats.get(part.name)
        if parity is None:
            continue
        ordered[part.name] = parity
        option = part.option
        parity.title = option.title if option is not None else part.name
        if option is not None and parity.offered:
            parity.bytes = sum(_size(p) for p in option.paths(bundle))
            parity.example = option.example(has_check)
    report.formats = ordered


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.is_file() else 0


def _write_web_zip(web: Path, dest: Path) -> None:
    """The web page's folder as a zip at ``dest`` (its files under ``web/``), when it was
    made; an older one is removed when it was not."""
    if not web.is_dir():
        dest.unlink(missing_ok=True)
        return
    _write_zip(web, dest, prefix=WEB_FOLDER + "/")


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


def _write_zip(bundle: Path, out_zip: Path, prefix: str = "") -> None:
    """Zip ``bundle`` into ``out_zip`` (names start with ``prefix``), which appears only once
    complete."""
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    partial = out_zip.with_name(out_zip.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                path.chmod(0o644)  # safetensors writes 0600: readable for all once unzipped
                zf.write(path, prefix + path.relative_to(bundle).as_posix())
    partial.replace(out_zip)
