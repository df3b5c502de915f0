"""How good is a trained run? Accuracy with its interval, per-class scores, calibration.

Everything here works from the validation predictions a run wrote (``predictions.json``, logits
included), or from a fresh pass over another labelled folder. Reading writes nothing: the
fitted temperature and the "not sure" threshold are a pure function of the predictions
(seeded), so the Try page and the export compute the same ones again; a ``calibration.json``
that an older version left in the run folder is still read.

Before any score is reported, the run's saved model is loaded (:func:`load_model_checked`) and
checked against the recorded predictions on the validation images (:func:`verify_run`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tl_core.analysis import metrics
from tl_core.analysis.results import Predictions, PredictionsError, load_predictions
from tl_core.errors import CheckpointError, StudioError

if TYPE_CHECKING:
    from tl_core.models.device import ComputePlan
    from tl_core.training.inference import TrainedModel

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CALIBRATION_FILE",
    "KEPT_FEW_IMAGES",
    "KEPT_FEW_MISTAKES",
    "KEPT_NOISE",
    "KEPT_SHARPENING",
    "MIN_SCALING_IMAGES",
    "MIN_SCALING_MISTAKES",
    "REPRODUCE_TOLERANCE",
    "Calibration",
    "ModelLoadError",
    "RunEvaluation",
    "Verdict",
    "card_sections",
    "choose_calibration",
    "evaluate_folder",
    "evaluate_logits",
    "evaluate_predictions",
    "evaluate_run",
    "load_calibration",
    "load_model_checked",
    "reproduces_predictions",
    "verify_run",
]

CALIBRATION_FILE = "calibration.json"


# Temperature scaling is used only when it lowers the calibration error beyond its noise: the
# paired bootstrap 95% interval of ECE(as trained) - ECE(scaled, cross-fitted) lies above 0.
MIN_SCALING_IMAGES = 10  # fewer cannot be split into two halves to fit and score on
# Only the mistakes hold a fitted temperature up: with none, the loss only falls as T falls,
# so the fit runs to the search's lower bound (T ~ 0.05, every probability ~100%) whatever the
# model is like; the bootstrap cannot see that (every resample has no mistakes either). A count
# of m mistakes has a 95% noise of about 2 * sqrt(m) (Poisson), as large as m itself up to
# m = 4: 5 is the fewest whose own noise is smaller than the count.
MIN_SCALING_MISTAKES = 5
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

# Why the probabilities are kept as trained (Calibration.kept_because).
KEPT_FEW_MISTAKES = "few mistakes"  # fewer than MIN_SCALING_MISTAKES wrong validation images
KEPT_FEW_IMAGES = "few images"  # fewer than MIN_SCALING_IMAGES validation images
KEPT_NOISE = "noise"  # the gain in calibration error is within its noise
KEPT_SHARPENING = "sharpening"  # T < 1, but the model is not measurably under-confident


@dataclass(frozen=True)
class Calibration:
    """Temperature for the logits and the top-probability under which to say "not sure".

    ``temperature`` is the one the app uses (Try page, export's model card): the fitted one
    when scaling helps beyond noise (held back, when it sharpens, to what the validation
    accuracy supports), else 1.0 (the probabilities as trained).
    """

    temperature: float = 1.0
    threshold: float = 0.5
    ece_before: float | None = None
    ece_after: float | None = None  # cross-fitted: each half scored with the other's temperature
    fitted_temperature: float | None = None  # fitted on all validation images
    used: bool | None = None  # scaling applied; None: a file written before this was decided
    images: int = 0
    ece_before_ci: list[float] | None = None  # 95% bootstrap interval over the images
    ece_after_ci: list[float] | None = None
    gain_ci: list[float] | None = None  # of ece_before - ece_after (paired bootstrap)
    kept_because: str | None = None  # a KEPT_* code; None: used, or a file from before it
    mistakes: int | None = None  # wrong validation images; None: a file from before it
    confidence: float | None = None  # mean top probability as trained on the validation images

    @property
    def calibrated(self) -> bool:
        """Whether the probabilities the app gives are temperature-scaled."""
        return self.used if self.used is not None else self.temperature != 1.0

    def reason(self) -> str:
        """Why the probabilities are scaled or kept as trained, in one plain sentence."""
        if self.calibrated:
            fitted = self.fitted_temperature
            held = (
                f", held back from the fitted {fitted:.2f} so the model is not surer than its "
                "validation accuracy supports"
                if fitted is not None and abs(fitted - self.temperature) > 5e-3
                else ""
            )
            return (
                f"Temperature scaling (T = {self.temperature:.2f}{held}) lowers the calibration "
                "error by more than its noise on the validation images, so the probabilities "
                "are calibrated."
            )
        if self.kept_because == KEPT_FEW_MISTAKES and self.mistakes is not None:
            if not self.images:
                return (
                    "There are no validation images to fit a temperature on, so the "
                    "probabilities are kept as trained."
                )
            return (
                f"The {self.images} validation images hold only {self.mistakes} "
                f"mistake{'' if self.mistakes == 1 else 's'}, too few (under "
                f"{MIN_SCALING_MISTAKES}) to fit a temperature on, so the probabilities are "
                "kept as trained."
            )
        if self.kept_because == KEPT_SHARPENING and self.mistakes is not None and self.images:
            correct = self.images - self.mistakes
            low, high = metrics.wilson_interval(correct, self.images)
            sure = (
                f"{self.confidence:.0%} sure on average and " if self.confidence is not None else ""
            )
            return (
                "Temperature scaling would make the model surer than its validation accuracy "
                f"supports (it is {sure}right on {correct} of {self.images} images, 95% "
                f"interval {low:.0%} to {high:.0%}), so the probabilities are kept as trained."
            )
        if self.images and self.images < MIN_SCALING_IMAGES:
            return (
                f"With {self.images} validation images there are too few to check temperature "
                "scaling, so the probabilities are kept as trained."
            )
        if self.ece_before is not None and self.ece_after is not None:
            return (
                "Temperature scaling does not lower the calibration error beyond its noise on "
                f"the validation images ({self.ece_before:.1%} as trained, {self.ece_after:.1%} "
                "scaled), so the probabilities are kept as trained."
            )
        return "The probabilities are as trained."


@dataclass
class RunEvaluation:
    classes: list[str]
    files: list[str]
    labels: np.ndarray
    preds: np.ndarray
    probs: np.ndarray  # the probabilities the app uses: scaled only when that helps
    raw_probs: np.ndarray
    summary: metrics.AccuracySummary
    warning: str | None
    per_class: list[metrics.ClassReport]
    confusion: np.ndarray
    calibration: Calibration
    reliability_before: metrics.Reliability
    reliability_after: metrics.Reliability  # temperature-scaled, cross-fitted
    wrong_by_loss: list[int]

    def worst_classes(self, n: int = 3) -> list[metrics.ClassReport]:
        """Classes with the lowest recall (:func:`~tl_core.analysis.metrics.weakest_classes`)."""
        return metrics.weakest_classes(self.per_class, n)

    def cell(self, true: int, pred: int) -> list[int]:
        """Indices of the images behind one confusion-matrix cell, most confident first."""
        rows = np.flatnonzero((self.labels == true) & (self.preds == pred))
        if len(rows) and self.probs.ndim == 2 and len(self.probs) == len(self.labels):
            rows = rows[np.argsort(-self.probs[rows, pred], kind="stable")]
        return [int(i) for i in rows]

    def confused_pairs(self, n: int | None = None) -> list[metrics.ConfusedPair]:
        """The most confused (true, predicted) pairs, most images first
        (:func:`~tl_core.analysis.metrics.most_confused`)."""
        return metrics.most_confused(self.confusion, n)

    def summary_json(self) -> dict[str, object]:
        return {
            "accuracy": self.summary.accuracy,
            "ci_low": self.summary.ci_low,
            "ci_high": self.summary.ci_high,
            "images": self.summary.total,
            "ece": self.calibration.ece_before,
            "ece_calibrated": self.calibration.ece_after,
            "ece_interval": self.calibration.ece_before_ci,
            "ece_calibrated_interval": self.calibration.ece_after_ci,
            "temperature": self.calibration.temperature,
            "fitted_temperature": self.calibration.fitted_temperature,
            "probabilities": "calibrated" if self.calibration.calibrated else "as trained",
            "kept_because": self.calibration.kept_because,
            "calibration_reason": self.calibration.reason(),
            "not_sure_threshold": self.calibration.threshold,
            "macro_f1": metrics.macro_average(self.per_class).f1,
        }


def _cross_fitted_probs(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Temperature-scaled probabilities, each half scored with the temperature of the other.

    With fewer than MIN_SCALING_IMAGES images, scaled with the temperature of all of them.
    """
    n = len(labels)
    if n < MIN_SCALING_IMAGES:
        return metrics.softmax(logits, metrics.fit_temperature(logits, labels))
    order = np.random.default_rng(0).permutation(n)
    halves = order[: n // 2], order[n // 2 :]
    probs = np.empty_like(logits, dtype=np.float64)
    for fit_on, score_on in (halves, halves[::-1]):
        t = metrics.fit_temperature(logits[fit_on], labels[fit_on])
        probs[score_on] = metrics.softmax(logits[score_on], t)
    return probs


def _mean_top(logits: np.ndarray, temperature: float) -> float:
    """Mean top probability of softmax(logits / T): how sure the model is on average."""
    return float(metrics.softmax(logits, temperature).max(axis=1).mean())


def _sharpest_supported(logits: np.ndarray, fitted: float, ceiling: float) -> float:
    """The temperature in [fitted, 1] closest to ``fitted`` whose mean top probability does not
    exceed ``ceiling`` (the mean top probability only falls as T rises); bisection over log T.
    """
    if _mean_top(logits, fitted) <= ceiling:
        return fitted
    lo, hi = math.log(fitted), 0.0  # mean top above the ceiling at lo, below it at hi (T = 1)
    for _ in range(60):
        mid = (lo + hi) / 2
        if _mean_top(logits, math.exp(mid)) > ceiling:
            lo = mid
        else:
            hi = mid
    return float(math.exp(hi))


def choose_calibration(logits: np.ndarray, labels: np.ndarray) -> tuple[Calibration, np.ndarray]:
    """The calibration to use and the probabilities it gives.

    The probabilities stay as trained (temperature 1.0), with ``kept_because`` saying why:

    - with fewer than MIN_SCALING_MISTAKES wrong validation images (nothing to fit on), or
      fewer than MIN_SCALING_IMAGES images;
    - unless scaling lowers the cross-fitted ECE beyond its noise: the 95% paired bootstrap
      interval (BOOTSTRAP_RESAMPLES resamples of the validation images, seeded) of
      ECE(as trained) - ECE(scaled) lies entirely above 0;
    - where the fitted temperature sharpens (T < 1) and the model is not measurably
      under-confident: its mean top probability as trained is not below the 95% Wilson
      interval of its validation accuracy.

    A sharpening temperature that is used is held back (raised towards 1) so the mean top
    probability does not exceed the upper end of that interval.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    raw = metrics.softmax(logits)
    mistakes = int((raw.argmax(axis=1) != labels).sum()) if n else 0
    confidence = float(raw.max(axis=1).mean()) if n else None
    fitted = metrics.fit_temperature(logits, labels) if n else 1.0
    scaled = _cross_fitted_probs(logits, labels) if n else raw
    cmp = metrics.compare_ece(raw, scaled, labels, n_boot=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
    acc_low, acc_high = metrics.wilson_interval(n - mistakes, n)
    kept: str | None = None
    if mistakes < MIN_SCALING_MISTAKES:
        kept = KEPT_FEW_MISTAKES
    elif n < MIN_SCALING_IMAGES:
        kept = KEPT_FEW_IMAGES
    elif not cmp.difference_interval[0] > 0:
        kept = KEPT_NOISE
    elif fitted < 1.0 and not (confidence is not None and confidence < acc_low):
        kept = KEPT_SHARPENING
    temperature = 1.0
    if kept is None:
        temperature = fitted if fitted >= 1.0 else _sharpest_supported(logits, fitted, acc_high)
    probs = metrics.softmax(logits, temperature)
    calibration = Calibration(
        temperature=float(temperature),
        threshold=float(metrics.not_sure_threshold(probs, labels)),
        ece_before=float(cmp.ece_a),
        ece_after=float(cmp.ece_b),
        fitted_temperature=float(fitted),
        used=kept is None,
        images=n,
        ece_before_ci=list(cmp.a_interval),
        ece_after_ci=list(cmp.b_interval),
        gain_ci=list(cmp.difference_interval),
        kept_because=kept,
        mistakes=mistakes,
        confidence=confidence,
    )
    return calibration, probs


def evaluate_logits(
    classes: list[str], files: list[str], logits: np.ndarray, labels: np.ndarray
) -> RunEvaluation:
    """Every number the Evaluate page shows, from logits and true labels."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = len(classes)
    raw = metrics.softmax(logits)
    preds = raw.argmax(1) if len(labels) else np.zeros(0, dtype=np.int64)
    calibration, probs = choose_calibration(logits, labels)
    scaled = _cross_fitted_probs(logits, labels) if len(labels) else raw
    summary = metrics.accuracy_summary(labels, preds)
    return RunEvaluation(
        classes=classes,
        files=files,
        labels=labels,
        preds=preds,
        probs=probs,
        raw_probs=raw,
        summary=summary,
        warning=metrics.small_sample_warning(summary),
        per_class=metrics.per_class_report(labels, preds, n_classes),
        confusion=metrics.confusion_matrix(labels, preds, n_classes),
        calibration=calibration,
        reliability_before=metrics.reliability_curve(raw, labels),
        reliability_after=metrics.reliability_curve(scaled, labels),  # cross-fitted
        wrong_by_loss=metrics.misclassified_by_loss(probs, labels),
    )


def evaluate_predictions(preds: Predictions) -> RunEvaluation:
    return evaluate_logits(
        preds.classes, preds.files, np.asarray(preds.logits), np.asarray(preds.labels)
    )


def evaluate_run(run_dir: Path) -> RunEvaluation | None:
    """The run's evaluation on its validation images (None without predictions); writes
    nothing."""
    preds = load_predictions(Path(run_dir))
    if preds is None:
        return None
    return evaluate_predictions(preds)


def load_calibration(run_dir: Path) -> Calibration:
    """The run's calibration, computed from its predictions; writes nothing.

    A ``calibration.json`` an older version saved is read when it records whether scaling is
    used; one written before that was decided (no ``used`` field) is decided again from the
    predictions when they are there, else read as it is.
    """
    path = Path(run_dir) / CALIBRATION_FILE
    saved: Calibration | None = None
    if path.exists():
        try:
            data = json.loads(path.read_text())
            known = {f.name for f in fields(Calibration)}
            saved = Calibration(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError, AttributeError):
            saved = None
    if saved is not None and saved.used is not None:
        return saved
    result = evaluate_run(Path(run_dir))
    if result is not None:
        return result.calibration
    return saved or Calibration()


Progress = Callable[[int, int], None]  # (images scored, of how many)
PROGRESS_BATCHES = 4  # the model's batches scored between two progress reports


def in_chunks(
    score: Callable[[Sequence[Path]], np.ndarray],
    files: Sequence[Path],
    progress: Progress | None,
    batch: int,
) -> np.ndarray:
    """``score(files)`` (a model's logits or predict), a few of its ``batch``es at a time,
    reporting ``progress(done, total)`` after each (one call without ``progress``). The
    batches are the ones one call would make, so the answers are the same."""
    if progress is None or not files:
        return score(files)
    n, out, chunk = len(files), [], max(batch, 1) * PROGRESS_BATCHES
    progress(0, n)
    for start in range(0, n, chunk):
        out.append(score(files[start : start + chunk]))
        progress(min(start + chunk, n), n)
    return np.concatenate(out)


def evaluate_folder(run_dir: Path, folder: Path, progress: Progress | None = None) -> RunEvaluation:
    """The run's best model scored on another labelled folder (one sub-folder per class).

    ``progress(done, total)``: the images scored so far.
    """
    from tl_core.data.dataset import IMAGE_SUFFIXES
    from tl_core.errors import DataError

    trained = load_model_checked(Path(run_dir))
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"There is no folder at {folder}.")
    index = {c: i for i, c in enumerate(trained.classes)}
    files, labels = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in index:
            known = ", ".join(trained.classes)
            raise DataError(f"The folder '{sub.name}' is not one of the model's classes ({known}).")
        for f in sorted(sub.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                files.append(f)
                labels.append(index[sub.name])
    if not files:
        raise DataError(f"No images in class folders under {folder}.")
    logits = in_chunks(trained.logits, files, progress, trained.plan.infer_batch)
    names = [f.relative_to(folder).as_posix() for f in files]
    return evaluate_logits(trained.classes, names, logits, np.asarray(labels))


class ModelLoadError(CheckpointError):
    """A run's saved model cannot be loaded: damaged, cut short, foreign, or not its own."""


REPRODUCE_TOLERANCE = 1e-3  # probabilities: predictions.json keeps 6 decimals


def load_model_checked(
    run_dir: Path, predictions: Predictions | None = None, plan: ComputePlan | None = None
) -> TrainedModel:
    """The run's best.pt as a model, or ModelLoadError with one sentence.

    Whatever reading the file raises (random bytes, a cut-off file, another program's
    pickle or state dict, a model of another shape) becomes that one error. With
    ``predictions``, the model must also know the same classes as those predictions.
    """
    from tl_core.training.inference import load_trained

    path = Path(run_dir) / "best.pt"
    if not path.is_file():
        raise ModelLoadError(f"There is no trained model in {run_dir} (best.pt is missing).")
    try:
        trained = load_trained(Path(run_dir), plan=plan)
    except CheckpointError as exc:  # already one plain sentence about the file
        raise ModelLoadError(str(exc)) from None
    except Exception:  # torch, pickle, zip and timm each raise their own kinds
        raise ModelLoadError(
            f"The saved model in {path} cannot be read: the file is damaged, cut short or not a "
            "model saved by this app, so no score is given for it."
        ) from None
    classes = trained.classes
    if not all(isinstance(c, str) for c in classes) or len(classes) < 2:
        raise ModelLoadError(f"The saved model {path} has no usable list of class names.")
    if predictions is not None and list(predictions.classes) != list(classes):
        raise ModelLoadError(
            f"The saved model {path} ({len(classes)} classes) and the run's predictions "
            f"({len(predictions.classes)} classes) do not belong together, so no score is given."
        )
    return trained


@dataclass(frozen=True)
class Verdict:
    """Does the saved model give the recorded validation predictions again?"""

    status: str  # "verified" | "differs" | "unchecked" (images not at hand) | "unusable"
    sentence: str  # one plain sentence for the user
    images: int = 0  # validation images re-scored
    top1_agree: int | None = None
    max_prob_diff: float | None = None

    @property
    def verified(self) -> bool:
        return self.status == "verified"

    def summary(self) -> dict[str, object]:
        return {
            "verified": self.verified,
            "verdict": self.status,
            "parity_ok": self.verified if self.status in ("verified", "differs") else None,
            "parity_max_prob_diff": self.max_prob_diff,
        }


def verify_run(
    run_dir: Path,
    data_root: Path | None,
    trained: TrainedModel | None = None,
    predictions: Predictions | None = None,
    progress: Progress | None = None,
) -> Verdict:
    """Load best.pt and score the recorded validation images with it again.

    ``progress(done, total)``: the validation images scored so far.

    Never raises for a damaged or foreign file: that is the verdict "unusable".
    ``data_root`` is the run's imported data set (None: not found, the verdict "unchecked").
    """
    run_dir = Path(run_dir)
    try:
        preds = predictions or load_predictions(run_dir)
        if preds is None:
            raise PredictionsError(f"The run in {run_dir} has no validation predictions.")
        model = trained or load_model_checked(run_dir, preds)
    except StudioError as exc:
        return Verdict("unusable", str(exc))
    n = len(preds.files)
    if data_root is None or not Path(data_root).is_dir():
        where = f" at {data_root}" if data_root is not None else ""
        return Verdict(
            "unchecked",
            f"The saved model loads, but the run's validation images are not here{where}, so "
            "it could not be re-checked against its recorded predictions.",
        )
    files = [Path(data_root) / f for f in preds.files]
    missing = sum(not f.is_file() for f in files)
    if missing:
        return Verdict(
            "unchecked",
            f"The saved model loads, but {missing} of the {n} validation images are missing "
            f"from {data_root}, so it could not be re-checked against its recorded predictions.",
        )
    try:
        probs = in_chunks(model.predict, files, progress, model.plan.infer_batch).astype(np.float64)
    except StudioError as exc:
        return Verdict(
            "unchecked",
            f"The saved model loads, but a validation image could not be read ({exc}), so it "
            "could not be re-checked.",
        )
    recorded = np.asarray(preds.probs, dtype=np.float64)
    diff = float(np.abs(probs - recorded).max())
    agree = int((probs.argmax(1) == np.asarray(preds.preds)).sum())
    if agree == n and diff <= REPRODUCE_TOLERANCE:
        return Verdict(
            "verified",
            f"The saved model reproduces the recorded predictions on all {n} validation images "
            f"(largest probability difference {diff:.1e}).",
            n,
            agree,
            diff,
        )
    return Verdict(
        "differs",
        f"The saved model does not reproduce the run's recorded predictions ({n - agree} of {n} "
        f"answers differ, probabilities by up to {diff:.2f}), so its scores cannot be trusted; "
        "train the run again.",
        n,
        agree,
        diff,
    )


def reproduces_predictions(run_dir: Path, data_root: Path) -> tuple[bool, float]:
    """Does the saved best model give the recorded validation predictions again?

    (same top-1 on every image and probabilities within 1e-3, largest difference).
    """
    verdict = verify_run(Path(run_dir), Path(data_root))
    diff = verdict.max_prob_diff
    return verdict.verified, float("nan") if diff is None else diff


def card_sections(ev: RunEvaluation | None) -> dict[str, str]:
    """Evaluation facts for the model card, in plain words."""
    if ev is None:
        return {}
    s = ev.summary
    lines = [
        f"Validation accuracy {s.accuracy:.1%} ({s.correct} of {s.total} images); 95% "
        f"confidence interval (Wilson) {s.ci_low:.1%} to {s.ci_high:.1%}.",
    ]
    if ev.warning:
        lines.append(ev.warning)
    table = ["| class | images | recall | precision | F1 |", "|---|---|---|---|---|"]
    table += [
        f"| {ev.classes[c.index]} | {c.support} | {c.recall:.0%} | {c.precision:.0%} | {c.f1:.2f} |"
        for c in ev.per_class
    ]
    cal = ev.calibration
    return {
        "Accuracy and its uncertainty": "\n\n".join(lines),
        "Per class": "\n".join(table),
        "Calibration": _card_calibration(cal),
    }


def _card_calibration(cal: Calibration) -> str:
    """The model card's calibration lines: the error, its noise, which probabilities are used."""

    def with_ci(value: float | None, ci: list[float] | None) -> str:
        if value is None:
            return "not measured"
        return f"{value:.1%}" + (f" (95% interval {ci[0]:.1%} to {ci[1]:.1%})" if ci else "")

    fitted = cal.fitted_temperature if cal.fitted_temperature is not None else cal.temperature
    lines = (
        f"Expected calibration error {with_ci(cal.ece_before, cal.ece_before_ci)} as trained; "
        f"with temperature scaling (fitted T = {fitted:.2f}) "
        f"{with_ci(cal.ece_after, cal.ece_after_ci)}, scored on held-out halves of the "
        "validation images. "
    )
    if cal.calibrated:
        lines += (
            f"{cal.reason()} The app uses T = {cal.temperature:.2f}; the exported files give "
            "the probabilities as trained: divide the logits by T for calibrated ones."
        )
    else:
        lines += (
            f"{cal.reason()} The app uses T = {cal.temperature:.2f}, the same probabilities "
            "as the exported files give."
        )
    return lines + (
        f" Below a top probability of {cal.threshold:.0%}, treat the answer as 'not sure'."
    )
