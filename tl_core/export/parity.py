"""The parity check: every validation picture of the run goes through each exported format,
loaded from the files just written, and through the app's own prediction path in full
precision; the answers must agree (see :class:`~tl_core.export.report.FormatParity`). With the
unfamiliar check, so do the 70 shipped everyday pictures (:mod:`tl_core.data.foreign`): each
format must flag the same pictures unfamiliar as the app, on them and on the validation
pictures."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tl_core.analysis.results import Predictions
from tl_core.data import standalone_predict
from tl_core.export.formats.base import ParityCheck
from tl_core.export.formats.registry import checked_formats
from tl_core.export.report import ExportReport, FormatParity, Progress, say
from tl_core.training.inference import Guesses, TrainedModel

__all__ = ["RECORDED_TOLERANCE", "check_parity", "validation_files"]

RECORDED_TOLERANCE = 1e-3  # predictions.json vs. a full-precision rescoring


def check_parity(
    bundle: Path,
    run_dir: Path,
    trained: TrainedModel,
    preds: Predictions | None,
    data_root: Path | None,
    progress: Progress | None,
    names: Collection[str] | None = None,
) -> ExportReport:
    """Run the validation pictures through the app (fp32) and each exported format in
    ``bundle`` (those in ``names``; default every one whose files are in the bundle); the
    report's ``formats`` say how each agreed, or why it was not checked."""
    checks = [(n, c) for n, c in checked_formats(bundle) if names is None or n in names]
    fam = trained.familiarity
    report = ExportReport(
        out_zip=Path(),
        bytes=0,
        model="",
        timm_name="",
        classes=trained.classes,
        formats={
            name: FormatParity(name, "not checked", c.tolerance, must_match=c.judge is None)
            for name, c in checks
        },
        reference="the app's own predictions in full precision (float32)",
        unfamiliar_threshold=None if fam is None else fam.threshold,
    )
    files, reason = validation_files(trained.classes, preds, data_root)
    if preds is None or not files:
        for f in report.formats.values():
            f.reason = reason
        return report

    say(progress, f"Checking: the app's predictions on {len(files)} validation pictures")
    trained.guess(files[:2])  # warm up: the speed is the one of a model already in use
    start = time.perf_counter()
    guesses = trained.guess(files)
    report.app_images_per_second = len(files) / max(time.perf_counter() - start, 1e-9)
    reference = guesses.probs.astype(np.float64)
    _note_recorded(report, reference, preds, run_dir)

    with tempfile.TemporaryDirectory(prefix="tl-everyday-") as tmp:
        flags = _app_flags(trained, guesses, Path(tmp), report, progress)
        for name, check in checks:
            why = check.unavailable()
            if why:
                report.formats[name].reason = why
                continue
            say(progress, check.checking)
            report.formats[name] = _format_parity(
                name, check, bundle, files, reference, preds, flags
            )
    return report


def validation_files(
    classes: list[str], preds: Predictions | None, data_root: Path | None
) -> tuple[list[Path], str]:
    """The run's validation pictures in ``data_root`` (its predictions.json, for ``classes``),
    or none and why they cannot be used."""
    if preds is None or not preds.files:
        return [], "the run has no validation predictions (predictions.json)"
    if preds.classes != classes:
        return [], "predictions.json belongs to other classes than best.pt"
    if data_root is None:
        return [], "the run's data set was not found (pass its folder)"
    files = [Path(data_root) / f for f in preds.files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        return [], f"{len(missing)} validation pictures are missing from {data_root}"
    return files, ""


@dataclass
class _Flags:
    """The app's unfamiliar check on the pictures of a parity check: validation pictures
    first, then the everyday ones."""

    foreign: list[Path]  # the everyday pictures, as PNG files
    scores: np.ndarray  # the app's unfamiliarity of every validation and everyday picture
    threshold: float  # the run's

    @property
    def flagged(self) -> np.ndarray:
        return self.scores > self.threshold


def _app_flags(
    trained: TrainedModel,
    guesses: Guesses,
    folder: Path,
    report: ExportReport,
    progress: Progress | None,
) -> _Flags | None:
    """The app's unfamiliarity of the validation pictures (``guesses``) and of the everyday
    pictures, written to ``folder``; None when the run has no unfamiliar check."""
    fam = trained.familiarity
    if fam is None or guesses.unfamiliarity is None:
        return None
    foreign = _write_foreign(folder)
    say(progress, f"Checking: the app's unfamiliar flag on {len(foreign)} everyday pictures")
    far = trained.guess(foreign).unfamiliarity
    if far is None:  # never: the same model, with its check
        return None
    scores = np.concatenate([guesses.unfamiliarity, far]).astype(np.float64)
    report.foreign_images = len(foreign)
    return _Flags(foreign, scores, fam.threshold)


def _write_foreign(folder: Path) -> list[Path]:
    """The shipped everyday pictures as PNG files in ``folder`` (read by every format)."""
    from tl_core.data import foreign

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, (_, image) in enumerate(foreign.pictures()):
        path = folder / f"everyday-{k:02d}.png"
        image.save(path, compress_level=1)
        files.append(path)
    return files


def _compare(
    probs: np.ndarray, reference: np.ndarray, preds: Predictions
) -> tuple[int, float, int, float]:
    recorded = np.asarray(preds.probs, dtype=np.float64)
    top = probs.argmax(1)
    return (
        int((top == reference.argmax(1)).sum()),
        float(np.abs(probs - reference).max()) if probs.size else 0.0,
        int((top == np.asarray(preds.preds)).sum()),
        float(np.abs(probs - recorded).max()) if probs.size else 0.0,
    )


def _format_parity(
    name: str,
    check: ParityCheck,
    bundle: Path,
    files: list[Path],
    reference: np.ndarray,
    preds: Predictions,
    flags: _Flags | None = None,
) -> FormatParity:
    """One format's answers on ``files`` (and ``flags.foreign``) against the app's."""
    tolerance = check.tolerance
    predictor = check.load(bundle)
    if predictor.classes != preds.classes:
        return FormatParity(name, "failed", tolerance, reason="the class names differ")
    if flags is not None and not predictor.has_check:
        return FormatParity(name, "failed", tolerance, reason="it has no unfamiliar check")
    everything = files + (flags.foreign if flags is not None else [])
    probs = [np.zeros((0, len(preds.classes)), dtype=np.float32)]
    far: list[float] = []
    list(standalone_predict.score_files(predictor, everything[:1]))  # warm up, as for the app
    start = time.perf_counter()
    for path, p, u, problem in standalone_predict.score_files(predictor, everything):
        if p is None:
            return FormatParity(name, "failed", tolerance, reason=f"{path.name}: {problem}")
        probs.append(p[None])
        far.append(np.nan if u is None else u)
    seconds = max(time.perf_counter() - start, 1e-9)
    n = len(files)
    scored = np.concatenate(probs)[:n]
    top1, diff, rec_top1, rec_diff = _compare(scored, reference, preds)
    parity = FormatParity(name, "ok", tolerance, n, top1, diff, rec_top1, rec_diff)
    parity.must_match = check.judge is None
    parity.images_per_second = len(everything) / seconds
    labels = np.asarray(preds.labels)
    parity.correct = int((scored.argmax(1) == labels).sum())
    parity.app_correct = int((reference.argmax(1) == labels).sum())
    if flags is not None:
        scores = np.asarray(far, dtype=np.float64)
        threshold = np.inf if predictor.threshold is None else predictor.threshold
        parity.flag_images = len(scores)
        parity.flag_agree = int(((scores > threshold) == flags.flagged).sum())
        parity.max_unfamiliarity_diff = float(np.abs(scores - flags.scores).max())
        should = np.arange(len(scores)) >= n  # the everyday pictures should be flagged
        parity.flag_right = int(((scores > threshold) == should).sum())
        parity.app_flag_right = int((flags.flagged == should).sum())
    m = parity.flag_images
    if check.judge is not None:
        parity.reason = check.judge(parity)
    elif top1 != n:
        parity.reason = f"{n - top1} of {n} pictures got a different top class"
    elif parity.flag_agree != m:
        parity.reason = f"{m - parity.flag_agree} of {m} pictures got a different unfamiliar flag"
    elif diff > tolerance:
        parity.reason = f"probabilities differ by up to {diff:.2g} (allowed {tolerance:g})"
    parity.status = "failed" if parity.reason else "ok"
    return parity


def _note_recorded(
    report: ExportReport, reference: np.ndarray, preds: Predictions, run_dir: Path
) -> None:
    """How the app's full-precision answers compare with predictions.json, in the notes."""
    n = len(preds.files)
    recorded = np.asarray(preds.probs, dtype=np.float64)
    report.recorded_top1_agree = int((reference.argmax(1) == np.asarray(preds.preds)).sum())
    report.recorded_max_prob_diff = float(np.abs(reference - recorded).max())
    if report.recorded_max_prob_diff > RECORDED_TOLERANCE or report.recorded_top1_agree != n:
        precision = _recorded_precision(run_dir)
        why = (
            f"the run scored them in {precision} mixed precision, which is faster but rounds"
            if precision
            else "the data set or the scoring changed since training"
        )
        report.notes.append(
            f"The validation predictions saved with the run differ from a full-precision "
            f"rescoring by up to {report.recorded_max_prob_diff:.1e} in probability "
            f"({n - report.recorded_top1_agree} of {n} top classes differ): {why}. The "
            "exported model computes in full precision, like the rescoring."
        )
    else:
        report.notes.append(
            f"The app's full-precision answers equal the validation predictions saved with the "
            f"run (largest difference {report.recorded_max_prob_diff:.1e})."
        )


def _recorded_precision(run_dir: Path) -> str | None:
    """'bfloat16' / 'float16' when the run's log says validation ran in reduced precision."""
    log = run_dir / "run.log"
    if not log.is_file():
        return None
    text = log.read_text(encoding="utf-8", errors="replace")
    for dtype in ("bfloat16", "float16"):
        if f"{dtype} inference" in text:
            return dtype
    return None
